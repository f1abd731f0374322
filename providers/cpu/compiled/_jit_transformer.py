"""Compiled (numba) loops for the transformer kernels: Gelu / BiasGelu (exact, erf), Gelu (tanh), FastGelu,
Softmax and LayerNormalization over the last axis, and MultiHeadAttention's scaled, biased softmax,
float32 only.

NumPy runs each of these as 10-25 whole-array passes (a rational erf alone is ~20); here every element
is read once and written once, with the bias add, the nonlinearity and the row statistics in one loop
per row. ``math.exp`` compiles to a scalar libm call that blocks vectorization, so exp is written out
(Cody-Waite range reduction, Cephes' degree-6 polynomial as fused multiply-adds, 2^n built in the exponent
bits): the loops then vectorize to full SIMD width, and agree with the exact exp to ~1 ulp.

Single-threaded on the calling thread, as in ``_jit_conv`` (OpenBLAS's spinning workers take the
other core between GEMMs).
"""
from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

_f = np.float32
# constants as float32 scalars: a Python float would promote every expression to float64 (half the lanes)
F0, F1, HALF = _f(0.0), _f(1.0), _f(0.5)
LOG2E = _f(1.4426950408889634)
LN2_HI, LN2_LO = _f(0.693359375), _f(-2.12194440e-4)     # ln 2 = HI + LO, HI exact in 9 bits
SPLIT = _f(4097.0)                                      # 2^12 + 1: Veltkamp's splitter
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


def _llvm_f32_binary(name):
    @intrinsic
    def fn(typingctx, a, b):
        sig = types.float32(types.float32, types.float32)

        def codegen(context, builder, signature, args):
            f = ir.FloatType()
            callee = cgutils.get_or_insert_function(builder.module, ir.FunctionType(f, [f, f]), name)
            return builder.call(callee, args)

        return sig, codegen

    return fn


@intrinsic
def _fma(typingctx, a, b, c):
    """a b + c rounded once to float32: LLVM's fma, one instruction that vectorizes (MLAS's Horner steps
    are fused multiply-adds; emulating one in float64 kept loops at half width)."""
    sig = types.float32(types.float32, types.float32, types.float32)

    def codegen(context, builder, signature, args):
        f = ir.FloatType()
        callee = cgutils.get_or_insert_function(builder.module, ir.FunctionType(f, [f, f, f]), "llvm.fma.f32")
        return builder.call(callee, args)

    return sig, codegen


# LLVM's maxnum/minnum (one instruction each, and the loop vectorizer knows maxnum as a reduction);
# the builtin max/min lower to compare-and-branch code that keeps loops scalar. A NaN operand is
# dropped (maxnum(NaN, y) = y): callers that clamp put the NaN back at the end.
_fmax = _llvm_f32_binary("llvm.maxnum.f32")
_fmin = _llvm_f32_binary("llvm.minnum.f32")


@njit(inline="always", nogil=True, error_model="numpy")
def _expm_small(r):  # pragma: no cover (compiled)
    """e^r for a float32 r in [-ln2/2, ln2/2] (Horner steps as fused multiply-adds: half the instructions)."""
    p = _fma(P0, r, P1)
    p = _fma(p, r, P2)
    p = _fma(p, r, P3)
    p = _fma(p, r, P4)
    p = _fma(p, r, P5)
    return _fma(p, r * r, r) + F1


@njit(inline="always", nogil=True, error_model="numpy")
def _exp_core(y):  # pragma: no cover (compiled)
    """e^y for float32 y in [EXP_LO, EXP_HI] (no range checks: callers clamp)."""
    k = _fma(y, LOG2E, ROUND)       # rounded once: k = round(y log2 e) exactly
    k -= ROUND
    r = _fma(k, -LN2_HI, y)         # k LN2_HI is exact (k has <= 8 bits, LN2_HI 9)
    r = _fma(k, -LN2_LO, r)
    return _expm_small(r) * _pow2(np.int32(k))


@njit(inline="always", nogil=True, error_model="numpy")
def _exp(y):  # pragma: no cover (compiled)
    """e^y for any float32 y: 0 below EXP_LO (no subnormals), inf above EXP_HI, NaN kept."""
    c = _fmin(_fmax(y, EXP_LO), EXP_HI)
    e = _exp_core(c)
    e = F0 if y < EXP_LO else e
    e = np.inf if y > EXP_HI else e
    return y if y != y else e


