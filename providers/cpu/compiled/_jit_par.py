"""Native fork-join for the CPU provider's pool: GEMMs and compiled loops split over threads without the
interpreter.

A Python worker that takes a part of a kernel goes through the interpreter twice (to start the part and
after it), and each time either side asks for the GIL while the other holds it, it sleeps: 20-40 us on
this kind of VM, more than the part itself for GEMMs of a few million multiply-adds, which is why
OpenBLAS's own threads (started in ~1 us) beat the Python pool there. Here the worker never leaves
compiled code: ``worker_wait`` spins on its part word (GIL released) and runs the part itself (a GEMM
through the C entry point of the BLAS NumPy loaded, held at one thread: ``cblas_sgemm``/``cblas_dgemm``,
whose addresses the pool found; or one of the loops below), and the caller splits, posts, runs its own
part and joins inside one compiled call (``par_gemm``, ``par_<loop>``). Measured alone on 2 cores (us,
OpenBLAS at 1 thread / its 2 threads / this): 128x128x128 29.7 / 36.9 / 17.7, 784x192x32 68 / 37 / 36,
64x3136x64 182 / 179 / 121, 512x4608x49 1976 / 1007 / 983.

State (int64, one 64-byte line per slot group): [0] the caller's generation counter, [1] the caller lock
(one caller posts at a time; another runs its split alone), and per worker w >= 1: [8w] whether it is in
its wait (1) or out (0: in Python, or asleep there past its spin), for the pool's own checks; [8w + 1] its
part word, ``gen * 4 + status`` with status 0 done (all zeros: nothing posted yet), 1 posted, 2 taken by
the worker, 3 taken back by the caller. A caller that finished its own part takes back every part no
worker has taken yet (a worker whose core another process holds, or asleep, never stalls it), and waits
only for parts in progress. The part's task is row w of ``desc`` (``DESC`` int64s).
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import carray, njit, types  # noqa: F401 - carray: in the generated _run_<loop>
from numba.extending import intrinsic

from engineroom.providers.cpu.compiled._jit_conv import (
    _depthwise3x3_flat,
    bias_add_clip,
    bias_clip,
    bias_hard_act,
    im2col2d,
)
from engineroom.providers.cpu.compiled._jit_conv_transpose import col2im_rows
from engineroom.providers.cpu.compiled._jit_nhwc import bias_clip_rows, depthwise_nhwc, rows_to_channels
from engineroom.providers.cpu.compiled._jit_sync import _load_acquire, _sched_yield, _store_release
from engineroom.providers.cpu.compiled._jit_transformer import attention_softmax_heads
from engineroom.providers.cpu.compiled._jit_winograd import input_transform, output_transform

DESC = 32           # int64s per part's task
_DONE, _POSTED, _TAKEN, _BACK = 0, 1, 2, 3


@intrinsic
def _cas(typingctx, arr, idx, old, new):
    """Atomic compare-and-swap of arr[idx] (int64 array): the value found there."""
    sig = types.int64(arr, idx, old, new)

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        ptr = builder.gep(ary.data, [args[1]])
        res = builder.cmpxchg(ptr, args[2], args[3], "acq_rel", "acquire")
        return builder.extract_value(res, 0)

    return sig, codegen


@intrinsic
def _address(typingctx, arr):
    """The address of arr's first element, as an int64."""
    sig = types.int64(arr)

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        return builder.ptrtoint(ary.data, ir.IntType(64))

    return sig, codegen


