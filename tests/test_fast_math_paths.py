"""Tanh, Sigmoid and DynamicQuantizeLinear on float32 against onnxruntime, on both kernel paths: the compiled
MLAS-style loops (``_jit_elementwise``: rational tanh / logistic, one-pass range), split over the provider's
pool on large tensors, and the NumPy fallbacks. Small and large inputs, with the special values."""
from __future__ import annotations

import numpy as np
import pytest
from jit_paths import JIT_PATHS, choose_path

import engineroom as er

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is the oracle of these tests")
onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402 - after the importorskip

_SPECIAL = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-30, -1e-30, 1e-40, 9.0, -9.0, 17.9, -17.9,
                     18.0, -18.0, 88.0, -88.0, 1e30, -1e30], np.float32)


@pytest.fixture(params=JIT_PATHS)
def path(request, monkeypatch):
    return choose_path(request, monkeypatch, "elementwise")


def _model(op: str, shape, outs=("y",)):
    out_types = {"Tanh": [TensorProto.FLOAT], "Sigmoid": [TensorProto.FLOAT],
                 "DynamicQuantizeLinear": [TensorProto.UINT8, TensorProto.FLOAT, TensorProto.UINT8]}[op]
    names = ["y", "scale", "zp"][:len(out_types)]
    g = helper.make_graph(
        [helper.make_node(op, ["x"], names)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info(n, t, None) for n, t in zip(names, out_types)])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _both(op: str, x: np.ndarray, threads: int = 1):
    m = _model(op, x.shape)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    want = ort.InferenceSession(m, so, providers=["CPUExecutionProvider"]).run(None, {"x": x})
    eo = er.SessionOptions()
    eo.intra_op_num_threads = threads
    got = er.InferenceSession(m, eo, providers=["CPUExecutionProvider"]).run(None, {"x": x})
    return want, got


def _inputs(n: int, spread: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(n) * spread).astype(np.float32)
    x[:len(_SPECIAL)] = _SPECIAL
    return x


@pytest.fixture(params=JIT_PATHS)
def vision_path(request, monkeypatch):
    return choose_path(request, monkeypatch, "vision")


def _check_against_onnxruntime(op, x, threads, tol):
    (want,), (got,) = _both(op, x, threads)
    assert got.dtype == np.float32 and got.shape == x.shape
    nan = np.isnan(x)
    assert np.array_equal(np.isnan(got), nan)
    np.testing.assert_allclose(got[~nan], want[~nan], rtol=tol, atol=tol)
    return got[~nan], x[~nan].astype(np.float64)


@pytest.mark.parametrize("n,threads", [(100, 1), (3 << 19, 2)])
def test_tanh_matches_onnxruntime(path, n, threads):
    x = _inputs(n, 6.0).reshape(-1, 2)
    # the compiled loop is MLAS's polynomial (onnxruntime's numbers); NumPy's exact tanh differs from it
    # by MLAS's approximation error (< 2 ulp at 1)
    got, x64 = _check_against_onnxruntime("Tanh", x, threads, 0.0 if path.jit else 3.6e-7)
    np.testing.assert_allclose(got, np.tanh(x64), rtol=4e-7, atol=3.6e-7)
    path.expect("tanh")


@pytest.mark.parametrize("n,threads", [(100, 1), (3 << 19, 2)])
def test_sigmoid_matches_onnxruntime(vision_path, n, threads):
    x = _inputs(n, 6.0).reshape(-1, 2)
    # onnxruntime's MLAS logistic computes p(x)/q(x) + 1/2: its small values carry the rounding of 1/2
    # (6e-8 an ulp), so they are absolutely, not relatively, accurate
    got, x64 = _check_against_onnxruntime("Sigmoid", x, threads, 1.8e-7)
    with np.errstate(over="ignore"):
        exact = 1.0 / (1.0 + np.exp(-x64))
    np.testing.assert_allclose(got, exact, rtol=3e-6, atol=1e-37)
    vision_path.expect("sigmoid")


@pytest.mark.parametrize("path", JIT_PATHS[:1], indirect=True)     # the NumPy path is the exact tanh
def test_tanh_is_onnxruntimes_bit_for_bit(path):
    x = _inputs(1 << 18, 4.0, seed=1)
    (want,), (got,) = _both("Tanh", x, 2)
    np.testing.assert_array_equal(got, want)
    path.expect("tanh")


