"""Winograd convolution F(m x m, 3 x 3) for 3x3, stride-1, undilated, ungrouped 2-D float32 convolutions.

A 3x3 convolution over an (m+2) x (m+2) input tile d gives an m x m output tile
``Aᵀ [(G w Gᵀ) ⊙ (Bᵀ d B)] A``: (m+2)² products per channel pair instead of 9 m², so F(4, 3) does a
quarter of the multiplications of im2col and F(2, 3) 4/9 of them. The weights are transformed once
(``U = G w Gᵀ``, float64 then rounded); a run is four steps, three of them BLAS:

1. gather the overlapping input tiles of the zero-padded input into ``D`` (α², C, N·T),
   α = m+2, T = tiles per image;
2. ``V = Bᵀ D B`` — the 2-D input transform, one axis at a time (a GEMM with K = α for the rows,
   a broadcast matmul for the columns: a third of the work of one (Bᵀ ⊗ Bᵀ) GEMM);
3. ``O[p] = U[p] V[p]`` for each of the α² positions p — one batched matmul (α², M, C) @ (α², C, N·T);
4. ``Y = Aᵀ O A`` — the output transform the same way, then the tiles are laid out into the output
   (bias added in that same pass).

With the compiled loops (``_jit_winograd``), steps 1-2 are one pass from x to V and step 4 one pass
from O to the output that also adds the bias, a residual and a clip (:func:`winograd_conv_compiled`).

F(4, 3) pays where an image has many tiles (the transformed weight is 4x the original and is read once
per run); F(2, 3) for middling sizes; small images stay with im2col (:func:`choose_tile`). The
rounding error stays near 1e-5 of the output's magnitude for F(4, 3) (points 0, ±1, ±2) and 1e-6 for
F(2, 3): float32 only, float64 keeps the exact im2col path.
"""
from __future__ import annotations

import numpy as np

from engineroom.providers.cpu import _threadpool
from engineroom.providers.cpu.array_module import arrays

# Lavin & Gray's matrices: Bᵀ (α x α), G (α x 3), Aᵀ (m x α)
_MATRICES = {
    2: (np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float64),
        np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]], np.float64),
        np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64)),
    4: (np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                  [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], np.float64),
        np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                  [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], np.float64),
        np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
                 np.float64)),
}

MIN_CHANNELS = 8        # fewer input or output channels: the transforms cost more than they save
MIN_TILES = 32          # per image: below this the transformed weight is not reused enough