def _gemm_codegen(real):
    """An intrinsic calling a row-major ``cblas_?gemm`` (alpha 1, beta 0) through its address; the
    integer arguments are 64-bit for an ILP64 BLAS (``ilp64`` != 0), else 32-bit."""

    def gemm(typingctx, fn, ilp64, ta, tb, m, n, k, a, lda, b, ldb, c, ldc):
        sig = types.void(fn, ilp64, ta, tb, m, n, k, a, lda, b, ldb, c, ldc)

        def codegen(context, builder, signature, args):
            i32, i64 = ir.IntType(32), ir.IntType(64)
            ft = real()
            fp = ft.as_pointer()
            one, zero = ir.Constant(ft, 1.0), ir.Constant(ft, 0.0)
            fn_, ilp, ta_, tb_, m_, n_, k_, a_, lda_, b_, ldb_, c_, ldc_ = args
            row_major = ir.Constant(i32, 101)
            trans = [builder.select(builder.icmp_signed("!=", t, ir.Constant(i64, 0)), ir.Constant(i32, 112),
                                    ir.Constant(i32, 111)) for t in (ta_, tb_)]
            ptrs = [builder.inttoptr(p, fp) for p in (a_, b_, c_)]
            with builder.if_else(builder.icmp_signed("!=", ilp, ir.Constant(i64, 0))) as (wide, narrow):
                for it, block in ((i64, wide), (i32, narrow)):
                    with block:
                        ints = [v if it is i64 else builder.trunc(v, i32) for v in (m_, n_, k_, lda_, ldb_, ldc_)]
                        fnty = ir.FunctionType(ir.VoidType(),
                                               [i32, i32, i32, it, it, it, ft, fp, it, fp, it, ft, fp, it])
                        f = builder.inttoptr(fn_, fnty.as_pointer())
                        builder.call(f, [row_major, trans[0], trans[1], ints[0], ints[1], ints[2], one, ptrs[0],
                                         ints[3], ptrs[1], ints[4], zero, ptrs[2], ints[5]])
            return context.get_dummy_value()

        return sig, codegen

    return intrinsic(gemm)


_sgemm = _gemm_codegen(ir.FloatType)
_dgemm = _gemm_codegen(ir.DoubleType)


@njit(nogil=True, boundscheck=False)
def _gemms(kind, fn, ilp, ta, tb, m, n, k, a, lda, b, ldb, c, ldc, nb, sa, sb, sc):
    """``nb`` GEMMs (kind 1: float32, 2: float64) of pointers stepping by their batch strides (bytes)."""
    if m <= 0 or n <= 0:
        return
    for i in range(nb):
        if kind == 1:
            _sgemm(fn, ilp, ta, tb, m, n, k, a + i * sa, lda, b + i * sb, ldb, c + i * sc, ldc)
        else:
            _dgemm(fn, ilp, ta, tb, m, n, k, a + i * sa, lda, b + i * sb, ldb, c + i * sc, ldc)


@njit(nogil=True, boundscheck=False)
def worker_wait(pystate, pyslot, seen, limit, extra, state, desc, w):  # pragma: no cover (compiled)
    """The pool's worker w between its Python parts (``_jit_sync.worker_wait``'s protocol on ``pystate``:
    its done slot stored, then a spin while pystate[0] == seen, ``extra`` turns more once it changed),
    serving the GEMM parts posted to it meanwhile (``state``, ``desc``): one spinning thread per core
    serves both. ``limit`` turns without either and it returns (to sleep in Python)."""
    _store_release(pystate, pyslot, seen)
    _store_release(state, 8 * w, 1)
    i = 0
    while _load_acquire(pystate, 0) == seen and i < limit:
        if _take(state, desc, w):
            i = 0
            continue
        _sched_yield()
        i += 1
    _store_release(state, 8 * w, 0)
    _take(state, desc, w)               # a part posted while it was leaving (else the caller takes it back)
    if i < limit:
        for _ in range(extra):
            _sched_yield()


@njit(nogil=True, boundscheck=False)
def _take(state, desc, w):
    """Worker w runs the part posted to it, if there is one not yet taken; whether it did."""
    word = _load_acquire(state, 8 * w + 1)
    if word & 3 != _POSTED or _cas(state, 8 * w + 1, word, word - _POSTED + _TAKEN) != word:
        return False
    _run_part(desc, w)  # noqa: F821 - generated below (_dispatch_source)
    _store_release(state, 8 * w + 1, word - _POSTED + _DONE)
    return True


@njit(nogil=True, boundscheck=False)
def _set_part(desc, row, kind, fn, ilp, ta, tb, m, n, k, a, lda, b, ldb, c, ldc, nb, sa, sb, sc):
    o = row * DESC
    desc[o], desc[o + 1], desc[o + 2], desc[o + 3], desc[o + 4] = kind, fn, ilp, ta, tb
    desc[o + 5], desc[o + 6], desc[o + 7] = m, n, k
    desc[o + 8], desc[o + 9], desc[o + 10], desc[o + 11], desc[o + 12], desc[o + 13] = a, lda, b, ldb, c, ldc
    desc[o + 14], desc[o + 15], desc[o + 16], desc[o + 17] = nb, sa, sb, sc


