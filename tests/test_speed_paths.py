"""The CPU provider's fast paths for real-world models (issue 16) against onnxruntime: 1-D and wide-stride
convolutions, integer GEMMs (MatMulInteger, ConvInteger, QLinearMatMul, QLinearConv) with prepared
weights, fp16 graphs computed in float32 inside, and the recurrent layers' compiled recurrence. Kernels
with a compiled loop are checked on both paths (``jit_paths``)."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import make_model
from conftest import run_both as both
from conftest import tensor_info as vi
from jit_paths import JIT_PATHS, choose_path

import engineroom as er

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is the oracle of these tests")
onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402 - after the importorskip

RNG = np.random.default_rng(16)


def model(nodes, inputs, outputs, inits=(), opset=21):
    return make_model(nodes, inputs, outputs, inits, opset).SerializeToString()


def rel_err(ref, got):
    ref, got = np.asarray(ref, np.float64), np.asarray(got, np.float64)
    return np.abs(ref - got).max() / max(np.abs(ref).max(), 1e-30)


@pytest.fixture(params=JIT_PATHS)
def conv_path(request, monkeypatch):
    return choose_path(request, monkeypatch, "conv")


# ---------------------------------------------------------------------------------------------
# 1-D and wide-stride convolutions


@pytest.mark.parametrize("C,L,M,K,stride,group,dil,pads", [
    (1, 16000, 257, 512, 160, 1, 1, (0, 0)),      # an STFT as a conv (openwakeword's mel front end)
    (1, 4000, 64, 256, 128, 1, 1, (128, 128)),    # the same, padded
    (3, 1000, 16, 7, 3, 1, 2, (2, 1)),            # strided and dilated
    (8, 300, 16, 5, 1, 2, 1, (2, 2)),             # grouped
    (16, 128, 32, 1, 1, 1, 1, (0, 0)),            # pointwise
])
def test_conv1d(conv_path, C, L, M, K, stride, group, dil, pads):
    w = RNG.standard_normal((M, C // group, K)).astype(np.float32)
    b = RNG.standard_normal(M).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], strides=[stride], dilations=[dil], group=group,
                            pads=list(pads))
    m = model([node], [vi("x", TensorProto.FLOAT, [2, C, L])], [vi("y", TensorProto.FLOAT, None)],
              [("w", w), ("b", b)])
    x = RNG.standard_normal((2, C, L)).astype(np.float32)
    ref, got = both(m, {"x": x})
    assert got[0].shape == ref[0].shape and got[0].dtype == np.float32
    assert rel_err(ref[0], got[0]) < 1e-5
    if K > 1:
        conv_path.expect("im2col2d")


@pytest.mark.parametrize("C,L,K,stride,pads", [(128, 128, 9, 1, (4, 4)), (32, 301, 5, 2, (2, 2)),
                                               (16, 50, 3, 1, (0, 0))])
def test_conv1d_depthwise(conv_path, C, L, K, stride, pads):
    w = RNG.standard_normal((C, 1, K)).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], strides=[stride], group=C, pads=list(pads))
    m = model([node], [vi("x", TensorProto.FLOAT, [1, C, L])], [vi("y", TensorProto.FLOAT, None)], [("w", w)])
    x = RNG.standard_normal((1, C, L)).astype(np.float32)
    ref, got = both(m, {"x": x})
    assert rel_err(ref[0], got[0]) < 1e-5
    conv_path.expect("depthwise2d")


def test_conv1d_fused_relu_residual(conv_path):
    """Conv + Add + Relu fused (FusedConv with a residual) on a 1-D conv."""
    w = RNG.standard_normal((24, 24, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1]), helper.make_node("Add", ["c", "x"], ["s"]),
             helper.make_node("Relu", ["s"], ["y"])]
    m = model(nodes, [vi("x", TensorProto.FLOAT, [2, 24, 70])], [vi("y", TensorProto.FLOAT, None)], [("w", w)])
    x = RNG.standard_normal((2, 24, 70)).astype(np.float32)
    ref, got = both(m, {"x": x})
    assert rel_err(ref[0], got[0]) < 1e-5


@pytest.mark.parametrize("k,s", [(16, 16), (8, 6)])
def test_conv2d_wide_stride(conv_path, k, s):
    """A patch embedding (kernel = stride) and an overlapping wide stride: many stride phases."""
    w = RNG.standard_normal((32, 3, k, k)).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], strides=[s, s])
    m = model([node], [vi("x", TensorProto.FLOAT, [1, 3, 64, 80])], [vi("y", TensorProto.FLOAT, None)], [("w", w)])
    x = RNG.standard_normal((1, 3, 64, 80)).astype(np.float32)
    ref, got = both(m, {"x": x})
    assert rel_err(ref[0], got[0]) < 1e-5
    conv_path.expect("im2col2d", k != s)      # kernel = stride: one transposing copy of the input instead


# ---------------------------------------------------------------------------------------------
# integer GEMMs: exact on float BLAS (float32 where the sums fit, chunked / split where they do not)


def _u8(shape):
    return RNG.integers(0, 256, shape).astype(np.uint8)


def _i8(shape):
    return RNG.integers(-128, 128, shape).astype(np.int8)


@pytest.mark.parametrize("K", [64, 512, 1536, 4100])     # one float32 GEMM; 3 and 8 chunks of K
@pytest.mark.parametrize("weights", ["int8", "uint8_zp", "uint8_percol_zp"])
@pytest.mark.parametrize("const_b", [True, False])
def test_matmul_integer(K, weights, const_b):
    a = _u8((2, 24, K))
    if weights == "int8":
        b, bz = _i8((K, 40)), np.int8(0)
    elif weights == "uint8_zp":
        b, bz = _u8((K, 40)), np.uint8(131)
    else:
        b, bz = _u8((K, 40)), RNG.integers(0, 256, 40).astype(np.uint8)
    ins = [vi("a", TensorProto.UINT8, list(a.shape)), vi("az", TensorProto.UINT8, [])]
    inits = [("bz", np.asarray(bz))]
    feed = {"a": a, "az": np.asarray(117, np.uint8)}
    if const_b:
        inits.append(("b", b))
    else:
        ins.append(vi("b", onnx.helper.np_dtype_to_tensor_dtype(b.dtype), list(b.shape)))
        feed["b"] = b
    node = helper.make_node("MatMulInteger", ["a", "b", "az", "bz"], ["y"])
    m = model([node], ins, [vi("y", TensorProto.INT32, None)], inits)
    ref, got = both(m, feed)
    assert got[0].dtype == np.int32
    np.testing.assert_array_equal(got[0], ref[0])


def test_intgemm_float32_bound():
    """Right at the bound: 255 * 128 * K products summed in float32 must still be exact."""
    from engineroom.providers.cpu import intgemm

    K = intgemm.chunk_size(255, 128)
    a = np.full((3, K), 255.0, np.float32)
    b = np.full((K, 2), -128.0)
    m = intgemm.IntMatrix(b)
    assert m.f.dtype == np.float32 and m.chunk == K
    np.testing.assert_array_equal(m.matmul(a), np.full((3, 2), -255.0 * 128 * K))
    a2 = np.full((3, 3 * K + 5), 255.0, np.float32)           # chunked: 4 float32 GEMMs
    m2 = intgemm.IntMatrix(np.full((3 * K + 5, 2), -128.0))
    np.testing.assert_array_equal(m2.matmul(a2), np.full((3, 2), -255.0 * 128 * (3 * K + 5)))


@pytest.mark.parametrize("const_b", [True, False])
@pytest.mark.parametrize("K", [96, 1100])
def test_qlinear_matmul(const_b, K):
    a, b = _u8((3, 20, K)), _i8((K, 33))
    sa, za, sb, zb, sy, zy = np.float32(0.02), np.uint8(120), np.float32(0.003), np.int8(0), np.float32(0.4), \
        np.uint8(128)
    names = ["a", "sa", "za", "b", "sb", "zb", "sy", "zy"]
    inits = [("sa", np.asarray(sa)), ("za", np.asarray(za)), ("sb", np.asarray(sb)), ("zb", np.asarray(zb)),
             ("sy", np.asarray(sy)), ("zy", np.asarray(zy))]
    ins = [vi("a", TensorProto.UINT8, list(a.shape))]
    feed = {"a": a}
    if const_b:
        inits.append(("b", b))
    else:
        ins.append(vi("b", TensorProto.INT8, list(b.shape)))
        feed["b"] = b
    m = model([helper.make_node("QLinearMatMul", names, ["y"])], ins, [vi("y", TensorProto.UINT8, None)], inits)
    ref, got = both(m, feed)
    assert got[0].dtype == np.uint8
    np.testing.assert_array_equal(got[0], ref[0])


@pytest.mark.parametrize("C,k,group", [(8, 3, 1),        # 255*255*72: one float32 GEMM
                                       (64, 3, 1),       # 255*255*576: weight split in two
                                       (600, 3, 1),      # K = 5400: float64
                                       (16, 3, 16),      # depthwise
                                       (32, 1, 2)])      # grouped 1x1
def test_conv_integer(conv_path, C, k, group):
    x, w = _u8((1, C, 12, 11)), _u8((32, C // group, k, k))
    node = helper.make_node("ConvInteger", ["x", "w", "xz", "wz"], ["y"], pads=[k // 2] * 4, group=group)
    m = model([node], [vi("x", TensorProto.UINT8, list(x.shape))], [vi("y", TensorProto.INT32, None)],
              [("w", w), ("xz", np.asarray(np.uint8(121))), ("wz", np.asarray(np.uint8(133)))])
    ref, got = both(m, {"x": x})
    assert got[0].dtype == np.int32
    np.testing.assert_array_equal(got[0], ref[0])


@pytest.mark.parametrize("C,per_channel,bias", [(16, False, True), (64, True, True), (64, True, False)])
def test_qlinear_conv(conv_path, C, per_channel, bias):
    M = 24
    x, w = _u8((2, C, 10, 9)), _i8((M, C, 3, 3))
    ws = (RNG.uniform(0.001, 0.01, M) if per_channel else np.asarray(0.004)).astype(np.float32)
    wz = np.zeros(M if per_channel else (), np.int8)
    names = ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"] + (["b"] if bias else [])
    inits = [("xs", np.asarray(np.float32(0.05))), ("xz", np.asarray(np.uint8(110))), ("w", w), ("ws", ws),
             ("wz", wz), ("ys", np.asarray(np.float32(0.9))), ("yz", np.asarray(np.uint8(125)))]
    if bias:
        inits.append(("b", RNG.integers(-20000, 20000, M).astype(np.int32)))
    node = helper.make_node("QLinearConv", names, ["y"], pads=[1, 1, 1, 1])
    m = model([node], [vi("x", TensorProto.UINT8, list(x.shape))], [vi("y", TensorProto.UINT8, None)], inits)
    ref, got = both(m, {"x": x})
    np.testing.assert_array_equal(got[0], ref[0])


@pytest.mark.parametrize("C,dtype,split", [(8, np.float32, False), (64, np.float32, True), (600, np.float64, False)])
def test_int_conv_plan_choice(C, dtype, split):
    """The exact conv's arithmetic: float32 as is, float32 with the weight split in two, float64."""
    from engineroom.providers.cpu.conv import _IntConvPlan

    p = _IntConvPlan(np, {"pads": [1, 1, 1, 1]}, _u8((32, C, 3, 3)), np.uint8(133), {}, True)
    assert (p.dtype, p.split) == (np.dtype(dtype), split)


