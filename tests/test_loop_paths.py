"""A greedy decoder step in a Loop body (issue 16, slanet_table's shape of loop): the previous token one-hot
encoded (the single-index OneHot path), a matmul, ArgMax for the next token, the step's row scattered
into a carried buffer; outputs against onnxruntime. Also the single-index OneHot on its own: negative,
out-of-range and non-int64 indices, on and off values of each kind."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import make_model

import engineroom as er

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is the oracle of these tests")
onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402 - after the importorskip

RNG = np.random.default_rng(1616)
F, I64 = TensorProto.FLOAT, TensorProto.INT64


def vi(name, elem=F, shape=None):
    return helper.make_tensor_value_info(name, elem, shape)


def both(m, feed):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    ref = ort.InferenceSession(m, so, providers=["CPUExecutionProvider"]).run(None, feed)
    got = er.InferenceSession(m, providers=["CPUExecutionProvider"]).run(None, feed)
    return ref, got


def _decoder(steps: int, vocab: int = 12) -> bytes:
    c = helper.make_tensor
    body = helper.make_graph(
        [helper.make_node("OneHot", ["tok", "depth", "onoff"], ["oh"], axis=-1),        # [1, vocab]
         helper.make_node("MatMul", ["oh", "W"], ["logits"]),                          # [1, vocab]
         helper.make_node("ArgMax", ["logits"], ["nt"], axis=1, keepdims=0),            # [1]
         helper.make_node("Unsqueeze", ["i", "ax0"], ["i1"]),                           # [1]
         helper.make_node("Reshape", ["i1", "shp3"], ["i3"]),                           # [1, 1, 1]
         helper.make_node("Expand", ["i3", "eshape"], ["idx"]),                         # [1, 1, vocab]
         helper.make_node("Unsqueeze", ["logits", "ax0"], ["row"]),                     # [1, 1, vocab]
         helper.make_node("ScatterElements", ["buf", "idx", "row"], ["buf_out"], axis=1),
         helper.make_node("Identity", ["c"], ["c_out"])],
        "step",
        [vi("i", I64, []), vi("c", TensorProto.BOOL, []), vi("tok", I64, [1]), vi("buf", F, [1, steps, vocab])],
        [vi("c_out", TensorProto.BOOL, []), vi("nt", I64, [1]), vi("buf_out", F, [1, steps, vocab]),
         vi("logits", F, [1, vocab])],
        [c("depth", I64, [], [vocab]), c("onoff", F, [2], [0.0, 1.0]), c("ax0", I64, [1], [0]),
         c("shp3", I64, [3], [1, 1, 1]), c("eshape", I64, [3], [1, 1, vocab])])
    g = helper.make_graph(
        [helper.make_node("Loop", ["M", "", "tok0", "buf0"], ["tok_f", "buf_f", "all_logits"], body=body)],
        "dec", [vi("tok0", I64, [1]), vi("buf0", F, [1, steps, vocab])],
        [vi("tok_f", I64, [1]), vi("buf_f", F, [1, steps, vocab]), vi("all_logits", F, [steps, 1, vocab])],
        [numpy_helper.from_array(np.array(steps, np.int64), "M"),
         numpy_helper.from_array(RNG.standard_normal((vocab, vocab)).astype(np.float32), "W")])
    return make_model(g.node, list(g.input), list(g.output), list(g.initializer), 17, check=True).SerializeToString()


@pytest.mark.parametrize("steps", [1, 7, 40])
def test_decoder_loop_matches_onnxruntime(steps):
    m = _decoder(steps)
    buf0 = RNG.standard_normal((1, steps, 12)).astype(np.float32)
    feed = {"tok0": np.array([3], np.int64), "buf0": buf0}
    ref, got = both(m, feed)
    for r, g in zip(ref, got):
        assert g.dtype == r.dtype and g.shape == r.shape
        np.testing.assert_allclose(g, r, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(feed["buf0"], buf0)   # the carried buffer's first value is the caller's: untouched


def _one_hot(idx_type, val_type, axis=-1, rank=1):
    shape = [1] * rank
    return make_model(
        [helper.make_node("OneHot", ["x", "d", "v"], ["y"], axis=axis)],
        [vi("x", idx_type, shape), vi("d", I64, [1]), vi("v", val_type, [2])], [vi("y", val_type, [f"o{j}" for j in range(rank + 1)])],
        (), 17, check=True).SerializeToString()


@pytest.mark.parametrize("k", [0, 4, 9, -1, -10, 10, -11, 1000])
# the (index, value) types onnxruntime's OneHot takes with an int64 depth
@pytest.mark.parametrize("idx_type,val_type", [(I64, F), (F, I64), (I64, I64),
                                               (I64, TensorProto.STRING)])
def test_single_index_one_hot(k, idx_type, val_type):
    from onnx.helper import tensor_dtype_to_np_dtype as npd

    m = _one_hot(idx_type, val_type)
    feed = {"x": np.array([k], npd(idx_type)), "d": np.array([10], np.int64),
            "v": np.array(["off", "on"] if val_type == TensorProto.STRING else [-2, 5], npd(val_type))}
    ref, got = both(m, feed)
    assert got[0].dtype == ref[0].dtype and got[0].shape == ref[0].shape
    np.testing.assert_array_equal(got[0], ref[0])


@pytest.mark.parametrize("axis,rank", [(-1, 2), (0, 1), (1, 2), (-1, 3)])
def test_single_index_one_hot_axes_and_ranks(axis, rank):
    m = _one_hot(I64, F, axis=axis, rank=rank)
    feed = {"x": np.full([1] * rank, -3, np.int64), "d": np.array([6], np.int64),
            "v": np.array([0.5, 7.0], np.float32)}
    ref, got = both(m, feed)
    assert got[0].shape == ref[0].shape
    np.testing.assert_array_equal(got[0], ref[0])


@pytest.mark.parametrize("opset,axis,shape", [(13, -1, [1, 256, 1]), (13, 1, [2, 1, 5]), (11, 1, [3, 1]), (11, 2, [1, 256, 1]),
                                             (11, -1, [1, 64, 1]), (11, 1, [3, 1, 1])])
def test_softmax_over_rows_of_one(opset, axis, shape):
    """Softmax along an axis of length 1 (a Loop body's attention pooling): 1, and NaN where x is inf/NaN."""
    m = make_model([helper.make_node("Softmax", ["x"], ["y"], axis=axis)], [vi("x", F, shape)],
                   [vi("y", F, shape)], (), opset, check=True).SerializeToString()
    x = RNG.standard_normal(shape).astype(np.float32)
    x.reshape(-1)[:3] = [np.inf, -np.inf, np.nan]
    ref, got = both(m, {"x": x})
    assert got[0].dtype == ref[0].dtype and got[0].shape == ref[0].shape
    np.testing.assert_array_equal(got[0], ref[0])


@pytest.mark.parametrize("sa,sb", [([1, 1, 256], [1, 256, 96]), ([3, 1, 4, 5], [2, 5, 6]), ([7, 9], [9, 2]),
                                   ([2, 64, 64], [64, 80])])
def test_small_and_batched_matmul(sa, sb):
    """MatMul products below the worker pool's threshold (straight to NumPy) and above it, broadcast batches."""
    m = make_model([helper.make_node("MatMul", ["a", "b"], ["y"])], [vi("a", F, sa), vi("b", F, sb)],
                   [vi("y", F, None)], (), 17, check=False).SerializeToString()
    feed = {"a": RNG.standard_normal(sa).astype(np.float32), "b": RNG.standard_normal(sb).astype(np.float32)}
    ref, got = both(m, feed)
    assert got[0].shape == ref[0].shape
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("axis,dshape,ishape", [(1, [1, 9, 5], [1, 1, 5]), (0, [6, 4], [2, 4]), (-1, [3, 7], [3, 2]),
                                                (1, [2, 70, 3], [2, 40, 3])])
@pytest.mark.parametrize("reduction", ["none", "add"])
def test_scatter_elements_small_and_repeated(axis, dshape, ishape, reduction):
    """ScatterElements run twice per session (the cached index grid) with negative indices; out-of-range
    indices raise, the caller's data stays as it was."""
    m = make_model([helper.make_node("ScatterElements", ["x", "i", "u"], ["y"], axis=axis, reduction=reduction)],
                   [vi("x", F, dshape), vi("i", I64, ishape), vi("u", F, ishape)], [vi("y", F, dshape)],
                   (), 18, check=True).SerializeToString()
    s = er.InferenceSession(m, providers=["CPUExecutionProvider"])
    ref_s = ort.InferenceSession(m, providers=["CPUExecutionProvider"])
    n = dshape[axis]
    for _ in range(2):
        idx = RNG.integers(-n, n, size=ishape).astype(np.int64)
        if reduction == "none":    # distinct targets per line: the result of duplicates is not specified
            idx = np.broadcast_to(np.moveaxis(np.arange(-ishape[axis], 0).reshape([-1] + [1] * (len(ishape) - 1)),
                                              0, axis), ishape).copy()
        feed = {"x": RNG.standard_normal(dshape).astype(np.float32), "i": idx,
                "u": RNG.standard_normal(ishape).astype(np.float32)}
        x0 = feed["x"].copy()
        np.testing.assert_allclose(s.run(None, feed)[0], ref_s.run(None, feed)[0], rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(feed["x"], x0)
    bad = dict(feed, i=np.full(ishape, n, np.int64))
    with pytest.raises(Exception, match="out of range"):
        s.run(None, bad)


@pytest.mark.parametrize("cshape,const_c", [([6], True), ([1, 6], True), ([4, 6], True), ([6], False), (None, True),
                                            ([1], True)])
@pytest.mark.parametrize("alpha,beta", [(1.0, 1.0), (0.5, 2.0), (1.0, 0.0)])
def test_gemm_constant_weight_paths(cshape, const_c, alpha, beta):
    """Gemm with a prepared float32 weight: a constant row bias, a full constant C, a C fed at run time,
    no C, alpha/beta folded."""
    w = RNG.standard_normal((5, 6)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w")]
    ins, names = [vi("a", F, [4, 5])], ["a", "w"]
    feed = {"a": RNG.standard_normal((4, 5)).astype(np.float32)}
    if cshape is not None:
        c = RNG.standard_normal(cshape).astype(np.float32)
        names.append("c")
        if const_c:
            inits.append(numpy_helper.from_array(c, "c"))
        else:
            ins.append(vi("c", F, cshape))
            feed["c"] = c
    m = make_model([helper.make_node("Gemm", names, ["y"], alpha=alpha, beta=beta)], ins, [vi("y", F, [4, 6])],
                   inits, 17, check=True).SerializeToString()
    ref, got = both(m, feed)
    assert got[0].dtype == ref[0].dtype and got[0].shape == ref[0].shape
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-5, atol=1e-5)


def _settling_loop(hand_back: str) -> bytes:
    """A Loop fed its trip count and condition at run time (so nothing is hoisted in front of it), whose
    body projects a carried feature map by an outer weight in every iteration (slanet_table's decoder):
    ``hand_back`` says how the body returns the features: "add0" through Unsqueeze, + 0.0, Squeeze
    (paddle2onnx's way: -0.0 becomes +0.0 in the first iteration, then the bits settle), "scale" times 1.5
    (never settles). A counter, a state and scan outputs (the projection among them) change around it."""
    c = helper.make_tensor
    back = ([helper.make_node("Unsqueeze", ["feat", "ax0"], ["fu"]), helper.make_node("Add", ["fu", "zero"], ["fa"]),
             helper.make_node("Squeeze", ["fa", "ax0"], ["feat_out"])] if hand_back == "add0" else
            [helper.make_node("Mul", ["feat", "k15"], ["feat_out"])])
    body = helper.make_graph(
        [helper.make_node("MatMul", ["feat", "W"], ["proj"]),                          # [4, 4], invariant once settled
         helper.make_node("MatMul", ["h", "proj"], ["hp"]),
         helper.make_node("Cast", ["cnt", ], ["cf"], to=F),
         helper.make_node("Add", ["hp", "cf"], ["hs"]),
         helper.make_node("Tanh", ["hs"], ["h_out"]),
         helper.make_node("Add", ["cnt", "one"], ["cnt_out"]),
         helper.make_node("Identity", ["c"], ["c_out"]), helper.make_node("Identity", ["h_out"], ["h_scan"]), *back],
        "body",
        [vi("i", I64, []), vi("c", TensorProto.BOOL, []), vi("h", F, [1, 4]), vi("feat", F, [4, 6]),
         vi("cnt", I64, [])],
        [vi("c_out", TensorProto.BOOL, []), vi("h_out", F, [1, 4]), vi("feat_out", F, [4, 6]), vi("cnt_out", I64, []),
         vi("proj", F, [4, 4]), vi("h_scan", F, [1, 4])],
        [c("ax0", I64, [1], [0]), c("zero", F, [1], [0.0]), c("k15", F, [], [1.5]), c("one", I64, [], [1])])
    g = helper.make_graph(
        [helper.make_node("Loop", ["M", "cond", "h0", "feat0", "cnt0"], ["h_f", "feat_f", "cnt_f", "projs", "hs"],
                          body=body)],
        "g", [vi("M", I64, []), vi("cond", TensorProto.BOOL, []), vi("h0", F, [1, 4]), vi("feat0", F, [4, 6]),
              vi("cnt0", I64, [])],
        [vi("h_f", F, [1, 4]), vi("feat_f", F, [4, 6]), vi("cnt_f", I64, []), vi("projs", F, ["T", 4, 4]),
         vi("hs", F, ["T", 1, 4])],
        [numpy_helper.from_array((RNG.standard_normal((6, 4)) * 0.3).astype(np.float32), "W")])
    return make_model(g.node, list(g.input), list(g.output), list(g.initializer), 17, check=True).SerializeToString()


@pytest.mark.parametrize("hand_back", ["add0", "scale"])
@pytest.mark.parametrize("trips", [0, 1, 2, 3, 9])
def test_loop_settled_carried_values_match_onnxruntime(monkeypatch, hand_back, trips):
    """The body's steps that only read settled carried values run in the first iterations, then the rest of
    the body alone (``Subgraph.loop_split``): the same outputs as onnxruntime, signs of zeros included."""
    from engineroom import executor

    bound = []
    bind = executor.LoopSplit.bind
    monkeypatch.setattr(executor.LoopSplit, "bind", lambda self, values: bound.append(self) or bind(self, values))
    feat = RNG.standard_normal((4, 6)).astype(np.float32)
    feat[0, :3] = -0.0                       # turned +0.0 by the first iteration's + 0.0: settles one later
    feat[1, 2] = 0.0
    feed = {"M": np.array(trips, np.int64), "cond": np.array(True),
            "h0": RNG.standard_normal((1, 4)).astype(np.float32), "feat0": feat, "cnt0": np.array(5, np.int64)}
    m = _settling_loop(hand_back)
    ref, got = both(m, feed)
    for r, g in zip(ref, got):
        assert r.shape == g.shape and r.dtype == g.dtype
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-6)
    # the split serves loops of more than two iterations where the features settle: after the first
    # iteration for "add0" (its -0.0 became +0.0 there), never for "scale"
    assert bool(bound) == (trips > 2 and hand_back == "add0")
    # and changes no bit (signs of zeros included) against the same engine running every step each time
    monkeypatch.setattr(executor.Subgraph, "loop_split", lambda self, n, carried: None)
    plain = er.InferenceSession(m, providers=["CPUExecutionProvider"]).run(None, feed)
    for p, g in zip(plain, got):
        assert p.dtype == g.dtype and p.tobytes() == g.tobytes()
