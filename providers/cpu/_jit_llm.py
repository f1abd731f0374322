"""Compiled (numba) loops for the decoder kernels of ``contrib_llm``: MatMulNBits' 4-bit GEMM with each
weight block dequantized inside the loop (never a float copy of the whole matrix): on AVX-512 CPUs,
written with explicit 16-lane values over weights laid out in tiles of 64 output columns, a GEMV for
one or two rows (token-by-token decoding) and a GEMM on tiles dequantized into a reused scratch for
more (prefill); elsewhere K-major for one or two rows, row by row for a few more, and the
dequantization of a tile of weight rows for BLAS --, a float GEMM for 2-8 rows by a constant weight
(MatMul in batched decoding), GroupQueryAttention's one-token step over the cache, RotaryEmbedding,
and the RMS normalizations (SimplifiedLayerNormalization, SkipSimplifiedLayerNormalization), float32
only.

Single-threaded on the calling thread, as the other ``_jit_*`` modules.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

from engineroom.providers.cpu.compiled._jit_transformer import _exp

_f = np.float32
F0, F1 = _f(0.0), _f(1.0)
SIXTEEN, SIXTEENTH = _f(16.0), _f(0.0625)
_FM = {"reassoc", "nsz", "contract"}


# -- 16 float32 lanes as one value (an AVX-512 register) -----------------------------------------------
# LLVM vectorizes numba's loops 8 lanes wide on AVX-512 CPUs (their tuning prefers 256-bit vectors), so a
# GEMM written as loops tops out near 100 GFLOP/s here; spelled with explicit 16-lane values the
# many-row MatMulNBits kernel below reaches ~165 (onnxruntime's MLAS ~138, OpenBLAS ~100 at 64 rows).
# Where the CPU has no 512-bit registers LLVM splits each value in two (correct, but it spills).
class _F32x16(types.Type):
    def __init__(self):
        super().__init__(name="F32x16")


_f32x16 = _F32x16()
_V16 = ir.VectorType(ir.FloatType(), 16)
_I16 = ir.VectorType(ir.IntType(32), 16)


@register_model(_F32x16)
class _F32x16Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _V16)


def _lanes(context, builder, aty, arr, idx):
    """Pointer to 16 floats at flat element ``idx`` of a C-contiguous float32 array."""
    data = context.make_array(aty)(context, builder, arr).data
    return builder.bitcast(builder.gep(data, [idx]), _V16.as_pointer())


@intrinsic
def _vload(typingctx, arr, idx):
    def codegen(context, builder, sig, args):
        return builder.load(_lanes(context, builder, sig.args[0], args[0], args[1]), align=4)
    return _f32x16(arr, idx), codegen


@intrinsic
def _vstore(typingctx, arr, idx, v):
    def codegen(context, builder, sig, args):
        builder.store(args[2], _lanes(context, builder, sig.args[0], args[0], args[1]), align=4)
        return context.get_dummy_value()
    return types.none(arr, idx, v), codegen


@intrinsic
def _vsplat(typingctx, x):
    def codegen(context, builder, sig, args):
        v = builder.insert_element(ir.Constant(_V16, ir.Undefined), args[0], ir.Constant(ir.IntType(32), 0))
        return builder.shuffle_vector(v, ir.Constant(_V16, ir.Undefined), ir.Constant(_I16, [0] * 16))
    return _f32x16(x), codegen


@intrinsic
def _vfma(typingctx, a, b, c):
    """a * b + c, one rounding."""
    def codegen(context, builder, sig, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V16, [_V16] * 3), "llvm.fma.v16f32")
        return builder.call(fn, args)
    return _f32x16(a, b, c), codegen


def _zip(first):
    """Lanes of a and b interleaved: a0 b0 a1 b1 ... from the first (or second) eight of each."""
    base = 0 if first else 8

    @intrinsic
    def zip_(typingctx, a, b):
        def codegen(context, builder, sig, args):
            mask = [base + i // 2 + (16 if i % 2 else 0) for i in range(16)]
            return builder.shuffle_vector(args[0], args[1], ir.Constant(_I16, mask))
        return _f32x16(a, b), codegen
    return zip_


_vzip_lo, _vzip_hi = _zip(True), _zip(False)


@intrinsic
def _vfms(typingctx, a, b, c):
    """a * b - c, one rounding."""
    def codegen(context, builder, sig, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V16, [_V16] * 3), "llvm.fma.v16f32")
        return builder.call(fn, [args[0], args[1], builder.fneg(args[2])])
    return _f32x16(a, b, c), codegen


def _nibbles(high):
    """16 bytes at flat element ``idx`` of a C-contiguous uint8 array: their low (or high) 4 bits as floats."""
    b16 = ir.VectorType(ir.IntType(8), 16)

    @intrinsic
    def nib(typingctx, arr, idx):
        def codegen(context, builder, sig, args):
            data = context.make_array(sig.args[0])(context, builder, args[0]).data
            v = builder.load(builder.bitcast(builder.gep(data, [args[1]]), b16.as_pointer()), align=1)
            v = builder.lshr(v, ir.Constant(b16, [4] * 16)) if high else builder.and_(v, ir.Constant(b16, [15] * 16))
            return builder.uitofp(v, _V16)
        return _f32x16(arr, idx), codegen
    return nib


_vlow4, _vhigh4 = _nibbles(False), _nibbles(True)


def _host_has_avx512() -> bool:
    import llvmlite.binding as llvm

    return bool(llvm.get_host_cpu_features().get("avx512f"))


_AVX512 = np.uint8(_host_has_avx512())


@njit(nogil=True)
def wide_registers(out):  # pragma: no cover (compiled)
    """out[0] = 1 where this module was built for a CPU with 512-bit registers (AVX-512F), else 0: the
    16-lane kernels are the fast ones only there (elsewhere each value takes two registers and spills)."""
    out[0] = _AVX512


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


_TILE = 64     # output columns per tile of the many-row kernel: 4 registers of 16 (32 bytes of nibbles)


@njit(nogil=True, boundscheck=False)
def _dequant_tile(bt, st, t, wt):  # pragma: no cover (compiled)
    """Tile t of the tiled weights (see ``matmul_nbits_tiles``) as floats into wt (K * 64): per k the 32
    even columns, then the 32 odd ones, so that both nibbles of a byte land in contiguous runs (the
    kernel puts the columns back in order when it stores). 16-lane values here too: a loop over wt, a
    parameter that LLVM must assume may overlap the scales, vectorized poorly (1 ns a weight against 0.12)."""
    _, K, _ = bt.shape
    nb = st.shape[1]
    bs = K // nb
    for blk in range(nb):
        r = (t * nb + blk) * 128
        se0, se1, so0, so1 = _vload(st, r), _vload(st, r + 16), _vload(st, r + 32), _vload(st, r + 48)
        ze0, ze1, zo0, zo1 = _vload(st, r + 64), _vload(st, r + 80), _vload(st, r + 96), _vload(st, r + 112)
        for k in range(blk * bs, blk * bs + bs):
            i = (t * K + k) * 32
            o = k * _TILE
            _vstore(wt, o, _vfms(_vlow4(bt, i), se0, ze0))
            _vstore(wt, o + 16, _vfms(_vlow4(bt, i + 16), se1, ze1))
            _vstore(wt, o + 32, _vfms(_vhigh4(bt, i), so0, zo0))
            _vstore(wt, o + 48, _vfms(_vhigh4(bt, i + 16), so1, zo1))


@njit(inline="always", nogil=True, boundscheck=False)
def _put(dst, off, e0, e1, o0, o1):  # pragma: no cover (compiled)
    """One row's 64 columns into dst's flat elements off .. off + 63, from its even-column (e0, e1) and
    odd-column (o0, o1) accumulators, interleaved back into column order."""
    _vstore(dst, off, _vzip_lo(e0, o0))
    _vstore(dst, off + 16, _vzip_hi(e0, o0))
    _vstore(dst, off + 32, _vzip_lo(e1, o1))
    _vstore(dst, off + 48, _vzip_hi(e1, o1))


@njit(inline="always", nogil=True, boundscheck=False)
def _rows6(a, m, wt, dst, off, ld):  # pragma: no cover (compiled)
    """Rows m .. m + 5 of a times the tile: 6 x 4 accumulators of 16 lanes stay in registers over all of
    K; per k, 4 loads of the tile and 6 broadcasts feed 24 FMAs (FMA-bound, not load-bound)."""
    K = a.shape[1]
    z = _vsplat(F0)
    c00, c01, c02, c03 = z, z, z, z
    c10, c11, c12, c13 = z, z, z, z
    c20, c21, c22, c23 = z, z, z, z
    c30, c31, c32, c33 = z, z, z, z
    c40, c41, c42, c43 = z, z, z, z
    c50, c51, c52, c53 = z, z, z, z
    for k in range(K):
        o = k * _TILE
        b0, b1, b2, b3 = _vload(wt, o), _vload(wt, o + 16), _vload(wt, o + 32), _vload(wt, o + 48)
        x = _vsplat(a[m + 0, k])
        c00 = _vfma(x, b0, c00)
        c01 = _vfma(x, b1, c01)
        c02 = _vfma(x, b2, c02)
        c03 = _vfma(x, b3, c03)
        x = _vsplat(a[m + 1, k])
        c10 = _vfma(x, b0, c10)
        c11 = _vfma(x, b1, c11)
        c12 = _vfma(x, b2, c12)
        c13 = _vfma(x, b3, c13)
        x = _vsplat(a[m + 2, k])
        c20 = _vfma(x, b0, c20)
        c21 = _vfma(x, b1, c21)
        c22 = _vfma(x, b2, c22)
        c23 = _vfma(x, b3, c23)
        x = _vsplat(a[m + 3, k])
        c30 = _vfma(x, b0, c30)
        c31 = _vfma(x, b1, c31)
        c32 = _vfma(x, b2, c32)
        c33 = _vfma(x, b3, c33)
        x = _vsplat(a[m + 4, k])
        c40 = _vfma(x, b0, c40)
        c41 = _vfma(x, b1, c41)
        c42 = _vfma(x, b2, c42)
        c43 = _vfma(x, b3, c43)
        x = _vsplat(a[m + 5, k])
        c50 = _vfma(x, b0, c50)
        c51 = _vfma(x, b1, c51)
        c52 = _vfma(x, b2, c52)
        c53 = _vfma(x, b3, c53)
    _put(dst, off + 0 * ld, c00, c01, c02, c03)
    _put(dst, off + 1 * ld, c10, c11, c12, c13)
    _put(dst, off + 2 * ld, c20, c21, c22, c23)
    _put(dst, off + 3 * ld, c30, c31, c32, c33)
    _put(dst, off + 4 * ld, c40, c41, c42, c43)
    _put(dst, off + 5 * ld, c50, c51, c52, c53)


@njit(inline="always", nogil=True, boundscheck=False)
def _rows2(a, m, wt, dst, off, ld):  # pragma: no cover (compiled)
    """Rows m, m + 1 of a times the tile (the rows past the last multiple of 6): 8 accumulators, enough
    independent FMAs to hide their latency."""
    K = a.shape[1]
    z = _vsplat(F0)
    c00, c01, c02, c03 = z, z, z, z
    c10, c11, c12, c13 = z, z, z, z
    for k in range(K):
        o = k * _TILE
        b0, b1, b2, b3 = _vload(wt, o), _vload(wt, o + 16), _vload(wt, o + 32), _vload(wt, o + 48)
        x = _vsplat(a[m, k])
        c00 = _vfma(x, b0, c00)
        c01 = _vfma(x, b1, c01)
        c02 = _vfma(x, b2, c02)
        c03 = _vfma(x, b3, c03)
        x = _vsplat(a[m + 1, k])
        c10 = _vfma(x, b0, c10)
        c11 = _vfma(x, b1, c11)
        c12 = _vfma(x, b2, c12)
        c13 = _vfma(x, b3, c13)
    _put(dst, off, c00, c01, c02, c03)
    _put(dst, off + ld, c10, c11, c12, c13)


@njit(inline="always", nogil=True, boundscheck=False)
def _row1(a, m, wt, dst, off):  # pragma: no cover (compiled)
    """Row m of a times the tile (an odd last row)."""
    K = a.shape[1]
    c00 = c01 = c02 = c03 = _vsplat(F0)
    for k in range(K):
        o = k * _TILE
        x = _vsplat(a[m, k])
        c00 = _vfma(x, _vload(wt, o), c00)
        c01 = _vfma(x, _vload(wt, o + 16), c01)
        c02 = _vfma(x, _vload(wt, o + 32), c02)
        c03 = _vfma(x, _vload(wt, o + 48), c03)
    _put(dst, off, c00, c01, c02, c03)


@njit(inline="always", nogil=True, boundscheck=False)
def _tile_rows(a, wt, dst, off0, ld):  # pragma: no cover (compiled)
    """Every row of a times the tile, into dst's flat elements off0 + m * ld + (0 .. 63)."""
    M = a.shape[0]
    m6 = M - M % 6
    for m in range(0, m6, 6):
        _rows6(a, m, wt, dst, off0 + m * ld, ld)
    for m in range(m6, M - 1, 2):
        _rows2(a, m, wt, dst, off0 + m * ld, ld)
    if (M - m6) % 2:
        _row1(a, M - 1, wt, dst, off0 + (M - 1) * ld)


