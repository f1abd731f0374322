"""Compiled (numba) gate loops for the recurrent layers (``rnn.py``), float32, default activations.

Each time step of an LSTM or GRU is one GEMM (``h @ R^T``, BLAS, on the calling thread) and then a dozen
elementwise passes over the gates in NumPy; here those passes are one loop that reads the GEMM's result
and the step's input projection once and writes h, c and the step's output row. The logistic and tanh
are MLAS's rational approximations (as onnxruntime's LSTM and GRU compute them, Eigen's coefficients,
Horner steps as fused multiply-adds), which vectorize, unlike libm's: 200 x 224 gates in 0.1 ms against
NumPy's 0.4 ms of in-place passes.

``m`` is the step's mask (1.0 while the sequence runs, 0.0 past its length: h and c keep their values and
the output row is zero); ``clip`` +inf means no clipping.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from engineroom.providers.cpu.compiled._jit_transformer import (
    F0,
    F1,
    HALF,
    TANH_MAX,
    TP0,
    TP1,
    TP2,
    TP3,
    TP4,
    TP5,
    TP6,
    TQ0,
    TQ1,
    TQ2,
    TQ3,
)

_f = np.float32
# MLAS's logistic: p(x) / q(x) + 1/2 on x clamped to +-18 (contrib_quant._LOGISTIC_P/_Q; repeated here
# because the compiled modules' cache key covers only the _jit_*.py sources)
LP0, LP1, LP2, LP3, LP4 = (_f(c) for c in (4.37031012579801e-11, 1.15627324459942e-07, 6.08574864600143e-05,
                                           8.51377133304701e-03, 2.48287947061529e-01))
LQ0, LQ1, LQ2, LQ3, LQ4, LQ5 = (_f(c) for c in (6.10247389755681e-13, 5.76102136993427e-09, 6.29106785017040e-06,
                                                1.70198817374094e-03, 1.16817656904453e-01, 9.93151921023180e-01))
LOGISTIC_MAX = _f(18.0)


@intrinsic
def _fma(typingctx, a, b, c):
    """a b + c rounded once (LLVM's fma: one instruction, and it vectorizes; emulating it in float64
    made the gate loop 4.5x slower)."""
    sig = types.float32(types.float32, types.float32, types.float32)

    def codegen(context, builder, signature, args):
        f = ir.FloatType()
        callee = cgutils.get_or_insert_function(builder.module, ir.FunctionType(f, [f, f, f]), "llvm.fma.f32")
        return builder.call(callee, args)

    return sig, codegen


@njit(inline="always", nogil=True, error_model="numpy")
def _clamp(v, lo, hi):  # pragma: no cover (compiled)
    """v clamped to [lo, hi], a NaN kept (as MLAS's max/min do; LLVM's maxnum/minnum would drop it)."""
    return lo if v < lo else (hi if v > hi else v)


@njit(inline="always", nogil=True, error_model="numpy")
def _logistic(v):  # pragma: no cover (compiled)
    c = _clamp(v, -LOGISTIC_MAX, LOGISTIC_MAX)
    c2 = c * c
    p = _fma(c2, LP0, LP1)
    p = _fma(p, c2, LP2)
    p = _fma(p, c2, LP3)
    p = _fma(p, c2, LP4)
    q = _fma(c2, LQ0, LQ1)
    q = _fma(q, c2, LQ2)
    q = _fma(q, c2, LQ3)
    q = _fma(q, c2, LQ4)
    q = _fma(q, c2, LQ5)
    return _clamp((p * c) / q + HALF, F0, F1)


@njit(inline="always", nogil=True, error_model="numpy")
def _tanh(v):  # pragma: no cover (compiled)
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
def _clip(v, clip):  # pragma: no cover (compiled)
    return _clamp(v, -clip, clip)


@njit(nogil=True, boundscheck=False, error_model="numpy")
def lstm_step(a, xw, p, m, c, h, y, clip, flags):  # pragma: no cover (compiled)
    """One LSTM step over gates (i, o, f, c): pre-activations a + xw (a = h @ R^T, xw the input projection
    with both biases), peepholes p (i, o, f; flags & 2), input_forget (flags & 1). Updates c and h in
    place, writes the output row y. a, xw (B, 4H); p (3H,); m (B,); c, h, y (B, H)."""
    # the options as literals, so the inlined body has no branches in its loop (which then vectorizes)
    if flags == 0:
        _lstm(a, xw, p, m, c, h, y, clip, False, False)
    elif flags == 1:
        _lstm(a, xw, p, m, c, h, y, clip, True, False)
    elif flags == 2:
        _lstm(a, xw, p, m, c, h, y, clip, False, True)
    else:
        _lstm(a, xw, p, m, c, h, y, clip, True, True)


@njit(inline="always", nogil=True, boundscheck=False, error_model="numpy")
def _lstm(a, xw, p, m, c, h, y, clip, forget_is_input, peep):  # pragma: no cover (compiled)
    B, H = h.shape
    for b in range(B):
        yr = y[b]
        if m[b] == F0:
            for j in range(H):
                yr[j] = F0
            continue
        ar = a[b]
        xr = xw[b]
        cr = c[b]
        hr = h[b]
        for j in range(H):
            cj = cr[j]
            ai = xr[j] + ar[j]
            af = xr[2 * H + j] + ar[2 * H + j]
            if peep:
                ai += p[j] * cj
                af += p[2 * H + j] * cj
            i = _logistic(_clip(ai, clip))
            f = F1 - i if forget_is_input else _logistic(_clip(af, clip))
            g = _tanh(_clip(xr[3 * H + j] + ar[3 * H + j], clip))
            cn = f * cj + i * g
            ao = xr[H + j] + ar[H + j]
            if peep:
                ao += p[H + j] * cn
            o = _logistic(_clip(ao, clip))
            hn = o * _tanh(cn)
            cr[j] = cn
            hr[j] = hn
            yr[j] = hn


@njit(nogil=True, boundscheck=False, error_model="numpy")
def gru_step_lbr(a, xw, rb, m, h, y, clip):  # pragma: no cover (compiled)
    """One GRU step with linear_before_reset: gates (z, r, h~), a = h @ R^T (B, 3H) without biases, xw the
    input projection with every bias but R's h~ bias rb (H,), applied inside r * (a_h + rb)."""
    B, H = h.shape
    for b in range(B):
        yr = y[b]
        if m[b] == F0:
            for j in range(H):
                yr[j] = F0
            continue
        ar = a[b]
        xr = xw[b]
        hr = h[b]
        for j in range(H):
            z = _logistic(_clip(xr[j] + ar[j], clip))
            r = _logistic(_clip(xr[H + j] + ar[H + j], clip))
            hh = _tanh(_clip(xr[2 * H + j] + r * (ar[2 * H + j] + rb[j]), clip))
            hn = (F1 - z) * hh + z * hr[j]
            hr[j] = hn
            yr[j] = hn