@njit(inline="always", nogil=True, error_model="numpy")
def _gelu1(v):  # pragma: no cover (compiled)
    """x Phi(x) = max(x, 0) - |x| Phi(-|x|): no cancellation in the negative tail (see activation._gelu_erf_f32)."""
    t = _fmin(abs(v) * SQRT_HALF, T_MAX)
    q = GQ5 * t + GQ4
    q = q * t + GQ3
    q = q * t + GQ2
    q = q * t + GQ1
    q = q * t + GQ0
    p = GP4 * t + GP3
    p = p * t + GP2
    p = p * t + GP1
    p = p * t + GP0
    # e^(-x^2/2) with x^2 as an unevaluated sum hi + lo (Veltkamp's split of |x| into 12-bit halves,
    # exact products): t*t in float32 would carry a rounding error of ~6e-8 t^2 into the exponent,
    # 5e-6 relative at x = -12
    a = _fmin(abs(v), X_MAX)
    c = a * SPLIT
    ah = c - (c - a)
    al = a - ah
    yh = (ah * ah) * -HALF
    yl = (ah * al + HALF * (al * al)) * -F1
    k = yh * LOG2E + ROUND
    k -= ROUND
    r = yh - k * LN2_HI
    r -= k * LN2_LO
    e = _expm_small(r + yl) * _pow2(np.int32(k))
    g = _fmax(v, F0) - t * e * (p / q)
    # at -inf the definition 0.5 x (1 + erf(x / sqrt 2)) is -inf * 0 = NaN (onnxruntime's and onnx.reference's answer)
    return v if v != v else (np.float32(np.nan) if v == -np.inf else g)


@njit(inline="always", nogil=True, error_model="numpy")
def _fast_gelu1(v):  # pragma: no cover (compiled)
    # e^(-2u) clamped to e^88: beyond, v / (1 + e) is 0 to float32 precision anyway (and NaN stays NaN)
    e = _exp_core(_fmax(_fmin(v * (FG_A + FG_B * (v * v)), EXP_HI), EXP_LO))
    # at -inf the definition 0.5 x (1 + tanh u) is -inf * 0 = NaN (onnxruntime's and onnx.reference's answer)
    return np.float32(np.nan) if v == -np.inf else v / (F1 + e)


# com.microsoft FastGelu as onnxruntime's kernel computes it, which is the op's definition: float32
# u = x (C x x + B), MLAS's tanh (a rational function, clamped to +-9, Horner steps as fused multiply-adds),
# then 0.5 x (1 + tanh u), cancelling in the negative tail exactly as the unfused graph it replaces does.
# Bit-exact with onnxruntime: int8 models re-quantize every activation, and an ulp moved here flips
# roundings there (a dynamic-int8 T5 encoder moved by 0.15 with the cancellation-free form above).
FG_C, FG_B1 = _f(0.035677408136300125), _f(0.7978845608028654)
# MLAS's tanh coefficients (the NumPy path has them as contrib_quant._TANH_P/_Q; repeated here because
# the compiled modules' cache key covers only the _jit_*.py sources)
TP = tuple(_f(c) for c in (-2.76076847742355e-16, 2.00018790482477e-13, -8.60467152213735e-11,
                           5.12229709037114e-08, 1.48572235717979e-05, 6.37261928875436e-04, 4.89352455891786e-03))
TQ = tuple(_f(c) for c in (1.19825839466702e-06, 1.18534705686654e-04, 2.26843463243900e-03, 4.89352518554385e-03))
TP0, TP1, TP2, TP3, TP4, TP5, TP6 = TP
TQ0, TQ1, TQ2, TQ3 = TQ
TANH_MAX = _f(9.0)


@njit(inline="always", nogil=True, error_model="numpy")
def _clamp(v, lo, hi):  # pragma: no cover (compiled)
    """v clamped to [lo, hi], a NaN kept (as MLAS's max/min do; LLVM's maxnum/minnum would drop it)."""
    return lo if v < lo else (hi if v > hi else v)


@njit(inline="always", nogil=True, error_model="numpy")
def _mlas_tanh1(v):  # pragma: no cover (compiled)
    """MLAS's tanh: p(c)/q(c) on v clamped to +-9, a NaN kept (the Tanh kernel, the LSTM/GRU gates and
    FastGelu share it)."""
    c = _clamp(v, -TANH_MAX, TANH_MAX)
    c2 = c * c
    p = _fma(c2, TP0, TP1)
    p = _fma(p, c2, TP2)
    p = _fma(p, c2, TP3)
    p = _fma(p, c2, TP4)
    p = _fma(p, c2, TP5)
    p = _fma(p, c2, TP6)
    q = _fma(c2, TQ0, TQ1)
    q = _fma(q, c2, TQ2)
    q = _fma(q, c2, TQ3)
    return (p * c) / q


