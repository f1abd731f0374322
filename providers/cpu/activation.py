"""Activation kernels: Relu and friends, Sigmoid, Tanh, Gelu, Erf, Softplus, Mish, Swish, Shrink, ...

Float activations compute in float32 when the input is a 16-bit (or smaller) float and cast back:
NumPy would otherwise round every intermediate to float16, ml_dtypes' bfloat16 promotes to float32
as soon as a Python float touches it, and SciPy's ``erf``/``expit`` have no float16 loop. Each
``compute`` below starts with an operation that allocates a fresh array, then works in place on it,
so the caller's input is never written.
"""
from __future__ import annotations

import math

import ml_dtypes
import numpy as np
from engineroom.providers.cpu.registry import kernel

_UPCAST = frozenset(np.dtype(t) for t in (
    np.float16, ml_dtypes.bfloat16, ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e4m3fnuz,
    ml_dtypes.float8_e5m2, ml_dtypes.float8_e5m2fnuz))


def _special(xp):
    """scipy.special for NumPy, cupyx.scipy.special for CuPy (imported lazily: CuPy is optional)."""
    if xp is np:
        import scipy.special
        return scipy.special
    import cupyx.scipy.special
    return cupyx.scipy.special


def _float_kernel(op: str, since: int, compute):
    """Register ``compute(x, xp, attrs) -> array`` for float input ``x`` (float32/float64 arrays, >= 1-d).

    Lower-precision floats are computed in float32 and cast back; integer inputs (the few ops
    that allow them) are computed in float64 and cast back. 0-d inputs run as 1-element arrays so
    ``compute`` may use ``out=`` freely.
    """

    def factory(info):
        xp = info.xp
        attrs = info.attrs

        def run(x):
            dt = x.dtype
            shape0 = x.ndim == 0
            if shape0:
                x = x.reshape(1)
            if dt in _UPCAST:
                r = compute(x.astype(np.float32), xp, attrs).astype(dt)
            elif dt.kind in "iub":
                r = compute(x.astype(np.float64), xp, attrs).astype(dt)
            else:
                r = compute(x, xp, attrs)
            return (r.reshape(()) if shape0 else r,)

        return run

    factory.__name__ = f"{op.lower()}_{since}"
    kernel(op, since=since)(factory)
    return compute


# ----- piecewise linear -------------------------------------------------------------------------

@kernel("Relu", since=1)
def relu(info):
    xp = info.xp
    nd = xp.ndarray

    def run(x):
        r = xp.maximum(x, 0)
        return (r if r.__class__ is nd else xp.asarray(r),)

    return run


def _leaky_relu(x, xp, a):
    r = x * a.get("alpha", 0.01)
    xp.copyto(r, x, where=x > 0)
    return r


_float_kernel("LeakyRelu", 1, _leaky_relu)


@kernel("PRelu", since=1)
def prelu(info):
    """PRelu: the slope broadcasts to X (unidirectionally); float and (opset 16) integer types."""
    xp = info.xp

    def run(x, slope):
        dt = x.dtype
        if dt in _UPCAST:
            x32 = x.astype(np.float32)
            r = x32 * slope.astype(np.float32)
            xp.copyto(r, x32, where=x32 > 0)
            return (r.astype(dt),)
        r = xp.asarray(x * slope)
        if r.shape != x.shape:          # a slope of higher rank than X (not allowed, but be safe)
            r = xp.where(x > 0, x, r)
        else:
            xp.copyto(r, x, where=x > 0)
        return (r,)

    return run


def _thresholded_relu(x, xp, a):
    r = x.copy()
    r[x <= a.get("alpha", 1.0)] = 0
    return r


_float_kernel("ThresholdedRelu", 10, _thresholded_relu)


def _hard_sigmoid_into(r, xp, alpha, beta):
    r *= alpha
    r += beta
    xp.clip(r, 0, 1, out=r)
    return r


def _hard_sigmoid(x, xp, a):
    return _hard_sigmoid_into(x.copy(), xp, a.get("alpha", 0.2), a.get("beta", 0.5))


_float_kernel("HardSigmoid", 1, _hard_sigmoid)


def _hard_swish(x, xp, a):
    r = _hard_sigmoid_into(x.copy(), xp, 1.0 / 6.0, 0.5)
    r *= x
    return r


_float_kernel("HardSwish", 14, _hard_swish)


def _shrink(x, xp, a):
    lambd = a.get("lambd", 0.5)
    bias = a.get("bias", 0.0)
    r = xp.zeros_like(x)
    lo = x < -lambd
    hi = x > lambd
    r[lo] = x[lo] + bias
    r[hi] = x[hi] - bias
    return r


_float_kernel("Shrink", 9, _shrink)


# ----- exponential family -----------------------------------------------------------------------

def _elu(x, xp, a):
    r = xp.minimum(x, 0)        # exp only of the non-positive part: no overflow for large x
    xp.expm1(r, out=r)
    r *= a.get("alpha", 1.0)
    xp.copyto(r, x, where=x > 0)
    return r


_float_kernel("Elu", 1, _elu)


_SELU_ALPHA = 1.67326319217681884765625
_SELU_GAMMA = 1.05070102214813232421875


def _selu(x, xp, a):
    r = xp.minimum(x, 0)
    xp.expm1(r, out=r)
    r *= a.get("alpha", _SELU_ALPHA)
    xp.copyto(r, x, where=x > 0)
    r *= a.get("gamma", _SELU_GAMMA)
    return r


_float_kernel("Selu", 1, _selu)


def _celu(x, xp, a):
    alpha = a.get("alpha", 1.0)
    r = xp.minimum(x, 0)
    r /= alpha
    xp.expm1(r, out=r)
    r *= alpha
    r += xp.maximum(x, 0)
    return r


_float_kernel("Celu", 12, _celu)


def _sigmoid(x, xp, a):
    return _special(xp).expit(x)


_float_kernel("Sigmoid", 1, _sigmoid)


def _swish(x, xp, a):
    alpha = a.get("alpha", 1.0)
    r = x * alpha if alpha != 1.0 else x.copy()
    sp = _special(xp)
    sp.expit(r, out=r)
    r *= x
    return r


_float_kernel("Swish", 24, _swish)


def _tanh(x, xp, a):
    return xp.tanh(x)


_float_kernel("Tanh", 1, _tanh)


def _softplus(x, xp, a):
    return xp.logaddexp(x, 0)     # log(1 + exp(x)) without overflow


_float_kernel("Softplus", 1, _softplus)


def _softsign(x, xp, a):
    r = xp.abs(x)
    r += 1
    xp.divide(x, r, out=r)
    return r


_float_kernel("Softsign", 1, _softsign)


def _mish(x, xp, a):
    r = xp.logaddexp(x, 0)
    xp.tanh(r, out=r)
    r *= x
    return r


_float_kernel("Mish", 18, _mish)


# ----- erf / gelu -------------------------------------------------------------------------------

def _erf(x, xp, a):
    return _special(xp).erf(x)


_float_kernel("Erf", 9, _erf)

_SQRT_HALF = math.sqrt(0.5)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _gelu(x, xp, a):
    if a.get("approximate", "none") == "tanh":
        # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        r = x * x
        r *= 0.044715
        r += 1
        r *= x
        r *= _SQRT_2_OVER_PI
        xp.tanh(r, out=r)
    else:
        # 0.5 x (1 + erf(x / sqrt(2)))
        r = x * _SQRT_HALF
        _special(xp).erf(r, out=r)
    r += 1
    r *= x
    r *= 0.5
    return r


_float_kernel("Gelu", 20, _gelu)