def choose_tile(C: int, M: int, out: tuple[int, ...]) -> int:
    """m of the F(m, 3) to use for an output of spatial size ``out`` (C -> M channels), 0 for im2col."""
    if len(out) != 2 or min(C, M) < MIN_CHANNELS:
        return 0
    ho, wo = out
    for m in (4, 2):
        if -(-ho // m) * -(-wo // m) >= MIN_TILES:
            return m
    return 0


class WinogradWeights:
    """The transformed weight of one 3x3 kernel (M, C, 3, 3) for F(m, 3), and the transform matrices."""

    def __init__(self, xp, w, m: int):
        BT, G, AT = _MATRICES[m]
        a = m + 2
        M, C = w.shape[0], w.shape[1]
        u = np.einsum("ak,mckl,bl->abmc", G, np.asarray(w, dtype=np.float64), G)
        self.m, self.alpha, self.M, self.C = m, a, M, C
        self.U = xp.asarray(np.ascontiguousarray(u.reshape(a * a, M, C), dtype=np.float32))
        self.BT = xp.asarray(BT.astype(np.float32))
        self.AT = xp.asarray(AT.astype(np.float32))


def winograd_conv(xp, ww: WinogradWeights, x, pb, pe, out, y, bias=None):
    """y[...] = conv3x3(x) (+ bias) for x (N, C, H, W) float32 with pads (pb, pe) and output size ``out``.

    ``y`` is a C-contiguous (N, M) + out float32 array; ``bias`` None or shaped (M, 1, 1).
    """
    N, C, H, W = x.shape
    m, a, M = ww.m, ww.alpha, ww.M
    ho, wo = out
    th, tw = -(-ho // m), -(-wo // m)
    T = N * th * tw
    # zero-padded input covering every tile (th*m + 2 rows, tw*m + 2 columns)
    xpad = xp.zeros((N, C, th * m + 2, tw * m + 2), dtype=np.float32)
    r0, c0 = pb[0], pb[1]
    hh, wc = min(H, th * m + 2 - r0), min(W, tw * m + 2 - c0)
    xpad[:, :, r0:r0 + hh, c0:c0 + wc] = x[:, :, :hh, :wc]
    s0, s1, s2, s3 = xpad.strides
    tiles = xp.lib.stride_tricks.as_strided(
        xpad, (a, a, C, N, th, tw), (s2, s3, s1, s0, m * s2, m * s3))
    D = xp.empty((a, a, C, N, th, tw), dtype=np.float32)
    D[...] = tiles
    # Bᵀ d B, one axis at a time: rows (one GEMM), then columns (one matmul broadcast over the rows)
    Z = xp.matmul(ww.BT, D.reshape(a, a * C * T))
    V = xp.matmul(ww.BT, Z.reshape(a, a, C * T))
    O = arrays(xp).matmul(ww.U, V.reshape(a * a, C, T))                          # (α², M, N·T)
    if bias is not None:
        # Aᵀ e₁ = (1, .., 1) for both tile sizes, so b at position (1, 1) of every transformed tile
        # comes out as b on every pixel of the tile: the bias costs a pass over 1/α² of O
        O[a + 1] += bias.reshape(M, 1)
    # Aᵀ o A: the columns first, leaving r2 innermost (a matmul broadcast over the rows a), then the
    # rows (one GEMM): Y (r1, M, N, th, tw, r2) has each output row's pixels (tw, r2) contiguous
    X = M * T
    Z = xp.matmul(O.reshape(a, a, X).transpose(0, 2, 1), ww.AT.T)       # (a, X, r2)
    Y = xp.matmul(ww.AT, Z.reshape(a, X * m))                           # (r1, X * r2)
    _untile(xp, Y.reshape(m, M, N, th, tw * m), y, m, th, ho, wo)
    return y


def winograd_conv_compiled(jit, ww: WinogradWeights, x, pb, y, b, z, lo, hi):
    """y[...] = clip(conv3x3(x) + b (+ z), lo, hi) with the compiled transforms (``jit``: the loaded
    ``_jit_winograd``): V straight from x, one batched matmul, the output straight into y.

    x (N, C, H, W) float32 with leading pads ``pb``; y a fresh C-contiguous (N, M, ho, wo) float32 array;
    b (M,) float32; z None or float32 of y's shape.
    """
    N, C = x.shape[0], x.shape[1]
    m, a = ww.m, ww.alpha
    th, tw = -(-y.shape[2] // m), -(-y.shape[3] // m)
    V = np.empty((a * a, C, N * th * tw), dtype=np.float32)
    xj = np.ascontiguousarray(x)
    # both transforms over channel ranges on the CPU provider's worker pool (the loops release the GIL)
    # (work in the pool's units, ~0.2 ns: the transforms cost about 4 and 2 of them per element of V, O)
    if not _threadpool.native_ranges("input_transform", C, 4 * V.size, xj, V, m, pb[0], pb[1], th, tw):
        _threadpool.parallel_ranges(lambda c0, c1: jit.input_transform(xj, V, m, pb[0], pb[1], th, tw, c0, c1),
                                    C, 4 * V.size)
    O = _threadpool.matmul(ww.U, V)                                          # (α², M, N·T)
    zz = y if z is None else np.ascontiguousarray(z)                    # read only where z is given
    if not _threadpool.native_ranges("output_transform", y.shape[1], 2 * O.size, O, y, b, zz, int(z is not None),
                                     lo, hi, m, th, tw):
        _threadpool.parallel_ranges(lambda m0, m1: jit.output_transform(O, y, b, zz, int(z is not None), lo, hi,
                                                                        m, th, tw, m0, m1), y.shape[1], 2 * O.size)
    return y


def _untile(xp, Y, y, m, th, ho, wo):
    """y (N, M, ho, wo) from Y (r1, M, N, th, tw*m): output row i*m + r1, columns cropped to wo."""
    s0, s1, s2, s3 = y.strides
    N, M = y.shape[0], y.shape[1]
    src = Y.transpose(2, 1, 3, 0, 4)                                    # (N, M, th, m, tw*m)
    full, rest = divmod(ho, m)
    if full:
        dst = xp.lib.stride_tricks.as_strided(y, (N, M, full, m, wo), (s0, s1, m * s2, s2, s3))
        dst[...] = src[:, :, :full, :, :wo]
    if rest:
        y[:, :, full * m:, :] = src[:, :, full, :rest, :wo]