@njit(inline="always", nogil=True, error_model="numpy")
def _ort_fast_gelu1(v):  # pragma: no cover (compiled)
    t = _mlas_tanh1(v * (FG_C * v * v + FG_B1))
    g = (HALF * v) * (t + F1)
    return v if v != v else g


@njit(inline="always", nogil=True, error_model="numpy")
def _gelu_of(v, kind):  # pragma: no cover (compiled)
    if kind == 1:
        return _fast_gelu1(v)
    if kind == 2:
        return _ort_fast_gelu1(v)
    return _gelu1(v)


@njit(inline="always", nogil=True, boundscheck=False, error_model="numpy")
def _gelu_rows(x, b, y, kind):  # pragma: no cover (compiled)
    """y[r] = Gelu(x[r] + b); kind (0 exact, 1 tanh, 2 onnxruntime's FastGelu) a literal after
    inlining (its branches fold away)."""
    R, H = x.shape
    for r in range(R):
        xr = x[r]
        yr = y[r]
        if b.shape[0]:
            for i in range(H):
                yr[i] = _gelu_of(xr[i] + b[i], kind)
        else:
            for i in range(H):
                yr[i] = _gelu_of(xr[i], kind)


@njit(nogil=True, boundscheck=False, error_model="numpy")
def gelu(x, b, y):  # pragma: no cover (compiled)
    """y[r] = Gelu(x[r] + b) (exact). x, y (R, H) C-contiguous float32; b (H,), or (0,) for no bias."""
    _gelu_rows(x, b, y, 0)


@njit(nogil=True, boundscheck=False, error_model="numpy")
def fast_gelu(x, b, y):  # pragma: no cover (compiled)
    """y[r] = Gelu(x[r] + b), the tanh approximation without cancellation. Shapes as in ``gelu``."""
    _gelu_rows(x, b, y, 1)


@njit(nogil=True, boundscheck=False, error_model="numpy")
def ort_fast_gelu(x, b, y):  # pragma: no cover (compiled)
    """y[r] = com.microsoft FastGelu(x[r] + b), bit-exact with onnxruntime's kernel. Shapes as in ``gelu``."""
    _gelu_rows(x, b, y, 2)


# Row sums: reassociation (fastmath) lets LLVM keep one partial sum per SIMD lane. Separate functions,
# so that the flag never reaches the exp code above (its rounding trick needs strict math).
@njit(nogil=True, boundscheck=False)
def _row_max(a):  # pragma: no cover (compiled)
    # maxnum skips NaNs; a NaN in the row still makes exp(x - m), the sum and so the whole row NaN
    m = a[0]
    for i in range(a.shape[0]):
        m = _fmax(m, a[i])
    return m


@njit(nogil=True, boundscheck=False, fastmath={"reassoc", "nsz", "contract"})
def _row_sum(a):  # pragma: no cover (compiled)
    s = F0
    for i in range(a.shape[0]):
        s += a[i]
    return s


@njit(nogil=True, boundscheck=False, fastmath={"reassoc", "nsz", "contract"})
def _row_sq_dev(a, m):  # pragma: no cover (compiled)
    s = F0
    for i in range(a.shape[0]):
        d = a[i] - m
        s += d * d
    return s


SOFTMAX_BLOCK = 16384      # elements: short rows are exponentiated this many at a time (L2-resident)


