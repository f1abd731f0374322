"""Optimizations inside If / Loop / Scan bodies (issue 16) against onnxruntime: constants of enclosing
graphs and Loop-carried pass-through constants read as the body's own (folded there, weights prepared
once), level-1/2 passes inside bodies (Constant nodes folded, layer norms fused), nested bodies, and
graphs that must keep working (an Identity body output reading an outer value, a carried value that
changes, an optimized model saved and loaded by onnxruntime)."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import make_model

import engineroom as er

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is the oracle of these tests")
onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402 - after the importorskip

from engineroom.executor import Subgraph  # noqa: E402

RNG = np.random.default_rng(16)
F = TensorProto.FLOAT


def vi(name, elem=F, shape=None):
    return helper.make_tensor_value_info(name, elem, shape)


def init(name, arr):
    return numpy_helper.from_array(np.asarray(arr), name)


def model(nodes, inputs, outputs, inits=(), opset=17):
    return make_model(nodes, inputs, outputs, inits, opset, check=True).SerializeToString()


def both(m, feed, **kw):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    ref = ort.InferenceSession(m, so, providers=["CPUExecutionProvider"]).run(None, feed)
    s = er.InferenceSession(m, providers=["CPUExecutionProvider"], **kw)
    return ref, s.run(None, feed), s


def check(ref, got, tol=1e-5):
    assert len(ref) == len(got)
    for r, g in zip(ref, got):
        assert np.asarray(g).shape == np.asarray(r).shape and np.asarray(g).dtype == np.asarray(r).dtype
        np.testing.assert_allclose(np.asarray(g, np.float64), np.asarray(r, np.float64), rtol=tol, atol=tol)


def body_ops(session) -> list[list[str]]:
    """The op types each planned body runs (every body, at any depth), as steps of its plan."""
    found: list[list[str]] = []

    def walk(plan):
        for fn, *_ in plan.steps:
            for cell in getattr(fn, "__closure__", None) or ():
                subs = cell.cell_contents
                for sub in subs if isinstance(subs, list) else [subs]:
                    if isinstance(sub, Subgraph):
                        found.append([info[1] for info in sub.plan.infos])
                        walk(sub.plan)
    walk(session._plan)
    return found


def _loop_with_carried_weights(steps=6):
    """A recurrent cell as paddle2onnx exports it: the weights ride along as Loop-carried values the
    body hands back unchanged; the body transposes W and builds constants with Constant nodes."""
    w = RNG.standard_normal((8, 8)).astype(np.float32) * 0.3
    b = RNG.standard_normal(8).astype(np.float32) * 0.1
    body = helper.make_graph(
        [helper.make_node("Constant", [], ["half"], value=helper.make_tensor("h", F, [], [0.5])),
         helper.make_node("Transpose", ["w_in"], ["wt"], perm=[1, 0]),
         helper.make_node("MatMul", ["h_in", "wt"], ["mm"]),
         helper.make_node("Add", ["mm", "b_in"], ["pre"]),
         helper.make_node("Tanh", ["pre"], ["act"]),
         helper.make_node("Mul", ["act", "half"], ["h_out"]),
         helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "body",
        [vi("i", TensorProto.INT64, []), vi("cond_in", TensorProto.BOOL, []), vi("h_in", F, [1, 8]),
         vi("w_in", F, [8, 8]), vi("b_in", F, [8])],
        [vi("cond_out", TensorProto.BOOL, []), vi("h_out", F, [1, 8]), vi("w_in", F, [8, 8]), vi("b_in", F, [8]),
         vi("act", F, [1, 8])])
    loop = helper.make_node("Loop", ["trip", "", "h0", "W", "B"], ["h", "w_last", "b_last", "acts"], body=body)
    return model([loop], [vi("h0", F, [1, 8])], [vi("h", F, [1, 8]), vi("w_last", F, [8, 8]),
                                                 vi("b_last", F, [8]), vi("acts", F, [steps, 1, 8])],
                 [init("trip", np.array(steps, np.int64)), init("W", w), init("B", b)])


def test_loop_carried_constant_weights_fold_into_the_body():
    m = _loop_with_carried_weights()
    ref, got, s = both(m, {"h0": RNG.standard_normal((1, 8)).astype(np.float32)})
    check(ref, got)
    (ops,) = body_ops(s)
    assert "Transpose" not in ops and "Constant" not in ops, ops   # folded once, at session creation
    assert ops.count("Gemm") == 1 or ops.count("MatMul") == 1, ops


def test_loop_carried_value_that_changes_stays_carried():
    """Only values the body hands back unchanged are constants: h changes every iteration."""
    m = _loop_with_carried_weights(steps=3)
    h0 = RNG.standard_normal((1, 8)).astype(np.float32)
    ref, got, _ = both(m, {"h0": h0})
    check(ref, got)
    assert not np.allclose(got[0], h0)


def _if_with_layer_norm(opset=13):
    """openWakeWord's head: an If whose branch is a Gemm + decomposed layer norm over outer weights."""
    d = 16
    w = init("W", RNG.standard_normal((d, d)).astype(np.float32) * 0.2)
    bias = init("Bg", RNG.standard_normal(d).astype(np.float32))
    g = init("gamma", (1 + 0.1 * RNG.standard_normal(d)).astype(np.float32))
    be = init("beta", (0.1 * RNG.standard_normal(d)).astype(np.float32))
    then_nodes = [
        helper.make_node("Gemm", ["x", "W", "Bg"], ["y"], transB=1),
        helper.make_node("ReduceMean", ["y"], ["mu"], axes=[-1]),
        helper.make_node("Sub", ["y", "mu"], ["dev"]),
        helper.make_node("Constant", [], ["two"], value=helper.make_tensor("t", F, [], [2.0])),
        helper.make_node("Pow", ["dev", "two"], ["sq"]),
        helper.make_node("ReduceMean", ["sq"], ["var"], axes=[-1]),
        helper.make_node("Constant", [], ["eps"], value=helper.make_tensor("e", F, [], [1e-5])),
        helper.make_node("Add", ["var", "eps"], ["ve"]),
        helper.make_node("Sqrt", ["ve"], ["sd"]),
        helper.make_node("Div", ["dev", "sd"], ["nrm"]),
        helper.make_node("Mul", ["nrm", "gamma"], ["sc"]),
        helper.make_node("Add", ["sc", "beta"], ["out_then"]),
    ]
    then_b = helper.make_graph(then_nodes, "then", [], [vi("out_then", F, [1, d])])
    else_b = helper.make_graph([helper.make_node("Identity", ["x"], ["out_else"])], "else", [],
                               [vi("out_else", F, [1, d])])
    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
             helper.make_node("Greater", ["s", "zero"], ["c"]),
             helper.make_node("If", ["c"], ["out"], then_branch=then_b, else_branch=else_b)]
    return model(nodes, [vi("x", F, [1, d])], [vi("out", F, [1, d])],
                 [w, bias, g, be, init("zero", np.array(0, np.float32))], opset=opset)


