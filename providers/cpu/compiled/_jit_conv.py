"""Compiled (numba) loops for convolutions: 2-D depthwise conv in one pass per channel, 2-D im2col, and
the bias / residual / clip pass after a conv's GEMM. 3x3 stride-1 "same" depthwise convs of images at
least ``_FLAT_MIN_W`` wide read x directly (``_depthwise3x3_flat``).

NumPy's depthwise path makes two whole-array passes per kernel tap (18 for a 3x3) over images that
do not stay in cache; here each channel's padded image is built once in a small scratch buffer (split
into its stride phases, so every tap reads a contiguous range) and all taps, the bias and a clip
(Relu/Clip fused by the caller) are applied while it is in cache. im2col reads the same padded,
phase-split planes, so every row of the column matrix is one contiguous copy.

The loops run on the calling thread: NumPy's OpenBLAS keeps its worker threads spinning for a while
after each GEMM, so a second thread of ours would find its core taken (measured with numba's parallel
loops: no gain between GEMMs, and a 4x loss with OpenMP's workers spinning too).
"""
from __future__ import annotations

import numpy as np
from numba import njit

_STRIP = 6144      # floats of stride-phase planes per depthwise strip: 24 KB, inside L1 with the strip's output
_FLAT_MIN_W = 10   # image width from which 3x3 stride-1 depthwise convs skip the padded planes
_SPLIT2_MIN_W = 48  # row width from which a stride-2 phase split goes through a row view (_split2)


