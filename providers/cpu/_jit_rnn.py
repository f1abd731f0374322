"""Compiled (numba) gate loops for the recurrent layers (``rnn.py``; com.microsoft DynamicQuantizeLSTM in
``contrib_quant``: its whole recurrence, below), float32, default activations.

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
from numba import njit

from engineroom.providers.cpu._jit_int8 import gemm_u8s8
from engineroom.providers.cpu.compiled._jit_transformer import F0, F1, HALF, _clamp, _fma
from engineroom.providers.cpu.compiled._jit_transformer import _mlas_tanh1 as _tanh

_f = np.float32
# MLAS's logistic: p(x) / q(x) + 1/2 on x clamped to +-18 (contrib_quant._LOGISTIC_P/_Q; repeated here
# because the compiled modules' cache key covers only the _jit_*.py sources)
LP0, LP1, LP2, LP3, LP4 = (_f(c) for c in (4.37031012579801e-11, 1.15627324459942e-07, 6.08574864600143e-05,
                                           8.51377133304701e-03, 2.48287947061529e-01))
LQ0, LQ1, LQ2, LQ3, LQ4, LQ5 = (_f(c) for c in (6.10247389755681e-13, 5.76102136993427e-09, 6.29106785017040e-06,
                                                1.70198817374094e-03, 1.16817656904453e-01, 9.93151921023180e-01))
LOGISTIC_MAX = _f(18.0)


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
def _clip(v, clip):  # pragma: no cover (compiled)
    return _clamp(v, -clip, clip)


@njit(inline="always", nogil=True, boundscheck=False, error_model="numpy")
def _finished(m, b, yr):  # pragma: no cover (compiled)
    """True where row b's sequence has ended (mask 0.0): its output row is then zeroed, its state kept."""
    if m[b] != F0:
        return False
    for j in range(yr.shape[0]):
        yr[j] = F0
    return True


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
        if _finished(m, b, yr):
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
        if _finished(m, b, yr):
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
        if _finished(m, b, yr):
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


# ---------------------------------------------------------------------------------------------
# DynamicQuantizeLSTM (contrib_quant): before each step's product with the 8-bit recurrent weights, h is
# quantized to uint8 with a range of its own, per block of rows, as onnxruntime's quantized LSTM does; the
# product is exact: on the VNNI kernel (dq_lstm_run_vnni), as float32 dot products of integers
# (dq_lstm_run), or the caller's float32 GEMM (dq_lstm_step); the float32 forms only where every sum stays
# below 2**24 (the caller checks). Arrays hold both directions: h, c, qa (D, B, H), xw (D, S, B, 4H),
# y (S, D, B, H).

U8MAX = _f(255.0)


@njit(inline="always", nogil=True, boundscheck=False, error_model="numpy")
def _dq_block(h, m, r0, r1, qa, sc, zq):  # pragma: no cover (compiled)
    """Rows r0..r1 of h (B, H) quantized as one block (onnxruntime's range rule: the range holds 0, scale
    (max - min) / 255, zero point rounded half to even): qa = the uint8 value less its zero point, as float32,
    sc[b] the scale, zq[b] the zero point. Rows with m[b] 0.0 (sequence ended) enter as zeros."""
    H = h.shape[1]
    lo = F0
    hi = F0
    for b in range(r0, r1):
        if m[b] != F0:
            hr = h[b]
            for j in range(H):
                v = hr[j]
                lo = v if v < lo else lo
                hi = v if v > hi else hi
    s = F1 if hi == lo else (hi - lo) / U8MAX
    z = np.rint(_clamp(F0 - lo / s, F0, U8MAX))
    for b in range(r0, r1):
        sc[b] = s
        zq[b] = z
        qr = qa[b]
        if m[b] == F0:
            for j in range(H):
                qr[j] = F0
            continue
        hr = h[b]
        for j in range(H):
            qr[j] = _clamp(np.rint(hr[j] / s) + z, F0, U8MAX) - z