@pytest.mark.parametrize("opset", [13, 17])
def test_if_branch_reads_outer_weights_and_fuses(opset):
    m = _if_with_layer_norm(opset)
    x = np.abs(RNG.standard_normal((1, 16))).astype(np.float32)
    ref, got, s = both(m, {"x": x})
    check(ref, got, 1e-4)
    ref, got, _ = both(m, {"x": -x})     # the other branch (an Identity of the outer input)
    check(ref, got)
    then_ops = max(body_ops(s), key=len)
    assert "LayerNormalization" in then_ops and "ReduceMean" not in then_ops, then_ops
    # the basic level keeps the layer norm decomposed, but still folds the Constant nodes
    so = er.SessionOptions()
    so.graph_optimization_level = er.GraphOptimizationLevel.ORT_ENABLE_BASIC
    s1 = er.InferenceSession(m, so, providers=["CPUExecutionProvider"])
    check(ort.InferenceSession(m, providers=["CPUExecutionProvider"]).run(None, {"x": x}), s1.run(None, {"x": x}), 1e-4)
    ops1 = max(body_ops(s1), key=len)
    assert "Constant" not in ops1 and "ReduceMean" in ops1, ops1


def test_identity_branch_of_an_outer_value_keeps_the_outer_graph():
    """A branch that is Identity(v) of a value computed outside, read nowhere else: the Identity may go
    but the outer value must keep its name and producer."""
    then_b = helper.make_graph([helper.make_node("Identity", ["t"], ["o1"])], "then", [], [vi("o1", F, [3])])
    else_b = helper.make_graph([helper.make_node("Neg", ["t"], ["o2"])], "else", [], [vi("o2", F, [3])])
    nodes = [helper.make_node("Relu", ["x"], ["t"]),
             helper.make_node("If", ["c"], ["y"], then_branch=then_b, else_branch=else_b)]
    m = model(nodes, [vi("x", F, [3]), vi("c", TensorProto.BOOL, [])], [vi("y", F, [3])])
    x = RNG.standard_normal(3).astype(np.float32)
    for c in (True, False):
        ref, got, _ = both(m, {"x": x, "c": np.array(c)})
        check(ref, got)


