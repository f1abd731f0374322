"""Compiled (numba) loops for channels-last (NHWC) data inside a DepthwiseSeparableBlock: the depthwise
conv and the bias/clip pass over GEMM rows.

Channels-first depthwise loops lose most of their time on per-channel work (padding, phase splits,
short rows) when images are small or strided; channels-last, every output pixel is one contiguous
loop over the channels, with each tap a contiguous run of the input (measured, one thread, 3x3:
960 channels at 7x7 89 -> 31 us, 576 at 14x14 stride 2 129 -> 20 us, 96 at 112x112 stride 2 410 ->
190 us; at 56x56 stride 1 and above channels-first stays faster, and the block is not formed there).
Two-dimensional ``[pixel, channel]`` indexing with the channel as the bare loop index is what lets
numba vectorize these loops (a flat ``offset + c`` index compiles to gathers).
"""
from __future__ import annotations

from numba import njit


@njit(nogil=True, boundscheck=False, inline="always")
def _pixel(x2, w2, b, y2, yo, row0, ih0, iw0, H, W, KH, KW, lo, hi):  # pragma: no cover (compiled)
    """One output pixel from the taps that fall inside the image (border pixels, any kernel size)."""
    C = y2.shape[1]
    for c in range(C):
        y2[yo, c] = b[c]
    for kh in range(KH):
        ih = ih0 + kh
        if ih < 0 or ih >= H:
            continue
        for kw in range(KW):
            iw = iw0 + kw
            if iw < 0 or iw >= W:
                continue
            r = row0 + ih * W + iw
            t = kh * KW + kw
            for c in range(C):
                y2[yo, c] += x2[r, c] * w2[t, c]
    for c in range(C):
        y2[yo, c] = min(max(y2[yo, c], lo), hi)


@njit(nogil=True, boundscheck=False)
def depthwise_nhwc(x, w, b, y, sh, sw, pt, pl, lo, hi):  # pragma: no cover (compiled)
    """y[n, oh, ow, c] = clip(b[c] + sum_taps w[kh, kw, c] * xpad[n, oh*sh + kh, ow*sw + kw, c], lo, hi).

    x (N, H, W, C), w (KH, KW, C), b (C,), y (N, OH, OW, C) written in full; pt/pl the leading pads.
    """
    N, H, W, C = x.shape
    OH, OW = y.shape[1], y.shape[2]
    KH, KW = w.shape[0], w.shape[1]
    x2 = x.reshape(N * H * W, C)
    y2 = y.reshape(N * OH * OW, C)
    w2 = w.reshape(KH * KW, C)
    for n in range(N):
        row0 = n * H * W
        for oh in range(OH):
            ih0 = oh * sh - pt
            inside_h = ih0 >= 0 and ih0 + KH <= H
            for ow in range(OW):
                iw0 = ow * sw - pl
                yo = (n * OH + oh) * OW + ow
                if KH == 3 and KW == 3 and inside_h and iw0 >= 0 and iw0 + 3 <= W:
                    r0 = row0 + ih0 * W + iw0
                    r1 = r0 + W
                    r2 = r1 + W
                    for c in range(C):     # three partial sums: a shorter dependency chain per lane
                        v = ((b[c] + x2[r0, c] * w2[0, c] + x2[r0 + 1, c] * w2[1, c] + x2[r0 + 2, c] * w2[2, c])
                             + (x2[r1, c] * w2[3, c] + x2[r1 + 1, c] * w2[4, c] + x2[r1 + 2, c] * w2[5, c])
                             + (x2[r2, c] * w2[6, c] + x2[r2 + 1, c] * w2[7, c] + x2[r2 + 2, c] * w2[8, c]))
                        y2[yo, c] = min(max(v, lo), hi)
                else:
                    _pixel(x2, w2, b, y2, yo, row0, ih0, iw0, H, W, KH, KW, lo, hi)


@njit(nogil=True, boundscheck=False)
def bias_clip_rows(y, b, lo, hi):  # pragma: no cover (compiled)
    """In place: y[r, c] = clip(y[r, c] + b[c], lo, hi); y (R, C) (GEMM rows, channels last)."""
    R, C = y.shape
    for r in range(R):
        for c in range(C):
            y[r, c] = min(max(y[r, c] + b[c], lo), hi)


@njit(nogil=True, boundscheck=False)
def rows_to_channels(t, b, z, has_z, lo, hi, y, m0, m1):  # pragma: no cover (compiled)
    """y[n, m, p] = clip(t[n, p, m] + b[m] (+ z[n, m, p] where has_z), lo, hi) for channels m0..m1: a
    channels-last GEMM result (N, P, M) back to channels-first (N, M, P) with its bias, residual and clip
    in one pass, 64 pixels at a time (their rows of t stay in cache while every channel reads them)."""
    N, P, M = t.shape
    for n in range(N):
        for p0 in range(0, P, 64):
            p1 = min(P, p0 + 64)
            for m in range(m0, m1):
                bm = b[m]
                yr = y[n, m]
                if has_z:
                    zr = z[n, m]
                    for p in range(p0, p1):
                        yr[p] = min(max(t[n, p, m] + bm + zr[p], lo), hi)
                else:
                    for p in range(p0, p1):
                        yr[p] = min(max(t[n, p, m] + bm, lo), hi)


# the variants compiled ahead of time (see compiled.jit): argument kinds, dtypes
AOT = {
    "depthwise_nhwc": ("A4 A3 A1 A4 i i i i s s", ("f4", "f8")),
    "bias_clip_rows": ("A2 A1 s s", ("f4", "f8")),
    "rows_to_channels": ("A3 A1 A3 i s s A3 i i", ("f4",)),
}
