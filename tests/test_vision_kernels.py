"""The CPU kernels with a compiled (numba) loop in ``_jit_vision`` -- Sigmoid, QuickGelu, InstanceNormalization,
nearest Resize by integer factors -- against float64 math or ``onnx.reference``, on both the compiled and the
NumPy path."""
from __future__ import annotations

import numpy as np
import pytest
from jit_paths import JIT_PATHS, choose_path
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import engineroom as ort
from engineroom.providers.cpu.activation import _quick_gelu, _sigmoid

RNG = np.random.default_rng(0)


@pytest.fixture
def path(request, monkeypatch):
    """param True: the compiled loops, and the test says which it expects to have run (``path.expect``);
    False: ``_jit.load`` answers None, the NumPy path."""
    return choose_path(request, monkeypatch, "vision")


_DT = {np.float32: TensorProto.FLOAT, np.float64: TensorProto.DOUBLE, np.float16: TensorProto.FLOAT16}


def _run(node, feeds, inits=(), opset=20, domain_ms=False):
    """One node through an unoptimized engineroom session (kernels are made when the session is)."""
    ins = [helper.make_tensor_value_info(k, _DT[v.dtype.type], v.shape) for k, v in feeds.items()]
    outs = [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in node.output]
    g = helper.make_graph([node], "g", ins, outs, [numpy_helper.from_array(a, n) for n, a in inits])
    ops = [helper.make_opsetid("", opset)] + ([helper.make_opsetid("com.microsoft", 1)] if domain_ms else [])
    m = helper.make_model(g, opset_imports=ops)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(m.SerializeToString(), so).run(None, feeds)[0], m


def _special_values(shape, dtype=np.float32, scale=6.0):
    x = (RNG.standard_normal(shape) * scale).astype(dtype)
    x.flat[:9] = [0.0, -0.0, 1e-30, -100.0, 100.0, -87.5, 88.5, np.inf, -np.inf]
    return x


def _sigmoid64(x):
    x = x.astype(np.float64)
    with np.errstate(over="ignore"):
        return 1 / (1 + np.exp(-x))


@pytest.mark.parametrize("path", JIT_PATHS, indirect=True)
@pytest.mark.parametrize("shape", [(1, 32, 32, 32), (3, 5), (13,)])
def test_sigmoid(path, shape):
    x = _special_values(shape)
    x.flat[9] = np.nan
    got, _ = _run(helper.make_node("Sigmoid", ["x"], ["y"]), {"x": x})
    path.expect("sigmoid")
    assert got.dtype == np.float32 and got.shape == x.shape
    want = _sigmoid64(x)
    np.testing.assert_allclose(got, want, rtol=3e-6, atol=1e-37)


@pytest.mark.parametrize("path", JIT_PATHS, indirect=True)
@pytest.mark.parametrize("alpha", [None, 1.0, -0.5])
@pytest.mark.parametrize("shape", [(2, 64, 16, 16), (5, 3)])
def test_quick_gelu(path, alpha, shape):
    x = _special_values(shape)
    x.flat[9] = np.nan
    attrs = {} if alpha is None else {"alpha": alpha}
    got, _ = _run(helper.make_node("QuickGelu", ["x"], ["y"], domain="com.microsoft", **attrs), {"x": x},
                  domain_ms=True)
    path.expect("quick_gelu")
    a = 1.702 if alpha is None else alpha         # onnxruntime's default
    with np.errstate(invalid="ignore"):
        want = x.astype(np.float64) * _sigmoid64(a * x.astype(np.float64))
    # x * sigmoid(a x) at x = +-inf: inf * 1 = inf, -inf * 0 is NaN in both float64 and float32 math
    finite = np.isfinite(x)
    np.testing.assert_allclose(got[finite], want[finite], rtol=3e-6, atol=1e-37)
    assert np.isnan(got.flat[9])


@pytest.mark.parametrize("path", JIT_PATHS, indirect=True)
def test_sigmoid_and_quick_gelu_other_dtypes_and_strided(path):
    x = RNG.standard_normal((4, 6, 8)).astype(np.float32)[:, ::2, 1:]       # not contiguous
    for dt in (np.float16, np.float64):
        xd = x.astype(dt)
        got, _ = _run(helper.make_node("QuickGelu", ["x"], ["y"], domain="com.microsoft", alpha=1.0), {"x": xd},
                      domain_ms=True)
        assert got.dtype == dt
        np.testing.assert_allclose(got, xd.astype(np.float64) * _sigmoid64(xd),
                                   rtol=2e-3 if dt == np.float16 else 1e-12)
        path.expect("quick_gelu", taken=dt == np.float16)       # float16 computes in float32
    # strided float32 straight to the kernels
    np.testing.assert_allclose(_sigmoid(x, np, {}), _sigmoid64(x), rtol=3e-6)
    np.testing.assert_allclose(_quick_gelu(x, np, {"alpha": 1.0}), x * _sigmoid64(x), rtol=3e-6, atol=1e-37)
    path.expect("quick_gelu")


