"""Compiled (numba) loops for the decoder kernels of ``contrib_llm``: MatMulNBits' 4-bit GEMM with each
weight block dequantized inside the loop (never a float copy of the whole matrix) -- K-major for one or
two rows (token-by-token decoding), row by row for a few more --, the dequantization of a tile of weight
rows for the BLAS path of many-row inputs, a float GEMM for 2-8 rows by a constant weight (MatMul in
batched decoding), GroupQueryAttention's one-token step over the cache,
RotaryEmbedding, and the RMS normalizations (SimplifiedLayerNormalization,
SkipSimplifiedLayerNormalization), float32 only.

Single-threaded on the calling thread, as the other ``_jit_*`` modules.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from engineroom.providers.cpu.compiled._jit_transformer import _exp

_f = np.float32
F0, F1 = _f(0.0), _f(1.0)
SIXTEEN, SIXTEENTH = _f(16.0), _f(0.0625)
_FM = {"reassoc", "nsz", "contract"}


@njit(nogil=True, boundscheck=False, fastmath=_FM)
def matmul_nbits_rows(a, b, scales, zp, y):  # pragma: no cover (compiled)
    """y (M, N) = a (M, K) @ dequant(b)ᵀ for few rows M: b (N, K/bs, bs/2) packed 4-bit (low nibble = even
    k), scales and zero points (N, K/bs) as floats. Each weight row is dequantized block by block,
    (q - zp) * scale as onnxruntime's float path does, into a K-float buffer that stays in L1 and serves
    every row of a; even and odd k are kept apart (a is split the same way once) so that the nibbles of
    one byte land in two contiguous streams and both loops vectorize."""
    M, K = a.shape
    N, nb, half = b.shape
    H = nb * half
    ae = np.empty((M, H), np.float32)
    ao = np.empty((M, H), np.float32)
    for m in range(M):
        for i in range(H):
            ae[m, i] = a[m, 2 * i]
            ao[m, i] = a[m, 2 * i + 1]
    we = np.empty(H, np.float32)
    wo = np.empty(H, np.float32)
    for n in range(N):
        _dequant_row(b, scales, zp, n, we, wo)
        for m in range(M):
            t = F0
            for i in range(H):
                t += we[i] * ae[m, i] + wo[i] * ao[m, i]
            y[m, n] = t


@njit(nogil=True, boundscheck=False, fastmath=_FM)
def matmul_nbits_kmajor(a, bk, se, so, ze, zo, y):  # pragma: no cover (compiled)
    """y (M, 2 N2) = a (M, K) @ dequant(W)ᵀ for one or two rows, from the weights repacked K-major:
    bk (K, N2) bytes whose low / high nibble is output column 2c / 2c + 1, se / so the even / odd
    columns' scales and ze / zo their zero point * scale, (K/bs, N2). The loop over c is long and
    contiguous for every k (no per-block loop setup, which dominates a row-by-row loop at block 32):
    per block, te / to gather sum_k a_k q_k, then y += scale * t - zp * scale * sum_k a_k."""
    M, K = a.shape
    N2 = bk.shape[1]
    nb = se.shape[0]
    bs = K // nb
    te = np.empty((M, N2), np.float32)
    to = np.empty((M, N2), np.float32)
    ye = np.zeros((M, N2), np.float32)
    yo = np.zeros((M, N2), np.float32)
    for blk in range(nb):
        te[:, :] = F0
        to[:, :] = F0
        for kk in range(bs):
            k = blk * bs + kk
            for m in range(M):
                ak = a[m, k]
                for c in range(N2):
                    fb = _f(bk[k, c])
                    hi = np.floor(fb * SIXTEENTH)
                    te[m, c] += ak * (fb - hi * SIXTEEN)
                    to[m, c] += ak * hi
        for m in range(M):
            asum = F0
            for kk in range(bs):
                asum += a[m, blk * bs + kk]
            for c in range(N2):
                ye[m, c] += se[blk, c] * te[m, c] - ze[blk, c] * asum
                yo[m, c] += so[blk, c] * to[m, c] - zo[blk, c] * asum
    for m in range(M):
        for c in range(N2):
            y[m, 2 * c] = ye[m, c]
            y[m, 2 * c + 1] = yo[m, c]


@njit(inline="always", nogil=True, boundscheck=False, fastmath=_FM)
def _dequant_row(b, scales, zp, n, we, wo):  # pragma: no cover (compiled)
    """Weight row n dequantized: even k into we, odd k into wo. The nibbles are split in float32 (byte =
    16 hi + lo, exact): numba widens integer arithmetic to int64, whose conversion to float has no
    vector instruction before AVX-512DQ, and the loop would stay half as wide (3.4x slower, measured)."""
    _, nb, half = b.shape
    for blk in range(nb):
        s = scales[n, blk]
        zs = zp[n, blk] * s
        k0 = blk * half
        for j in range(half):
            fb = _f(b[n, blk, j])
            hi = np.floor(fb * SIXTEENTH)
            we[k0 + j] = (fb - hi * SIXTEEN) * s - zs
            wo[k0 + j] = hi * s - zs


@njit(nogil=True, boundscheck=False, fastmath=_FM)
def dequant_nbits(b, scales, zp, n0, w):  # pragma: no cover (compiled)
    """Rows n0 .. n0 + len(w) of the 4-bit weights as floats into w (rows, K), each row laid out as
    [even k | odd k] (the caller orders a's columns the same way): one tile for BLAS."""
    _, nb, half = b.shape
    H = nb * half
    for r in range(w.shape[0]):
        _dequant_row(b, scales, zp, n0 + r, w[r, :H], w[r, H:])


@njit(nogil=True, boundscheck=False, fastmath=_FM)
def rms_norm(x, skip, bias, gamma, eps, y, inv, total):  # pragma: no cover (compiled)
    """Per row r of x (R, h): v = x + skip + bias (skip/bias/total absent when empty), total[r] = v where
    asked, inv[r] = 1 / sqrt(mean(v²) + eps), y[r] = v * inv[r] * gamma."""
    R, h = x.shape
    has_skip = skip.shape[0] > 0
    has_bias = bias.shape[0] > 0
    keep = total.shape[0] > 0
    v = np.empty(h, np.float32)
    for r in range(R):
        for j in range(h):
            t = x[r, j]
            if has_skip:
                t += skip[r, j]
            if has_bias:
                t += bias[j]
            v[j] = t
        ss = F0
        for j in range(h):
            ss += v[j] * v[j]
        d = F1 / np.sqrt(ss / _f(h) + eps)
        inv[r] = d
        for j in range(h):
            y[r, j] = v[j] * d * gamma[j]
        if keep:
            for j in range(h):
                total[r, j] = v[j]


@njit(inline="always", nogil=True, boundscheck=False, fastmath=_FM)
def _dot(x, y):  # pragma: no cover (compiled)
    t = F0
    for i in range(x.shape[0]):
        t += x[i] * y[i]
    return t


@njit(nogil=True, boundscheck=False, error_model="numpy")
def gqa_decode(q, ck, cv, L, start, scale, softcap, out):  # pragma: no cover (compiled)
    """One new token per batch entry attends its cache: q (B, Hq, D), ck / cv (B, Hkv, Lp, D) holding
    the keys and values 0 .. L-1 (the new one included); query head h reads key head h // (Hq / Hkv),
    keys start .. L-1 (a local window starts past 0). softmax(q k * scale [softcapped]) v into out
    (B, Hq, D)."""
    B, Hq, D = q.shape
    G = Hq // ck.shape[1]
    p = np.empty(L, np.float32)
    for b in range(B):
        for h in range(Hq):
            kh = h // G
            qv = q[b, h]
            m = -np.inf
            for j in range(start, L):
                v = _dot(qv, ck[b, kh, j]) * scale
                if softcap > F0:
                    v = softcap * np.tanh(v / softcap)
                p[j] = v
                m = max(m, v)
            t = F0
            for j in range(start, L):
                e = _exp(p[j] - m)
                p[j] = e
                t += e
            o = out[b, h]
            for d in range(D):
                o[d] = F0
            for j in range(start, L):
                w = p[j] / t
                vj = cv[b, kh, j]
                for d in range(D):
                    o[d] += w * vj[d]



@njit(nogil=True, boundscheck=False, fastmath=_FM)
def rope_rows(x, cos, sin, interleaved, y):  # pragma: no cover (compiled)
    """RoPE per row r of x (R, H, D) with that row's angles cos / sin (R, rd/2), into y; dimensions past
    rd copied. Halves (x1, x2) = (x[:rd/2], x[rd/2:rd]), or even / odd pairs when interleaved."""
    R, H, D = x.shape
    half = cos.shape[1]
    for r in range(R):
        c = cos[r]
        s = sin[r]
        for h in range(H):
            xv = x[r, h]
            yv = y[r, h]
            if interleaved:
                for i in range(half):
                    x1 = xv[2 * i]
                    x2 = xv[2 * i + 1]
                    yv[2 * i] = x1 * c[i] - x2 * s[i]
                    yv[2 * i + 1] = x2 * c[i] + x1 * s[i]
            else:
                for i in range(half):
                    x1 = xv[i]
                    x2 = xv[half + i]
                    yv[i] = x1 * c[i] - x2 * s[i]
                    yv[half + i] = x2 * c[i] + x1 * s[i]
            for i in range(2 * half, D):
                yv[i] = xv[i]


@njit(nogil=True, boundscheck=False, fastmath=_FM)
def gemm_few_rows(a, wt, y):  # pragma: no cover (compiled)
    """y (M, N) = a (M, K) @ wtᵀ for a few rows (batched token-by-token decoding): wt (N, K) is a constant
    weight transposed once (BLAS packs the whole weight anew on every call, which dominates at a few
    rows). Blocks of 4 weight rows x 4 (then 2, then 1) rows of a: 16 dot products share each load of
    a weight row and of a row of a, so the loop is bound by the weight's stream, not by loads and
    horizontal sums (one dot product at a time: 256x8192 by 4 rows 0.43 -> 0.31 ms, 256x768 36 -> 18 us)."""
    M, K = a.shape
    N = wt.shape[0]
    n4 = N - N % 4
    m4 = M - M % 4
    for n in range(0, n4, 4):
        w0 = wt[n]
        w1 = wt[n + 1]
        w2 = wt[n + 2]
        w3 = wt[n + 3]
        for m in range(0, m4, 4):
            a0, a1, a2, a3 = a[m], a[m + 1], a[m + 2], a[m + 3]
            t00 = t01 = t02 = t03 = t10 = t11 = t12 = t13 = F0
            t20 = t21 = t22 = t23 = t30 = t31 = t32 = t33 = F0
            for k in range(K):
                u0, u1, u2, u3 = w0[k], w1[k], w2[k], w3[k]
                x = a0[k]
                t00 += x * u0
                t01 += x * u1
                t02 += x * u2
                t03 += x * u3
                x = a1[k]
                t10 += x * u0
                t11 += x * u1
                t12 += x * u2
                t13 += x * u3
                x = a2[k]
                t20 += x * u0
                t21 += x * u1
                t22 += x * u2
                t23 += x * u3
                x = a3[k]
                t30 += x * u0
                t31 += x * u1
                t32 += x * u2
                t33 += x * u3
            y[m, n], y[m, n + 1], y[m, n + 2], y[m, n + 3] = t00, t01, t02, t03
            y[m + 1, n], y[m + 1, n + 1], y[m + 1, n + 2], y[m + 1, n + 3] = t10, t11, t12, t13
            y[m + 2, n], y[m + 2, n + 1], y[m + 2, n + 2], y[m + 2, n + 3] = t20, t21, t22, t23
            y[m + 3, n], y[m + 3, n + 1], y[m + 3, n + 2], y[m + 3, n + 3] = t30, t31, t32, t33
        m = m4
        while m < M:
            if m + 1 < M:
                a0, a1 = a[m], a[m + 1]
                t00 = t01 = t02 = t03 = t10 = t11 = t12 = t13 = F0
                for k in range(K):
                    u0, u1, u2, u3 = w0[k], w1[k], w2[k], w3[k]
                    x = a0[k]
                    t00 += x * u0
                    t01 += x * u1
                    t02 += x * u2
                    t03 += x * u3
                    x = a1[k]
                    t10 += x * u0
                    t11 += x * u1
                    t12 += x * u2
                    t13 += x * u3
                y[m + 1, n], y[m + 1, n + 1], y[m + 1, n + 2], y[m + 1, n + 3] = t10, t11, t12, t13
                step = 2
            else:
                a0 = a[m]
                t00 = t01 = t02 = t03 = F0
                for k in range(K):
                    x = a0[k]
                    t00 += x * w0[k]
                    t01 += x * w1[k]
                    t02 += x * w2[k]
                    t03 += x * w3[k]
                step = 1
            y[m, n], y[m, n + 1], y[m, n + 2], y[m, n + 3] = t00, t01, t02, t03
            m += step
    for n in range(n4, N):
        for m in range(M):
            t = F0
            for k in range(K):
                t += a[m, k] * wt[n, k]
            y[m, n] = t


AOT = {
    "gemm_few_rows": ("A2 A2 A2", ("f4",)),
    "gqa_decode": ("A3 A4 A4 i i s s A3", ("f4",)),
    "rope_rows": ("A3 A2 A2 i A3", ("f4",)),
    "matmul_nbits_rows": ("A2 U3 A2 A2 A2", ("f4",)),
    "matmul_nbits_kmajor": ("A2 U2 A2 A2 A2 A2 A2", ("f4",)),
    "dequant_nbits": ("U3 A2 A2 i A2", ("f4",)),
    "rms_norm": ("A2 A2 A1 A1 s A2 A1 A2", ("f4",)),
}