def test_tanh_float16_and_strided(path):
    x = _inputs(4000, 3.0, seed=2).reshape(40, 100)
    xs = x[:, ::2]                      # a strided float32 view goes through the compiled loop as a copy
    m = _model("Tanh", xs.shape)
    got = er.InferenceSession(m).run(None, {"x": np.ascontiguousarray(xs)})[0]
    from engineroom.providers.cpu.activation import _tanh
    np.testing.assert_array_equal(_tanh(xs, np, {}), got)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(xs))
    path.expect("tanh")
    # float16 computes in float32 (through the same loop) and rounds back: onnxruntime's float16 Tanh
    g = helper.make_graph([helper.make_node("Tanh", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT16, list(x.shape))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT16, list(x.shape))])
    m16 = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    with np.errstate(over="ignore"):
        x16 = x.astype(np.float16)      # 1e30 -> inf
    want = ort.InferenceSession(m16, providers=["CPUExecutionProvider"]).run(None, {"x": x16})[0]
    got = er.InferenceSession(m16).run(None, {"x": x16})[0]
    assert got.dtype == np.float16
    np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), rtol=1e-3, atol=1e-3)
    path.expect("tanh")


@pytest.mark.parametrize("shape,threads", [((7, 5), 1), ((2, 64, 64, 32), 1), ((2, 64, 64, 96), 2)])
@pytest.mark.parametrize("kind", ["tanh", "wide", "negative", "inf"])
def test_dynamic_quantize_linear_matches_onnxruntime(monkeypatch, shape, threads, kind):
    n = int(np.prod(shape))
    rng = np.random.default_rng(3)
    x = {"tanh": np.tanh(rng.standard_normal(n) * 2), "wide": rng.standard_normal(n) * 1e3,
         "negative": -np.abs(rng.standard_normal(n)) - 0.5, "inf": rng.standard_normal(n)}[kind].astype(np.float32)
    if kind == "inf":
        x[n // 3] = np.inf
    x = x.reshape(shape)
    want, got = _both("DynamicQuantizeLinear", x, threads)
    assert got[0].dtype == np.uint8 and got[2].dtype == np.uint8
    assert got[1] == want[1] and got[2] == want[2]
    np.testing.assert_array_equal(got[0], want[0])


def test_dynamic_quantize_range_pass(monkeypatch):
    """The compiled range (min, max, finiteness) split into parts, against NumPy's."""
    from engineroom.providers.cpu import quantize
    from engineroom.providers.cpu.array_module import arrays
    if arrays(np).compiled("elementwise") is None:
        pytest.skip("numba is not installed (jit extra)")
    x = np.random.default_rng(4).standard_normal(1 << 20).astype(np.float32)
    monkeypatch.setattr(quantize, "parallel_ranges", lambda fn, n, w: [fn(i, min(i + 100_003, n))
                                                                       for i in range(0, n, 100_003)])
    assert quantize._range_compiled(x, np) == (float(x.min()), float(x.max()))
    x[12345] = np.nan
    assert quantize._range_compiled(x, np) is None
    x[12345] = -np.inf
    assert quantize._range_compiled(x, np) is None


@pytest.fixture(params=JIT_PATHS)
def transformer_path(request, monkeypatch):
    return choose_path(request, monkeypatch, "transformer")


def _softmax_model(shape, opset=13):
    g = helper.make_graph([helper.make_node("Softmax", ["x"], ["y"], axis=-1)], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape))])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)]).SerializeToString()


# short rows (exponentiated a block of rows at a time), rows of the block's width, long rows (one row a
# pass), and one large enough to be split over two threads
@pytest.mark.parametrize("shape,threads", [((2, 8, 48, 48), 1), ((1, 6, 197, 197), 1), ((3, 16384), 1),
                                           ((6, 40000), 1), ((64, 8, 1000), 2)])
def test_softmax_matches_onnxruntime(transformer_path, shape, threads):
    rng = np.random.default_rng(5)
    x = (rng.standard_normal(shape) * 8).astype(np.float32)
    flat = x.reshape(-1, shape[-1])
    flat[0, :] = -np.inf                 # a row of -inf: NaN (0/0), as onnxruntime
    flat[1, 3] = np.inf                  # inf - inf: a NaN row
    flat[2, 5] = np.nan
    flat[-1, :] = 0.0
    flat[-2, 1] = -np.inf
    flat[-3, 0] = 200.0
    m = _softmax_model(shape)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    want = ort.InferenceSession(m, so, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    eo = er.SessionOptions()
    eo.intra_op_num_threads = threads
    got = er.InferenceSession(m, eo, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.array_equal(np.isnan(got), np.isnan(want))
    ok = ~np.isnan(want)
    # two float32 exps (each ~1 ulp) and sums in different orders: a few ulp of the row's largest value
    np.testing.assert_allclose(got[ok], want[ok], rtol=2e-6, atol=2e-8)
    transformer_path.expect("softmax")
    with np.errstate(invalid="ignore"):
        e = np.exp(x.astype(np.float64) - x.astype(np.float64).max(-1, keepdims=True))
        exact = e / e.sum(-1, keepdims=True)
    np.testing.assert_allclose(got[ok], exact[ok], rtol=2e-6, atol=2e-8)
