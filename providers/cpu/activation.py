"""Activation kernels: Relu and friends, Sigmoid, Tanh, Gelu, Erf, Softplus, Mish, Swish, Shrink, ...

Float activations compute in float32 when the input is a 16-bit (or smaller) float and cast back:
NumPy would otherwise round every intermediate to float16, ml_dtypes' bfloat16 promotes to float32
as soon as a Python float touches it, and SciPy's ``erf``/``expit`` have no float16 loop. Each
``compute`` below starts with an operation that allocates a fresh array, then works in place on it,
so the caller's input is never written.

Speed notes (NumPy 2, one core, 1M float32): ``maximum(x, 0)`` with a scalar takes a slow loop while
the ``clip`` ufunc with two scalar bounds is vectorized (4x faster), so max(x, 0) / min(x, 0) are
written as clips; ``where``/``copyto(where=)`` are slow on mixed masks, so piecewise functions are
sums of their positive and negative parts; SciPy's ``erf`` and ``expit`` run in double precision
per element, so float32 uses a rational erf and a ufunc-based sigmoid.
"""
from __future__ import annotations

import math
import warnings

import ml_dtypes
import numpy as np

from engineroom.providers.cpu._threadpool import parallel_ranges
from engineroom.providers.cpu.array_module import NUMPY, arrays
from engineroom.providers.cpu.registry import array_kernel

# IEEE results (log(0) = -inf, 0/0 = NaN, overflow to inf, NaN cast to int) are what ONNX specifies and
# what onnxruntime returns silently; NumPy would warn from inside these kernels, so not from here.
warnings.filterwarnings("ignore", category=RuntimeWarning, module=r"engineroom\.providers\.cpu\.activation$")

_F32 = np.dtype(np.float32)
_F64 = np.dtype(np.float64)
_UPCAST = frozenset(np.dtype(t) for t in (
    np.float16, ml_dtypes.bfloat16, ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e4m3fnuz,
    ml_dtypes.float8_e5m2, ml_dtypes.float8_e5m2fnuz))


try:
    from numpy._core import umath as _umath
except ImportError:     # NumPy 1.x
    from numpy.core import umath as _umath

_NP_CLIP = getattr(_umath, "clip", None)   # the ufunc behind np.clip, without its Python wrapper
_INF = float("inf")


def _clipper(xp):
    return _NP_CLIP if arrays(xp).host and _NP_CLIP is not None else xp.clip


def _pos(x, xp):
    """max(x, 0) as a new array."""
    if x.dtype.kind == "f":
        return _clipper(xp)(x, 0.0, _INF)
    return xp.maximum(x, 0)


def _neg(x, xp):
    """min(x, 0) as a new array."""
    if x.dtype.kind == "f":
        return _clipper(xp)(x, -_INF, 0.0)
    return xp.minimum(x, 0)


def _float_kernel(op: str, since: int, compute, domain: str = "", types=None):
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
            if (dt is _F32 or dt is _F64) and x.ndim:     # the common case first, with the least checking
                return (compute(x, xp, attrs),)
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
    array_kernel(op, domain=domain, since=since, types=types)(factory)
    return compute


# ----- piecewise linear -------------------------------------------------------------------------

@array_kernel("Relu", since=1)
def relu(info):
    xp = info.xp
    nd = xp.ndarray
    clip = _clipper(xp)

    def run(x):
        # ints (Relu-14), float16, bfloat16: maximum keeps the dtype; float32/64: the fast clip
        r = clip(x, 0.0, _INF) if x.dtype.kind == "f" and x.dtype.itemsize >= 4 else xp.maximum(x, 0)
        return (r if r.__class__ is nd else xp.asarray(r),)

    return run


def _leaky_relu(x, xp, a):
    alpha = a.get("alpha", 0.01)
    if not np.isfinite(alpha):   # x * inf is NaN at 0: onnxruntime's x >= 0 ? x : alpha x
        return xp.where(x >= 0, x, x * alpha)
    r = x * alpha
    # for alpha <= 1, max(x, alpha x) is x where x > 0 and alpha x elsewhere; for alpha > 1, min
    (xp.maximum if alpha <= 1.0 else xp.minimum)(r, x, out=r)
    return r


_float_kernel("LeakyRelu", 1, _leaky_relu)


