"""The session's construction pipeline runs in one direction: each provider's ``get_capability`` is asked
once per graph (the main graph, and each If/Loop/Scan body once), with a function op no provider has a
kernel for expanded before partitioning and the level-2 fusions updating the assignment they were given."""
from __future__ import annotations

import collections

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx.reference import ReferenceEvaluator

import engineroom as ort
from engineroom import discovery

RNG = np.random.default_rng(0)
W = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)


def _model() -> onnx.ModelProto:
    """Conv+Relu (fused at level 2), SwiGLU (a function op the CPU provider has no kernel for: expanded)
    and an If whose branches hold a Conv+Relu and a Neg+Conv."""
    then = h.make_graph([h.make_node("Conv", ["X", "Wt"], ["tc"], pads=[1, 1, 1, 1]),
                         h.make_node("Relu", ["tc"], ["t"])], "then", [],
                        [h.make_tensor_value_info("t", T.FLOAT, None)], [onnx.numpy_helper.from_array(W, "Wt")])
    other = h.make_graph([h.make_node("Neg", ["X"], ["en"]),
                          h.make_node("Conv", ["en", "We"], ["e"], pads=[1, 1, 1, 1])], "else", [],
                         [h.make_tensor_value_info("e", T.FLOAT, None)], [onnx.numpy_helper.from_array(W, "We")])
    nodes = [h.make_node("Conv", ["X", "W"], ["c"], pads=[1, 1, 1, 1]),
             h.make_node("Relu", ["c"], ["r"]),
             h.make_node("SwiGLU", ["r", "r"], ["s"], alpha=1.5),
             h.make_node("If", ["cond"], ["i"], then_branch=then, else_branch=other),
             h.make_node("Add", ["s", "i"], ["Y"])]
    g = h.make_graph(nodes, "main", [h.make_tensor_value_info("X", T.FLOAT, [1, 3, 8, 8]),
                                     h.make_tensor_value_info("cond", T.BOOL, [])],
                     [h.make_tensor_value_info("Y", T.FLOAT, None)], [onnx.numpy_helper.from_array(W, "W")])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 28)], ir_version=11)


def _counting(monkeypatch, names: list[str]) -> collections.Counter:
    """(provider, graph) -> get_capability calls; a graph is named by its outputs."""
    calls: collections.Counter = collections.Counter()
    for name in names:
        cls = discovery.provider_class(name)
        original = cls.get_capability

        def counted(self, view, _original=original, _name=name):
            calls[_name, view.graph_outputs] += 1
            return _original(self, view)

        monkeypatch.setattr(cls, "get_capability", counted)
    return calls


def _providers(kind: str) -> list[str]:
    if kind == "cpu":
        return ["CPUExecutionProvider"]
    pytest.importorskip("openvino", reason="openvino is not installed (the [openvino] extra)")
    if not discovery.is_available("OpenVINOExecutionProvider"):
        why = discovery.unavailable_reason("OpenVINOExecutionProvider")
        pytest.skip(f"OpenVINOExecutionProvider is not available: {why}")
    return ["OpenVINOExecutionProvider", "CPUExecutionProvider"]


MAIN, THEN, ELSE = ("Y",), ("t",), ("e",)


@pytest.mark.parametrize("level", [ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                   ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                                   ort.GraphOptimizationLevel.ORT_ENABLE_ALL])
@pytest.mark.parametrize("kind", ["cpu", "openvino"])
def test_each_provider_is_asked_once_per_graph(monkeypatch, kind, level):
    names = _providers(kind)
    calls = _counting(monkeypatch, names)
    m = _model()
    so = ort.SessionOptions()
    so.graph_optimization_level = level
    s = ort.InferenceSession(m.SerializeToString(), so, providers=names)
    assert calls and set(calls.values()) == {1}, calls
    first = names[0]
    # the first provider sees every graph; one after it only graphs where nodes were left to it
    assert {g for p, g in calls if p == first} == {MAIN, THEN, ELSE}, calls
    assert (names[-1], MAIN) in calls
    ops = [n.op_type for p in s.get_provider_graph_assignment_info() for n in p.get_nodes()]
    assert "SwiGLU" not in ops and "If" in ops           # the function op was expanded before partitioning
    if kind == "cpu" and level >= ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED:
        assert "FusedConv" in ops                        # fused after partitioning, with no second ask
    x = RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)
    ref = ReferenceEvaluator(m)
    tol = 1e-5 if kind == "cpu" else 1e-3
    for cond in (True, False):
        feeds = {"X": x, "cond": np.array(cond)}
        np.testing.assert_allclose(s.run(None, feeds)[0], ref.run(None, feeds)[0], rtol=tol, atol=tol)


