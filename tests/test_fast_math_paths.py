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


@pytest.mark.parametrize("n,threads", [(100, 1), (3 << 19, 2)])
@pytest.mark.parametrize("op,exact", [("Tanh", np.tanh), ("Sigmoid", lambda v: 1.0 / (1.0 + np.exp(-v)))])
def test_tanh_sigmoid_match_onnxruntime(path, op, exact, n, threads):
    x = _inputs(n, 6.0).reshape(-1, 2) if n % 2 == 0 else _inputs(n, 6.0)
    (want,), (got,) = _both(op, x, threads)
    assert got.dtype == np.float32 and got.shape == x.shape
    nan = np.isnan(x)
    assert np.array_equal(np.isnan(got), nan)
    # the compiled loops are MLAS's polynomials: onnxruntime's numbers to an ulp; NumPy's exact functions
    # differ from both by MLAS's approximation error (< 2 ulp at 1)
    tol = 1.2e-7 if path.jit else 3.6e-7
    np.testing.assert_allclose(got[~nan], want[~nan], rtol=tol, atol=tol)
    with np.errstate(over="ignore"):
        e = exact(x[~nan].astype(np.float64))
    np.testing.assert_allclose(got[~nan], e, rtol=4e-7, atol=3.6e-7)
    path.expect("tanh" if op == "Tanh" else "logistic")


def test_tanh_is_onnxruntimes_bit_for_bit(path):
    if not path.jit:
        pytest.skip("the NumPy path computes the exact tanh, not MLAS's")
    x = _inputs(1 << 18, 4.0, seed=1)
    (want,), (got,) = _both("Tanh", x, 2)
    np.testing.assert_array_equal(got, want)


def test_tanh_float16_and_strided(path):
    x = _inputs(4000, 3.0, seed=2).reshape(40, 100)
    xs = x[:, ::2]                      # a strided float32 view goes through the compiled loop as a copy
    m = _model("Tanh", xs.shape)
    got = er.InferenceSession(m).run(None, {"x": np.ascontiguousarray(xs)})[0]
    from engineroom.providers.cpu.activation import _tanh
    np.testing.assert_array_equal(_tanh(xs, np, {}), got)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(xs))


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