@njit(nogil=True, boundscheck=False)
def matmul_nbits_tiles(a, bt, st, t0, t1, y):  # pragma: no cover (compiled)
    """Columns 64 t0 .. 64 t1 - 1 of y (M, N) = a (M, K) @ dequant(W)ᵀ for 3 rows and more (prefill,
    batched decoding), from the weights laid out in tiles of 64 output columns: bt (T, K, 32) bytes whose
    low / high nibble is column 64 t + 2 j / 2 j + 1, st (T, K/bs, 4, 32) per tile and block the even
    columns' scales, the odd ones', then their zero point * scale alike (zeros past N). Per tile the
    weights are dequantized once into a K x 64 float tile (128 KB at K = 512: it stays in L2) that
    every block of 6 rows of a then multiplies with 16-lane registers (llama_kv's lm_head, 64 x 512 by
    8192: ~125 GFLOP/s with the dequantization, OpenBLAS on a dequantized tile ~90). Tiles are
    independent: threads take ranges."""
    M, K = a.shape
    N = y.shape[1]
    wt = np.empty(K * _TILE, np.float32)
    full = min(t1, N // _TILE)
    for t in range(t0, full):
        _dequant_tile(bt, st, t, wt)
        _tile_rows(a, wt, y, _TILE * t, N)
    if full < t1:
        # the last, partial tile: whole rows into a scratch, then their columns that exist
        n0 = _TILE * full
        part = np.empty((M, _TILE), np.float32)
        _dequant_tile(bt, st, full, wt)
        _tile_rows(a, wt, part, 0, _TILE)
        for m in range(M):
            for j in range(N - n0):
                y[m, n0 + j] = part[m, j]


@njit(nogil=True, boundscheck=False)
def matmul_nbits_gemv(a, bt, st, t0, t1, y):  # pragma: no cover (compiled)
    """``matmul_nbits_tiles`` for one or two rows (token-by-token decoding), the weights dequantized in
    registers: per block, 4 accumulators of 16 lanes gather sum_k a_k q_k of the tile's 64 columns, then
    y += scale * that - zero point * scale * sum_k a_k (no per-weight scaling; the codes are read once,
    straight from the packed bytes)."""
    M, K = a.shape
    N = y.shape[1]
    nb = st.shape[1]
    bs = K // nb
    asum = np.empty((M, nb), np.float32)
    for m in range(M):
        for blk in range(nb):
            sm = F0
            for k in range(blk * bs, blk * bs + bs):
                sm += a[m, k]
            asum[m, blk] = sm
    out = np.empty(_TILE, np.float32)
    for t in range(t0, t1):
        n0 = _TILE * t
        for m in range(M):            # a second row reads the tile's 16 KB of codes again from L1
            z = _vsplat(F0)
            e0, e1, o0, o1 = z, z, z, z
            for blk in range(nb):
                p0, p1, q0, q1 = z, z, z, z
                for k in range(blk * bs, blk * bs + bs):
                    i = (t * K + k) * 32
                    x = _vsplat(a[m, k])
                    p0 = _vfma(x, _vlow4(bt, i), p0)
                    p1 = _vfma(x, _vlow4(bt, i + 16), p1)
                    q0 = _vfma(x, _vhigh4(bt, i), q0)
                    q1 = _vfma(x, _vhigh4(bt, i + 16), q1)
                r = (t * nb + blk) * 128
                s = _vsplat(-asum[m, blk])
                e0 = _vfma(_vload(st, r + 64), s, _vfma(_vload(st, r), p0, e0))
                e1 = _vfma(_vload(st, r + 80), s, _vfma(_vload(st, r + 16), p1, e1))
                o0 = _vfma(_vload(st, r + 96), s, _vfma(_vload(st, r + 32), q0, o0))
                o1 = _vfma(_vload(st, r + 112), s, _vfma(_vload(st, r + 48), q1, o1))
            if n0 + _TILE <= N:
                _put(y, m * N + n0, e0, e1, o0, o1)
            else:
                _put(out, 0, e0, e1, o0, o1)
                for j in range(N - n0):
                    y[m, n0 + j] = out[j]


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


@njit(inline="always", nogil=True, boundscheck=False, error_model="numpy")
def _attend(qv, ck, cv, b, kh, lo, hi, scale, softcap, p, out, ob):  # pragma: no cover (compiled)
    """One query qv over keys lo .. hi-1 of key head kh of entry b: softmax(q k * scale [softcapped]) v
    into out's flat elements ob .. ob + D - 1 (zeros where there is no key). The weighted sum of values
    runs on 16-lane values, 16 dimensions at a time in a register over all keys (a loop over out, which
    LLVM must assume overlaps cv, stayed scalar: llama_kv's 64-token prompt 0.77 -> 0.24 ms a layer)."""
    D = qv.shape[0]
    Lp = ck.shape[2]
    d16 = D - D % 16
    if hi <= lo:
        for d in range(D):
            out.flat[ob + d] = F0
        return
    m = -np.inf
    for j in range(lo, hi):
        v = _dot(qv, ck[b, kh, j]) * scale
        if softcap > F0:
            v = softcap * np.tanh(v / softcap)
        p[j] = v
        m = max(m, v)
    t = F0
    for j in range(lo, hi):
        e = _exp(p[j] - m)
        p[j] = e
        t += e
    r = F1 / t
    for j in range(lo, hi):
        p[j] *= r
    vb = (b * ck.shape[1] + kh) * Lp * D
    for d0 in range(0, d16, 16):
        acc = _vsplat(F0)
        for j in range(lo, hi):
            acc = _vfma(_vsplat(p[j]), _vload(cv, vb + j * D + d0), acc)
        _vstore(out, ob + d0, acc)
    for d in range(d16, D):
        acc1 = F0
        for j in range(lo, hi):
            acc1 += p[j] * cv[b, kh, j, d]
        out.flat[ob + d] = acc1


@njit(nogil=True, boundscheck=False, error_model="numpy", fastmath=_FM)
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
            _attend(q[b, h], ck, cv, b, h // G, start, L, scale, softcap, p, out, (b * Hq + h) * D)


@njit(nogil=True, boundscheck=False, error_model="numpy", fastmath=_FM)
def gqa_prefill(q, ck, cv, past, total, window, scale, softcap, out):  # pragma: no cover (compiled)
    """Several new tokens per batch entry (a prompt) attend the cache causally: q (B, S, Hq, D), ck / cv
    (B, Hkv, Lp, D) holding the new keys and values already; query i of entry b sits at position
    past[b] + i and sees keys max(0, pos - window + 1) (window > 0) .. min(pos, total[b] - 1), of key
    head h // (Hq / Hkv). softmax(q k * scale [softcapped]) v into out (B, S, Hq, D); a query with no
    key gets zeros. One pass per query and head over only the keys it sees: no masked score matrix."""
    B, S, Hq, D = q.shape
    Hkv, Lp = ck.shape[1], ck.shape[2]
    G = Hq // Hkv
    p = np.empty(Lp, np.float32)
    for b in range(B):
        for i in range(S):
            pos = past[b] + i
            hi = min(pos + 1, total[b], Lp)
            lo = max(0, pos - window + 1) if window > 0 else 0
            for h in range(Hq):
                _attend(q[b, i, h], ck, cv, b, h // G, lo, hi, scale, softcap, p, out, ((b * S + i) * Hq + h) * D)


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
    "gqa_prefill": ("A4 A4 A4 I1 I1 i s s A4", ("f4",)),
    "rope_rows": ("A3 A2 A2 i A3", ("f4",)),
    "matmul_nbits_rows": ("A2 U3 A2 A2 A2", ("f4",)),
    "matmul_nbits_kmajor": ("A2 U2 A2 A2 A2 A2 A2", ("f4",)),
    "dequant_nbits": ("U3 A2 A2 i A2", ("f4",)),
    "matmul_nbits_tiles": ("A2 U3 A4 i i A2", ("f4",)),
    "matmul_nbits_gemv": ("A2 U3 A4 i i A2", ("f4",)),
    "wide_registers": ("U1", ("f4",)),
    "rms_norm": ("A2 A2 A1 A1 s A2 A1 A2", ("f4",)),
}