@njit(nogil=True, boundscheck=False, error_model="numpy")
def softmax(x, y):  # pragma: no cover (compiled)
    """y[r] = exp(x[r] - max x[r]) / sum, x and y (R, H) C-contiguous float32, H >= 1. Short rows: x - max
    for a block of rows, then one long exp loop over the block (a loop per short row spends its time in
    vector prologues and remainders: 1.4x faster on (768, 48)); long rows: one fused pass per row."""
    R, H = x.shape
    yf = y.reshape(-1)
    rb = max(1, SOFTMAX_BLOCK // H)
    for r0 in range(0, R, rb):
        r1 = min(r0 + rb, R)
        if rb > 1:
            for r in range(r0, r1):
                xr = x[r]
                yr = y[r]
                m = _row_max(xr)
                for i in range(H):
                    yr[i] = xr[i] - m
            yb = yf[r0 * H:r1 * H]
            for i in range(yb.shape[0]):
                yb[i] = _exp(yb[i])
        else:
            xr = x[r0]
            yr = y[r0]
            m = _row_max(xr)
            for i in range(H):
                yr[i] = _exp(xr[i] - m)
        for r in range(r0, r1):
            yr = y[r]
            s = F1 / _row_sum(yr)       # one reciprocal per row, as MLAS
            for i in range(H):
                yr[i] = yr[i] * s


@njit(nogil=True, boundscheck=False, error_model="numpy")
def attention_softmax(s, bias, heads, scale):  # pragma: no cover (compiled)
    """In place, per row of the scores s (B*heads, Sq, Sk): softmax(s * scale + bias), a row whose
    logits are all -inf giving zeros. bias (Bb, Hb, Sq, Sk) with Bb in (1, B), Hb in (1, heads)
    broadcast over batch and heads; a (0, 0, 0, 0) bias for none."""
    attention_softmax_heads(s, bias, heads, scale, 0, s.shape[0])


@njit(nogil=True, boundscheck=False, error_model="numpy")
def attention_softmax_heads(s, bias, heads, scale, n0, n1):  # pragma: no cover (compiled)
    """``attention_softmax`` of the scores of batch-heads n0..n1 only (the pool's split over heads)."""
    Sq, Sk = s.shape[1], s.shape[2]
    Bb, Hb = bias.shape[0], bias.shape[1]
    for n in range(n0, n1):
        b = n // heads
        h = n % heads
        for i in range(Sq):
            row = s[n, i]
            if Bb > 0:
                br = bias[b if Bb > 1 else 0, h if Hb > 1 else 0, i]
                for j in range(Sk):
                    row[j] = row[j] * scale + br[j]
            else:
                for j in range(Sk):
                    row[j] = row[j] * scale
            m = _row_max(row)
            if m == -np.inf:
                for j in range(Sk):
                    row[j] = F0
                continue
            for j in range(Sk):
                row[j] = _exp(row[j] - m)
            t = _row_sum(row)
            for j in range(Sk):
                row[j] = row[j] / t


@njit(nogil=True, boundscheck=False, error_model="numpy")
def layer_norm(x, scale, bias, eps, y, mean, inv):  # pragma: no cover (compiled)
    """y[r] = (x[r] - mean) / sqrt(var + eps) * scale + bias, with the two-pass variance; mean[r] and
    inv[r] = 1 / sqrt(var + eps) are written too. x, y (R, H) C-contiguous float32, scale and bias (H,)
    (bias (0,): none), eps float32."""
    R, H = x.shape
    rn = F1 / np.float32(H)
    for r in range(R):
        xr = x[r]
        yr = y[r]
        m = _row_sum(xr) * rn
        v = _row_sq_dev(xr, m) * rn
        iv = F1 / np.sqrt(v + eps)
        mean[r] = m
        inv[r] = iv
        if bias.shape[0]:
            for i in range(H):
                yr[i] = (xr[i] - m) * iv * scale[i] + bias[i]
        else:
            for i in range(H):
                yr[i] = (xr[i] - m) * iv * scale[i]


@njit(nogil=True, boundscheck=False, error_model="numpy")
def skip_layer_norm(x, skip, bias, scale, beta, eps, y, mean, inv, total):  # pragma: no cover (compiled)
    """y[r] = LayerNorm((x[r] + bias) + skip[r]) * scale + beta, the sum built in y's row first and
    copied to total[r] where total has rows (else (0, 0)). x, skip, y (R, H) C-contiguous float32; bias,
    beta (H,) or (0,) for none; mean, inv (R,)."""
    R, H = x.shape
    rn = F1 / np.float32(H)
    for r in range(R):
        xr = x[r]
        sr = skip[r]
        yr = y[r]
        if bias.shape[0]:
            for i in range(H):
                yr[i] = (xr[i] + bias[i]) + sr[i]
        else:
            for i in range(H):
                yr[i] = xr[i] + sr[i]
        if total.shape[0]:
            tr = total[r]
            for i in range(H):
                tr[i] = yr[i]
        m = _row_sum(yr) * rn
        v = _row_sq_dev(yr, m) * rn
        iv = F1 / np.sqrt(v + eps)
        mean[r] = m
        inv[r] = iv
        if beta.shape[0]:
            for i in range(H):
                yr[i] = (yr[i] - m) * iv * scale[i] + beta[i]
        else:
            for i in range(H):
                yr[i] = (yr[i] - m) * iv * scale[i]


# the variants compiled ahead of time (see compiled.jit): argument kinds, dtypes
AOT = {
    "gelu": ("A2 A1 A2", ("f4",)),
    "fast_gelu": ("A2 A1 A2", ("f4",)),
    "ort_fast_gelu": ("A2 A1 A2", ("f4",)),
    "softmax": ("A2 A2", ("f4",)),
    "attention_softmax": ("A3 A4 i s", ("f4",)),
    "layer_norm": ("A2 A1 A1 s A2 A1 A1", ("f4",)),
    "skip_layer_norm": ("A2 A2 A1 A1 A1 s A2 A1 A1 A2", ("f4",)),
}
