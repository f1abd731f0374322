"""The level-1 pass folding a Cast of a lossless Cast (``optimizer.cast_chains``): which type pairs it
counts as lossless (checked against NumPy's conversions at the types' extremes), the rewrites it makes
(and those it must not), and the numbers against onnxruntime."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import make_model, optimized_ops
from onnx import TensorProto, helper

import engineroom as er
from engineroom.optimizer.cast_chains import lossless

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is the oracle of these tests")
ir = pytest.importorskip("onnx_ir")

T = ir.DataType
NUMERIC = [T.BOOL, T.INT8, T.INT16, T.INT32, T.INT64, T.UINT8, T.UINT16, T.UINT32, T.UINT64, T.FLOAT16, T.FLOAT,
           T.DOUBLE]


def _extremes(t: ir.DataType) -> np.ndarray:
    dt = t.numpy()
    if dt == np.bool_:
        return np.array([False, True])
    if dt.kind in "iu":
        i = np.iinfo(dt)
        return np.array([i.min, i.max, i.min + 1, i.max - 1, 0, 1, 2 ** (i.bits // 2) + 1], dtype=dt)
    f = np.finfo(dt)
    return np.array([f.max, -f.max, f.tiny, f.smallest_subnormal, f.eps, 1 + f.eps, np.inf, -np.inf, 0.1, -3.7],
                    dtype=dt)


@pytest.mark.parametrize("a", NUMERIC, ids=str)
def test_lossless_pairs_keep_every_extreme_value(a):
    import warnings

    warnings.simplefilter("ignore")     # NumPy's overflow/invalid-cast warnings of the refused pairs
    x = _extremes(a)
    for b in NUMERIC:
        with np.errstate(all="ignore"):
            got = x.astype(b.numpy()).tolist()
        exact = got == x.tolist()       # the same numbers (Python's exact comparison of ints and floats)
        if lossless(a, b):
            assert exact, (a, b, x, got)
        elif a != T.BOOL and b != T.BOOL:
            # the table is not needlessly strict: a pair it refuses loses one of these values
            assert not exact, (a, b)


def _chain(src, mid, to, extra_reader=False, mid_is_output=False):
    nodes = [helper.make_node("Cast", ["x"], ["m"], to=mid), helper.make_node("Cast", ["m"], ["y"], to=to)]
    outputs = [helper.make_tensor_value_info("y", to, None)]
    if extra_reader:
        nodes.append(helper.make_node("Identity", ["m"], ["m2"]))
        outputs.append(helper.make_tensor_value_info("m2", mid, None))
    if mid_is_output:
        outputs.append(helper.make_tensor_value_info("m", mid, None))
    return make_model(nodes, [helper.make_tensor_value_info("x", src, ["n"])], outputs).SerializeToString()


FEEDS = {
    TensorProto.BOOL: np.array([True, False, True]),
    TensorProto.INT32: np.array([-(2 ** 31), 2 ** 31 - 1, 0, -5, 77], np.int32),
    TensorProto.INT64: np.array([-(2 ** 40), 2 ** 40 + 3, 0, -5, 2 ** 31 + 7], np.int64),
    TensorProto.UINT8: np.array([0, 255, 17], np.uint8),
    TensorProto.FLOAT: np.array([1.5, -2.75, 1e30, -0.0, 3.3e-39, 123456.78], np.float32),
}


@pytest.mark.parametrize("src,mid,to,ops", [
    (TensorProto.BOOL, TensorProto.INT64, TensorProto.FLOAT, ["Cast"]),        # bool -> int64 -> float: one Cast
    # widened and back: a Cast to x's own type, kept only as a graph input cannot be a graph output
    (TensorProto.INT32, TensorProto.INT64, TensorProto.INT32, ["Cast"]),
    (TensorProto.UINT8, TensorProto.INT16, TensorProto.FLOAT, ["Cast"]),
    (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.INT32, ["Cast"]),       # float -> double exact, then int
    (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, ["Cast"]),     # one rounding either way
    (TensorProto.INT64, TensorProto.INT32, TensorProto.INT64, ["Cast", "Cast"]),   # narrowing: kept
    (TensorProto.FLOAT, TensorProto.INT32, TensorProto.FLOAT, ["Cast", "Cast"]),   # truncation: kept
    (TensorProto.INT64, TensorProto.DOUBLE, TensorProto.INT64, ["Cast", "Cast"]),  # 2**40 + 3 fits, 2**60 not
    (TensorProto.FLOAT, TensorProto.BOOL, TensorProto.FLOAT, ["Cast", "Cast"]),
])
def test_cast_chain_folds_where_the_first_cast_loses_nothing(tmp_path, src, mid, to, ops):
    m = _chain(src, mid, to)
    feed = {"x": FEEDS[src]}
    ref = ort.InferenceSession(m, providers=["CPUExecutionProvider"]).run(None, feed)
    s, after = optimized_ops(m, er.GraphOptimizationLevel.ORT_ENABLE_BASIC, tmp_path)
    assert [op for _, op in after] == ops
    got = s.run(None, feed)
    finite = np.isfinite(feed["x"].astype(np.float64))
    for g, r in zip(got, ref):
        assert g.dtype == r.dtype and g.shape == r.shape
        if to in (TensorProto.INT32, TensorProto.INT64) and src == TensorProto.FLOAT:
            big = np.abs(feed["x"].astype(np.float64)) < 2 ** 31      # out of range: undefined in ONNX
            np.testing.assert_array_equal(g[big & finite], r[big & finite])
        else:
            np.testing.assert_array_equal(g, r)


@pytest.mark.parametrize("extra_reader,mid_is_output", [(True, False), (False, True)])
def test_a_first_cast_read_elsewhere_stays(tmp_path, extra_reader, mid_is_output):
    m = _chain(TensorProto.BOOL, TensorProto.INT64, TensorProto.FLOAT, extra_reader, mid_is_output)
    feed = {"x": FEEDS[TensorProto.BOOL]}
    ref = ort.InferenceSession(m, providers=["CPUExecutionProvider"]).run(None, feed)
    s, after = optimized_ops(m, er.GraphOptimizationLevel.ORT_ENABLE_BASIC, tmp_path)
    assert [op for _, op in after].count("Cast") == 2
    for g, r in zip(s.run(None, feed), ref):
        assert g.dtype == r.dtype
        np.testing.assert_array_equal(g, r)


def test_cast_chain_in_an_if_branch(tmp_path):
    """The pass runs in If/Loop/Scan bodies too."""
    then_b = helper.make_graph([helper.make_node("Cast", ["x"], ["m"], to=TensorProto.INT64),
                                helper.make_node("Cast", ["m"], ["t"], to=TensorProto.FLOAT)], "then", [],
                               [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)])
    else_b = helper.make_graph([helper.make_node("Cast", ["x"], ["e"], to=TensorProto.FLOAT)], "else", [],
                               [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)])
    m = make_model([helper.make_node("If", ["c"], ["y"], then_branch=then_b, else_branch=else_b)],
                   [helper.make_tensor_value_info("x", TensorProto.BOOL, [3]),
                    helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]).SerializeToString()
    import onnx

    so = er.SessionOptions()
    so.graph_optimization_level = er.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = str(tmp_path / "if.onnx")
    s = er.InferenceSession(m, so)
    then_after = next(a.g for a in onnx.load(so.optimized_model_filepath).graph.node[0].attribute
                      if a.name == "then_branch")
    assert [n.op_type for n in then_after.node] == ["Cast"]
    ref = ort.InferenceSession(m, providers=["CPUExecutionProvider"])
    for c in (True, False):
        feed = {"x": FEEDS[TensorProto.BOOL], "c": np.array(c)}
        np.testing.assert_array_equal(s.run(None, feed)[0], ref.run(None, feed)[0])
