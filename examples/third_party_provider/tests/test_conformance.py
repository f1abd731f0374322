"""The provider author's own tests: run engineroom's conformance kit against the installed plugin
(``pip install -e .`` or the built wheel, so that the entry point is registered), then pytest."""
from __future__ import annotations

import os

import numpy as np
import pytest

from engineroom.plugin_sdk.testing import read_expected_failures, run_kit

PROVIDER = "PreciseExecutionProvider"
EXPECTED = read_expected_failures(os.path.join(os.path.dirname(__file__), "expected_failures.txt"))


def test_kit_report_passes():
    report = run_kit(PROVIDER, only=["matmul", "gemm", "conv", "reduce_sum", "reduce_mean", "softmax", "attention"],
                     expected_failures=EXPECTED)
    print(report.format())
    assert report.ok, report.format()
    ops = report.node_tests.ops
    for op in ("MatMul", "Gemm", "Conv", "ReduceSum", "ReduceMean", "Softmax", "LogSoftmax"):
        assert ops[op].claimed == ops[op].passed > 0, (op, ops[op])


def test_accumulates_in_float64():
    from onnx import TensorProto, helper

    import engineroom as ort

    n = 1 << 14
    x = np.full((1, n), 1.0 + 2.0 ** -12, np.float16)
    graph = helper.make_graph([helper.make_node("ReduceSum", ["x"], ["y"], keepdims=0)], "sum",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, n])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT16, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    s = ort.InferenceSession(model.SerializeToString(), providers=[PROVIDER, "CPUExecutionProvider"])
    assert s.get_providers() == [PROVIDER, "CPUExecutionProvider"]
    assert [p.ep_name for p in s.get_provider_graph_assignment_info()] == [PROVIDER]
    exact = np.float16(x.astype(np.float64).sum())
    assert s.run(None, {"x": x})[0] == exact


def test_unknown_and_bad_options_are_rejected():
    from engineroom_precise_ep import PreciseExecutionProvider

    import engineroom as ort
    from engineroom.plugin_sdk import ProviderOptionError

    with pytest.raises(ProviderOptionError, match="accumulation"):
        PreciseExecutionProvider(accumulation="float16")
    with pytest.raises(ort.InvalidArgument, match="precison"):
        from onnx import helper
        g = helper.make_graph([], "g", [], [])
        ort.InferenceSession(helper.make_model(g).SerializeToString(), providers=[(PROVIDER, {"precison": "1"})])