# ---------------------------------------------------------------------------------------------
# float16 graphs: computed in float32 inside, casts at the region's edges (level >= 2)


def _f16_model():
    """x (fp16) -> Conv -> HardSwish -> Add(w-sharing branch) -> outputs: y (fp16), its ArgMax, and a
    Less against a float16 constant that a node outside the region (Cast to int) also reads."""
    C = 8
    w = (RNG.standard_normal((C, C, 3, 3)) * 0.3).astype(np.float16)
    k = (RNG.standard_normal((1, C, 1, 1))).astype(np.float16)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("HardSwish", ["c"], ["h"]),
             helper.make_node("Mul", ["h", "k"], ["m"]),
             helper.make_node("Add", ["m", "x"], ["y"]),
             helper.make_node("ArgMax", ["y"], ["am"], axis=1),
             helper.make_node("Less", ["h", "k"], ["lt"]),
             helper.make_node("Cast", ["k"], ["ki"], to=TensorProto.INT32),
             helper.make_node("ReduceMean", ["y"], ["r"], axes=[2, 3], keepdims=0)]
    outs = [vi("y", TensorProto.FLOAT16, None), vi("am", TensorProto.INT64, None),
            vi("lt", TensorProto.BOOL, None), vi("ki", TensorProto.INT32, None), vi("r", TensorProto.FLOAT16, None)]
    return model(nodes, [vi("x", TensorProto.FLOAT16, [1, C, 12, 12])], outs, [("w", w), ("k", k)], opset=17)


