"""End to end: the five zoo models on the CPU provider against PyTorch's outputs in NAME.io.npz."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import ZOO_MODELS, assert_matches_pytorch, copies, run_zoo, zoo_path

import engineroom as ort

LEVELS = [ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
          ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, ort.GraphOptimizationLevel.ORT_ENABLE_ALL]


@pytest.mark.parametrize("level", LEVELS, ids=[lv.name for lv in LEVELS])
@pytest.mark.parametrize("name", ZOO_MODELS)
def test_zoo_model_matches_pytorch_on_cpu(name, level):
    so = ort.SessionOptions()
    so.graph_optimization_level = level
    s, outs, refs = run_zoo(name, providers=["CPUExecutionProvider"], sess_options=so)
    assert_matches_pytorch(name, outs, refs, 1e-4)
    # the partitioner put everything on the CPU provider, with no copies
    assert {p.ep_name for p in s.get_provider_graph_assignment_info()} == {"CPUExecutionProvider"}
    assert copies(s) == 0


def test_seed_example_prints_logits_shape():
    """The seed's example, verbatim but for the import and the path."""
    path = zoo_path("resnet18")
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    s = ort.InferenceSession(path, so, providers=[("OpenCLExecutionProvider", {"device_id": 0}),
                                                  "CPUExecutionProvider"])
    out = s.run(None, {s.get_inputs()[0].name: x})
    assert out[0].shape == (1, 1000)
