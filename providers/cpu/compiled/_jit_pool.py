"""Compiled (numba) loops for 2-D MaxPool and AveragePool, NCHW, one channel image at a time.

NumPy's separable path pads the whole input into a new array and makes one strided pass per kernel
row and column over images that do not stay in cache. Here each output row is reduced while its
input rows are in cache: first over the kernel's rows (whole input rows, contiguous), then over its
columns, read from a small row buffer that holds the padding and is split into its stride phases, so
every column tap is a contiguous slice too (contiguous slices indexed by the bare loop index are what
vectorizes).

The loops run on the calling thread (see _jit_conv: OpenBLAS's spinning workers hold the other core).
"""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(nogil=True, boundscheck=False, inline="always")
def _red(a, v, is_max):  # pragma: no cover (compiled)
    """max in which a NaN never wins over a number, as onnxruntime's MaxPool (``if (x > y) y = x`` from the
    lowest value), or a sum. is_max is a constant after inlining, so the branch folds away."""
    if is_max:
        return v if (v > a) | (a != a) else a
    return a + v


@njit(nogil=True, boundscheck=False, inline="always")
def _rows(xc, buf, vt, r0, kh_, dh, sw, pl, Qw, Wu, pad, is_max):  # pragma: no cover (compiled)
    """One output row's reduction over the kernel's rows (input rows r0 + kh*dh; padding rows are the
    identity), written into the padded, phase-split row buffer: padded column c = j + pl sits at
    buf[(c % sw)*Qw + c // sw]."""
    H = xc.shape[0]
    acc = buf[pl:pl + Wu] if sw == 1 else vt[:Wu]
    first = True
    for kh in range(kh_):
        ih = r0 + kh * dh
        if ih < 0 or ih >= H:
            continue
        src = xc[ih, :Wu]
        if first:
            for j in range(Wu):
                acc[j] = src[j]
            first = False
        else:
            for j in range(Wu):
                acc[j] = _red(acc[j], src[j], is_max)
    if first:
        for j in range(Wu):
            acc[j] = pad
    if sw == 2 and Wu >= 2:
        h = Wu // 2
        s2 = vt[:2 * h]
        d_ev = (pl % 2) * Qw + pl // 2
        d_od = (1 - pl % 2) * Qw + (pl + 1) // 2
        ev = buf[d_ev:d_ev + h]
        od = buf[d_od:d_od + h]
        for k in range(h):                # a paired load vectorizes; one strided load does not
            ev[k] = s2[2 * k]
            od[k] = s2[2 * k + 1]
        if Wu % 2:
            c = Wu - 1 + pl
            buf[(c % 2) * Qw + c // 2] = vt[Wu - 1]
    elif sw != 1:
        for j in range(Wu):
            c = j + pl
            buf[(c % sw) * Qw + c // sw] = vt[j]


@njit(nogil=True, boundscheck=False, inline="always")
def _rows3_split2(xc, buf, r0, dh, pl, Qw, Wu, is_max):  # pragma: no cover (compiled)
    """_rows for the common case, three in-range rows and stride-2 columns: the rows' reduction and the
    column split in one pass (a 56-wide loop is too short for LLVM's 64-wide vector body, so fewer,
    fuller loops is what saves time)."""
    h = Wu // 2
    a0 = xc[r0, :2 * h]
    a1 = xc[r0 + dh, :2 * h]
    a2 = xc[r0 + 2 * dh, :2 * h]
    d_ev = (pl % 2) * Qw + pl // 2
    d_od = (1 - pl % 2) * Qw + (pl + 1) // 2
    ev = buf[d_ev:d_ev + h]
    od = buf[d_od:d_od + h]
    for k in range(h):
        ev[k] = _red(_red(a0[2 * k], a1[2 * k], is_max), a2[2 * k], is_max)
        od[k] = _red(_red(a0[2 * k + 1], a1[2 * k + 1], is_max), a2[2 * k + 1], is_max)
    if Wu % 2:
        j = Wu - 1
        c = j + pl
        buf[(c % 2) * Qw + c // 2] = _red(_red(xc[r0, j], xc[r0 + dh, j], is_max), xc[r0 + 2 * dh, j], is_max)


@njit(nogil=True, boundscheck=False, inline="always")
def _cols(buf, yr, kw_, sw, dw, Qw, is_max):  # pragma: no cover (compiled)
    """yr[ow] = reduce_kw of the padded row at column ow*sw + kw*dw: a contiguous slice of buf per tap."""
    OW = yr.shape[0]
    if kw_ == 3:
        # one fused loop: three read-modify-write passes over a short row cost more than the reads
        s0 = buf[:OW]
        s1 = buf[(dw % sw) * Qw + dw // sw:][:OW]
        s2 = buf[(2 * dw % sw) * Qw + 2 * dw // sw:][:OW]
        for k in range(OW):
            yr[k] = _red(_red(s0[k], s1[k], is_max), s2[k], is_max)
        return
    for kw in range(kw_):
        e = kw * dw
        src = buf[(e % sw) * Qw + e // sw:][:OW]
        if kw == 0:
            for k in range(OW):
                yr[k] = src[k]
        else:
            for k in range(OW):
                yr[k] = _red(yr[k], src[k], is_max)


@njit(nogil=True, boundscheck=False, inline="always")
def _pool2d(x, y, inv, kh_, kw_, sh, sw, dh, dw, pt, pl, is_max):  # pragma: no cover (compiled)
    N, C, H, W = x.shape
    OH, OW = y.shape[2], y.shape[3]
    pad = -np.inf if is_max else 0.0
    Wp = (OW - 1) * sw + (kw_ - 1) * dw + 1      # the padded row extent the column taps read
    Qw = (Wp + sw - 1) // sw                      # one stride phase's extent
    Wu = max(0, min(W, Wp - pl))                  # the input columns any window reads
    buf = np.empty(sw * Qw, dtype=x.dtype)
    buf[:] = pad                                  # padding cells: never written again
    vt = np.empty(max(Wu, 1), dtype=x.dtype)
    for nc in range(N * C):
        xc = x[nc // C, nc % C]
        yo = y[nc // C, nc % C]
        for oh in range(OH):
            r0 = oh * sh - pt
            if kh_ == 3 and sw == 2 and Wu >= 2 and r0 >= 0 and r0 + 2 * dh < H:
                _rows3_split2(xc, buf, r0, dh, pl, Qw, Wu, is_max)
            else:
                _rows(xc, buf, vt, r0, kh_, dh, sw, pl, Qw, Wu, pad, is_max)
            yr = yo[oh]
            _cols(buf, yr, kw_, sw, dw, Qw, is_max)
            if not is_max:
                ir = inv[oh]
                for k in range(OW):
                    yr[k] *= ir[k]


@njit(nogil=True, boundscheck=False)
def maxpool2d(x, y, kh, kw, sh, sw, dh, dw, pt, pl):  # pragma: no cover (compiled)
    """y[n, c, oh, ow] = max over the window of x padded with -inf (a NaN loses to any number); x (N, C, H, W),
    y (N, C, OH, OW) written in full; pt/pl are the leading pads (the trailing ones and ceil_mode's
    overhang follow from y's size)."""
    # the common strides as literals: no integer division by a runtime stride per row (as _jit_conv)
    if sh == 2 and sw == 2 and dh == 1 and dw == 1:
        _pool2d(x, y, y[0, 0], kh, kw, 2, 2, 1, 1, pt, pl, True)
    elif sh == 1 and sw == 1 and dh == 1 and dw == 1:
        _pool2d(x, y, y[0, 0], kh, kw, 1, 1, 1, 1, pt, pl, True)
    else:
        _pool2d(x, y, y[0, 0], kh, kw, sh, sw, dh, dw, pt, pl, True)


@njit(nogil=True, boundscheck=False)
def avgpool2d(x, y, inv, kh, kw, sh, sw, dh, dw, pt, pl):  # pragma: no cover (compiled)
    """y[n, c, oh, ow] = inv[oh, ow] * the sum over the window of x padded with zeros (inv: the
    reciprocal divisor per output position, count_include_pad already decided by the caller)."""
    if sh == 2 and sw == 2 and dh == 1 and dw == 1:
        _pool2d(x, y, inv, kh, kw, 2, 2, 1, 1, pt, pl, False)
    elif sh == 1 and sw == 1 and dh == 1 and dw == 1:
        _pool2d(x, y, inv, kh, kw, 1, 1, 1, 1, pt, pl, False)
    else:
        _pool2d(x, y, inv, kh, kw, sh, sw, dh, dw, pt, pl, False)


# the variants compiled ahead of time (see compiled.jit): argument kinds, dtypes
AOT = {
    "maxpool2d": ("A4 A4 i i i i i i i i", ("f4", "f8")),
    "avgpool2d": ("A4 A4 A2 i i i i i i i i", ("f4", "f8")),
}