@array_kernel("PRelu", since=1)
def prelu(info):
    """PRelu: x >= 0 ? x : slope x, the slope broadcasting to X; float and (opset 16) int types."""
    xp = info.xp
    per_channel = info.opset < 7  # before opset 7 a 1-D slope runs along the channel axis (1)

    def run(x, slope):
        dt = x.dtype
        if per_channel and slope.ndim == 1 and x.ndim > 2 and slope.shape[0] == x.shape[1]:
            slope = slope.reshape((-1,) + (1,) * (x.ndim - 2))
        if dt in _UPCAST:
            x = x.astype(np.float32)
            slope = slope.astype(np.float32)
        # onnxruntime's x >= 0 ? x : slope x: a NaN or infinite slope stays out of x >= 0 (0 * it is NaN)
        with np.errstate(invalid="ignore"):
            r = xp.where(x >= 0, x, x * slope)
        return (r.astype(dt, copy=False),)

    return run


def _thresholded_relu(x, xp, a):
    return xp.where(x > a.get("alpha", 1.0), x, 0)


_float_kernel("ThresholdedRelu", 10, _thresholded_relu)


def _hard_sigmoid_of(x, xp, alpha, beta):
    """max(0, min(1, alpha x + beta)) as a new array."""
    r = x * alpha
    r += beta
    _clipper(xp)(r, 0.0, 1.0, out=r)
    return r


def _hard_sigmoid(x, xp, a):
    return _hard_sigmoid_of(x, xp, a.get("alpha", 0.2), a.get("beta", 0.5))


_float_kernel("HardSigmoid", 1, _hard_sigmoid)


def _hard_swish(x, xp, a):
    jit = _vision_jit(x, xp)
    if jit is not None:         # one pass instead of four (PP-LCNet has 28 HardSwish)
        x = np.ascontiguousarray(x)
        y = np.empty(x.shape, _F32)
        jit.hard_swish(x.reshape(-1), y.reshape(-1))
        return y
    r = _hard_sigmoid_of(x, xp, 1.0 / 6.0, 0.5)
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

def _elu_core(x, xp, alpha):
    """alpha (exp(min(x, 0)) - 1) + max(x, 0): exp only of the non-positive part, so no overflow."""
    r = _neg(x, xp)
    xp.expm1(r, out=r)
    r *= alpha
    r += _pos(x, xp)
    return r


def _elu(x, xp, a):
    return _elu_core(x, xp, a.get("alpha", 1.0))


_float_kernel("Elu", 1, _elu)


_SELU_ALPHA = 1.67326319217681884765625
_SELU_GAMMA = 1.05070102214813232421875


def _selu(x, xp, a):
    r = _elu_core(x, xp, a.get("alpha", _SELU_ALPHA))
    r *= a.get("gamma", _SELU_GAMMA)
    return r


_float_kernel("Selu", 1, _selu)


def _celu(x, xp, a):
    alpha = a.get("alpha", 1.0)
    r = _neg(x, xp)
    r /= alpha
    xp.expm1(r, out=r)
    r *= alpha
    r += _pos(x, xp)
    return r


_float_kernel("Celu", 12, _celu)

_SMALL = 4096   # below this many elements, per-call overhead beats per-element speed


def _sigmoid_of(x, xp, scale=1.0):
    """sigmoid(scale * x) as a new array."""
    if x.size < _SMALL or not arrays(xp).host:
        r = x * scale if scale != 1.0 else x.copy()
        return arrays(xp).special.expit(r, out=r)
    r = x * -scale
    with np.errstate(over="ignore"):    # exp(-x) overflows to inf for x < -88; 1 / (1 + inf) = 0 is right
        xp.exp(r, out=r)
    r += 1
    xp.reciprocal(r, out=r)
    return r


def _vision_jit(x, xp):
    """The compiled loops of ``_jit_vision`` where they take ``x`` (a float32 NumPy array, numba
    installed), else None."""
    if not arrays(xp).host or x.dtype != _F32 or x.__class__ is not np.ndarray:
        return None
    return arrays(xp).compiled("vision")


def _compiled_elementwise(x, xp, module, name):
    """The compiled elementwise loop ``name`` of module ``module`` over float32 ``x`` (y = f(x), both (n,)),
    split over the provider's pool where it is large (the loops release the GIL); None where it cannot run."""
    if not arrays(xp).host or x.dtype != _F32 or x.__class__ is not np.ndarray:
        return None
    jit = arrays(xp).compiled(module)
    if jit is None:
        return None
    fn = getattr(jit, name)
    x = np.ascontiguousarray(x)
    y = np.empty(x.shape, _F32)
    xf, yf = x.reshape(-1), y.reshape(-1)
    if xf.size < _SMALL:
        fn(xf, yf)
    else:
        parallel_ranges(lambda i, j: fn(xf[i:j], yf[i:j]), xf.size, xf.size)
    return y


