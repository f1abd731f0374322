"""Compiled (numba) loops for the transformer kernels: Gelu / BiasGelu (exact, erf), FastGelu,
Softmax and LayerNormalization over the last axis, float32 only.

NumPy runs each of these as 10-25 whole-array passes (a rational erf alone is ~20); here every element
is read once and written once, with the bias add, the nonlinearity and the row statistics in one loop
per row. ``math.exp`` compiles to a scalar libm call that blocks vectorization, so exp is written out
(Cody-Waite range reduction, Cephes' degree-6 polynomial, 2^n built in the exponent bits): the loops
then vectorize to full SIMD width, and agree with NumPy's float32 exp to ~2 ulp.

Single-threaded on the calling thread, as in ``_jit_conv`` (OpenBLAS's spinning workers take the
other core between GEMMs).
"""
from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

_f = np.float32
# constants as float32 scalars: a Python float would promote every expression to float64 (half the lanes)
F0, F1, HALF = _f(0.0), _f(1.0), _f(0.5)
LOG2E = _f(1.4426950408889634)
LN2_HI, LN2_LO = _f(0.693359375), _f(-2.12194440e-4)     # ln 2 = HI + LO, HI exact in 9 bits
ROUND = _f(12582912.0)                                  # 1.5 * 2^23: y + ROUND - ROUND rounds y to an int
EXP_LO, EXP_HI = _f(-87.33), _f(88.37)                  # e^y is a normal float32 in between
EXP_P = (_f(1.9875691500e-4), _f(1.3981999507e-3), _f(8.3334519073e-3), _f(4.1665795894e-2),
         _f(1.6666665459e-1), _f(5.0000001201e-1))
P0, P1, P2, P3, P4, P5 = EXP_P

# erfcx(t) = e^(t^2) erfc(t) ~ P(t) / Q(t) on [0, 9] (activation._ERFCX_P/Q, max relative error 6.5e-9),
# P pre-scaled by sqrt(1/2): then |x| Phi(-|x|) = t e^(-t^2) P(t) / Q(t) with t = |x| / sqrt(2)
_K = math.sqrt(0.5)
GP = tuple(_f(_K * c) for c in (1.0000000054665772, 1.2392601243114465, 0.7324886359774843,
                                  0.22963824164573216, 0.032883837789358175))
GQ = tuple(_f(c) for c in (1.0, 2.367639865339717, 2.404074701759824, 1.327018902865663,
                           0.40704916306272954, 0.058284400510205475))
GP0, GP1, GP2, GP3, GP4 = GP
GQ0, GQ1, GQ2, GQ3, GQ4, GQ5 = GQ
SQRT_HALF = _f(_K)
T_MAX = _f(9.0)           # |x| Phi(-|x|) < 1e-35 beyond t = 9
X_MAX = _f(12.75)         # |x| where t passes 9: keeps e^(-x^2/2) finite and normal (and inf out of it)
# FastGelu: 0.5 x (1 + tanh(u)) = x / (1 + e^(-2u)), u = sqrt(2/pi) (x + 0.044715 x^3)
FG_A = _f(-2.0 * math.sqrt(2.0 / math.pi))
FG_B = _f(-2.0 * math.sqrt(2.0 / math.pi) * 0.044715)


@intrinsic
def _pow2(typingctx, n):
    """2^n as float32 for an int32 n in [-126, 127]: n + 127 written into the exponent field."""
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        bits = builder.shl(builder.add(args[0], ir.Constant(i32, 127)), ir.Constant(i32, 23))
        return builder.bitcast(bits, ir.FloatType())

    return sig, codegen


@njit(inline="always", nogil=True, error_model="numpy")
def _exp_core(y):  # pragma: no cover (compiled)
    """e^y for float32 y in [EXP_LO, EXP_HI] (no range checks: callers clamp)."""
    k = y * LOG2E + ROUND
    k -= ROUND
    r = y - k * LN2_HI
    r -= k * LN2_LO
    p = P0 * r + P1
    p = p * r + P2
    p = p * r + P3
    p = p * r + P4
    p = p * r + P5
    p = p * (r * r) + r + F1
    return p * _pow2(np.int32(k))


@njit(inline="always", nogil=True, error_model="numpy")
def _expm_small(r):  # pragma: no cover (compiled)
    """e^r for a float32 r in [-ln2/2, ln2/2]."""
    p = P0 * r + P1
    p = p * r + P2
    p = p * r + P3
    p = p * r + P4
    p = p * r + P5
    return p * (r * r) + r + F1


@njit(inline="always", nogil=True, error_model="numpy")
def _exp(y):  # pragma: no cover (compiled)
    """e^y for any float32 y: 0 below EXP_LO (no subnormals), inf above EXP_HI, NaN kept."""
    c = min(max(y, EXP_LO), EXP_HI)
    e = _exp_core(c)
    e = F0 if y < EXP_LO else e
    e = np.inf if y > EXP_HI else e
    return y if y != y else e


@njit(inline="always", nogil=True, error_model="numpy")
def _gelu1(v):  # pragma: no cover (compiled)
    """x Phi(x) = max(x, 0) - |x| Phi(-|x|): no cancellation in the negative tail (see activation._gelu_erf_f32)."""
    t = min(abs(v) * SQRT_HALF, T_MAX)
    q = GQ5 * t + GQ4
    q = q * t + GQ3
    q = q * t + GQ2
    q = q * t + GQ1
    q = q * t + GQ0
    p = GP4 * t + GP3
    p = p * t + GP2
    p = p * t + GP1
    p = p * t + GP0
    # e^(-x^2/2) from x^2 in float64 (exact for a float32 x): t*t in float32 would carry a rounding
    # error of ~1e-7 t^2 into the exponent, 1e-5 relative at x = -12
    w = np.float64(min(abs(v), X_MAX))
    y = -0.5 * (w * w)
    k = np.floor(y * 1.4426950408889634 + 0.5)
    e = _expm_small(np.float32(y - k * 0.6931471805599453)) * _pow2(np.int32(max(k, -126.0)))
    g = max(v, F0) - t * e * (p / q)
    return v if v != v else g


@njit(cache=True, nogil=True, boundscheck=False, error_model="numpy")
def gelu(x, b, y):  # pragma: no cover (compiled)
    """y[r] = Gelu(x[r] + b) (exact). x, y (R, H) C-contiguous float32; b (H,), or (0,) for no bias."""
    R, H = x.shape
    for r in range(R):
        xr = x[r]
        yr = y[r]
        if b.shape[0]:
            for i in range(H):
                yr[i] = _gelu1(xr[i] + b[i])
        else:
            for i in range(H):
                yr[i] = _gelu1(xr[i])


@njit(inline="always", nogil=True, error_model="numpy")
def _fast_gelu1(v):  # pragma: no cover (compiled)
    # e^(-2u) clamped to e^88: beyond, v / (1 + e) is 0 to float32 precision anyway (and NaN stays NaN)
    e = _exp_core(max(min(v * (FG_A + FG_B * (v * v)), EXP_HI), EXP_LO))
    return v / (F1 + e)


@njit(cache=True, nogil=True, boundscheck=False, error_model="numpy")
def fast_gelu(x, b, y):  # pragma: no cover (compiled)
    """y[r] = FastGelu(x[r] + b), the tanh approximation. Shapes as in ``gelu``."""
    R, H = x.shape
    for r in range(R):
        xr = x[r]
        yr = y[r]
        if b.shape[0]:
            for i in range(H):
                yr[i] = _fast_gelu1(xr[i] + b[i])
        else:
            for i in range(H):
                yr[i] = _fast_gelu1(xr[i])