def test_float16_region_against_onnxruntime(tmp_path):
    m = _f16_model()
    x = RNG.standard_normal((1, 8, 12, 12)).astype(np.float16)
    so = er.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ref, got = both(m, {"x": x}, sess_options=so)
    for r, g in zip(ref, got):
        assert g.dtype == r.dtype and g.shape == r.shape
    # float32 inside, rounded once at the output: within a couple of float16 ulps of onnxruntime's
    assert rel_err(ref[0], got[0]) < 2e-3 and rel_err(ref[4], got[4]) < 2e-3
    np.testing.assert_array_equal(got[3], ref[3])
    # ArgMax and Less read float16-rounded values; where onnxruntime's own fp16 rounding differs in
    # the last bit a near-tie may flip, so allow a handful
    assert (got[1] != ref[1]).sum() <= 2 and (got[2] != ref[2]).sum() <= 2
    # the saved graph: float32 weights, a cast in and casts out only, no float16 Conv
    saved = onnx.load(str(tmp_path / "opt.onnx"))
    casts = [n for n in saved.graph.node if n.op_type == "Cast"]
    to = sorted(helper.get_attribute_value(a) for n in casts for a in n.attribute if a.name == "to")
    assert to.count(TensorProto.FLOAT) == 1                   # x enters once
    assert TensorProto.FLOAT16 in to                          # y / h leave rounded
    inits = {i.name: i.data_type for i in saved.graph.initializer}
    assert TensorProto.FLOAT in inits.values()
    assert {o.name for o in saved.graph.output} == {"y", "am", "lt", "ki", "r"}