def test_body_fused_from_its_single_assignment(monkeypatch, tmp_path):
    """The Conv+Relu inside the If's then-branch is fused on the CPU provider: the body is assigned once,
    before the fusions, and its plan is built from the assignment the fusion updated."""
    calls = _counting(monkeypatch, ["CPUExecutionProvider"])
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    s = ort.InferenceSession(_model().SerializeToString(), so, providers=["CPUExecutionProvider"])
    assert calls[("CPUExecutionProvider", THEN)] == 1 and calls[("CPUExecutionProvider", ELSE)] == 1
    saved = onnx.load(str(tmp_path / "opt.onnx"))
    branch = next(a.g for n in saved.graph.node if n.op_type == "If" for a in n.attribute if a.name == "then_branch")
    assert [n.op_type for n in branch.node] == ["FusedConv"]
    x = RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)
    feeds = {"X": x, "cond": np.array(True)}
    np.testing.assert_allclose(s.run(None, feeds)[0], ReferenceEvaluator(_model()).run(None, feeds)[0],
                               rtol=1e-5, atol=1e-5)


def test_float16_region_widened_and_fused_without_a_second_ask(monkeypatch):
    """The float16 pass retypes values in place and inserts casts (recorded on the CPU provider); the views
    are made again from the updated assignment, and the float32 fusion applies inside the region."""
    w = W.astype(np.float16)
    g = h.make_graph([h.make_node("Conv", ["X", "W"], ["c"], pads=[1, 1, 1, 1]), h.make_node("Relu", ["c"], ["Y"])],
                     "f16", [h.make_tensor_value_info("X", T.FLOAT16, [1, 3, 8, 8])],
                     [h.make_tensor_value_info("Y", T.FLOAT16, None)], [onnx.numpy_helper.from_array(w, "W")])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=8)
    calls = _counting(monkeypatch, ["CPUExecutionProvider"])
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    assert dict(calls) == {("CPUExecutionProvider", ("Y",)): 1}
    ops = [n.op_type for p in s.get_provider_graph_assignment_info() for n in p.get_nodes()]
    assert ops.count("Cast") == 2 and "FusedConv" in ops, ops
    x = RNG.standard_normal((1, 3, 8, 8)).astype(np.float16)
    got = s.run(None, {"X": x})[0]
    # the truth: the same Conv+Relu in float32 on the float16 values, rounded once to float16
    ref = h.make_model(h.make_graph([h.make_node("Conv", ["X", "W"], ["c"], pads=[1, 1, 1, 1]),
                                     h.make_node("Relu", ["c"], ["Y"])], "f32",
                                    [h.make_tensor_value_info("X", T.FLOAT, [1, 3, 8, 8])],
                                    [h.make_tensor_value_info("Y", T.FLOAT, None)],
                                    [onnx.numpy_helper.from_array(w.astype(np.float32), "W")]),
                       opset_imports=[h.make_opsetid("", 17)], ir_version=8)
    expect = ReferenceEvaluator(ref).run(None, {"X": x.astype(np.float32)})[0].astype(np.float16)
    assert got.dtype == np.float16
    np.testing.assert_allclose(got.astype(np.float32), expect.astype(np.float32), rtol=2e-3, atol=2e-3)


def _constant_weights_model(raw: bytes | None = None) -> onnx.ModelProto:
    """A MatMul whose weight is a Constant node (how Paddle exports hold every weight): the folding
    reads it straight from the attribute."""
    w = onnx.numpy_helper.from_array(RNG.standard_normal((30, 20)).astype(np.float32))
    if raw is not None:
        w.raw_data = raw
    g = h.make_graph([h.make_node("Constant", [], ["w"], value=w),
                      h.make_node("MatMul", ["x", "w"], ["y"])], "g",
                     [h.make_tensor_value_info("x", T.FLOAT, [2, 30])],
                     [h.make_tensor_value_info("y", T.FLOAT, None)])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)])


