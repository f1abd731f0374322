"""2-D MaxPool and AveragePool (compiled loops in ``_jit_pool`` and the NumPy path) against a float64
window-by-window reference (``onnx.reference`` where it agrees with the spec: it mishandles asymmetric
pads in AveragePool, SAME_LOWER shapes and windows of padding only) over kernels, strides, pads
(asymmetric too), dilations, ceil_mode, auto_pad, batch, float64 and NaN inputs."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import steady_mode
from jit_paths import JIT_PATHS, choose_path
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import engineroom as ort

RNG = np.random.default_rng(0)


@pytest.fixture
def path(request, monkeypatch):
    """param True: the compiled loops (``path.used`` names those that ran); False: the NumPy path."""
    return choose_path(request, monkeypatch, "pool")


_DT = {np.float32: TensorProto.FLOAT, np.float64: TensorProto.DOUBLE, np.float16: TensorProto.FLOAT16}


def _out_pads(n, k, s, d, b, e, ceil, auto_pad):
    ext = (k - 1) * d + 1
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        o = -(-n // s)
        tot = max(0, (o - 1) * s + ext - n)
        b = tot // 2 if auto_pad == "SAME_UPPER" else tot - tot // 2
        return o, b, tot - b
    if auto_pad == "VALID":
        b = e = 0
    span = n + b + e - ext
    if ceil:
        o = -(-span // s) + 1
        if (o - 1) * s >= n + b:          # the last window must start inside the input or its leading pad
            o -= 1
    else:
        o = span // s + 1
    return o, b, e


def reference(op, x, kernel_shape, strides, pads=(0, 0, 0, 0), dilations=(1, 1), ceil_mode=0, count_include_pad=0,
              auto_pad="NOTSET"):
    """float64, one window at a time: max over in-range cells (NaN wins, -inf where none), or their mean
    with the divisor counting padding cells (not the ceil_mode overhang) where count_include_pad."""
    x = x.astype(np.float64)
    N, C, H, W = x.shape
    (kh, kw), (sh, sw), (dh, dw) = kernel_shape, strides, dilations
    oh, pt, pb = _out_pads(H, kh, sh, dh, pads[0], pads[2], ceil_mode, auto_pad)
    ow, pl, pr = _out_pads(W, kw, sw, dw, pads[1], pads[3], ceil_mode, auto_pad)
    y = np.empty((N, C, oh, ow))
    for i in range(oh):
        for j in range(ow):
            rows = [i * sh - pt + a * dh for a in range(kh)]
            cols = [j * sw - pl + b * dw for b in range(kw)]
            ri = [r for r in rows if 0 <= r < H]
            ci = [c for c in cols if 0 <= c < W]
            win = x[:, :, ri][:, :, :, ci].reshape(N, C, -1)
            if op == "MaxPool":
                # a NaN loses to the window's numbers (and its padding, -inf), as in onnxruntime's MaxPool
                y[:, :, i, j] = np.fmax.reduce(np.concatenate([win, np.full((N, C, 1), -np.inf)], axis=2), axis=2)
            else:
                if count_include_pad:
                    cnt = sum(-pt <= r < H + pb for r in rows) * sum(-pl <= c < W + pr for c in cols)
                else:
                    cnt = len(ri) * len(ci)
                y[:, :, i, j] = win.sum(axis=2) / cnt
    return y


def _run(op, x, n_out=1, **attrs):
    outs = ["y", "i"][:n_out]
    node = helper.make_node(op, ["x"], outs, **attrs)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", _DT[x.dtype.type], x.shape)],
                          [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in outs])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 19)])
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    got = ort.InferenceSession(m.SerializeToString(), so).run(None, {"x": x})
    if n_out == 1 and x.ndim == 4:
        return got[0], reference(op, x, **attrs)
    return got, ReferenceEvaluator(m).run(None, {"x": x})


CASES = [
    # kernel, strides, pads (t, l, b, r), dilations, ceil_mode
    ((3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 0),      # resnet's stem pool
    ((3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 0),
    ((2, 2), (2, 2), (0, 0, 0, 0), (1, 1), 0),
    ((3, 3), (3, 3), (0, 0, 0, 0), (1, 1), 0),
    ((3, 3), (2, 2), (0, 0, 0, 0), (1, 1), 1),      # ceil_mode overhang
    ((3, 3), (3, 3), (1, 0, 0, 1), (1, 1), 1),
    ((2, 3), (1, 2), (0, 1, 1, 2), (1, 1), 0),      # asymmetric pads, unequal kernel and strides
    ((3, 2), (2, 3), (2, 1, 0, 1), (1, 1), 0),
    ((3, 3), (1, 1), (2, 2, 2, 2), (2, 2), 0),      # dilations
    ((2, 3), (2, 2), (1, 2, 1, 2), (2, 2), 1),
    ((3, 3), (2, 1), (1, 1, 1, 1), (1, 3), 0),
    ((5, 1), (1, 1), (2, 0, 2, 0), (1, 1), 0),
    ((1, 1), (2, 2), (0, 0, 0, 0), (1, 1), 0),
]


def _attrs(k, s, p, d, ceil):
    return dict(kernel_shape=list(k), strides=list(s), pads=list(p), dilations=list(d), ceil_mode=ceil)


@pytest.mark.parametrize("path", JIT_PATHS, indirect=True)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k,s,p,d,ceil", CASES)
@pytest.mark.parametrize("shape", [(1, 3, 9, 11), (2, 2, 12, 10)])
def test_maxpool(path, dtype, k, s, p, d, ceil, shape):
    x = RNG.standard_normal(shape).astype(dtype)
    got, ref = _run("MaxPool", x, **_attrs(k, s, p, d, ceil))
    assert got.dtype == dtype and got.shape == ref.shape
    np.testing.assert_array_equal(got, ref.astype(dtype))
    assert ("maxpool2d" in path.used) == path.jit


@pytest.mark.parametrize("path", JIT_PATHS, indirect=True)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("include_pad", [0, 1])
@pytest.mark.parametrize("k,s,p,d,ceil", CASES)
@pytest.mark.parametrize("shape", [(1, 3, 9, 11), (2, 2, 12, 10)])
def test_averagepool(path, dtype, include_pad, k, s, p, d, ceil, shape):
    x = RNG.standard_normal(shape).astype(dtype)
    got, ref = _run("AveragePool", x, count_include_pad=include_pad, **_attrs(k, s, p, d, ceil))
    assert got.dtype == dtype and got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-6)
    assert ("avgpool2d" in path.used) == path.jit


@pytest.mark.parametrize("path", JIT_PATHS, indirect=True)
@pytest.mark.parametrize("k,s,p", [((3, 3), (2, 2), (1, 1, 1, 1)), ((2, 2), (1, 1), (0, 0, 1, 1)),
                                   ((3, 2), (1, 3), (0, 1, 2, 0))])
def test_maxpool_nan_loses(path, k, s, p):
    """A NaN in a window loses to the window's numbers, whichever tap holds it (onnxruntime's MaxPool and
    onnx.reference: tests/fuzz/test_findings.py)."""
    x = RNG.standard_normal((1, 2, 12, 13)).astype(np.float32)
    x[0, 0, 0, 0] = x[0, 0, 5, 6] = x[0, 0, 11, 12] = x[0, 1, 3, 0] = x[0, 1, 7, 9] = np.nan
    x[0, 1, 7, 10] = np.inf
    got, ref64 = _run("MaxPool", x, kernel_shape=list(k), strides=list(s), pads=list(p))
    # float64 reference: the max of each window's numbers
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (p[0], p[2]), (p[1], p[3])), constant_values=-np.inf)
    oh, ow = got.shape[2:]
    ref = np.full(got.shape, -np.inf)
    nan = np.zeros(got.shape, dtype=bool)
    for i in range(k[0]):
        for j in range(k[1]):
            t = xp[:, :, i:i + (oh - 1) * s[0] + 1:s[0], j:j + (ow - 1) * s[1] + 1:s[1]]
            nan |= np.isnan(t)
            ref = np.fmax(ref, t)
    assert nan.any() and not np.isnan(ref).any()
    np.testing.assert_array_equal(ref64, ref)
    np.testing.assert_array_equal(got, ref.astype(np.float32))
    assert ("maxpool2d" in path.used) == path.jit


@pytest.mark.parametrize("path", JIT_PATHS, indirect=True)
def test_maxpool_window_in_padding_only(path):
    """pads wider than the kernel: a window of nothing but padding is -inf (padding never wins otherwise)."""
    x = -np.abs(RNG.standard_normal((1, 2, 4, 5))).astype(np.float32) - 1e30
    got, ref = _run("MaxPool", x, kernel_shape=[2, 2], strides=[1, 1], pads=[2, 2, 2, 2])
    np.testing.assert_array_equal(got, ref.astype(np.float32))
    assert np.isneginf(got[0, 0, 0, 0]) and np.isfinite(got[0, 0, 2, 2])


@pytest.mark.parametrize("path", JIT_PATHS, indirect=True)
@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER", "VALID"])
def test_pool_auto_pad(path, auto_pad):
    x = RNG.standard_normal((1, 3, 10, 7)).astype(np.float32)
    for op in ("MaxPool", "AveragePool"):
        got, ref = _run(op, x, kernel_shape=[3, 2], strides=[2, 2], auto_pad=auto_pad)
        np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("path", JIT_PATHS, indirect=True)
def test_pool_fallbacks(path):
    """float16, the Indices output, 1-D and 3-D pools and non-contiguous inputs keep the NumPy path's results."""
    x = RNG.standard_normal((1, 2, 9, 8)).astype(np.float16)
    got, ref = _run("MaxPool", x, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    np.testing.assert_array_equal(got, ref.astype(np.float16))
    x = RNG.standard_normal((2, 3, 9, 8)).astype(np.float32)
    got, ref = _run("MaxPool", x, n_out=2, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    np.testing.assert_array_equal(got[0], ref[0])
    np.testing.assert_array_equal(got[1], ref[1])
    for shape, k in (((1, 2, 11), [3]), ((1, 2, 5, 6, 7), [2, 3, 2])):
        x = RNG.standard_normal(shape).astype(np.float32)
        (got,), (ref,) = _run("MaxPool", x, kernel_shape=k, strides=[2] * len(k))
        np.testing.assert_array_equal(got, ref)
    assert "maxpool2d" not in path.used
    # a transposed (strided) input: the kernel is handed a contiguous copy
    plan_x = RNG.standard_normal((1, 2, 8, 9)).astype(np.float32).transpose(0, 1, 3, 2)
    from engineroom.providers.cpu.pool import max_pool

    class Info:
        xp = np
        attrs = {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}
        output_names = ["y"]
    (got,) = max_pool(Info)(plan_x)
    ref = reference("MaxPool", plan_x, **Info.attrs)
    np.testing.assert_array_equal(got, ref.astype(np.float32))


@pytest.mark.skipif(not __import__("engineroom.providers.cpu.compiled.jit", fromlist=["x"]).available(),
                    reason="numba is not installed (jit extra)")
@pytest.mark.parametrize("op", ["MaxPool", "AveragePool"])
def test_split_over_threads_equals_one_thread(op, monkeypatch):
    """At batch 1 the compiled loops run over channel ranges on the worker pool: bit for bit what one
    thread gives, and the reference's numbers."""
    threadpoolctl = pytest.importorskip("threadpoolctl", reason="threadpoolctl sets the pool's thread count")
    from engineroom.providers.cpu import _threadpool as tp

    parts = []
    run = tp.WorkerPool.run
    monkeypatch.setattr(tp.WorkerPool, "run", lambda self, fn, args: (parts.append(len(args)), run(self, fn, args)))
    x = RNG.standard_normal((1, 64, 112, 112)).astype(np.float32)
    attrs = _attrs((3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 0)
    got = {}
    for threads in (1, 2):
        with threadpoolctl.threadpool_limits(threads, user_api="blas"), steady_mode():
            parts.clear()
            got[threads], want = _run(op, x, **attrs)
            assert (max(parts, default=1) > 1) == (threads == 2), parts
    np.testing.assert_array_equal(got[1], got[2])
    np.testing.assert_allclose(got[2], want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape,dtype", [((1, 512, 7, 7), np.float32), ((2, 3, 5, 4), np.float32),
                                         ((2, 4, 3, 2, 5), np.float32), ((2, 6, 9), np.float16),
                                         ((3, 2, 4, 4), np.float32)])
def test_global_average_pool_matches_onnxruntime(shape, dtype):
    """GlobalAveragePool (the spatial sums as one matrix-vector product): onnxruntime's numbers, shape and
    dtype, with inf and NaN inputs giving theirs (a row holding NaN, one holding +inf and -inf)."""
    onnxruntime = pytest.importorskip("onnxruntime")
    x = (RNG.standard_normal(shape) * 10).astype(dtype)
    if shape[0] == 3:
        x[0, 0, 1, 2], x[1, 1, 0, 0], x[1, 1, 3, 3], x[2, 0, 2, 2] = np.nan, np.inf, -np.inf, np.inf
    tp = _DT[dtype]
    m = helper.make_model(helper.make_graph([helper.make_node("GlobalAveragePool", ["x"], ["y"])], "g",
                                            [helper.make_tensor_value_info("x", tp, list(shape))],
                                            [helper.make_tensor_value_info("y", tp, None)]),
                          opset_imports=[helper.make_opsetid("", 17)])
    ref = onnxruntime.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert got.shape == ref.shape and got.dtype == ref.dtype
    tol = 1e-3 if dtype == np.float16 else 1e-6
    np.testing.assert_allclose(got.astype(np.float64), ref.astype(np.float64), rtol=tol, atol=tol)


def test_global_average_pool_float64():
    """float64 (which onnxruntime's CPU provider lacks) against NumPy's float64 mean."""
    x = RNG.standard_normal((2, 5, 6, 7))
    m = helper.make_model(helper.make_graph([helper.make_node("GlobalAveragePool", ["x"], ["y"])], "g",
                                            [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [2, 5, 6, 7])],
                                            [helper.make_tensor_value_info("y", TensorProto.DOUBLE, None)]),
                          opset_imports=[helper.make_opsetid("", 17)])
    got = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, x.mean(axis=(2, 3), keepdims=True), rtol=1e-12, atol=1e-14)
