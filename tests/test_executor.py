"""The run side against onnxruntime: the executor's loop (plain, profiled, verbose-logged) over If / Loop /
Scan bodies gives onnxruntime's numbers, a failing step is named once even inside a Loop body, and feeds take
the short path or the full check with onnxruntime's results and messages."""
from __future__ import annotations

import json
import logging
import re

import numpy as np
import pytest

import engineroom as er

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is the oracle of these tests")
onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402 - after the importorskip

F, I64, B = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL


def vi(name, elem=F, shape=None):
    return helper.make_tensor_value_info(name, elem, shape)


def model(nodes, inputs, outputs, opset=17):
    m = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs),
                          opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(m)
    return m.SerializeToString()


def reference(m, feed):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(m, so, providers=["CPUExecutionProvider"]).run(None, feed)


def _control_flow_model():
    """A Loop that runs until its carried sum passes a limit (condition from the body), with a scan output
    and an If inside the body, then a Scan over the Loop's scan output."""
    then_b = helper.make_graph([helper.make_node("Mul", ["s_in", "two"], ["t_out"])], "then", [],
                               [vi("t_out", F, [3])])
    else_b = helper.make_graph([helper.make_node("Add", ["s_in", "x"], ["e_out"])], "else", [], [vi("e_out", F, [3])])
    body = helper.make_graph(
        [helper.make_node("Cast", ["i"], ["i_f"], to=F),
         helper.make_node("Less", ["i_f", "half"], ["small"]),
         helper.make_node("If", ["small"], ["s_next"], then_branch=then_b, else_branch=else_b),
         helper.make_node("ReduceSum", ["s_next"], ["total"], keepdims=0),
         helper.make_node("Less", ["total", "limit"], ["go"]),
         helper.make_node("Identity", ["s_next"], ["s_scan"])],
        "body", [vi("i", I64, []), vi("c_in", B, []), vi("s_in", F, [3])],
        [vi("go", B, []), vi("s_next", F, [3]), vi("s_scan", F, [3])])
    scan_body = helper.make_graph([helper.make_node("Add", ["acc_in", "row"], ["acc_out"]),
                                   helper.make_node("Identity", ["acc_out"], ["acc_scan"])],
                                  "scan_body", [vi("acc_in", F, [3]), vi("row", F, [3])],
                                  [vi("acc_out", F, [3]), vi("acc_scan", F, [3])])
    consts = [helper.make_node("Constant", [], [n], value=helper.make_tensor(n, F, [], [v]))
              for n, v in (("two", 2.0), ("half", 2.0), ("limit", 100.0))]
    return model(consts + [
        helper.make_node("Loop", ["trip", "", "s0"], ["s_final", "s_all"], body=body),
        helper.make_node("Scan", ["zero", "s_all"], ["acc", "acc_all"], body=scan_body, num_scan_inputs=1)],
        [vi("trip", I64, []), vi("s0", F, [3]), vi("x", F, [3]), vi("zero", F, [3])],
        [vi("s_final", F, [3]), vi("s_all", F, ["n", 3]), vi("acc", F, [3]), vi("acc_all", F, ["n", 3])])


CF_FEED = {"trip": np.array(50, np.int64), "s0": np.array([1.0, 2.0, 3.0], np.float32),
           "x": np.array([0.5, -1.0, 4.0], np.float32), "zero": np.zeros(3, np.float32)}