@pytest.mark.parametrize("as_proto", [False, True])
@pytest.mark.parametrize("level", [ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                                   ort.GraphOptimizationLevel.ORT_ENABLE_BASIC])
def test_constant_held_weights_against_onnxruntime(level, as_proto):
    """The weight travels light through checking and shape inference and is put back whole; a caller's
    ModelProto is left as it was."""
    onnxruntime = pytest.importorskip("onnxruntime", reason="onnxruntime is the oracle")
    proto = _constant_weights_model()
    data = proto.SerializeToString()
    x = RNG.standard_normal((2, 30)).astype(np.float32)
    so = ort.SessionOptions()
    so.graph_optimization_level = level
    got = ort.InferenceSession(proto if as_proto else data, so).run(None, {"x": x})
    assert proto.SerializeToString() == data
    want = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-5)


def test_constant_with_short_raw_data_is_named():
    model = _constant_weights_model(raw=bytes(30 * 20 * 4 - 4)).SerializeToString()
    with pytest.raises(ort.InvalidGraph, match="tensor attribute 'value' of node '' \\(Constant\\) cannot be read"):
        ort.InferenceSession(model)


@pytest.mark.parametrize("level", [ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                                   ort.GraphOptimizationLevel.ORT_ENABLE_ALL])
def test_constant_nodes_become_initializers_at_load(level):
    """The main graph's tensor-holding Constant nodes are initializers from the load on, at every level, as in
    onnxruntime's graph: none is planned as a node (a Constant of another form, value_ints, is one until
    level 1 folds it). A heavy float weight, a heavy int64 index table (shape inference reads int data)
    and a Constant that is a graph output keep onnxruntime's numbers."""
    onnxruntime = pytest.importorskip("onnxruntime", reason="onnxruntime is the oracle")
    w = RNG.standard_normal((30, 20)).astype(np.float32)
    idx = (np.arange(300) % 20).astype(np.int64)
    nodes = [h.make_node("Constant", [], ["w"], value=onnx.numpy_helper.from_array(w)),
             h.make_node("Constant", [], ["idx"], value=onnx.numpy_helper.from_array(idx)),
             h.make_node("Constant", [], ["c"], value=onnx.numpy_helper.from_array(np.float32([1.5, -2.0]))),
             h.make_node("Constant", [], ["axes"], value_ints=[0]),        # another form: folded at level 1
             h.make_node("MatMul", ["x", "w"], ["m"]),
             h.make_node("Gather", ["m", "idx"], ["y"], axis=1),
             h.make_node("ReduceSum", ["m", "axes"], ["r"])]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, [2, 30])],
                     [h.make_tensor_value_info(n, T.FLOAT, None) for n in ("y", "c", "r")])
    data = h.make_model(g, opset_imports=[h.make_opsetid("", 18)]).SerializeToString()
    x = RNG.standard_normal((2, 30)).astype(np.float32)
    so = ort.SessionOptions()
    so.graph_optimization_level = level
    s = ort.InferenceSession(data, so)
    ops = [n.op_type for p in s.get_provider_graph_assignment_info() for n in p.get_nodes()]
    assert ops.count("Constant") == (1 if level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL else 0), ops
    got = s.run(None, {"x": x})
    want = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"x": x})
    assert got[0].shape == (2, 300)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_constant_nodes_stay_nodes_before_ir_version_4():
    """Before IR version 4 an initializer must also be a graph input (the checker says so): a model of IR
    version 3 holding its weight in a Constant node loads and keeps onnxruntime's numbers."""
    onnxruntime = pytest.importorskip("onnxruntime", reason="onnxruntime is the oracle")
    w = RNG.standard_normal((64, 64)).astype(np.float32)
    nodes = [h.make_node("Constant", [], ["w"], value=onnx.numpy_helper.from_array(w)),
             h.make_node("MatMul", ["x", "w"], ["y"])]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, [2, 64])],
                     [h.make_tensor_value_info("y", T.FLOAT, [2, 64])])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 8)])
    m.ir_version = 3
    data = m.SerializeToString()
    x = RNG.standard_normal((2, 64)).astype(np.float32)
    got = ort.InferenceSession(data).run(None, {"x": x})
    want = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-5)