@njit(nogil=True, boundscheck=False, error_model="numpy")
def dq_quantize(h, qm, t, rows, qa, sc, zq):  # pragma: no cover (compiled)
    """h (D, B, H) quantized for step t's product, each direction in blocks of ``rows`` rows; qm[t] (qm:
    (S + 1, B)) says which rows enter with their value (1.0) and which as zeros (0.0): onnxruntime's product
    reads the previous step's output row, zero once that step was past the sequence's end."""
    D, B, _ = h.shape
    for d in range(D):
        for r0 in range(0, B, rows):
            _dq_block(h[d], qm[t], r0, min(r0 + rows, B), qa[d], sc[d], zq[d])


@njit(nogil=True, boundscheck=False, error_model="numpy")
def dq_lstm_step(acc, xw, t, sc, ws, bias, p, m, qm, rows, c, h, y, qa, zq, clip, flags):  # pragma: no cover
    """Step t of every direction: gates (i, o, f, c) = xw[d, t] + acc * (h's scale * R's column scale)
    [+ peepholes p (D, 3H), flags & 2] + bias (D, 4H), clipped; input_forget (flags & 1). Updates c and h,
    writes y[t], then quantizes the new h into qa, sc and zq for step t + 1 (:func:`dq_quantize`)."""
    if flags == 0:
        _dq_lstm(acc, xw, t, sc, ws, bias, p, m, c, h, y, clip, False, False)
    elif flags == 1:
        _dq_lstm(acc, xw, t, sc, ws, bias, p, m, c, h, y, clip, True, False)
    elif flags == 2:
        _dq_lstm(acc, xw, t, sc, ws, bias, p, m, c, h, y, clip, False, True)
    else:
        _dq_lstm(acc, xw, t, sc, ws, bias, p, m, c, h, y, clip, True, True)
    if t + 1 < m.shape[0]:
        dq_quantize(h, qm, t + 1, rows, qa, sc, zq)


@njit(inline="always", nogil=True, boundscheck=False, error_model="numpy")
def _dq_lstm(acc, xw, t, sc, ws, bias, p, m, c, h, y, clip, forget_is_input, peep):  # pragma: no cover
    # onnxruntime's order of operations: ((x W + h R) + peephole) + bias, c = c f + i g, h = h_act(c) o
    D, B, H = h.shape
    mt = m[t]
    for d in range(D):
        wr = ws[d]
        br = bias[d]
        pr = p[d]
        for b in range(B):
            yr = y[t, d, b]
            if _finished(mt, b, yr):
                continue
            s = sc[d, b]
            ar = acc[d, b]
            xr = xw[d, t, b]
            cr = c[d, b]
            hr = h[d, b]
            for j in range(H):
                cj = cr[j]
                ai = xr[j] + ar[j] * (s * wr[j])
                af = xr[2 * H + j] + ar[2 * H + j] * (s * wr[2 * H + j])
                if peep:
                    ai += cj * pr[j]
                    af += cj * pr[2 * H + j]
                i = _logistic(_clip(ai + br[j], clip))
                f = F1 - i if forget_is_input else _logistic(_clip(af + br[2 * H + j], clip))
                ag = xr[3 * H + j] + ar[3 * H + j] * (s * wr[3 * H + j])
                g = _tanh(_clip(ag + br[3 * H + j], clip))
                cn = cj * f + i * g
                ao = xr[H + j] + ar[H + j] * (s * wr[H + j])
                if peep:
                    ao += cn * pr[H + j]
                o = _logistic(_clip(ao + br[H + j], clip))
                hn = _tanh(cn) * o
                cr[j] = cn
                hr[j] = hn
                yr[j] = hn


@njit(nogil=True, boundscheck=False, error_model="numpy", fastmath={"reassoc", "contract"})
def _products(qa, w, acc):  # pragma: no cover (compiled)
    """acc (B, N) = qa (B, K) @ w.T, w (N, K) int8 values held as uint8 bytes (a quarter of float32's
    memory: both directions' weights stay in cache; N even). The sums are of integers, exact in float32
    below 2**24 (the caller checks), so reassociating and fusing them (this function's fastmath: the dot
    products vectorize) changes no bit. Two rows and two columns a pass: each load serves two products."""
    B, K = qa.shape
    N = w.shape[0]
    for b in range(0, B, 2):
        b1 = min(b + 1, B - 1)      # an odd last row is computed twice, harmlessly
        q0 = qa[b]
        q1 = qa[b1]
        for j in range(0, N, 2):
            w0 = w[j]
            w1 = w[j + 1]
            s00 = F0
            s01 = F0
            s10 = F0
            s11 = F0
            for k in range(K):
                x0 = _f(np.int8(w0[k]))
                x1 = _f(np.int8(w1[k]))
                a0 = q0[k]
                a1 = q1[k]
                s00 += a0 * x0
                s01 += a0 * x1
                s10 += a1 * x0
                s11 += a1 * x1
            acc[b, j] = s00
            acc[b, j + 1] = s01
            acc[b1, j] = s10
            acc[b1, j + 1] = s11