def test_float16_level1_keeps_per_op_rounding():
    """Below level 2 nothing is rewritten: each kernel rounds its float16 outputs (bit-exact with the
    same arithmetic done op by op)."""
    m = _f16_model()
    x = RNG.standard_normal((1, 8, 12, 12)).astype(np.float16)
    so = er.SessionOptions()
    so.graph_optimization_level = er.GraphOptimizationLevel.ORT_ENABLE_BASIC
    got = er.InferenceSession(m, so, providers=["CPUExecutionProvider"]).run(None, {"x": x})
    so2 = er.SessionOptions()
    got2 = er.InferenceSession(m, so2, providers=["CPUExecutionProvider"]).run(None, {"x": x})
    assert got[0].dtype == np.float16 == got2[0].dtype
    assert rel_err(got[0], got2[0]) < 2e-3


# ---------------------------------------------------------------------------------------------
# recurrent layers: one GEMM per step, then the compiled gate loop (jit) or in-place NumPy passes


@pytest.fixture(params=JIT_PATHS)
def rnn_path(request, monkeypatch):
    return choose_path(request, monkeypatch, "rnn")


def _rnn_case(op, direction, lens, H=24, I=10, S=7, Bt=5, extra=None, peephole=False, layout=0):
    G = {"LSTM": 4, "GRU": 3, "RNN": 1}[op]
    D = 2 if direction == "bidirectional" else 1
    W = (RNG.standard_normal((D, G * H, I)) * 0.4).astype(np.float32)
    R = (RNG.standard_normal((D, G * H, H)) * 0.4).astype(np.float32)
    Bb = (RNG.standard_normal((D, 2 * G * H)) * 0.3).astype(np.float32)
    ins = ["x", "W", "R", "B", "lens" if lens is not None else "", "h0"]
    inits = [("W", W), ("R", R), ("B", Bb)]
    xs = [Bt, S, I] if layout else [S, Bt, I]
    hs = [Bt, D, H] if layout else [D, Bt, H]
    feed = {"x": RNG.standard_normal(xs).astype(np.float32), "h0": RNG.standard_normal(hs).astype(np.float32)}
    inputs = [vi("x", TensorProto.FLOAT, xs), vi("h0", TensorProto.FLOAT, hs)]
    outs = ["y", "yh"]
    if lens is not None:
        inits.append(("lens", np.asarray(lens, np.int32)))
    if op == "LSTM":
        ins.append("c0")
        feed["c0"] = RNG.standard_normal(hs).astype(np.float32)
        inputs.append(vi("c0", TensorProto.FLOAT, hs))
        outs.append("yc")
        if peephole:
            ins.append("P")
            inits.append(("P", (RNG.standard_normal((D, 3 * H)) * 0.3).astype(np.float32)))
    attrs = dict(direction=direction, hidden_size=H, **(extra or {}))
    if layout:
        attrs["layout"] = 1
    node = helper.make_node(op, ins, outs, **attrs)
    m = model([node], inputs, [vi(o, TensorProto.FLOAT, None) for o in outs], inits, opset=14)
    return m, feed


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("lens", [None, [7, 3, 5, 1, 7]])
@pytest.mark.parametrize("extra,peephole", [({}, False), ({}, True), ({"clip": 0.9}, True),
                                            ({"input_forget": 1}, False)])
