"""End to end: the five zoo models on the CPU provider against PyTorch's outputs in NAME.io.npz."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import ZOO_MODELS, zoo_path

import engineroom as ort


def run_zoo(name: str, providers=None, **kw):
    path = zoo_path(name)
    z = np.load(path[:-5] + ".io.npz")
    s = ort.InferenceSession(path, providers=providers, **kw)
    feed = {a.name: z[f"in_{k}"] for k, a in enumerate(s.get_inputs())}
    outs = s.run(None, feed)
    refs = [z[f"out_{k}"] for k in range(len(outs)) if f"out_{k}" in z]
    return s, outs, refs


LEVELS = [ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
          ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, ort.GraphOptimizationLevel.ORT_ENABLE_ALL]


@pytest.mark.parametrize("level", LEVELS, ids=[lv.name for lv in LEVELS])
@pytest.mark.parametrize("name", ZOO_MODELS)
def test_zoo_model_matches_pytorch_on_cpu(name, level):
    so = ort.SessionOptions()
    so.graph_optimization_level = level
    s, outs, refs = run_zoo(name, providers=["CPUExecutionProvider"], sess_options=so)
    assert refs, f"{name}.io.npz has no reference outputs"
    for out, ref in zip(outs, refs):
        assert out.shape == ref.shape and out.dtype == ref.dtype
        err = float(np.max(np.abs(out.astype(np.float64) - ref)))
        assert err <= 1e-4 * float(np.max(np.abs(ref))), f"{name}: max abs error {err:.3g}"
    # the partitioner put everything on the CPU provider, with no copies
    assert {p.ep_name for p in s.get_provider_graph_assignment_info()} == {"CPUExecutionProvider"}
    assert s._plan.n_copies == 0


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