@njit(nogil=True, boundscheck=False)
def par_gemm(state, desc, fns, a, b, c, ta, tb, threads, align):  # pragma: no cover (compiled)
    """c[i] = op(a[i]) @ op(b[i]) for every batch i of c (batch 1 of a or b broadcast), split over the
    caller and the ``threads - 1`` workers (``_fork``): by batches where there are
    enough, else by rows (or columns, where c is wider than tall) in multiples of ``align``.

    a, b, c: C-contiguous 3-D arrays of one float type; ``ta``: a holds op(a) transposed (K x M
    matrices), ``tb`` likewise. fns: [sgemm address, dgemm address, ILP64 flag]."""
    nbat, M, N = c.shape[0], c.shape[1], c.shape[2]
    K = a.shape[1] if ta else a.shape[2]
    es = c.itemsize
    kind = 1 if es == 4 else 2
    fn = fns[0] if kind == 1 else fns[1]
    ilp = fns[2]
    lda, ldb, ldc = a.shape[2], b.shape[2], N
    sa = a.shape[1] * a.shape[2] * es if a.shape[0] > 1 else 0
    sb = b.shape[1] * b.shape[2] * es if b.shape[0] > 1 else 0
    sc = M * N * es
    pa, pb, pc = _address(a), _address(b), _address(c)
    mine = np.zeros(threads, np.int64)
    parts, gen = _fork(state, threads, mine)
    if parts == 1:
        _gemms(kind, fn, ilp, ta, tb, M, N, K, pa, lda, pb, ldb, pc, ldc, nbat, sa, sb, sc)
        return
    by_batch = nbat >= parts
    by_rows = M >= N
    span = nbat if by_batch else (M if by_rows else N)
    unit = 1 if by_batch else align
    for p in range(parts - 1, -1, -1):      # the workers' parts posted first, the caller's last
        lo, hi = _share(span, unit, p, parts)
        row = mine[p]
        if by_batch:
            _set_part(desc, row, kind, fn, ilp, ta, tb, M, N, K, pa + lo * sa, lda, pb + lo * sb, ldb,
                      pc + lo * sc, ldc, hi - lo, sa, sb, sc)
        elif by_rows:
            oa = lo if ta else lo * lda
            _set_part(desc, row, kind, fn, ilp, ta, tb, hi - lo, N, K, pa + oa * es, lda, pb, ldb,
                      pc + lo * ldc * es, ldc, nbat, sa, sb, sc)
        else:
            ob = lo * ldb if tb else lo
            _set_part(desc, row, kind, fn, ilp, ta, tb, M, hi - lo, K, pa, lda, pb + ob * es, ldb,
                      pc + lo * es, ldc, nbat, sa, sb, sc)
        if row:
            _store_release(state, 8 * row + 1, gen * 4 + _POSTED)
    _run_part(desc, 0)  # noqa: F821 - generated below (_dispatch_source)
    _join(state, desc, mine, parts, gen)


@njit(nogil=True, boundscheck=False)
def _fork(state, threads, mine):
    """(parts, generation): the caller takes the lock (else it runs alone: parts 1) and gives part p >= 1
    to worker mine[p], every worker, in its wait or not: one that arrives while the caller runs its own
    part takes its part then (a worker woken for this split, asleep past its spin while a long kernel ran
    alone), and the caller takes back a part not taken by then, at no cost."""
    if threads < 2 or _cas(state, 1, 0, 1) != 0:
        return 1, 0
    for w in range(1, threads):
        mine[w] = w
    gen = state[0] + 1
    state[0] = gen
    return threads, gen


