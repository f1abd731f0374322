"""Compiled (numba) Winograd transforms for winograd.py's F(2, 3) and F(4, 3), float32.

NumPy builds the transformed input with a padded copy, a tile gather and two small-K matmuls, and
the output with two more matmuls and an untiling copy: six passes over arrays as large as the
transformed data (36/16 of the image for F(4, 3)), then the bias/clip pass. Here each channel's
tiles go from the image to ``V`` and from ``O`` to the output in one pass each, a band of tiles at a
time in small scratch arrays, with the bias, a residual and a clip applied as the output is written.

Layouts (as winograd.py): ``V[k1*α + k2, c, t]`` is ``(Bᵀ d B)[k1, k2]`` of input tile t of channel
c, ``O[k1*α + k2, m, t]`` the product for output channel m; t = (n*th + i)*tw + j. The transforms
use Lavin & Gray's matrices written out as sums (winograd._MATRICES has them as matrices).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from engineroom.providers.cpu.compiled._jit_conv import _fill_planes

_2 = np.float32(2)
_4 = np.float32(4)
_5 = np.float32(5)
_8 = np.float32(8)


@njit(nogil=True, boundscheck=False, inline="always")
def _bt4(d0, d1, d2, d3, d4, d5):  # pragma: no cover (compiled)
    """Bᵀ d for F(4, 3)."""
    return (_4 * d0 - _5 * d2 + d4, d3 + d4 - _4 * (d1 + d2), _4 * (d1 - d2) - d3 + d4,
            _2 * (d3 - d1) - d2 + d4, _2 * (d1 - d3) - d2 + d4, _4 * d1 - _5 * d3 + d5)


@njit(nogil=True, boundscheck=False, inline="always")
def _at4(o0, o1, o2, o3, o4, o5):  # pragma: no cover (compiled)
    """Aᵀ o for F(4, 3)."""
    a, b = o1 + o2, o1 - o2
    c, d = o3 + o4, o3 - o4
    return o0 + a + c, b + _2 * d, a + _4 * c, b + _8 * d + o5


@njit(nogil=True, boundscheck=False, inline="always")
def _bt2(d0, d1, d2, d3):  # pragma: no cover (compiled)
    """Bᵀ d for F(2, 3)."""
    return d0 - d2, d1 + d2, d2 - d1, d1 - d3


@njit(nogil=True, boundscheck=False, inline="always")
def _at2(o0, o1, o2, o3):  # pragma: no cover (compiled)
    """Aᵀ o for F(2, 3)."""
    return o0 + o1 + o2, o1 - o2 - o3


@njit(nogil=True, boundscheck=False, inline="always")
def _input_tiles(x, V, pt, pl, th, tw, m, c0, c1):  # pragma: no cover (compiled)
    """V from x (N, C, H, W) for F(m, 3), m a literal 2 or 4 after inlining; channels c0..c1."""
    N, C = x.shape[0], x.shape[1]
    a = m + 2
    T = th * tw
    Hp, Wp = th * m + 2, tw * m + 2
    plane = np.empty((Hp, Wp), dtype=np.float32)
    flat = plane.reshape(Hp * Wp)
    rows = np.empty((a, a, T), dtype=np.float32)    # one channel's tiles, transformed along the columns
    for n in range(N):
        for c in range(c0, c1):
            # the zero-padded channel, as _jit_conv pads a depthwise channel (one stride phase)
            _fill_planes(x[n, c], flat, pt, pl, 1, 1, Hp, Wp, Hp * Wp, Wp)
            for i in range(th):
                for r in range(a):
                    src = plane[i * m + r]
                    if m == 4:
                        w0, w1, w2 = rows[r, 0, i * tw:], rows[r, 1, i * tw:], rows[r, 2, i * tw:]
                        w3, w4, w5 = rows[r, 3, i * tw:], rows[r, 4, i * tw:], rows[r, 5, i * tw:]
                        for j in range(tw):
                            q = j * 4
                            w0[j], w1[j], w2[j], w3[j], w4[j], w5[j] = _bt4(
                                src[q], src[q + 1], src[q + 2], src[q + 3], src[q + 4], src[q + 5])
                    else:
                        w0, w1 = rows[r, 0, i * tw:], rows[r, 1, i * tw:]
                        w2, w3 = rows[r, 2, i * tw:], rows[r, 3, i * tw:]
                        for j in range(tw):
                            q = j * 2
                            w0[j], w1[j], w2[j], w3[j] = _bt2(src[q], src[q + 1], src[q + 2], src[q + 3])
            t0 = n * T
            for k2 in range(a):                         # then along the rows, all the channel's tiles at once
                r0, r1, r2, r3 = rows[0, k2], rows[1, k2], rows[2, k2], rows[3, k2]
                if m == 4:
                    r4, r5 = rows[4, k2], rows[5, k2]
                    v0, v1, v2 = V[k2, c, t0:t0 + T], V[a + k2, c, t0:t0 + T], V[2 * a + k2, c, t0:t0 + T]
                    v3, v4, v5 = V[3 * a + k2, c, t0:t0 + T], V[4 * a + k2, c, t0:t0 + T], V[5 * a + k2, c, t0:t0 + T]
                    for t in range(T):
                        v0[t], v1[t], v2[t], v3[t], v4[t], v5[t] = _bt4(r0[t], r1[t], r2[t], r3[t], r4[t], r5[t])
                else:
                    v0, v1 = V[k2, c, t0:t0 + T], V[a + k2, c, t0:t0 + T]
                    v2, v3 = V[2 * a + k2, c, t0:t0 + T], V[3 * a + k2, c, t0:t0 + T]
                    for t in range(T):
                        v0[t], v1[t], v2[t], v3[t] = _bt2(r0[t], r1[t], r2[t], r3[t])


@njit(nogil=True, boundscheck=False)
def input_transform(x, V, m, pt, pl, th, tw, c0, c1):  # pragma: no cover (compiled)
    """V (α², C, N*th*tw) = the transformed zero-padded input tiles of x (N, C, H, W); pt, pl: leading pads;
    channels c0..c1 only (the caller splits the channels over threads)."""
    if m == 4:
        _input_tiles(x, V, pt, pl, th, tw, 4, c0, c1)
    else:
        _input_tiles(x, V, pt, pl, th, tw, 2, c0, c1)


@njit(nogil=True, boundscheck=False, inline="always")
def _output_tiles(O, y, b, z, has_z, lo, hi, th, tw, m, m0, m1):  # pragma: no cover (compiled)
    """y from O for F(m, 3), m a literal 2 or 4 after inlining; output channels m0..m1."""
    N, M, ho, wo = y.shape
    a = m + 2
    T = th * tw
    cols = np.empty((a, m, T), dtype=np.float32)        # one channel's tiles, transformed along the columns
    band = np.empty((m, tw * m), dtype=np.float32)      # then along the rows: a band's m output rows
    for n in range(N):
        t0 = n * T
        for mo in range(m0, m1):
            bm = b[mo]
            for k1 in range(a):
                o0, o1 = O[k1 * a, mo, t0:t0 + T], O[k1 * a + 1, mo, t0:t0 + T]
                o2, o3 = O[k1 * a + 2, mo, t0:t0 + T], O[k1 * a + 3, mo, t0:t0 + T]
                if m == 4:
                    o4, o5 = O[k1 * a + 4, mo, t0:t0 + T], O[k1 * a + 5, mo, t0:t0 + T]
                    c0, c1, c2, c3 = cols[k1, 0], cols[k1, 1], cols[k1, 2], cols[k1, 3]
                    for t in range(T):
                        c0[t], c1[t], c2[t], c3[t] = _at4(o0[t], o1[t], o2[t], o3[t], o4[t], o5[t])
                else:
                    c0, c1 = cols[k1, 0], cols[k1, 1]
                    for t in range(T):
                        c0[t], c1[t] = _at2(o0[t], o1[t], o2[t], o3[t])
            for i in range(th):
                for s in range(m):
                    if m == 4:
                        e0, e1, e2 = cols[0, s, i * tw:], cols[1, s, i * tw:], cols[2, s, i * tw:]
                        e3, e4, e5 = cols[3, s, i * tw:], cols[4, s, i * tw:], cols[5, s, i * tw:]
                        for j in range(tw):
                            band[0, j * 4 + s], band[1, j * 4 + s], band[2, j * 4 + s], band[3, j * 4 + s] = \
                                _at4(e0[j], e1[j], e2[j], e3[j], e4[j], e5[j])
                    else:
                        e0, e1 = cols[0, s, i * tw:], cols[1, s, i * tw:]
                        e2, e3 = cols[2, s, i * tw:], cols[3, s, i * tw:]
                        for j in range(tw):
                            band[0, j * 2 + s], band[1, j * 2 + s] = _at2(e0[j], e1[j], e2[j], e3[j])
                for r in range(min(m, ho - i * m)):            # the last band may be cropped
                    src = band[r, :wo]
                    dst = y[n, mo, i * m + r]
                    if has_z:
                        zr = z[n, mo, i * m + r]
                        for q in range(wo):
                            dst[q] = min(max(src[q] + bm + zr[q], lo), hi)
                    else:
                        for q in range(wo):
                            dst[q] = min(max(src[q] + bm, lo), hi)


@njit(nogil=True, boundscheck=False)
def output_transform(O, y, b, z, has_z, lo, hi, m, th, tw, m0, m1):  # pragma: no cover (compiled)
    """y (N, M, ho, wo) = clip(Aᵀ o A of each tile of O (α², M, N*th*tw), cropped, + b[m] (+ z), lo, hi);
    z (y's shape) is read only where has_z; output channels m0..m1 only."""
    if m == 4:
        _output_tiles(O, y, b, z, has_z, lo, hi, th, tw, 4, m0, m1)
    else:
        _output_tiles(O, y, b, z, has_z, lo, hi, th, tw, 2, m0, m1)


# the variants compiled ahead of time (see compiled.jit): argument kinds, dtypes
AOT = {
    "input_transform": ("A4 A3 i i i i i i i", ("f4",)),
    "output_transform": ("A3 A4 A1 A4 i s s i i i i i", ("f4",)),
}