def _instance_norm64(x, scale, bias, eps):
    x = x.astype(np.float64)
    axes = tuple(range(2, x.ndim))
    m = x.mean(axis=axes, keepdims=True)
    v = ((x - m) ** 2).mean(axis=axes, keepdims=True)
    shp = (1, -1) + (1,) * (x.ndim - 2)
    return (x - m) / np.sqrt(v + eps) * scale.astype(np.float64).reshape(shp) + bias.astype(np.float64).reshape(shp)


@pytest.mark.parametrize("path", JIT_PATHS, indirect=True)
@pytest.mark.parametrize("shape", [(1, 8, 1024), (2, 3, 5, 7), (2, 4, 3, 2, 5), (3, 2, 1)])
@pytest.mark.parametrize("offset", [0.0, 1000.0])
def test_instance_norm(path, shape, offset):
    x = (RNG.standard_normal(shape) + offset).astype(np.float32)
    scale = RNG.standard_normal(shape[1]).astype(np.float32)
    bias = RNG.standard_normal(shape[1]).astype(np.float32)
    eps = 1e-3
    got, _ = _run(helper.make_node("InstanceNormalization", ["x", "s", "b"], ["y"], epsilon=eps), {"x": x},
                  [("s", scale), ("b", bias)])
    path.expect("instance_norm")
    assert got.dtype == np.float32
    # a large mean costs float32 its last digits in the input itself (x is stored to 6e-5 at 1000)
    np.testing.assert_allclose(got, _instance_norm64(x, scale, bias, eps), rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("path", JIT_PATHS, indirect=True)
@pytest.mark.parametrize("dt", [np.float16, np.float64])
def test_instance_norm_other_dtypes(path, dt):
    x = RNG.standard_normal((2, 3, 4, 5)).astype(dt)
    scale, bias = RNG.standard_normal(3).astype(dt), RNG.standard_normal(3).astype(dt)
    got, _ = _run(helper.make_node("InstanceNormalization", ["x", "s", "b"], ["y"]), {"x": x},
                  [("s", scale), ("b", bias)])
    path.expect("instance_norm", taken=False)
    assert got.dtype == dt
    np.testing.assert_allclose(got, _instance_norm64(x, scale, bias, 1e-5), rtol=1e-2 if dt == np.float16 else 1e-6,
                               atol=1e-2 if dt == np.float16 else 1e-6)


_NEAREST = [("asymmetric", "floor"), ("half_pixel", "round_prefer_floor"), ("align_corners", "round_prefer_ceil"),
            ("pytorch_half_pixel", "ceil")]


@pytest.mark.parametrize("path", JIT_PATHS, indirect=True)
@pytest.mark.parametrize("ctm,mode", _NEAREST)
@pytest.mark.parametrize("shape,scales", [((1, 64, 16, 16), (1, 1, 2, 2)), ((2, 3, 5, 4), (1, 1, 3, 2)),
                                          ((2, 3, 5, 4), (1, 1, 1, 3)), ((2, 3, 5, 4), (1, 1, 2, 1)),
                                          ((4, 6, 5), (1, 2, 2)), ((2, 3, 5, 4), (1, 1, 2.5, 2)),
                                          ((2, 3, 5, 4), (1, 2, 2, 2)), ((2, 3, 6, 4), (1, 1, 0.5, 1))])
def test_resize_nearest(path, ctm, mode, shape, scales):
    x = RNG.standard_normal(shape).astype(np.float32)
    node = helper.make_node("Resize", ["x", "", "sc"], ["y"], mode="nearest", coordinate_transformation_mode=ctm,
                            nearest_mode=mode)
    sc = np.array(scales, np.float32)
    got, m = _run(node, {"x": x}, [("sc", sc)])
    want = ReferenceEvaluator(m).run(None, {"x": x})[0]
    np.testing.assert_array_equal(got, want)
    # the compiled replication serves integer enlargements of the last two axes where every output index
    # i reads input i // factor (asymmetric/floor at any factor, half_pixel at x2, ...): where the result is
    # that replication
    ints = all(float(s).is_integer() and s >= 1 for s in scales) and all(s == 1 for s in scales[:-2])
    rep = x
    for ax in (-2, -1):
        rep = np.repeat(rep, int(scales[ax]), axis=ax) if ints else rep
    path.expect("resize_nearest", taken=ints and scales[-2:] != (1, 1) and np.array_equal(rep, want))