@njit(nogil=True, boundscheck=False, inline="always")
def _tap_start(a, e, sh, sw, PL, Qw):  # pragma: no cover (compiled)
    """Where the tap reading padded offsets (a, e) starts in the stride-phase planes."""
    return ((a % sh) * sw + e % sw) * PL + (a // sh) * Qw + e // sw


@njit(nogil=True, boundscheck=False, inline="always")
def _taps3x3(planes, w, acc, bo, sh, sw, dh, dw, PL, Qw, L):  # pragma: no cover (compiled)
    """acc = bo + the nine taps of a 3x3 kernel, summed in registers in one pass (nine separate
    read-modify-write passes over acc cost three times the cache traffic)."""
    s00 = planes[_tap_start(0, 0, sh, sw, PL, Qw):][:L]
    s01 = planes[_tap_start(0, dw, sh, sw, PL, Qw):][:L]
    s02 = planes[_tap_start(0, 2 * dw, sh, sw, PL, Qw):][:L]
    s10 = planes[_tap_start(dh, 0, sh, sw, PL, Qw):][:L]
    s11 = planes[_tap_start(dh, dw, sh, sw, PL, Qw):][:L]
    s12 = planes[_tap_start(dh, 2 * dw, sh, sw, PL, Qw):][:L]
    s20 = planes[_tap_start(2 * dh, 0, sh, sw, PL, Qw):][:L]
    s21 = planes[_tap_start(2 * dh, dw, sh, sw, PL, Qw):][:L]
    s22 = planes[_tap_start(2 * dh, 2 * dw, sh, sw, PL, Qw):][:L]
    w00, w01, w02 = w[0, 0], w[0, 1], w[0, 2]
    w10, w11, w12 = w[1, 0], w[1, 1], w[1, 2]
    w20, w21, w22 = w[2, 0], w[2, 1], w[2, 2]
    for p in range(L):
        acc[p] = (bo + w00 * s00[p] + w01 * s01[p] + w02 * s02[p] + w10 * s10[p] + w11 * s11[p]
                  + w12 * s12[p] + w20 * s20[p] + w21 * s21[p] + w22 * s22[p])


@njit(nogil=True, boundscheck=False, inline="always")
def _taps_row5(planes, wr, acc, a, sh, sw, dw, PL, Qw, L):  # pragma: no cover (compiled)
    """acc += the five taps of one kernel row (padded row offset a), summed in registers in one pass
    (five read-modify-write passes over acc cost 1.4x the time on 14x14 images)."""
    w0, w1, w2, w3, w4 = wr[0], wr[1], wr[2], wr[3], wr[4]
    # undilated: one view per stride phase, the taps at offsets within it (each view costs its reference
    # counting: five a row were ~15% of a 5x5 conv of 7x7 and 14x14 images); the same sums in the same order
    if dw == 1 and sw == 1:
        s = planes[_tap_start(a, 0, sh, sw, PL, Qw):][:L + 4]
        for p in range(L):
            acc[p] += w0 * s[p] + w1 * s[p + 1] + w2 * s[p + 2] + w3 * s[p + 3] + w4 * s[p + 4]
        return
    if dw == 1 and sw == 2:             # the even phase holds taps 0, 2, 4, the odd one taps 1, 3
        e = planes[_tap_start(a, 0, sh, sw, PL, Qw):][:L + 2]
        o = planes[_tap_start(a, 1, sh, sw, PL, Qw):][:L + 1]
        for p in range(L):
            acc[p] += w0 * e[p] + w1 * o[p] + w2 * e[p + 1] + w3 * o[p + 1] + w4 * e[p + 2]
        return
    s0 = planes[_tap_start(a, 0, sh, sw, PL, Qw):][:L]
    s1 = planes[_tap_start(a, dw, sh, sw, PL, Qw):][:L]
    s2 = planes[_tap_start(a, 2 * dw, sh, sw, PL, Qw):][:L]
    s3 = planes[_tap_start(a, 3 * dw, sh, sw, PL, Qw):][:L]
    s4 = planes[_tap_start(a, 4 * dw, sh, sw, PL, Qw):][:L]
    for p in range(L):
        acc[p] += w0 * s0[p] + w1 * s1[p] + w2 * s2[p] + w3 * s3[p] + w4 * s4[p]


@njit(nogil=True, boundscheck=False, inline="always")
def _split2(xr, planes, d_even, d_odd):  # pragma: no cover (compiled)
    """planes[d_even + k] = xr[2k], planes[d_odd + k] = xr[2k + 1]: a row split into its two stride
    phases, both read in one loop (an interleaved pair of loads vectorizes; one strided load does not)."""
    n = xr.shape[0]
    h = n // 2
    src = xr[:2 * h]
    ev = planes[d_even:d_even + h]
    od = planes[d_odd:d_odd + h]
    for k in range(h):
        ev[k] = src[2 * k]
        od[k] = src[2 * k + 1]
    if n % 2:
        planes[d_even + h] = xr[n - 1]


@njit(nogil=True, boundscheck=False, inline="always")
def _plane_geometry(OH, OW, KH, KW, sh, sw, dh, dw):  # pragma: no cover (compiled)
    """The padded extent (Hp, Wp) the taps of an OH x OW output read, and the stride-phase planes'
    row length Qw and size PL."""
    Hp = (OH - 1) * sh + (KH - 1) * dh + 1
    Wp = (OW - 1) * sw + (KW - 1) * dw + 1
    Qw = (Wp + sw - 1) // sw
    return Hp, Wp, Qw, ((Hp + sh - 1) // sh) * Qw


@njit(nogil=True, boundscheck=False, inline="always")
def _fill_planes(xc, planes, pt, pl, sh, sw, Hp, Wp, PL, Qw):  # pragma: no cover (compiled)
    """One channel xc (H, W), zero-padded (leading pads pt, pl; Hp x Wp in all), split into its sh*sw
    stride phases of Qw columns each: plane (rh, rw)[q, k] = xpad[q*sh + rh, k*sw + rw]."""
    H, W = xc.shape
    planes[:sh * sw * PL] = 0
    for i in range(max(0, -pt), min(H, Hp - pt)):
        r = i + pt
        rb = ((r % sh) * sw) * PL + (r // sh) * Qw
        j1 = min(W, Wp - pl)
        if sw == 2 and j1 >= _SPLIT2_MIN_W:
            _split2(xc[i][:j1], planes, rb + (pl % 2) * PL + pl // 2, rb + (1 - pl % 2) * PL + (pl + 1) // 2)
            continue
        if sw == 2 and j1 >= 2:
            # short rows indexed in x itself: a row view costs more than the copy here (its reference
            # counting), 1.5-2x on depthwise convs of 7-28 wide strided images
            de, do, h = rb + (pl % 2) * PL + pl // 2, rb + (1 - pl % 2) * PL + (pl + 1) // 2, j1 // 2
            for k in range(h):
                planes[de + k] = xc[i, 2 * k]
                planes[do + k] = xc[i, 2 * k + 1]
            if j1 % 2:
                planes[de + h] = xc[i, j1 - 1]
            continue
        xr = xc[i]
        for rw in range(sw):
            # input columns j with (j + pl) % sw == rw land contiguously in phase plane rw
            j = (rw - pl) % sw
            if j >= j1:
                continue
            cnt = (j1 - j + sw - 1) // sw
            d0 = rb + rw * PL + (j + pl) // sw
            dst = planes[d0:d0 + cnt]
            if sw == 1:
                src = xr[j:j + cnt]
                for k in range(cnt):
                    dst[k] = src[k]
            else:
                for k in range(cnt):
                    dst[k] = xr[j + k * sw]


@njit(nogil=True, boundscheck=False, inline="always")
def _act(v, lo, hi, alpha, beta, act):  # pragma: no cover (compiled)
    """The depthwise loops' output activation: clip(v, lo, hi), then for act 1 HardSigmoid
    clip(alpha * v + beta, 0, 1), for act 2 HardSwish v * HardSigmoid(v) (``act`` a literal where inlined)."""
    v = min(max(v, lo), hi)
    if act == 0:
        return v
    zero = alpha - alpha            # the bounds in v's dtype (integer literals would widen float32)
    h = min(max(alpha * v + beta, zero), zero + np.float32(1.0))
    return h if act == 1 else v * h


@njit(nogil=True, boundscheck=False)
def depthwise2d(x, w, b, y, sh, sw, dh, dw, pt, pl, lo, hi):  # pragma: no cover (compiled)
    """y[n, o] = clip(b[o] + sum_taps w[o, kh, kw] * xpad[n, o // mult, oh*sh + kh*dh, ow*sw + kw*dw], lo, hi).

    x (N, C, H, W), w (M, KH, KW) with M = C * mult, b (M,), y (N, M, OH, OW) written in full;
    pt/pl are the leading pads (the trailing ones follow from y's size).
    """
    _depthwise_strides(x, w, b, y, sh, sw, dh, dw, pt, pl, lo, hi, lo, lo, 0)


@njit(nogil=True, boundscheck=False)
def depthwise2d_act(x, w, b, y, sh, sw, dh, dw, pt, pl, lo, hi, alpha, beta, act):  # pragma: no cover
    """depthwise2d with FusedConv's HardSigmoid (act 1) or HardSwish (act 2) applied as each output is
    written (see ``_act``), instead of a second pass over y."""
    if act == 1:
        _depthwise_strides(x, w, b, y, sh, sw, dh, dw, pt, pl, lo, hi, alpha, beta, 1)
    elif act == 2:
        _depthwise_strides(x, w, b, y, sh, sw, dh, dw, pt, pl, lo, hi, alpha, beta, 2)
    else:
        _depthwise_strides(x, w, b, y, sh, sw, dh, dw, pt, pl, lo, hi, alpha, beta, 0)


@njit(nogil=True, boundscheck=False, inline="always")
def _depthwise_strides(x, w, b, y, sh, sw, dh, dw, pt, pl, lo, hi, alpha, beta, act):  # pragma: no cover
    """The dispatch on strides shared by depthwise2d and depthwise2d_act."""
    # the common strides as literals: the inlined body then has no integer divisions by a runtime
    # stride per row and tap (they cost more than the taps on 7x7 and 14x14 images)
    if dh == 1 and dw == 1 and sh == 1 and sw == 1:
        H, W = x.shape[2], x.shape[3]
        if (w.shape[1] == 3 and w.shape[2] == 3 and pt == 1 and pl == 1 and y.shape[2] == H and y.shape[3] == W
                and H >= 2 and W >= _FLAT_MIN_W):
            _depthwise3x3_flat(x, w, b, y, lo, hi, alpha, beta, act)
        else:
            _depthwise2d(x, w, b, y, 1, 1, 1, 1, pt, pl, lo, hi, alpha, beta, act)
    elif dh == 1 and dw == 1 and sh == 2 and sw == 2:
        _depthwise2d(x, w, b, y, 2, 2, 1, 1, pt, pl, lo, hi, alpha, beta, act)
    else:
        _depthwise2d(x, w, b, y, sh, sw, dh, dw, pt, pl, lo, hi, alpha, beta, act)


@njit(nogil=True, boundscheck=False, inline="always")
def _two_rows(xf, s, W, L, a0, a1, a2, c0, c1, c2, bo, dst, lo, hi, alpha, beta, act):  # pragma: no cover
    """dst[r] = clip(bo + (a0, a1, a2) . xf[s + r:][:3] + (c0, c1, c2) . xf[s + W + r:][:3], lo, hi), r < L:
    an edge row of a 3x3 "same" conv, from the two image rows its kernel rows reach."""
    p = xf[s:s + L + 2]          # one view per image row, the taps at offsets 0-2 (see _depthwise3x3_flat)
    q = xf[s + W:s + W + L + 2]
    for r in range(L):
        v = (bo + a0 * p[r] + a1 * p[r + 1] + a2 * p[r + 2]) + (c0 * q[r] + c1 * q[r + 1] + c2 * q[r + 2])
        dst[r] = _act(v, lo, hi, alpha, beta, act)


@njit(nogil=True, boundscheck=False, inline="always")
def _depthwise3x3_flat(x, w, b, y, lo, hi, alpha, beta, act):  # pragma: no cover (compiled)
    """3x3, stride 1, pads 1 ("same"), images at least 2 x _FLAT_MIN_W: straight from x, no padded copy.

    The interior rows are one flat run over the image at its own row pitch (every tap a contiguous
    range of x); the run's first and last columns read the neighbouring rows' ends and are recomputed
    after it, with the top and bottom rows, from the taps inside the image. Padding and cropping were
    most of the cost of the plane path on 56x56 and larger images (measured 1.7x faster there); at
    7x7 the per-row fixes cost more than they save, hence the minimum width.
    """
    N, C, H, W = x.shape
    M = y.shape[1]
    mult = M // C
    L = (H - 2) * W - 2           # the flat run: (1, 1) .. (H-2, W-2)
    Li = W - 2                    # the top and bottom rows' inner columns
    e = (H - 2) * W
    for no in range(N * M):
        n = no // M
        o = no % M
        xc = x[n, o // mult]
        xf = xc.ravel()
        yc = y[n, o]
        yf = yc.ravel()
        bo = b[o]
        w00, w01, w02 = w[o, 0, 0], w[o, 0, 1], w[o, 0, 2]
        w10, w11, w12 = w[o, 1, 0], w[o, 1, 1], w[o, 1, 2]
        w20, w21, w22 = w[o, 2, 0], w[o, 2, 1], w[o, 2, 2]
        if L > 0:
            # one view per kernel row, the taps at offsets 0-2 in it: a view costs its reference counting,
            # nine a channel were ~15-30% of the conv on 10-28 wide images (the same sums, same order)
            r0 = xf[0:L + 2]
            r1 = xf[W:W + L + 2]
            r2 = xf[2 * W:2 * W + L + 2]
            dst = yf[W + 1:W + 1 + L]
            for r in range(L):
                v = ((bo + w00 * r0[r] + w01 * r0[r + 1] + w02 * r0[r + 2])
                     + (w10 * r1[r] + w11 * r1[r + 1] + w12 * r1[r + 2])
                     + (w20 * r2[r] + w21 * r2[r + 1] + w22 * r2[r + 2]))
                dst[r] = _act(v, lo, hi, alpha, beta, act)
        # the top row (kernel rows 1 and 2 over image rows 0 and 1), the bottom row (kernel rows 0 and 1)
        _two_rows(xf, 0, W, Li, w10, w11, w12, w20, w21, w22, bo, yf[1:1 + Li], lo, hi, alpha, beta, act)
        _two_rows(xf, e, W, Li, w00, w01, w02, w10, w11, w12, bo, yf[e + W + 1:e + W + 1 + Li], lo, hi, alpha,
                  beta, act)
        for oh in range(H):          # first and last columns: six taps (four on the corners)
            s = bo + w11 * xc[oh, 0] + w12 * xc[oh, 1]
            t = bo + w10 * xc[oh, W - 2] + w11 * xc[oh, W - 1]
            if oh > 0:
                s += w01 * xc[oh - 1, 0] + w02 * xc[oh - 1, 1]
                t += w00 * xc[oh - 1, W - 2] + w01 * xc[oh - 1, W - 1]
            if oh < H - 1:
                s += w21 * xc[oh + 1, 0] + w22 * xc[oh + 1, 1]
                t += w20 * xc[oh + 1, W - 2] + w21 * xc[oh + 1, W - 1]
            yc[oh, 0] = _act(s, lo, hi, alpha, beta, act)
            yc[oh, W - 1] = _act(t, lo, hi, alpha, beta, act)


@njit(nogil=True, boundscheck=False, inline="always")
def _depthwise2d(x, w, b, y, sh, sw, dh, dw, pt, pl, lo, hi, alpha, beta, act):  # pragma: no cover (compiled)
    """depthwise2d's body, inlined once per stride case. Each channel goes in strips of output rows
    whose planes fit in L1 (a whole 112x112 channel's planes are 50 KB: the nine taps then read L2)."""
    N, C, H, W = x.shape
    M, OH, OW = y.shape[1], y.shape[2], y.shape[3]
    mult = M // C
    KH, KW = w.shape[1], w.shape[2]
    Wp = (OW - 1) * sw + (KW - 1) * dw + 1
    rs = max(1, min(OH, (_STRIP - ((KH - 1) * dh + 1) * Wp) // (sh * Wp) + 1))   # output rows per strip
    Hp, Wp, Qw, PL = _plane_geometry(rs, OW, KH, KW, sh, sw, dh, dw)
    planes = np.empty(sh * sw * PL, dtype=x.dtype)
    acc = np.empty((rs - 1) * Qw + OW, dtype=x.dtype)
    for no in range(N * M):
        n = no // M
        o = no % M
        bo = b[o]
        yo = y[n, o]
        for r0 in range(0, OH, rs):
            ns = min(rs, OH - r0)
            Hs, _, _, PLs = _plane_geometry(ns, OW, KH, KW, sh, sw, dh, dw)
            L = (ns - 1) * Qw + OW                # the strip's output at the phase pitch, cropped at the end
            _fill_planes(x[n, o // mult], planes, pt - r0 * sh, pl, sh, sw, Hs, Wp, PLs, Qw)
            if KH == 3 and KW == 3:
                _taps3x3(planes, w[o], acc, bo, sh, sw, dh, dw, PLs, Qw, L)
            else:
                for p in range(L):
                    acc[p] = bo
                for kh in range(KH):
                    a = kh * dh
                    if KW == 5:                   # PP-LCNet's 5x5: one pass per kernel row, not per tap
                        _taps_row5(planes, w[o, kh], acc, a, sh, sw, dw, PLs, Qw, L)
                        continue
                    for kw in range(KW):
                        s0 = _tap_start(a, kw * dw, sh, sw, PLs, Qw)
                        src = planes[s0:s0 + L]
                        wv = w[o, kh, kw]
                        for p in range(L):        # contiguous slices: vectorized
                            acc[p] += wv * src[p]
            for oh in range(ns):
                yr = yo[r0 + oh]
                ar = acc[oh * Qw:oh * Qw + OW]
                for ow in range(OW):
                    yr[ow] = _act(ar[ow], lo, hi, alpha, beta, act)


@njit(nogil=True, boundscheck=False)
def bias_clip(y, b, lo, hi):  # pragma: no cover (compiled)
    """In place, one pass: y[n, m, :] = clip(y[n, m, :] + b[m], lo, hi); y (N, M, P) C-contiguous."""
    N, M, P = y.shape
    for n in range(N):
        for m in range(M):
            row = y[n, m]
            bm = b[m]
            for p in range(P):
                row[p] = min(max(row[p] + bm, lo), hi)


@njit(nogil=True, boundscheck=False)
def bias_add_clip(y, b, z, lo, hi):  # pragma: no cover (compiled)
    """In place, one pass: y[n, m, :] = clip(y[n, m, :] + b[m] + z[n, m, :], lo, hi) (a residual input z)."""
    N, M, P = y.shape
    for n in range(N):
        for m in range(M):
            row = y[n, m]
            zr = z[n, m]
            bm = b[m]
            for p in range(P):
                row[p] = min(max(row[p] + bm + zr[p], lo), hi)


@njit(nogil=True, boundscheck=False)
def bias_hard_act(y, b, z, has_z, alpha, beta, times_x):  # pragma: no cover (compiled)
    """In place, one pass: v = y[n, m, :] + b[m] (+ z[n, m, :] where has_z), h = clip(alpha * v + beta, 0, 1),
    y = v * h where times_x else h: FusedConv's HardSigmoid, and HardSwish (x * HardSigmoid(x))."""
    N, M, P = y.shape
    zero = alpha * np.float32(0.0)      # the bounds in y's dtype (integer literals would widen float32)
    one = zero + np.float32(1.0)
    for n in range(N):
        for m in range(M):
            row = y[n, m]
            zr = z[n, m]
            bm = b[m]
            if has_z and times_x:
                for p in range(P):
                    v = row[p] + bm + zr[p]
                    row[p] = v * min(max(alpha * v + beta, zero), one)
            elif has_z:
                for p in range(P):
                    row[p] = min(max(alpha * (row[p] + bm + zr[p]) + beta, zero), one)
            elif times_x:
                for p in range(P):
                    v = row[p] + bm
                    row[p] = v * min(max(alpha * v + beta, zero), one)
            else:
                for p in range(P):
                    row[p] = min(max(alpha * (row[p] + bm) + beta, zero), one)


@njit(nogil=True, boundscheck=False)
def im2col2d(x, cols, KH, KW, sh, sw, dh, dw, pt, pl, OH, OW):  # pragma: no cover (compiled)
    """cols[n, (c*KH + kh)*KW + kw, oh*OW + ow] = xpad[n, c, oh*sh + kh*dh, ow*sw + kw*dw]: the im2col
    matrix, each channel first padded and split into its stride phases once (as in depthwise2d), so
    every row of cols is one contiguous copy. x (N, C, H, W), cols (N, C*KH*KW, OH*OW)."""
    if dh == 1 and dw == 1 and sh == 1 and sw == 1:      # literal strides, as in depthwise2d
        _im2col2d(x, cols, KH, KW, 1, 1, 1, 1, pt, pl, OH, OW)
    elif dh == 1 and dw == 1 and sh == 2 and sw == 2:
        _im2col2d(x, cols, KH, KW, 2, 2, 1, 1, pt, pl, OH, OW)
    else:
        _im2col2d(x, cols, KH, KW, sh, sw, dh, dw, pt, pl, OH, OW)


@njit(nogil=True, boundscheck=False, inline="always")
def _im2col2d(x, cols, KH, KW, sh, sw, dh, dw, pt, pl, OH, OW):  # pragma: no cover (compiled)
    """im2col2d's body, inlined once per stride case."""
    N, C, H, W = x.shape
    Hp, Wp, Qw, PL = _plane_geometry(OH, OW, KH, KW, sh, sw, dh, dw)
    planes = np.empty(sh * sw * PL, dtype=x.dtype)
    for n in range(N):
        for c in range(C):
            _fill_planes(x[n, c], planes, pt, pl, sh, sw, Hp, Wp, PL, Qw)
            for kh in range(KH):
                for kw in range(KW):
                    s0 = _tap_start(kh * dh, kw * dw, sh, sw, PL, Qw)
                    row = cols[n, (c * KH + kh) * KW + kw]
                    for oh in range(OH):
                        src = planes[s0 + oh * Qw:s0 + oh * Qw + OW]
                        dst = row[oh * OW:(oh + 1) * OW]
                        for k in range(OW):
                            dst[k] = src[k]


# the variants compiled ahead of time (see compiled.jit): argument kinds, dtypes
AOT = {
    "im2col2d": ("A4 A3 i i i i i i i i i i", ("f4", "f8")),
    "depthwise2d": ("A4 A3 A1 A4 i i i i i i s s", ("f4", "f8")),
    "depthwise2d_act": ("A4 A3 A1 A4 i i i i i i s s s s i", ("f4", "f8")),
    "bias_clip": ("A3 A1 s s", ("f4", "f8")),
    "bias_add_clip": ("A3 A1 A3 s s", ("f4", "f8")),
    "bias_hard_act": ("A3 A1 A3 i s s i", ("f4", "f8")),
}