def test_nested_bodies_and_scan_read_main_graph_constants():
    """A Scan inside a Loop body, both reading main-graph initializers (Conv weights in the Scan)."""
    wconv = init("Wc", RNG.standard_normal((2, 1, 3)).astype(np.float32))
    scale = init("scale", np.array([1.5], np.float32))
    scan_body = helper.make_graph(
        [helper.make_node("Unsqueeze", ["xs", "ax01"], ["x3"]),
         helper.make_node("Conv", ["x3", "Wc"], ["c3"], pads=[1, 1]),
         helper.make_node("ReduceSum", ["c3"], ["r"], keepdims=0),
         helper.make_node("Mul", ["r", "scale"], ["r2"]),
         helper.make_node("Add", ["acc_in", "r2"], ["acc_out"]),
         helper.make_node("Identity", ["r2"], ["ys"])],
        "scan_body", [vi("acc_in", F, [1]), vi("xs", F, [5])], [vi("acc_out", F, [1]), vi("ys", F, [1])])
    loop_body = helper.make_graph(
        [helper.make_node("Scan", ["acc", "seq"], ["acc2", "ys"], body=scan_body, num_scan_inputs=1),
         helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "loop_body", [vi("i", TensorProto.INT64, []), vi("cond_in", TensorProto.BOOL, []), vi("acc", F, [1])],
        [vi("cond_out", TensorProto.BOOL, []), vi("acc2", F, [1]), vi("ys", F, [4, 1])])
    nodes = [helper.make_node("Loop", ["trip", "", "acc0"], ["acc_f", "all_ys"], body=loop_body)]
    m = model(nodes, [vi("seq", F, [4, 5]), vi("acc0", F, [1])], [vi("acc_f", F, [1]), vi("all_ys", F, [3, 4, 1])],
              [wconv, scale, init("trip", np.array(3, np.int64)), init("ax01", np.array([0, 1], np.int64))])
    ref, got, s = both(m, {"seq": RNG.standard_normal((4, 5)).astype(np.float32), "acc0": np.zeros(1, np.float32)})
    check(ref, got, 1e-4)
    assert len(body_ops(s)) == 2


def test_optimized_model_with_bodies_loads_in_onnxruntime(tmp_path):
    """Constants copied into bodies get fresh names: the saved model is valid for onnxruntime."""
    m = _if_with_layer_norm(17)
    out = tmp_path / "opt.onnx"
    so = er.SessionOptions()
    so.optimized_model_filepath = str(out)
    x = np.abs(RNG.standard_normal((1, 16))).astype(np.float32)
    got = er.InferenceSession(m, so, providers=["CPUExecutionProvider"]).run(None, {"x": x})
    ref = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    check(ref, got, 1e-4)
    check(ort.InferenceSession(m, providers=["CPUExecutionProvider"]).run(None, {"x": x}), got, 1e-4)


@pytest.mark.parametrize("use_iter", ["none", "read", "returned"])
def test_loop_iteration_number_made_only_when_read(use_iter):
    """The Loop hands the body no iteration number where it reads none; where it is read or returned as a
    scan output (a fresh array each iteration), the answers stay onnxruntime's."""
    nodes = [helper.make_node("Add", ["a_in", "one"], ["a_out"]),
             helper.make_node("Less", ["a_out", "limit"], ["c_vec"]),
             helper.make_node("Squeeze", ["c_vec"], ["c_out"])]
    outs = [vi("c_out", TensorProto.BOOL, []), vi("a_out", F, [1])]
    if use_iter == "read":
        nodes[0] = helper.make_node("Cast", ["i"], ["i_f"], to=F)
        nodes.insert(1, helper.make_node("Add", ["a_in", "i_f"], ["a_out"]))
    elif use_iter == "returned":
        nodes.append(helper.make_node("Identity", ["i"], ["i_out"]))
        outs.append(vi("i_out", TensorProto.INT64, []))
    body = helper.make_graph(nodes, "b", [vi("i", TensorProto.INT64, []), vi("c_in", TensorProto.BOOL, []),
                                          vi("a_in", F, [1])], outs)
    graph_outs = [vi("a", F, [1])] + ([vi("iters", TensorProto.INT64, [None])] if use_iter == "returned" else [])
    m = model([helper.make_node("Loop", ["n", "c0", "a0"], ["a"] + (["iters"] if use_iter == "returned" else []),
                                body=body)],
              [vi("n", TensorProto.INT64, []), vi("c0", TensorProto.BOOL, []), vi("a0", F, [1])], graph_outs,
              [init("one", np.array([1.0], np.float32)), init("limit", np.array([40.0], np.float32))])
    for n in (0, 7, 100):
        feed = {"n": np.array(n, np.int64), "c0": np.array(True), "a0": np.zeros(1, np.float32)}
        ref, got, _ = both(m, feed)
        check(ref, got)


def _loop_over_encoder(trip_const: bool):
    """A decoder step as exporters write it: each iteration multiplies the encoder's output (a value of
    the main graph) by a weight, though that product is the same in every iteration."""
    body = helper.make_graph(
        [helper.make_node("MatMul", ["enc", "Wk"], ["keys"]),               # loop-invariant
         helper.make_node("MatMul", ["h_in", "keys"], ["scores"]),          # depends on the iteration
         helper.make_node("Tanh", ["scores"], ["h_out"]),
         helper.make_node("Identity", ["c_in"], ["c_out"])],
        "body", [vi("i", TensorProto.INT64, []), vi("c_in", TensorProto.BOOL, []), vi("h_in", F, [1, 6])],
        [vi("c_out", TensorProto.BOOL, []), vi("h_out", F, [1, 6]), vi("scores", F, [1, 6])])
    nodes = [helper.make_node("Relu", ["x"], ["enc"]),
             helper.make_node("Loop", ["trip" if trip_const else "n", "", "h0"], ["h", "all"], body=body)]
    inputs = [vi("x", F, [6, 5]), vi("h0", F, [1, 6])] + ([] if trip_const else [vi("n", TensorProto.INT64, [])])
    return model(nodes, inputs, [vi("h", F, [1, 6]), vi("all", F, [None, 1, 6])],
                 [init("Wk", RNG.standard_normal((5, 6)).astype(np.float32)), init("trip", np.array(4, np.int64))])


def test_loop_invariant_nodes_hoisted_where_the_loop_surely_runs():
    m = _loop_over_encoder(trip_const=True)
    feed = {"x": RNG.standard_normal((6, 5)).astype(np.float32), "h0": RNG.standard_normal((1, 6)).astype(np.float32)}
    ref, got, s = both(m, feed)
    check(ref, got)
    (ops,) = body_ops(s)
    assert ops.count("MatMul") == 1, ops      # enc @ Wk runs once, in front of the Loop
    assert "MatMul" in [n.op_type for p in s.get_provider_graph_assignment_info() for n in p.get_nodes()]


@pytest.mark.parametrize("n", [0, 3])
def test_loop_invariant_nodes_stay_where_the_trip_count_is_a_feed(n):
    """With a trip count known only at run time the body may never run: nothing is hoisted (a hoisted
    node could fail or cost time where onnxruntime runs nothing)."""
    m = _loop_over_encoder(trip_const=False)
    feed = {"x": RNG.standard_normal((6, 5)).astype(np.float32), "h0": RNG.standard_normal((1, 6)).astype(np.float32),
            "n": np.array(n, np.int64)}
    ref, got, s = both(m, feed)
    check(ref, got)
    (ops,) = body_ops(s)
    assert ops.count("MatMul") == 2, ops


@pytest.mark.parametrize("hand_back", ["unsqueeze_squeeze", "float_add_zero"])
def test_carried_value_handed_back_unchanged(hand_back):
    """A carried value the body hands back through Unsqueeze + Squeeze (paddle2onnx's way) is the same in
    every iteration, so what reads only it is hoisted; through a float x + 0 it is not (-0.0 becomes +0.0)."""
    back = [helper.make_node("Unsqueeze", ["e_in", "ax0"], ["e_u"]),
            helper.make_node("Squeeze", ["e_u", "ax0"], ["e_out"])] if hand_back == "unsqueeze_squeeze" else \
        [helper.make_node("Add", ["e_in", "zero"], ["e_out"])]
    body = helper.make_graph(
        [helper.make_node("MatMul", ["e_in", "Wk"], ["keys"]),
         helper.make_node("MatMul", ["h_in", "keys"], ["s"]),
         helper.make_node("Tanh", ["s"], ["h_out"]),
         helper.make_node("Identity", ["c_in"], ["c_out"]), *back],
        "body", [vi("i", TensorProto.INT64, []), vi("c_in", TensorProto.BOOL, []), vi("h_in", F, [1, 6]),
                 vi("e_in", F, [6, 5])],
        [vi("c_out", TensorProto.BOOL, []), vi("h_out", F, [1, 6]), vi("e_out", F, [6, 5])])
    m = model([helper.make_node("Relu", ["x"], ["enc"]),
               helper.make_node("Loop", ["trip", "", "h0", "enc"], ["h", "e_last"], body=body)],
              [vi("x", F, [6, 5]), vi("h0", F, [1, 6])], [vi("h", F, [1, 6]), vi("e_last", F, [6, 5])],
              [init("Wk", RNG.standard_normal((5, 6)).astype(np.float32)), init("trip", np.array(5, np.int64)),
               init("ax0", np.array([0], np.int64)), init("zero", np.array([0.0], np.float32))])
    x = RNG.standard_normal((6, 5)).astype(np.float32)
    ref, got, s = both(m, {"x": x, "h0": RNG.standard_normal((1, 6)).astype(np.float32)})
    check(ref, got)
    (ops,) = body_ops(s)
    assert ops.count("MatMul") == (1 if hand_back == "unsqueeze_squeeze" else 2), ops
