"""Compiled (numba) col2im for 2-D ConvTranspose: the overlap-add of the column GEMM's taps into the output.

NumPy's col2im makes one strided pass per kernel tap over rows as short as the input's width (4 or 8
values in a decoder's first layers), so it costs more than the GEMM. Here it is one compiled pass, in
one of two loop orders picked by the caller, whichever has the longer inner loop:

- ``col2im_channels_last``: per input pixel and tap, one add of all Mg channels into a channels-last
  accumulator (inner loop Mg long), then one transpose into the NCHW output. For narrow images with
  many channels.
- ``col2im_rows``: per channel, each tap's rows are added into the output's stride-phase planes
  (contiguous rows, inner loop W long), then the phases are interleaved into the output. For wide
  images with few channels.

Both take the columns tap-major, ``cols (B, KH, KW, Mg, H, W)`` with B = N * groups, write
``y (B, Mg, OH, OW)`` in full with the bias ``b (groups, Mg)``, and need the leading pads p >= 0.
They run on the calling thread (see ``_jit_conv``: OpenBLAS's spinning workers hold the other core).
"""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(nogil=True, boundscheck=False)
def col2im_channels_last(cols, b, y, s1, s2, d1, d2, p1, p2):  # pragma: no cover (compiled)
    """y[bi, m, r0 + i*s1, c0 + j*s2] += cols[bi, kh, kw, m, i, j] (r0 = kh*d1 - p1, c0 = kw*d2 - p2), + bias."""
    B, KH, KW, M, H, W = cols.shape
    G = b.shape[0]
    OH, OW = y.shape[2], y.shape[3]
    OHW = OH * OW
    HW = H * W
    acc = np.empty((OHW, M), dtype=y.dtype)
    for bi in range(B):
        bg = b[bi % G]
        for o in range(OHW):
            row = acc[o]
            for m in range(M):
                row[m] = bg[m]
        for kh in range(KH):
            r0 = kh * d1 - p1
            i0 = max(0, (-r0 + s1 - 1) // s1)           # the input rows that land inside the output
            i1 = min(H, (OH - r0 + s1 - 1) // s1)
            for kw in range(KW):
                c0 = kw * d2 - p2
                j0 = max(0, (-c0 + s2 - 1) // s2)
                j1 = min(W, (OW - c0 + s2 - 1) // s2)
                cf = cols[bi, kh, kw].reshape(M, HW)
                for i in range(i0, i1):
                    for j in range(j0, j1):
                        row = acc[(r0 + i * s1) * OW + c0 + j * s2]
                        s = i * W + j
                        for m in range(M):
                            row[m] += cf[m, s]
        yf = y[bi].reshape(M, OHW)
        for m in range(M):
            yr = yf[m]
            for o in range(OHW):
                yr[o] = acc[o, m]


@njit(nogil=True, boundscheck=False)
def col2im_rows(cols, b, y, s1, s2, d1, d2, p1, p2):  # pragma: no cover (compiled)
    """As col2im_channels_last, channel by channel through the output's stride-phase planes.

    Tap (kh, kw) of input pixel (i, j) lands on the full (unpadded) output position
    (i*s1 + kh*d1, j*s2 + kw*d2): in phase plane ((kh*d1) % s1, (kw*d2) % s2) at block
    (i + kh*d1 // s1, j + kw*d2 // s2), so each tap adds whole contiguous rows of W values.
    """
    B, KH, KW, M, H, W = cols.shape
    G = b.shape[0]
    OH, OW = y.shape[2], y.shape[3]
    E1 = max(H + ((KH - 1) * d1) // s1, (OH - 1 + p1) // s1 + 1)    # block rows/columns a plane needs
    E2 = max(W + ((KW - 1) * d2) // s2, (OW - 1 + p2) // s2 + 1)
    PL = E1 * E2
    planes = np.empty(s1 * s2 * PL, dtype=y.dtype)
    for bi in range(B):
        bg = b[bi % G]
        for m in range(M):
            planes[:] = 0
            for kh in range(KH):
                a1 = kh * d1
                for kw in range(KW):
                    a2 = kw * d2
                    base = ((a1 % s1) * s2 + a2 % s2) * PL + (a1 // s1) * E2 + a2 // s2
                    src_t = cols[bi, kh, kw, m]
                    for i in range(H):
                        d0 = base + i * E2
                        dst = planes[d0:d0 + W]
                        src = src_t[i]
                        for j in range(W):          # contiguous slices: vectorized
                            dst[j] += src[j]
            bm = bg[m]
            yo = y[bi, m]
            for oh in range(OH):
                f1 = oh + p1
                rb = (f1 % s1) * s2 * PL + (f1 // s1) * E2
                yr = yo[oh]
                for r2 in range(s2):
                    o2 = (r2 - p2) % s2                 # first output column in column phase r2
                    if o2 >= OW:
                        continue
                    cnt = (OW - o2 + s2 - 1) // s2
                    p0 = rb + r2 * PL + (o2 + p2) // s2
                    pr = planes[p0:p0 + cnt]
                    for c in range(cnt):
                        yr[o2 + c * s2] = pr[c] + bm


# the variants compiled ahead of time (see compiled.jit): argument kinds, dtypes
AOT = {
    "col2im_channels_last": ("A6 A2 A4 i i i i i i", ("f4", "f8")),
    "col2im_rows": ("A6 A2 A4 i i i i i i", ("f4", "f8")),
}
