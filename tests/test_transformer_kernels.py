"""The CPU transformer kernels with a compiled (numba) path -- Gelu, BiasGelu, FastGelu, Softmax,
LayerNormalization, SkipLayerNormalization -- against float64 math, and MultiHeadAttention against
onnxruntime's, on both the compiled and the NumPy path."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.special as sp
from jit_paths import JIT_PATHS, choose_path

from engineroom.providers.cpu.registry import registry

_NUMPY_ONLY = ("test_softmax[13-2-", "test_layer_norm_broadcast_scale_and_float64",
               "test_skip_layer_norm_sum_output_and_broadcast_skip")


@pytest.fixture
def path(request, monkeypatch):
    """Run the kernel with the compiled loops (param True) or with ``_jit.load`` answering None (the
    NumPy path). With the loops, the test must reach one unless it is in ``_NUMPY_ONLY`` (cases the
    compiled loops do not take)."""
    p = choose_path(request, monkeypatch, "transformer")
    yield p.jit
    if p.jit and not any(k in request.node.name for k in _NUMPY_ONLY):
        assert p.used, "the compiled path was not taken"


class _Info:
    """The KernelInfo fields the factories below read."""

    def __init__(self, op, domain="", opset=20, attrs=None, n_in=1, n_out=1, dtype=np.float32):
        self.op_type, self.domain, self.opset, self.attrs = op, domain, opset, dict(attrs or {})
        self.xp = np
        self.input_names = [f"i{k}" for k in range(n_in)]
        self.input_dtypes = [np.dtype(dtype)] * n_in
        self.input_shapes = [None] * n_in
        self.input_types = [None] * n_in
        self.const_inputs = [None] * n_in
        self.output_names = [f"o{k}" for k in range(n_out)]
        self.output_dtypes = [np.dtype(dtype)] * n_out

    def with_(self, **kw):
        new = _Info.__new__(_Info)
        new.__dict__.update(self.__dict__)
        new.__dict__.update(kw)
        return new


def make(op, domain="", opset=20, **kw):
    return registry.lookup(domain, op, opset).factory(_Info(op, domain, opset, **kw))


def gelu64(v):
    v = np.asarray(v, np.float64)
    return v * 0.5 * sp.erfc(-v / math.sqrt(2))       # no cancellation for negative v


def gelu_tanh64(v):
    v = np.asarray(v, np.float64)
    # 0.5 v (1 + tanh(u)) = v / (1 + exp(-2u)): the same value, without 1 + tanh cancelling
    return v / (1 + np.exp(-2 * math.sqrt(2 / math.pi) * (v + 0.044715 * v ** 3)))


def assert_rel(got, ref, rtol, floor=1e-30):
    ref = np.asarray(ref, np.float64)
    err = np.abs(got.astype(np.float64) - ref)
    assert np.all(err <= rtol * np.abs(ref) + floor), float(np.max(err / np.maximum(np.abs(ref), floor)))


# Values over the whole range that matters: both tails of Gelu (x < -5, where x + x erf(x / sqrt 2)
# cancels in float32), around 0, and large magnitudes.
RNG = np.random.default_rng(7)
X = np.concatenate([np.linspace(-13, 13, 4001), RNG.standard_normal(4083) * 4, [0.0, -0.0, 1e-30, -1e-30]])
X = X.astype(np.float32).reshape(3, 8, 337)
BIAS = (RNG.standard_normal(337) * 0.5).astype(np.float32)


@pytest.mark.parametrize("path", JIT_PATHS, indirect=True)
def test_gelu_exact(path):
    (y,) = make("Gelu", attrs={"approximate": "none"})(X)
    assert y.dtype == np.float32 and y.shape == X.shape
    assert_rel(y, gelu64(X), 5e-6 if path else 2e-5)   # NumPy's float32 exp(-t^2) loses ~1e-5 at t = 9


@pytest.mark.parametrize("path", JIT_PATHS, indirect=True)
def test_gelu_tanh(path):
    (y,) = make("Gelu", attrs={"approximate": "tanh"})(X)
    check_tanh(y, gelu_tanh64(X), path)


def check_tanh(y, ref, compiled):
    # the compiled loop computes v / (1 + e^(-2u)), relative error ~1e-6 down to 1e-20 (then e^(-2u) is
    # clamped); NumPy's 0.5 v (1 + tanh(u)) cancels in float32 for v < -2: only ~1e-7 absolute there
    if compiled:
        big = np.abs(ref) > 1e-20
        assert_rel(y[big], ref[big], 2e-5)
    else:
        big = np.abs(ref) > 1e-3
        assert_rel(y[big], ref[big], 1e-4)
    assert np.all(np.abs(y[~big] - ref[~big]) <= 1e-6)


@pytest.mark.parametrize("path", JIT_PATHS, indirect=True)
def test_bias_gelu(path):
    (y,) = make("BiasGelu", domain="com.microsoft", opset=1, n_in=2)(X, BIAS)
    v = X + BIAS                      # the float32 sum, as the op defines it
    assert_rel(y, gelu64(v), 5e-6 if path else 2e-5)
    assert not np.shares_memory(y, X)


@pytest.mark.parametrize("path", JIT_PATHS, indirect=True)
@pytest.mark.parametrize("with_bias", [True, False])
def test_fast_gelu(path, with_bias):
    """com.microsoft FastGelu computes 0.5 x (1 + tanh u) as onnxruntime's kernel (the op's definition),
    cancelling in the negative tail on both paths, unlike the standard Gelu(approximate="tanh")."""
    run = make("FastGelu", domain="com.microsoft", opset=1, n_in=2 if with_bias else 1)
    (y,) = run(X, BIAS) if with_bias else run(X)
    v = X + BIAS if with_bias else X
    # 1 + tanh u rounds to float32 near 0: an absolute error of a few ulp of 1, times |x| / 2
    err = np.abs(y.astype(np.float64) - gelu_tanh64(v))
    assert np.all(err <= 2e-6 * np.abs(gelu_tanh64(v)) + 2e-7 * np.abs(v) + 1e-30), float(err.max())


@pytest.mark.parametrize("path", JIT_PATHS, indirect=True)
@pytest.mark.parametrize("with_bias", [True, False])
def test_fast_gelu_is_onnxruntimes_bit_for_bit(path, with_bias):
    """An int8 model re-quantizes what FastGelu writes, so one ulp can flip a rounding downstream: the
    kernel does onnxruntime's float32 arithmetic and MLAS's tanh, and agrees bit for bit."""
    onnxruntime = pytest.importorskip("onnxruntime", reason="onnxruntime is the oracle of this test")
    import onnx.helper as oh
    from onnx import TensorProto

    names = ["x", "b"] if with_bias else ["x"]
    g = oh.make_graph([oh.make_node("FastGelu", names, ["y"], domain="com.microsoft")], "g",
                      [oh.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names],
                      [oh.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    m = oh.make_model(g, opset_imports=[oh.make_opsetid("", 17), oh.make_opsetid("com.microsoft", 1)])
    feed = dict(zip(names, (X, BIAS)))
    want = onnxruntime.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    (y,) = make("FastGelu", domain="com.microsoft", opset=1, n_in=len(names))(*feed.values())
    np.testing.assert_array_equal(y, want)


@pytest.mark.parametrize("path", JIT_PATHS, indirect=True)
@pytest.mark.filterwarnings("ignore::RuntimeWarning")   # NumPy FastGelu: inf * 0 on -inf
@pytest.mark.parametrize("op", ["Gelu", "FastGelu"])
def test_gelu_special_values(path, op):
    x = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 20.0, -20.0], np.float32)
    run = make(op, attrs={"approximate": "none"}) if op == "Gelu" else make(op, domain="com.microsoft", opset=1)
    (y,) = run(x)
    assert np.isnan(y[0]) and y[1] == np.inf
    np.testing.assert_array_equal(y[3:6], [0.0, 0.0, 20.0])
    assert abs(y[6]) < 1e-30


@pytest.mark.parametrize("path", JIT_PATHS, indirect=True)
def test_gelu_noncontiguous_and_other_dtypes(path):
    xt = X.transpose(2, 0, 1)
    (y,) = make("Gelu")(xt)
    assert_rel(y, gelu64(xt), 2e-5)
    x64 = X.astype(np.float64)
    (y64,) = make("Gelu")(x64)
    assert y64.dtype == np.float64
    assert_rel(y64, gelu64(x64), 1e-12)
    (yb,) = make("BiasGelu", domain="com.microsoft", opset=1, n_in=2)(X, BIAS[None, None, :])   # 3-d bias
    assert_rel(yb, gelu64(X + BIAS), 2e-5)
    (e,) = make("Gelu")(np.zeros((0, 5), np.float32))
    assert e.shape == (0, 5)


def softmax64(x, axis):
    """float64 softmax over the trailing block from ``axis`` flattened (axis = ndim - 1: the last axis)."""
    x2 = np.asarray(x, np.float64).reshape(int(np.prod(x.shape[:axis])), -1)
    e = np.exp(x2 - x2.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).reshape(x.shape)


@pytest.mark.parametrize("path", JIT_PATHS, indirect=True)
@pytest.mark.parametrize("opset,axis", [(13, -1), (13, 2), (11, 1), (11, -1), (1, 0)])
def test_softmax(path, opset, axis):
    x = (RNG.standard_normal((2, 3, 4, 37)) * 5).astype(np.float32)
    x[0, 1, 2, 5:] = -1e30                      # a masked tail (attention masks), underflows to 0
    x[1, 0, 0, :] = 80.0                        # large but equal logits: exp must not overflow
    (y,) = make("Softmax", opset=opset, attrs={"axis": axis})(x)
    assert y.dtype == np.float32 and y.shape == x.shape
    ax = axis % x.ndim
    # opset 13 normalizes along the one axis; before, over the trailing block from it
    ref = (np.moveaxis(softmax64(np.moveaxis(x, ax, -1), 3), -1, ax) if opset >= 13 else softmax64(x, ax))
    np.testing.assert_allclose(y, ref, rtol=3e-6, atol=1e-9)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")     # NumPy: inf - inf
@pytest.mark.parametrize("path", JIT_PATHS, indirect=True)
def test_softmax_special_rows(path):
    x = np.array([[1.0, np.nan, 2.0], [-np.inf, -np.inf, -np.inf], [0.0, np.inf, 1.0], [-np.inf, 0.0, 1.0]],
                 np.float32)
    (y,) = make("Softmax", opset=13)(x)
    with np.errstate(invalid="ignore"):
        ref = softmax64(x, 1)        # NaN rows where a NaN, +inf or an all -inf row makes them NaN
    np.testing.assert_allclose(y, ref, rtol=3e-6, atol=0)
    (yt,) = make("Softmax", opset=13)(x[:, :2].T)           # a non-contiguous view
    np.testing.assert_allclose(yt, softmax64(np.ascontiguousarray(x[:, :2].T), 1), rtol=3e-6)


def layer_norm64(x, scale, bias, axis, eps):
    x64 = np.asarray(x, np.float64)
    axes = tuple(range(axis % x.ndim, x.ndim))
    mean = x64.mean(axis=axes, keepdims=True)
    inv = 1 / np.sqrt(((x64 - mean) ** 2).mean(axis=axes, keepdims=True) + eps)
    y = (x64 - mean) * inv * scale
    return (y + bias if bias is not None else y), mean, inv


@pytest.mark.parametrize("path", JIT_PATHS, indirect=True)
@pytest.mark.parametrize("axis,with_bias", [(-1, True), (-1, False), (1, True), (-2, True)])
def test_layer_norm(path, axis, with_bias):
    # an offset mean (3) against unit spread: the two-pass variance keeps it accurate
    x = (RNG.standard_normal((2, 5, 96)) + 3).astype(np.float32)
    nshape = x.shape[axis % x.ndim:]
    scale = RNG.standard_normal(nshape).astype(np.float32)
    bias = RNG.standard_normal(nshape).astype(np.float32) if with_bias else None
    run = make("LayerNormalization", opset=17, attrs={"axis": axis, "epsilon": 1e-5}, n_in=3 if with_bias else 2,
               n_out=3)
    y, mean, inv = run(x, scale, bias) if with_bias else run(x, scale)
    ry, rmean, rinv = layer_norm64(x, scale, bias, axis, 1e-5)
    assert y.dtype == mean.dtype == inv.dtype == np.float32
    assert mean.shape == rmean.shape and inv.shape == rinv.shape
    np.testing.assert_allclose(y, ry, rtol=1e-5, atol=2e-6)
    np.testing.assert_allclose(mean, rmean, rtol=1e-6)
    np.testing.assert_allclose(inv, rinv, rtol=1e-5)


@pytest.mark.parametrize("path", JIT_PATHS, indirect=True)
def test_layer_norm_broadcast_scale_and_float64(path):
    x = RNG.standard_normal((3, 4, 8)).astype(np.float32)
    scale = RNG.standard_normal((1, 8)).astype(np.float32)     # broadcasts: the NumPy path serves
    y, _, _ = make("LayerNormalization", opset=17, n_out=3)(x, scale)
    np.testing.assert_allclose(y, layer_norm64(x, scale, None, -1, 1e-5)[0], rtol=1e-5, atol=2e-6)
    x64 = x.astype(np.float64)
    y64, _, _ = make("LayerNormalization", opset=17, n_out=3, dtype=np.float64)(x64, scale[0].astype(np.float64))
    assert y64.dtype == np.float64
    np.testing.assert_allclose(y64, layer_norm64(x64, scale[0], None, -1, 1e-5)[0], rtol=1e-12)


@pytest.mark.parametrize("path", JIT_PATHS, indirect=True)
@pytest.mark.parametrize("with_bias,with_beta,n_out", [(True, True, 1), (False, True, 3), (True, False, 1),
                                                     (True, True, 4), (False, False, 4)])
def test_skip_layer_norm(path, with_bias, with_beta, n_out):
    x = (RNG.standard_normal((2, 7, 64)) + 2).astype(np.float32)
    skip = RNG.standard_normal(x.shape).astype(np.float32)
    gamma, beta, bias = (RNG.standard_normal(64).astype(np.float32) for _ in range(3))
    ins = [x, skip, gamma, beta if with_beta else None] + ([bias] if with_bias else [])
    out = make("SkipLayerNormalization", domain="com.microsoft", opset=1, attrs={"epsilon": 1e-6}, n_in=5,
               n_out=n_out)(*ins)
    assert len(out) == n_out
    s = (x + bias) + skip if with_bias else x + skip          # float32 sum, the order the fused Adds had
    ry, rmean, rinv = layer_norm64(s, gamma, beta if with_beta else None, -1, 1e-6)
    np.testing.assert_allclose(out[0], ry, rtol=1e-5, atol=2e-6)
    assert out[0].dtype == np.float32
    if n_out >= 3:
        np.testing.assert_allclose(out[1], rmean, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(out[2], rinv, rtol=1e-5)
    if n_out == 4:                                            # input + skip + bias, rounded as the Adds were
        np.testing.assert_array_equal(out[3], s)


@pytest.mark.parametrize("path", JIT_PATHS, indirect=True)
def test_skip_layer_norm_sum_output_and_broadcast_skip(path):
    x = RNG.standard_normal((2, 7, 32)).astype(np.float32)
    skip = RNG.standard_normal((7, 32)).astype(np.float32)      # broadcasts over the batch: NumPy path
    gamma, bias = RNG.standard_normal(32).astype(np.float32), RNG.standard_normal(32).astype(np.float32)
    y, mean, inv, s = make("SkipLayerNormalization", domain="com.microsoft", opset=1, n_in=5, n_out=4)(
        x, skip, gamma, None, bias)
    ref_s = (x + bias) + skip
    np.testing.assert_array_equal(s, ref_s)
    np.testing.assert_allclose(y, layer_norm64(ref_s, gamma, None, -1, 1e-12)[0], rtol=1e-5, atol=2e-6)


def _mha_model(B, Sq, Sk, H, D, bias=False, attn_bias=None, kpm=False, scale=None):
    """One com.microsoft MultiHeadAttention node; attn_bias: the (batch, heads) dims of its bias or None."""
    from onnx import TensorProto, helper

    f = TensorProto.FLOAT
    ins = [helper.make_tensor_value_info(n, f, [B, s, H * D]) for n, s in (("q", Sq), ("k", Sk), ("v", Sk))]
    names = ["q", "k", "v", "", "", ""]
    if bias:
        ins.append(helper.make_tensor_value_info("bias", f, [3 * H * D]))
        names[3] = "bias"
    if kpm:
        ins.append(helper.make_tensor_value_info("kpm", TensorProto.INT32, [B, Sk]))
        names[4] = "kpm"
    if attn_bias is not None:
        ins.append(helper.make_tensor_value_info("ab", f, [*attn_bias, Sq, Sk]))
        names[5] = "ab"
    while not names[-1]:
        names.pop()
    attrs = {"num_heads": H} | ({"scale": scale} if scale else {})
    node = helper.make_node("MultiHeadAttention", names, ["y"], domain="com.microsoft", **attrs)
    g = helper.make_graph([node], "mha", ins, [helper.make_tensor_value_info("y", f, None)])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])


def _mha_feed(model, rng):
    feed = {}
    for i in model.graph.input:
        shape = [d.dim_value for d in i.type.tensor_type.shape.dim]
        feed[i.name] = rng.integers(0, 2, shape).astype(np.int32) if i.name == "kpm" else \
            rng.standard_normal(shape).astype(np.float32)
    if "kpm" in feed:
        feed["kpm"][:, 0] = 1           # every query keeps a key
    return feed


@pytest.mark.parametrize("path", JIT_PATHS, indirect=True)
@pytest.mark.parametrize("case", [dict(B=2, Sq=5, Sk=7, H=2, D=4, bias=True, attn_bias=(2, 2)),
                                  dict(B=1, Sq=16, Sk=16, H=4, D=8, attn_bias=(1, 1)),
                                  dict(B=2, Sq=3, Sk=6, H=2, D=4, kpm=True, scale=0.3),
                                  dict(B=2, Sq=9, Sk=6, H=3, D=5, bias=True, kpm=True, attn_bias=(1, 3))],
                         ids=["bias", "broadcast-bias", "key-padding", "all"])
def test_multi_head_attention_vs_onnxruntime(path, case):
    import onnxruntime

    import engineroom as ort

    m = _mha_model(**case)
    feed = _mha_feed(m, np.random.default_rng(1))
    ref = onnxruntime.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    got = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    assert got.shape == ref.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("path", JIT_PATHS, indirect=True)
def test_multi_head_attention_fully_masked_row_is_zero(path):
    """A query row whose every key is masked with -inf gives zeros, not NaN; other rows as in float64."""
    import engineroom as ort

    m = _mha_model(1, 4, 6, 2, 4, attn_bias=(1, 1))
    feed = _mha_feed(m, np.random.default_rng(2))
    feed["ab"][0, 0, 2, :] = -np.inf
    got = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    q, k, v = (feed[n].astype(np.float64).reshape(1, -1, 2, 4).transpose(0, 2, 1, 3) for n in "qkv")
    logits = q @ k.transpose(0, 1, 3, 2) / 2.0 + feed["ab"].astype(np.float64)
    with np.errstate(invalid="ignore"):
        p = np.exp(logits - logits.max(-1, keepdims=True))
        ref = ((p / p.sum(-1, keepdims=True)) @ v).transpose(0, 2, 1, 3).reshape(1, 4, 8)
    np.testing.assert_array_equal(got[0, 2], np.zeros(8, np.float32))
    keep = [0, 1, 3]
    np.testing.assert_allclose(got[0, keep], ref[0, keep], rtol=1e-5, atol=1e-6)


def test_multi_head_attention_bad_input_names_the_shapes():
    import engineroom as ort

    m = _mha_model(1, 4, 6, 2, 4, attn_bias=(1, 1))
    feed = _mha_feed(m, np.random.default_rng(3))
    for d, sym in zip(m.graph.input[3].type.tensor_type.shape.dim[2:], ("s", "t")):
        d.dim_param = sym                   # the kernel checks the bias's size, not the session's input check
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    bad = dict(feed, ab=np.zeros((1, 1, 4, 5), np.float32))
    with pytest.raises(Exception, match=r"attention_bias has shape \(1, 1, 4, 5\)"):
        s.run(None, bad)
    assert s.run(None, feed)[0].shape == (1, 4, 8)          # the session still works