@njit(nogil=True, boundscheck=False)
def _share(span, unit, p, parts):
    """Part p of ``parts`` of range(span), its bounds in multiples of ``unit``."""
    blocks = (span + unit - 1) // unit
    return min(span, (blocks * p // parts) * unit), min(span, (blocks * (p + 1) // parts) * unit)


@njit(nogil=True, boundscheck=False)
def _join(state, desc, mine, parts, gen):
    """After the caller's own part: each worker's part taken back and run here if the worker has not taken
    it, else waited for; then the lock is free."""
    for p in range(1, parts):
        r = mine[p]
        word = gen * 4 + _POSTED
        if _cas(state, 8 * r + 1, word, gen * 4 + _BACK) == word:
            _run_part(desc, r)  # noqa: F821 - generated below (_dispatch_source)
            continue
        while _load_acquire(state, 8 * r + 1) != gen * 4 + _DONE:
            _sched_yield()
    _store_release(state, 1, 0)


# ---------------------------------------------------------------------------------------------- loops
# Compiled loops split the same way: each below runs the part of its loop over range(r0, r1) (rows,
# channels) of arrays given whole (where it slices an inner axis, batch 1; a larger batch runs whole in
# the first part); ``par_<name>`` splits range(n) over the caller and the workers (``_LOOPS``: name, the
# argument kinds as ``compiled.jit``'s AOT specs, float32 only). The task of a part: [kind, r0, r1, then
# per array its address and shape, per scalar its value (a float's float64 bits)]. Of the channels-first
# depthwise loops only the 3x3 "same" one (``depthwise3x3``): compiled a second time, the whole of
# ``depthwise2d`` (its literal-stride variants) added 60 s to this module's build, ``depthwise2d_act`` 110 s.

@njit(nogil=True, boundscheck=False)
def _bias_clip_rows(y, b, lo, hi, r0, r1):  # pragma: no cover (compiled)
    bias_clip_rows(y[r0:r1], b, lo, hi)


@njit(nogil=True, boundscheck=False)
def _depthwise_nhwc(x, w, b, y, sh, sw, pt, pl, lo, hi, r0, r1):  # pragma: no cover (compiled)
    if y.shape[0] != 1:             # batch 1 only: else the first part runs it whole
        if r0 == 0:
            depthwise_nhwc(x, w, b, y, sh, sw, pt, pl, lo, hi)
        return
    yy = y[0][r0:r1]                # output rows r0..r1: the same loop, its leading pad moved up
    depthwise_nhwc(x, w, b, yy.reshape((1,) + yy.shape), sh, sw, pt - r0 * sh, pl, lo, hi)


@njit(nogil=True, boundscheck=False)
def _depthwise3x3(x, w, b, y, lo, hi, r0, r1):  # pragma: no cover (compiled)
    """Input channels r0..r1 (and their outputs) of ``depthwise2d``'s 3x3 stride-1 "same" case (``conv``
    checks the geometry: pads 1, no dilation, images at least 2 x _FLAT_MIN_W)."""
    if y.shape[0] != 1:
        if r0 == 0:
            _depthwise3x3_flat(x, w, b, y, lo, hi, lo, lo, 0)
        return
    mult = y.shape[1] // x.shape[1]
    xx, yy = x[0][r0:r1], y[0][r0 * mult:r1 * mult]
    _depthwise3x3_flat(xx.reshape((1,) + xx.shape), w[r0 * mult:r1 * mult], b[r0 * mult:r1 * mult],
                       yy.reshape((1,) + yy.shape), lo, hi, lo, lo, 0)


@njit(nogil=True, boundscheck=False)
def _bias_clip(y, b, lo, hi, r0, r1):  # pragma: no cover (compiled)
    if y.shape[0] != 1:
        if r0 == 0:
            bias_clip(y, b, lo, hi)
        return
    yy = y[0][r0:r1]                # channels r0..r1
    bias_clip(yy.reshape((1,) + yy.shape), b[r0:r1], lo, hi)


@njit(nogil=True, boundscheck=False)
def _bias_add_clip(y, b, z, lo, hi, r0, r1):  # pragma: no cover (compiled)
    if y.shape[0] != 1:
        if r0 == 0:
            bias_add_clip(y, b, z, lo, hi)
        return
    yy, zz = y[0][r0:r1], z[0][r0:r1]
    bias_add_clip(yy.reshape((1,) + yy.shape), b[r0:r1], zz.reshape((1,) + zz.shape), lo, hi)


@njit(nogil=True, boundscheck=False)
def _bias_hard_act(y, b, z, has_z, alpha, beta, times_x, r0, r1):  # pragma: no cover (compiled)
    if y.shape[0] != 1:
        if r0 == 0:
            bias_hard_act(y, b, z, has_z, alpha, beta, times_x)
        return
    yy, zz = y[0][r0:r1], z[0][r0:r1]
    bias_hard_act(yy.reshape((1,) + yy.shape), b[r0:r1], zz.reshape((1,) + zz.shape), has_z, alpha, beta,
                  times_x)


@njit(nogil=True, boundscheck=False)
def _input_transform(x, V, m, pt, pl, th, tw, r0, r1):  # pragma: no cover (compiled)
    input_transform(x, V, m, pt, pl, th, tw, r0, r1)


@njit(nogil=True, boundscheck=False)
def _output_transform(O, y, b, z, has_z, lo, hi, m, th, tw, r0, r1):  # pragma: no cover (compiled)
    output_transform(O, y, b, z, has_z, lo, hi, m, th, tw, r0, r1)


@njit(nogil=True, boundscheck=False)
def _im2col2d(x, cols, KH, KW, sh, sw, dh, dw, pt, pl, OH, OW, r0, r1):  # pragma: no cover (compiled)
    if x.shape[0] != 1:
        if r0 == 0:
            im2col2d(x, cols, KH, KW, sh, sw, dh, dw, pt, pl, OH, OW)
        return
    K = KH * KW                     # input channels r0..r1: rows r0*K..r1*K of cols
    xx, cc = x[0][r0:r1], cols[0][r0 * K:r1 * K]
    im2col2d(xx.reshape((1,) + xx.shape), cc.reshape((1,) + cc.shape), KH, KW, sh, sw, dh, dw, pt, pl, OH, OW)


@njit(nogil=True, boundscheck=False)
def _conv_bands(x, wm, y, fns, KH, KW, sh, sw, dh, dw, pt, pl, OH, OW, rb, r0, r1):  # pragma: no cover
    """Bands r0..r1 of an ungrouped 2-D conv (``conv._im2col_bands``): band i is output rows
    (i % nb) * rb.. of image i // nb, its columns made into a buffer of this thread's and multiplied by
    wm (M, C*KH*KW) at once (BLAS through fns, as in ``par_gemm``). y (N, M, OH*OW)."""
    M, CK = wm.shape[0], wm.shape[1]
    nb = (OH + rb - 1) // rb
    buf = np.empty(CK * rb * OW, dtype=np.float32)
    for i in range(r0, r1):
        n, b0 = i // nb, (i % nb) * rb
        b1 = min(OH, b0 + rb)
        P = (b1 - b0) * OW
        c = buf[:CK * P].reshape((1, CK, P))
        im2col2d(x[n:n + 1], c, KH, KW, sh, sw, dh, dw, pt - b0 * sh, pl, b1 - b0, OW)
        _sgemm(fns[0], fns[2], 0, 0, M, P, CK, _address(wm), CK, _address(buf), P,
               _address(y) + ((n * M) * OH * OW + b0 * OW) * 4, OH * OW)


@njit(nogil=True, boundscheck=False)
def _attention(q, k, v, s, bias, out, heads, scale, fns, r0, r1):  # pragma: no cover (compiled)
    """Batch-heads r0..r1 of MultiHeadAttention (``fused_transformer``): per head n = b * heads + h, the
    scores s[n] = Q_h K_hᵀ (one GEMM on the strided head of q and k, BLAS through fns), their softmax
    with scale and bias in place (``attention_softmax_heads``), and out's head h = s[n] V_h. q (B, Sq,
    heads*D), k (B, Sk, heads*D), v (B, Sk, heads*Dv), s (B*heads, Sq, Sk), out (B, Sq, heads*Dv)."""
    Sq, HD = q.shape[1], q.shape[2]
    Sk, HDv = k.shape[1], v.shape[2]
    D, Dv = HD // heads, HDv // heads
    pq, pk, pv, ps, po = _address(q), _address(k), _address(v), _address(s), _address(out)
    for n in range(r0, r1):
        b, h = n // heads, n % heads
        _sgemm(fns[0], fns[2], 0, 1, Sq, Sk, D, pq + (b * Sq * HD + h * D) * 4, HD,
               pk + (b * Sk * HD + h * D) * 4, HD, ps + n * Sq * Sk * 4, Sk)
        attention_softmax_heads(s, bias, heads, scale, n, n + 1)
        _sgemm(fns[0], fns[2], 0, 0, Sq, Dv, Sk, ps + n * Sq * Sk * 4, Sk,
               pv + (b * Sk * HDv + h * Dv) * 4, HDv, po + (b * Sq * HDv + h * Dv) * 4, HDv)


@njit(nogil=True, boundscheck=False)
def _rows_to_channels(t, b, z, has_z, lo, hi, y, r0, r1):  # pragma: no cover (compiled)
    rows_to_channels(t, b, z, has_z, lo, hi, y, r0, r1)


@njit(nogil=True, boundscheck=False)
def _col2im_rows(cols, b, y, s1, s2, d1, d2, p1, p2, r0, r1):  # pragma: no cover (compiled)
    col2im_rows(cols[:, :, :, r0:r1], b[:, r0:r1], y[:, r0:r1], s1, s2, d1, d2, p1, p2)   # channels r0..r1


_LOOPS = (
    ("bias_clip_rows", "A2 A1 s s"),
    ("depthwise_nhwc", "A4 A3 A1 A4 i i i i s s"),
    ("depthwise3x3", "A4 A3 A1 A4 s s"),
    ("bias_clip", "A3 A1 s s"),
    ("bias_add_clip", "A3 A1 A3 s s"),
    ("bias_hard_act", "A3 A1 A3 i s s i"),
    ("input_transform", "A4 A3 i i i i i"),
    ("output_transform", "A3 A4 A1 A4 i s s i i i"),
    ("im2col2d", "A4 A3 i i i i i i i i i i"),
    ("conv_bands", "A4 A2 A3 I1 i i i i i i i i i i i"),
    ("attention", "A3 A3 A3 A3 A4 A3 i s I1"),
    ("rows_to_channels", "A3 A1 A3 i s s A3"),
    ("col2im_rows", "A6 A2 A4 i i i i i i"),
)
_FIRST_LOOP_KIND = 16


@intrinsic
def _f32_at(typingctx, addr):
    """The address (int64) as a float32 pointer."""
    sig = types.CPointer(types.float32)(addr)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], ir.FloatType().as_pointer())

    return sig, codegen