def _sigmoid(x, xp, a):
    y = _compiled_elementwise(x, xp, "vision", "sigmoid")
    return y if y is not None else _sigmoid_of(x, xp)


_float_kernel("Sigmoid", 1, _sigmoid)


def _quick_gelu(x, xp, a):
    """x * sigmoid(alpha x): onnxruntime's contrib op, SiLU with alpha = 1 (what the fusion of
    Sigmoid(x) -> Mul(x, .) makes)."""
    alpha = float(a.get("alpha", 1.702))
    jit = _vision_jit(x, xp)
    if jit is not None:
        x = np.ascontiguousarray(x)
        y = np.empty(x.shape, _F32)
        jit.quick_gelu(x.reshape(-1), np.float32(alpha), y.reshape(-1))
        return y
    r = _sigmoid_of(x, xp, alpha)
    with np.errstate(invalid="ignore"):     # -inf * sigmoid(-inf) = -inf * 0: NaN, as the float math says
        r *= x
    return r


_float_kernel("QuickGelu", 1, _quick_gelu, domain="com.microsoft",
              types=(np.float32, np.float64, np.float16, ml_dtypes.bfloat16))


def _swish(x, xp, a):
    r = _sigmoid_of(x, xp, a.get("alpha", 1.0))
    r *= x
    return r


_float_kernel("Swish", 24, _swish)


def _tanh(x, xp, a):
    # MLAS's rational tanh, as onnxruntime computes it (20x NumPy's exact libm tanh on 4M elements)
    y = _compiled_elementwise(x, xp, "elementwise", "tanh")
    return y if y is not None else xp.tanh(x)


_float_kernel("Tanh", 1, _tanh)


def _softplus(x, xp, a):
    # log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|)): no overflow, full precision for very negative x
    r = xp.abs(x)
    xp.negative(r, out=r)
    xp.exp(r, out=r)
    xp.log1p(r, out=r)
    r += _pos(x, xp)
    return r


_float_kernel("Softplus", 1, _softplus)


def _softsign(x, xp, a):
    r = xp.abs(x)
    r += 1
    xp.divide(x, r, out=r)
    return r


_float_kernel("Softsign", 1, _softsign)


def _mish(x, xp, a):
    # tanh(log(1 + n)) = (n^2 + 2n) / (n^2 + 2n + 2) with n = exp(x); for x > 20 the ratio is 1.0 in
    # any float precision we compute in, so x is clamped there to keep n^2 finite.
    n = _clipper(xp)(x, -_INF, 20.0)
    xp.exp(n, out=n)
    t = n + 2
    t *= n
    d = t + 2
    t /= d
    t *= x
    return t


_float_kernel("Mish", 18, _mish)


# ----- erf / gelu -------------------------------------------------------------------------------

# erf(x) = x P(x^2) / Q(x^2) on |x| <= 4 (erf(4) rounds to 1 in float32): a rational approximation of
# erf(x)/x in s = x^2 over [0, 16], fitted here by iteratively reweighted linear least squares on the
# relative error (max 3.7e-8 in exact arithmetic; <= 7 ulp evaluated in float32, NaN and +-Inf right).
_ERF_P = (1.12837913244819, 0.19541427002500664, 0.053352600109481105, 0.003963191440945433,
          0.0002863069463684284, 1.9726112435642207e-06)
_ERF_Q = (1.0, 0.5065136860842512, 0.11612555469222957, 0.015368908586090668,
          0.0012047239671908892, 3.7362285180980426e-05)


def _erf_f32(x, xp):
    # Three temporaries only (fresh large arrays cost page faults): s = min(|x|, 4)^2, P, Q. For
    # |x| > 4 the result x P(16)/Q(16) = x/4 lies beyond +-1 and the final clip makes it +-1.
    clip = _clipper(xp)
    s = clip(x, -4.0, 4.0)
    s *= s
    q = s * _ERF_Q[5]
    q += _ERF_Q[4]
    for c in _ERF_Q[3::-1]:
        q *= s
        q += c
    p = s * _ERF_P[5]
    p += _ERF_P[4]
    for c in _ERF_P[3::-1]:
        p *= s
        p += c
    p /= q
    p *= x
    clip(p, -1.0, 1.0, out=p)
    return p


def _erf(x, xp, a=None):
    if x.dtype == np.float32 and arrays(xp).host:
        return _erf_f32(x, xp)
    return arrays(xp).special.erf(x)


