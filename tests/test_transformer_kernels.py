"""The CPU transformer kernels with a compiled (numba) path -- Gelu, BiasGelu, FastGelu, Softmax,
LayerNormalization -- against float64 math, on both the compiled and the NumPy path."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.special as sp

from engineroom.providers.cpu import _jit
from engineroom.providers.cpu.registry import registry

JIT_PATHS = [pytest.param(True, id="jit", marks=pytest.mark.skipif(not _jit.available(),
                                                                   reason="numba is not installed (jit extra)")),
             pytest.param(False, id="numpy")]


@pytest.fixture
def path(request, monkeypatch):
    """Run the kernel with the compiled loops (param True) or with ``_jit.load`` answering None."""
    if not request.param:
        monkeypatch.setattr(_jit, "load", lambda name: None)
    return request.param


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
    run = make("FastGelu", domain="com.microsoft", opset=1, n_in=2 if with_bias else 1)
    (y,) = run(X, BIAS) if with_bias else run(X)
    v = X + BIAS if with_bias else X
    check_tanh(y, gelu_tanh64(v), path)


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