@intrinsic
def _i64_at(typingctx, addr):
    """The address (int64) as an int64 pointer."""
    sig = types.CPointer(types.int64)(addr)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], ir.IntType(64).as_pointer())

    return sig, codegen


@intrinsic
def _bits(typingctx, x):
    """A float64's bits as an int64."""
    sig = types.int64(x)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))

    return sig, codegen


@intrinsic
def _float(typingctx, i):
    """The float64 whose bits an int64 holds."""
    sig = types.float64(i)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return sig, codegen


def _loop_source(kind: int, name: str, spec: str) -> str:
    """``_put_<name>`` (a part's task into desc), ``_run_<name>`` (a task run) and ``par_<name>``."""
    kinds = spec.split()
    args = [f"a{i}" for i in range(len(kinds))]
    put, get, at = [], [], 3
    for a, k in zip(args, kinds):
        if k[0] in "AI":
            nd = int(k[1:])
            put.append(f"desc[o + {at}] = _address({a})")
            put += [f"desc[o + {at + 1 + d}] = {a}.shape[{d}]" for d in range(nd)]
            shape = ", ".join(f"desc[o + {at + 1 + d}]" for d in range(nd))
            get.append(f"{a} = carray(_f32_at(desc[o + {at}]), ({shape},))" if k[0] == "A" else
                       f"{a} = carray(_i64_at(desc[o + {at}]), ({shape},))")
            at += 1 + nd
        elif k == "s":
            put.append(f"desc[o + {at}] = _bits(np.float64({a}))")
            get.append(f"{a} = np.float32(_float(desc[o + {at}]))")
            at += 1
        else:
            put.append(f"desc[o + {at}] = {a}")
            get.append(f"{a} = desc[o + {at}]")
            at += 1
    assert at <= DESC, name
    sig, nl = ", ".join(args), "\n    "
    return f"""
@njit(nogil=True, boundscheck=False)
def _put_{name}(desc, row, r0, r1, {sig}):
    o = row * DESC
    desc[o], desc[o + 1], desc[o + 2] = {kind}, r0, r1
    {nl.join(put)}


@njit(nogil=True, boundscheck=False)
def _run_{name}(desc, o):
    {nl.join(get)}
    _{name}({sig}, desc[o + 1], desc[o + 2])


@njit(nogil=True, boundscheck=False)
def par_{name}(state, desc, threads, n, align, {sig}):  # pragma: no cover (compiled)
    mine = np.zeros(threads, np.int64)
    parts, gen = _fork(state, threads, mine)
    if parts == 1:
        _{name}({sig}, 0, n)
        return
    for p in range(parts - 1, 0, -1):
        lo, hi = _share(n, align, p, parts)
        _put_{name}(desc, mine[p], lo, hi, {sig})
        _store_release(state, 8 * mine[p] + 1, gen * 4 + _POSTED)
    lo, hi = _share(n, align, 0, parts)
    _{name}({sig}, lo, hi)
    _join(state, desc, mine, parts, gen)
"""