def test_lstm(rnn_path, direction, lens, extra, peephole):
    m, feed = _rnn_case("LSTM", direction, lens, extra=extra, peephole=peephole)
    ref, got = both(m, feed)
    for r, g in zip(ref, got):
        assert g.shape == r.shape and g.dtype == np.float32
        assert np.abs(r - g).max() < 2e-5
    rnn_path.expect("lstm_step")


@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
@pytest.mark.parametrize("lens", [None, [2, 7, 4, 7, 6]])
@pytest.mark.parametrize("extra", [{}, {"linear_before_reset": 1}, {"clip": 0.7}])
def test_gru(rnn_path, direction, lens, extra):
    m, feed = _rnn_case("GRU", direction, lens, extra=extra)
    ref, got = both(m, feed)
    for r, g in zip(ref, got):
        assert g.shape == r.shape
        assert np.abs(r - g).max() < 2e-5
    rnn_path.expect("gru_step_lbr" if extra.get("linear_before_reset") else "gru_update")


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("lens", [None, [3, 7, 7, 1, 5]])
def test_rnn(rnn_path, direction, lens):
    m, feed = _rnn_case("RNN", direction, lens)
    ref, got = both(m, feed)
    for r, g in zip(ref, got):
        assert np.abs(r - g).max() < 2e-5


@pytest.mark.parametrize("op", ["LSTM", "GRU"])
def test_rnn_layout1_and_custom_activations(rnn_path, op):
    """Batch-major layout (which onnxruntime's CPU kernels refuse: onnx.reference is the oracle there);
    non-default activations take the generic loop (no compiled gates)."""
    from onnx.reference import ReferenceEvaluator

    m, feed = _rnn_case(op, "bidirectional", None, layout=1)
    ref = ReferenceEvaluator(onnx.load_from_string(m)).run(None, feed)
    got = er.InferenceSession(m, providers=["CPUExecutionProvider"]).run(None, feed)
    for r, g in zip(ref, got):
        assert np.abs(r - g).max() < 2e-5
    rnn_path.expect("lstm_step" if op == "LSTM" else "gru_update")
    acts = {"LSTM": ["HardSigmoid", "Tanh", "Softsign"] * 2, "GRU": ["HardSigmoid", "Softsign"] * 2}[op]
    m, feed = _rnn_case(op, "bidirectional", [7, 2, 5, 7, 3], extra={"activations": acts})
    ref, got = both(m, feed)
    for r, g in zip(ref, got):
        assert np.abs(r - g).max() < 2e-5
    rnn_path.expect("lstm_step" if op == "LSTM" else "gru_update", taken=False)


# ---------------------------------------------------------------------------------------------
# TopK with k = 1 (a CTC decoder's best path): argmax / argmin