@njit(nogil=True, boundscheck=False, error_model="numpy")
def dq_lstm_run(xw, w, ws, bias, p, m, qm, rows, c, h, y, qa, sc, zq, acc, clip, flags):  # pragma: no cover
    """Every step of :func:`dq_lstm_step`, the recurrent products here too (:func:`_products`; w (D, 4H, H):
    R^T less its zero point, int8 as uint8 bytes): one call a layer. qa, sc, zq, acc are scratch: (D, B, H),
    (D, B), (D, B), (D, B, 4H)."""
    dq_quantize(h, qm, 0, rows, qa, sc, zq)
    for t in range(m.shape[0]):
        for d in range(w.shape[0]):
            _products(qa[d], w[d], acc[d])
        dq_lstm_step(acc, xw, t, sc, ws, bias, p, m, qm, rows, c, h, y, qa, zq, clip, flags)


@njit(nogil=True, boundscheck=False, error_model="numpy")
def dq_lstm_run_vnni(xw, rp, colsum, ws, bias, p, m, qm, rows, c, h, y, qa, sc, zq, qu, accb, acc, clip,
                     flags):  # pragma: no cover (compiled)
    """:func:`dq_lstm_run` with the recurrent products on ``_jit_int8.gemm_u8s8`` (VNNI): rp (D, ...) R's
    packed panels (``intgemm.Int8Matrix``), colsum (D, N) int64 its column sums (N the padded width); qu
    (D, M, K) uint8 and accb (D, M, 4 N) bytes scratch, M and K the padded sizes, zero-filled by the
    caller. Each product is exact: sum(q w) - z colsum = sum((q - z) w), rounded once to float32."""
    D, B, H = h.shape
    G = acc.shape[2]
    dq_quantize(h, qm, 0, rows, qa, sc, zq)
    for t in range(m.shape[0]):
        for d in range(D):
            qd = qu[d]
            for b in range(B):
                z = zq[d, b]
                for k in range(H):
                    qd[b, k] = np.uint8(qa[d, b, k] + z)
            gemm_u8s8(qd, rp[d], accb[d], 0, accb.shape[2] // 128)
            ai = accb[d].view(np.int32)
            cs = colsum[d]
            for b in range(B):
                zi = np.int64(zq[d, b])
                ar = acc[d, b]
                for j in range(G):
                    ar[j] = _f(np.int64(ai[b, j]) - zi * cs[j])
        dq_lstm_step(acc, xw, t, sc, ws, bias, p, m, qm, rows, c, h, y, qa, zq, clip, flags)


# the variants compiled ahead of time (see _jit): argument kinds, dtypes
AOT = {
    "lstm_step": ("A2 A2 A1 A1 A2 A2 A2 s i", ("f4",)),
    "gru_step_lbr": ("A2 A2 A1 A1 A2 A2 s", ("f4",)),
    "gru_reset": ("A2 A2 A2 A2 A2 s", ("f4",)),
    "gru_update": ("A2 A2 A2 A1 A2 A2 s", ("f4",)),
    "dq_quantize": ("A3 A2 i i A3 A2 A2", ("f4",)),
    "dq_lstm_step": ("A3 A4 i A2 A2 A2 A2 A2 A2 i A3 A3 A4 A3 A2 s i", ("f4",)),
    "dq_lstm_run": ("A4 U3 A2 A2 A2 A2 A2 i A3 A3 A4 A3 A2 A2 A3 s i", ("f4",)),
    "dq_lstm_run_vnni": ("A4 U3 I2 A2 A2 A2 A2 A2 i A3 A3 A4 A3 A2 A2 U3 U3 A3 s i", ("f4",)),
}