def _check(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(g, w, rtol=1e-6)


def test_control_flow_runs_plain_profiled_and_logged_give_onnxruntimes_numbers(tmp_path, caplog):
    m = _control_flow_model()
    want = reference(m, CF_FEED)
    assert 3 < want[1].shape[0] < 50     # the body's condition stops the Loop before its trip count
    _check(er.InferenceSession(m).run(None, CF_FEED), want)

    so = er.SessionOptions()
    so.enable_profiling = True
    so.profile_file_prefix = str(tmp_path / "prof")
    s = er.InferenceSession(m, so)
    for _ in range(2):
        _check(s.run(None, CF_FEED), want)
    events = json.loads(open(s.end_profiling()).read())
    ops = [e["args"]["op_name"] for e in events if e["cat"] == "Node"]
    assert ops.count("Loop") == ops.count("Scan") == 2 and ops.index("Loop") < ops.index("Scan")   # per run

    ro = er.RunOptions()
    ro.log_severity_level = 0
    with caplog.at_level(logging.DEBUG, logger="engineroom"):
        _check(er.InferenceSession(m).run(None, CF_FEED, ro), want)
    steps = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    # every step is logged, bodies' steps included, each after it ran: the Scan last
    assert any("(Loop)" in t for t in steps) and "(Scan)" in steps[-1] and any("(If)" in t for t in steps)


def _reshape_loop():
    body = helper.make_graph([helper.make_node("Reshape", ["v_in", "shape"], ["v_out"]),
                              helper.make_node("Identity", ["c_in"], ["c_out"])],
                             "body", [vi("i", I64, []), vi("c_in", B, []), vi("v_in", F, ["a"])],
                             [vi("c_out", B, []), vi("v_out", F, ["b", "c"])])
    return model([helper.make_node("Loop", ["trip", "", "v0"], ["v"], body=body, name="the_loop")],
                 [vi("trip", I64, []), vi("v0", F, ["a"]), vi("shape", I64, [2])], [vi("v", F, ["b", "c"])])


def test_a_failing_step_in_a_loop_body_is_named_once_and_the_session_runs_on():
    m = _reshape_loop()
    bad = {"trip": np.array(3, np.int64), "v0": np.ones(6, np.float32), "shape": np.array([4, 2], np.int64)}
    with pytest.raises(Exception, match="Reshape"):
        reference(m, bad)                       # onnxruntime refuses it too
    s = er.InferenceSession(m)
    with pytest.raises(er.RuntimeException) as err:
        s.run(None, bad)
    msg = str(err.value)
    assert msg.count("Non-zero status code returned while running") == 1 and "Reshape" in msg and "(4,2)" in msg
    good = {**bad, "shape": np.array([3, 2], np.int64), "v0": np.arange(6, dtype=np.float32)}
    _check(s.run(None, good), reference(m, good))


def _add_model(shape):
    return model([helper.make_node("Add", ["x", "y"], ["z"])], [vi("x", F, shape), vi("y", F, ["n", 4])],
                 [vi("z", F, ["n", 4])])


def test_feeds_short_path_and_full_check_agree_with_onnxruntime():
    m = _add_model([2, 4])
    s = er.InferenceSession(m)
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    y = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)
    _check(s.run(None, {"x": x, "y": y}), reference(m, {"x": x, "y": y}))            # short path
    _check(s.run(["z"], {"x": x.tolist(), "y": y}), reference(m, {"x": x, "y": y}))  # a list: full check
    _check(s.run(None, {"x": x[:, ::-1], "y": y}), reference(m, {"x": x[:, ::-1].copy(), "y": y}))  # a view
    for feed, kind, text in (
            ({"x": x[:1], "y": y}, er.InvalidArgument, "Got invalid dimensions for input: x"),
            ({"x": x.reshape(8), "y": y}, er.InvalidArgument, "Invalid rank for input: x"),
            ({"x": x.astype(np.float64), "y": y}, er.InvalidArgument, "Unexpected input data type for input 'x'"),
            ({"x": x}, er.InvalidArgument, "Required inputs (['y']) are missing"),
            ({"x": x, "y": y, "w": y}, er.InvalidArgument, "Invalid input name: w")):
        with pytest.raises(kind, match=re.escape(text)):
            s.run(None, feed)
        with pytest.raises(Exception):  # noqa: B017 - onnxruntime refuses each of them too (its kinds vary)
            reference(m, {k: np.asarray(v) for k, v in feed.items()})