@pytest.mark.parametrize("largest", [1, 0])
@pytest.mark.parametrize("axis", [-1, 1])
@pytest.mark.parametrize("dtype", [np.float32, np.int64])
def test_topk_k1(largest, axis, dtype):
    x = RNG.integers(-3, 4, (2, 37, 223)).astype(dtype)     # many ties: the lower index must win
    elem = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    node = helper.make_node("TopK", ["x", "k"], ["v", "i"], axis=axis, largest=largest)
    m = model([node], [vi("x", elem, list(x.shape))], [vi("v", elem, None), vi("i", TensorProto.INT64, None)],
              [("k", np.array([1], np.int64))])
    ref, got = both(m, {"x": x})
    np.testing.assert_array_equal(got[0], ref[0])
    np.testing.assert_array_equal(got[1], ref[1])


@pytest.mark.parametrize("largest", [1, 0])
@pytest.mark.parametrize("shape,axis", [((1, 128, 223), -1), ((2, 64, 37), 1), ((1, 3, 223), -1)])
def test_topk_small_k_short_axis(largest, shape, axis):
    """Top 8 of a short axis (a CTC decoder's beam): the partition path where the tensor is large, the
    full sort where it is small; ties (many here) go to the lower index, as onnxruntime's do."""
    x = (RNG.integers(-6, 7, shape) * 0.5).astype(np.float32)
    node = helper.make_node("TopK", ["x", "k"], ["v", "i"], axis=axis, largest=largest)
    m = model([node], [vi("x", TensorProto.FLOAT, list(x.shape))],
              [vi("v", TensorProto.FLOAT, None), vi("i", TensorProto.INT64, None)], [("k", np.array([4], np.int64))])
    ref, got = both(m, {"x": x})
    np.testing.assert_array_equal(got[0], ref[0])
    np.testing.assert_array_equal(got[1], ref[1])


@pytest.mark.parametrize("op", ["ReduceSum", "ReduceMean"])
@pytest.mark.parametrize("shape,axes,keepdims", [((1, 1280, 7, 7), [2, 3], 1), ((2, 256, 128), [-1], 0),
                                                 ((3, 5000), [1], 1), ((2, 3, 4), [1, 2], 0),
                                                 ((1, 4, 16, 24, 128), [3], 0), ((2, 3, 4, 5), [1, 2], 1),
                                                 ((2, 3, 4, 5), [0], 1), ((2, 3, 4, 5), [0, 2], 0)])
def test_reduce_trailing_axes(op, shape, axes, keepdims):
    """Sums and means over trailing axes (rows up to 4096 long as one matrix-vector product, longer ones by
    NumPy's pairwise sum) or a block of consecutive axes (products of a vector of ones with each block), other
    axes by NumPy: onnxruntime's numbers with inf and NaN values."""
    x = RNG.standard_normal(shape).astype(np.float32) * 10
    x.flat[3], x.flat[7], x.flat[-1] = np.inf, np.nan, -np.inf
    node = helper.make_node(op, ["x", "axes"], ["y"], keepdims=keepdims)
    m = model([node], [vi("x", TensorProto.FLOAT, list(shape))], [vi("y", TensorProto.FLOAT, None)],
              [("axes", np.array(axes, np.int64))], opset=18)
    ref, got = both(m, {"x": x})
    assert got[0].shape == ref[0].shape and got[0].dtype == ref[0].dtype
    np.testing.assert_allclose(got[0], ref[0], rtol=2e-5, atol=1e-4)


@pytest.fixture(params=JIT_PATHS)
def sorting_path(request, monkeypatch):
    return choose_path(request, monkeypatch, "sorting")


@pytest.mark.parametrize("case", [((1, 128, 223), -1, 8, np.float32, 1), ((2, 64, 37), 1, 5, np.float32, 0),
                                  ((3, 9), -1, 9, np.float64, 1), ((2, 40, 3), 1, 32, np.float32, 1),
                                  ((4, 300), -1, 3, np.float32, 0)])