_float_kernel("Erf", 9, _erf)

_SQRT_HALF = math.sqrt(0.5)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


# Phi(x) = 0.5 erfc(-x / sqrt 2), the normal CDF in Gelu, through erfc(t) = exp(-t^2) R(t) for t >= 0:
# R(t) = erfcx(t) ~ P(t)/Q(t) on [0, 10], fitted as above (max relative error 6.5e-9). Unlike
# 1 + erf(x / sqrt 2), this keeps full relative precision in the negative tail (x < -2), where
# 1 + erf cancels (onnxruntime's float32 Gelu loses 5e-4 relative there, 100% below -4).
_ERFCX_P = (1.0000000054665772, 1.2392601243114465, 0.7324886359774843,
            0.22963824164573216, 0.032883837789358175)
_ERFCX_Q = (1.0, 2.367639865339717, 2.404074701759824,
            1.327018902865663, 0.40704916306272954, 0.058284400510205475)


def _gelu_erf_f32(x, xp):
    # x Phi(x) = max(x, 0) - |x| Phi(-|x|), and |x| Phi(-|x|) = e t sqrt(2) 0.5 P(t)/Q(t) with
    # t = |x| / sqrt 2, e = exp(-t^2): no cancellation anywhere, one formula for both signs.
    # Three temporaries only (fresh large arrays cost page faults): t, P, and Q (reused for e, out).
    clip = _clipper(xp)
    t = xp.abs(x)
    t *= _SQRT_HALF
    clip(t, 0.0, 9.0, out=t)      # |x| Phi(-|x|) < 1e-35 beyond; keeps e out of the (slow) subnormals; NaN passes
    q = t * _ERFCX_Q[5]
    q += _ERFCX_Q[4]
    for c in _ERFCX_Q[3::-1]:
        q *= t
        q += c
    k = _SQRT_HALF                # sqrt(2) * 0.5, folded into P
    p = t * (k * _ERFCX_P[4])
    p += k * _ERFCX_P[3]
    for c in _ERFCX_P[2::-1]:
        p *= t
        p += k * c
    p /= q
    e = xp.multiply(t, t, out=q)
    xp.negative(e, out=e)
    xp.exp(e, out=e)
    p *= e
    p *= t                        # |x| Phi(-|x|)
    r = clip(x, 0.0, _INF, out=e)
    r -= p
    r[x == -np.inf] = np.nan      # the definition's -inf * 0 there, as onnxruntime and onnx.reference
    return r


_NO_BIAS = np.empty(0, np.float32)


def gelu_compiled(x, bias=None, tanh=False, ort=False):
    """Gelu(x + bias) (tanh: the approximation; ort: com.microsoft FastGelu as onnxruntime computes it)
    in one compiled pass, for float32 NumPy arrays where numba is installed; None where that path does
    not apply (the caller runs its NumPy path). ``bias``, if given, is a float32 vector over the last axis."""
    if x.dtype != _F32 or not x.ndim or x.__class__ is not np.ndarray:
        return None
    jit = NUMPY.compiled("transformer")
    if jit is None:
        return None
    h = x.shape[-1]
    if bias is None:
        b = _NO_BIAS
    elif bias.dtype == _F32 and bias.shape == (h,) and bias.__class__ is np.ndarray:
        b = np.ascontiguousarray(bias)
    else:
        return None
    x = np.ascontiguousarray(x)
    y = np.empty(x.shape, _F32)
    if x.size:
        rows = (1, x.size) if bias is None else (x.size // h, h)   # one long row vectorizes best
        (jit.ort_fast_gelu if ort else jit.fast_gelu if tanh else jit.gelu)(x.reshape(rows), b, y.reshape(rows))
    return y


def _gelu(x, xp, a):
    tanh = a.get("approximate", "none") == "tanh"
    if arrays(xp).host:
        y = gelu_compiled(x, None, tanh)
        if y is not None:
            return y
    if tanh:
        # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        r = x * x
        r *= 0.044715
        r += 1
        r *= x
        r *= _SQRT_2_OVER_PI
        xp.tanh(r, out=r)
        r += 1
        r *= x
        r *= 0.5
        return r
    if x.dtype == np.float32 and arrays(xp).host:
        return _gelu_erf_f32(x, xp)
    # x Phi(x) = 0.5 x erfc(-x / sqrt 2): erfc has no cancellation for negative x
    r = x * -_SQRT_HALF
    arrays(xp).special.erfc(r, out=r)
    r *= x
    r *= 0.5
    return r


_float_kernel("Gelu", 20, _gelu)