def test_a_byte_swapped_feed_is_refused_naming_the_byte_order():
    """onnxruntime reads such an array's bytes in the machine's order (other numbers); engineroom refuses it."""
    m = _add_model([2, 4])
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    swapped = x.astype(x.dtype.newbyteorder("S"))
    assert not np.allclose(reference(m, {"x": swapped, "y": x})[0], x + x)
    with pytest.raises(er.InvalidArgument, match="other byte order"):
        er.InferenceSession(m).run(None, {"x": swapped, "y": x})


def _step_kinds_model():
    """Steps of every shape the loop distinguishes: one and two inputs (releasing none, one or two slots),
    more inputs (Concat of three, Where), several outputs (Split; TopK of one input), a step releasing
    more than two slots (Sum of four values last read there)."""
    return model([
        helper.make_node("Neg", ["x"], ["a"]),                              # 1 input, keeps x for later
        helper.make_node("Add", ["a", "x"], ["b"]),                         # 2 inputs
        helper.make_node("Mul", ["b", "b"], ["c"]),                         # 2 inputs, one slot twice
        helper.make_node("Split", ["c"], ["s0", "s1"], axis=1, num_outputs=2),   # several outputs
        helper.make_node("TopK", ["x", "k"], ["tv", "ti"], axis=1),          # one input read + a constant
        helper.make_node("Concat", ["s0", "s1", "tv"], ["cat"], axis=1),    # 3 inputs, 3 releases
        helper.make_node("Greater", ["cat", "zero"], ["pos"]),
        helper.make_node("Where", ["pos", "cat", "a6"], ["w"]),             # 3 inputs
        helper.make_node("Sum", ["w", "w2", "w3", "w4"], ["y"]),            # 4 inputs, 4 releases
        helper.make_node("Cast", ["ti"], ["ti_f"], to=F),
    ], [vi("x", F, [3, "n"]), vi("k", I64, [1]), vi("zero", F, []), vi("a6", F, [3, 6]), vi("w2", F, [3, 6]),
        vi("w3", F, [3, 6]), vi("w4", F, [3, 6])],
        [vi("y", F, [3, 6]), vi("ti_f", F, [3, "k"]), vi("s1", F, [3, "h"])], opset=18)


@pytest.mark.parametrize("level", [0, 99])
def test_every_step_shape_of_the_loop_gives_onnxruntimes_numbers(level):
    rng = np.random.default_rng(7)
    feed = {"x": rng.standard_normal((3, 4)).astype(np.float32), "k": np.array([2], np.int64),
            "zero": np.array(0.1, np.float32), **{n: rng.standard_normal((3, 6)).astype(np.float32)
                                                   for n in ("a6", "w2", "w3", "w4")}}
    m = _step_kinds_model()
    so = er.SessionOptions()
    so.graph_optimization_level = er.GraphOptimizationLevel(level) if level == 0 else \
        er.GraphOptimizationLevel.ORT_ENABLE_ALL
    s = er.InferenceSession(m, so)
    want = reference(m, feed)
    for _ in range(2):      # a second run sees no value the first one left behind
        _check(s.run(None, feed), want)


@pytest.mark.parametrize("bad_node", ["Concat", "TopK"])
def test_a_failing_step_of_many_inputs_or_outputs_is_named(bad_node):
    m = _step_kinds_model()
    s = er.InferenceSession(m)
    rng = np.random.default_rng(8)
    feed = {"x": rng.standard_normal((3, 4)).astype(np.float32), "k": np.array([2], np.int64),
            "zero": np.array(0.1, np.float32), **{n: rng.standard_normal((3, 6)).astype(np.float32)
                                                   for n in ("a6", "w2", "w3", "w4")}}
    if bad_node == "Concat":
        feed["k"] = np.array([3], np.int64)     # TopK's 3 columns make Concat's output 7 wide: Where fails
        expect = "Where"
    else:
        feed["k"] = np.array([5], np.int64)     # more than x's 4 columns: TopK (two outputs) fails
        expect = "TopK"
    with pytest.raises(Exception):
        reference(m, feed)
    with pytest.raises(er.RuntimeException, match=expect) as err:
        s.run(None, feed)
    assert str(err.value).count("Non-zero status code returned while running") == 1