def test_topk_compiled_small_k(sorting_path, case):
    """Top k <= 32 in one compiled pass a row (or NumPy's paths): onnxruntime's values and indices with
    many ties (the lower index first), either order, any axis, k = n, float64; a NaN takes NumPy's path."""
    shape, axis, k, dtype, largest = case
    x = (RNG.integers(-6, 7, shape) * 0.5).astype(dtype)
    elem = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    node = helper.make_node("TopK", ["x", "k"], ["v", "i"], axis=axis, largest=largest)
    m = model([node], [vi("x", elem, list(x.shape))], [vi("v", elem, None), vi("i", TensorProto.INT64, None)],
              [("k", np.array([k], np.int64))])
    ref, got = both(m, {"x": x})
    np.testing.assert_array_equal(got[0], ref[0])
    np.testing.assert_array_equal(got[1], ref[1])
    sorting_path.expect("topk_rows")
    x.flat[5] = np.nan
    ref, got = both(m, {"x": x})
    np.testing.assert_array_equal(got[1], ref[1])
    sorting_path.expect("topk_rows", False)


# ---------------------------------------------------------------------------------------------
# DynamicQuantizeLinear: two compiled passes (range, quantization) or NumPy's


@pytest.fixture(params=JIT_PATHS)
def quant_path(request, monkeypatch):
    return choose_path(request, monkeypatch, "quant")


def _dql_matches_onnxruntime(x):
    """A DynamicQuantizeLinear of ``x``: engineroom's outputs equal onnxruntime's, dtypes included."""
    node = helper.make_node("DynamicQuantizeLinear", ["x"], ["y", "s", "z"])
    m = model([node], [vi("x", TensorProto.FLOAT, list(x.shape))],
              [vi("y", TensorProto.UINT8, None), vi("s", TensorProto.FLOAT, None), vi("z", TensorProto.UINT8, None)])
    ref, got = both(m, {"x": x})
    for r, g in zip(ref, got):
        assert g.dtype == r.dtype
        np.testing.assert_array_equal(g, r)


@pytest.mark.parametrize("case", ["normal", "positive", "negative", "zeros", "ties", "wide"])
def test_dynamic_quantize_linear(quant_path, case):
    shape = (2, 64, 33, 17)
    x = {"normal": lambda: RNG.standard_normal(shape) * 3,
         "positive": lambda: RNG.uniform(0.5, 2.0, shape),
         "negative": lambda: -RNG.uniform(0.5, 2.0, shape),
         "zeros": lambda: np.zeros(shape),
         "ties": lambda: RNG.integers(-255, 256, shape) * 0.5,      # many x / scale exactly at .5
         "wide": lambda: RNG.standard_normal(shape) * 1e30}[case]().astype(np.float32)
    _dql_matches_onnxruntime(x)
    if case != "zeros":         # below the pool's split size: range and quantization in one compiled call
        quant_path.expect("dynamic_quantize_u8")


def test_dynamic_quantize_linear_large_takes_two_passes(quant_path):
    """From the pool's split size on: the range and the quantization as separate (splittable) passes."""
    from engineroom.providers.cpu._threadpool import MIN_PARALLEL_WORK

    shape = (4, MIN_PARALLEL_WORK // 4 + 8)
    _dql_matches_onnxruntime((RNG.standard_normal(shape) * 2).astype(np.float32))
    assert "dynamic_quantize_u8" not in quant_path.used
    quant_path.expect("quantize_u8")


def test_dynamic_quantize_linear_nan_takes_numpy(quant_path):
    x = RNG.standard_normal((4, 50)).astype(np.float32)
    x[1, 3] = np.nan
    node = helper.make_node("DynamicQuantizeLinear", ["x"], ["y", "s", "z"])
    m = model([node], [vi("x", TensorProto.FLOAT, [4, 50])],
              [vi("y", TensorProto.UINT8, None), vi("s", TensorProto.FLOAT, None), vi("z", TensorProto.UINT8, None)])
    got = er.InferenceSession(m, providers=["CPUExecutionProvider"]).run(None, {"x": x})
    assert np.isnan(got[1]) or got[1].dtype == np.float32
    quant_path.expect("quantize_u8", taken=False)


# ---------------------------------------------------------------------------------------------
# HardSwish: one compiled pass


@pytest.fixture(params=JIT_PATHS)
def vision_path(request, monkeypatch):
    return choose_path(request, monkeypatch, "vision")


def test_hard_swish(vision_path):
    x = np.concatenate([RNG.standard_normal(5000) * 4, [-3.0, 3.0, 0.0, -0.0, 1e30, -1e30, np.inf, -np.inf, np.nan]])
    x = x.astype(np.float32).reshape(1, -1, 1)
    m = model([helper.make_node("HardSwish", ["x"], ["y"])], [vi("x", TensorProto.FLOAT, list(x.shape))],
              [vi("y", TensorProto.FLOAT, None)])
    ref, got = both(m, {"x": x})
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-6, atol=1e-7)
    assert np.isnan(got[0][0, -1, 0])
    vision_path.expect("hard_swish")