def _dispatch_source() -> str:
    """``_run_part``: a part's task run by its kind (GEMMs, then each loop)."""
    cases = [f"    elif kind == {_FIRST_LOOP_KIND + i}:\n        _run_{name}(desc, o)"
             for i, (name, _) in enumerate(_LOOPS)]
    return f"""
@njit(nogil=True, boundscheck=False)
def _run_part(desc, row):
    o = row * DESC
    kind = desc[o]
    if kind == 1 or kind == 2:
        _gemms(kind, desc[o + 1], desc[o + 2], desc[o + 3], desc[o + 4], desc[o + 5], desc[o + 6],
               desc[o + 7], desc[o + 8], desc[o + 9], desc[o + 10], desc[o + 11], desc[o + 12],
               desc[o + 13], desc[o + 14], desc[o + 15], desc[o + 16], desc[o + 17])
{chr(10).join(cases)}
"""


exec(_dispatch_source() + "".join(_loop_source(_FIRST_LOOP_KIND + i, name, spec)
                                  for i, (name, spec) in enumerate(_LOOPS)))


# the variants compiled ahead of time (see compiled.jit; read there as a literal): every par_<name> of _LOOPS
AOT = {
    "worker_wait": ("I1 i i i i I1 I1 i", ("f4",)),
    "par_gemm": ("I1 I1 I1 A3 A3 A3 i i i i", ("f4", "f8")),
    "par_bias_clip_rows": ("I1 I1 i i i A2 A1 s s", ("f4",)),
    "par_depthwise_nhwc": ("I1 I1 i i i A4 A3 A1 A4 i i i i s s", ("f4",)),
    "par_depthwise3x3": ("I1 I1 i i i A4 A3 A1 A4 s s", ("f4",)),
    "par_bias_clip": ("I1 I1 i i i A3 A1 s s", ("f4",)),
    "par_bias_add_clip": ("I1 I1 i i i A3 A1 A3 s s", ("f4",)),
    "par_bias_hard_act": ("I1 I1 i i i A3 A1 A3 i s s i", ("f4",)),
    "par_input_transform": ("I1 I1 i i i A4 A3 i i i i i", ("f4",)),
    "par_output_transform": ("I1 I1 i i i A3 A4 A1 A4 i s s i i i", ("f4",)),
    "par_im2col2d": ("I1 I1 i i i A4 A3 i i i i i i i i i i", ("f4",)),
    "par_conv_bands": ("I1 I1 i i i A4 A2 A3 I1 i i i i i i i i i i i", ("f4",)),
    "par_attention": ("I1 I1 i i i A3 A3 A3 A3 A4 A3 i s I1", ("f4",)),
    "par_rows_to_channels": ("I1 I1 i i i A3 A1 A3 i s s A3", ("f4",)),
    "par_col2im_rows": ("I1 I1 i i i A6 A2 A4 i i i i i i", ("f4",)),
}
assert all(AOT.get(f"par_{name}", ("",))[0] == "I1 I1 i i i " + spec for name, spec in _LOOPS), "AOT and _LOOPS differ"