@njit(nogil=True, boundscheck=False, error_model="numpy")
def gru_reset(a, xw, h, z, rh, clip):  # pragma: no cover (compiled)
    """A GRU step's first half (linear_before_reset 0): z and r from a = h @ R_zr^T (B, 2H) and xw (B, 3H);
    writes z (B, H) and r * h (B, H), which the caller multiplies by R_h^T for :func:`gru_update`."""
    B, H = h.shape
    for b in range(B):
        ar = a[b]
        xr = xw[b]
        hr = h[b]
        zr = z[b]
        rr = rh[b]
        for j in range(H):
            zr[j] = _logistic(_clip(xr[j] + ar[j], clip))
            rr[j] = _logistic(_clip(xr[H + j] + ar[H + j], clip)) * hr[j]


@njit(nogil=True, boundscheck=False, error_model="numpy")
def gru_update(a, xw, z, m, h, y, clip):  # pragma: no cover (compiled)
    """A GRU step's second half: h~ = tanh(xw_h + a), a = (r * h) @ R_h^T (B, H); h = (1 - z) h~ + z h."""
    B, H = h.shape
    G = xw.shape[1]
    for b in range(B):
        yr = y[b]
        if m[b] == F0:
            for j in range(H):
                yr[j] = F0
            continue
        ar = a[b]
        xr = xw[b]
        hr = h[b]
        zr = z[b]
        for j in range(H):
            hh = _tanh(_clip(xr[G - H + j] + ar[j], clip))
            zj = zr[j]
            hn = (F1 - zj) * hh + zj * hr[j]
            hr[j] = hn
            yr[j] = hn


# the variants compiled ahead of time (see _jit): argument kinds, dtypes
AOT = {
    "lstm_step": ("A2 A2 A1 A1 A2 A2 A2 s i", ("f4",)),
    "gru_step_lbr": ("A2 A2 A1 A1 A2 A2 s", ("f4",)),
    "gru_reset": ("A2 A2 A2 A2 A2 s", ("f4",)),
    "gru_update": ("A2 A2 A2 A1 A2 A2 s", ("f4",)),
}