@pytest.mark.parametrize("k,stride,dil,H", [((5, 5), 1, 1, 14), ((5, 5), 2, 1, 15), ((5, 5), 1, 2, 12),
                                            ((3, 5), 1, 1, 9), ((5, 5), 1, 1, 60)])
def test_depthwise_kernel_rows_of_five(conv_path, k, stride, dil, H):
    """Depthwise convs whose kernel rows have five taps: one pass per row in the compiled loop."""
    C = 24
    w = RNG.standard_normal((C, 1) + k).astype(np.float32)
    b = RNG.standard_normal(C).astype(np.float32)
    pads = [k[0] // 2 * dil, k[1] // 2 * dil] * 2
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], strides=[stride] * 2, dilations=[dil] * 2, group=C,
                            pads=pads)
    m = model([node], [vi("x", TensorProto.FLOAT, [2, C, H, H + 3])], [vi("y", TensorProto.FLOAT, None)],
              [("w", w), ("b", b)])
    x = RNG.standard_normal((2, C, H, H + 3)).astype(np.float32)
    ref, got = both(m, {"x": x})
    assert rel_err(ref[0], got[0]) < 1e-5
    conv_path.expect("depthwise2d")


def test_float16_region_read_by_a_subgraph():
    """A widened value read inside an If branch (outer scope) is handed to it rounded to float16."""
    k = RNG.standard_normal((1, 4)).astype(np.float16)
    then_g = helper.make_graph([helper.make_node("Neg", ["m"], ["t"])], "then", [],
                               [vi("t", TensorProto.FLOAT16, [1, 4])])
    else_g = helper.make_graph([helper.make_node("Abs", ["m"], ["e"])], "else", [],
                               [vi("e", TensorProto.FLOAT16, [1, 4])])
    nodes = [helper.make_node("Mul", ["x", "k"], ["m"]),
             helper.make_node("If", ["c"], ["z"], then_branch=then_g, else_branch=else_g),
             helper.make_node("Add", ["m", "x"], ["y"])]
    m = model(nodes, [vi("x", TensorProto.FLOAT16, [1, 4]), vi("c", TensorProto.BOOL, [])],
              [vi("z", TensorProto.FLOAT16, None), vi("y", TensorProto.FLOAT16, None)], [("k", k)], opset=17)
    x = RNG.standard_normal((1, 4)).astype(np.float16)
    for c in (True, False):
        ref, got = both(m, {"x": x, "c": np.array(c)})
        for r, g in zip(ref, got):
            assert g.dtype == np.float16
            assert rel_err(r, g) < 2e-3


@pytest.mark.parametrize("ash,bsh", [((3000,), (3000,)), ((5, 3000), (3000,)), ((3000,), (3000, 4)),
                                     ((2, 5, 3000), (2, 3000, 4))])
def test_intgemm_chunked_shapes(ash, bsh):
    """K split in chunks for 1-D and batched operands: exact against int64 arithmetic."""
    from engineroom.providers.cpu import intgemm

    a, b = RNG.integers(0, 256, ash), RNG.integers(-128, 128, bsh)
    m = intgemm.IntMatrix(b, None, 255)
    assert m.chunk < 3000
    np.testing.assert_array_equal(np.asarray(m.matmul(a.astype(np.float32))).astype(np.int64),
                                  np.matmul(a.astype(np.int64), b.astype(np.int64)))
