"""Native fork-join for the CPU provider's pool: a GEMM split over threads without the interpreter.

A Python worker that takes a part of a kernel goes through the interpreter twice (to start the part and
after it), and each time either side asks for the GIL while the other holds it, it sleeps: 20-40 us on
this kind of VM, more than the part itself for GEMMs of a few million multiply-adds, which is why
OpenBLAS's own threads (started in ~1 us) beat the Python pool there. Here the worker never leaves
compiled code: ``worker_wait`` spins on its part word (GIL released) and calls BLAS itself through the
function pointer the pool found (``cblas_sgemm``/``cblas_dgemm`` of the BLAS NumPy loaded, held at one
thread), and the caller splits, posts, runs its own part and joins inside one compiled call
(``par_gemm``). Measured alone on 2 cores (us, OpenBLAS at 1 thread / its 2 threads / this):
128x128x128 29.7 / 36.9 / 17.7, 784x192x32 68 / 37 / 36, 64x3136x64 182 / 179 / 121,
512x4608x49 1976 / 1007 / 983.

State (int64, one 64-byte line per slot group): [0] the caller's generation counter, [1] the caller lock
(one caller posts at a time; another runs its product alone), and per worker w >= 1: [8w] whether it is
in its loop (1) or out, asleep in Python (0); [8w + 1] its part word, ``gen * 4 + status`` with status 0
done (all zeros: nothing posted yet), 1 posted, 2 taken by the worker, 3 taken back by the caller. A caller that finished its own part
takes back every part no worker has taken yet (a worker whose core another process holds never stalls
it), and waits only for parts in progress. The part's task is row w of ``desc`` (``DESC`` int64s).
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from engineroom.providers.cpu.compiled._jit_sync import _load_acquire, _sched_yield, _store_release

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
                        fnty = ir.FunctionType(ir.VoidType(), [i32, i32, i32, it, it, it, ft, fp, it, fp, it, ft, fp, it])
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
def _run_part(desc, row):
    """The task in desc's row ``row`` (``_set_part``'s fields)."""
    o = row * DESC
    _gemms(desc[o], desc[o + 1], desc[o + 2], desc[o + 3], desc[o + 4], desc[o + 5], desc[o + 6], desc[o + 7],
           desc[o + 8], desc[o + 9], desc[o + 10], desc[o + 11], desc[o + 12], desc[o + 13], desc[o + 14],
           desc[o + 15], desc[o + 16], desc[o + 17])


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
    _run_part(desc, w)
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
    caller and the workers in their loops (at most ``threads`` in all): by batches where there are
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
    # the workers that take parts now: in their loops, this caller alone posting
    mine = np.zeros(threads, np.int64)      # mine[p]: the worker given part p (0: the caller)
    parts = 1
    locked = threads > 1 and _cas(state, 1, 0, 1) == 0
    if locked:
        for w in range(1, threads):
            if _load_acquire(state, 8 * w) == 1:
                mine[parts] = w
                parts += 1
    if parts == 1:
        if locked:
            _store_release(state, 1, 0)
        _gemms(kind, fn, ilp, ta, tb, M, N, K, pa, lda, pb, ldb, pc, ldc, nbat, sa, sb, sc)
        return
    gen = state[0] + 1
    state[0] = gen
    by_batch = nbat >= parts
    by_rows = M >= N
    span = nbat if by_batch else (M if by_rows else N)
    unit = 1 if by_batch else align
    blocks = (span + unit - 1) // unit
    for p in range(parts - 1, -1, -1):      # the workers' parts posted first, the caller's last
        lo = min(span, (blocks * p // parts) * unit)
        hi = min(span, (blocks * (p + 1) // parts) * unit)
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
    _run_part(desc, 0)
    for p in range(1, parts):
        r = mine[p]
        word = gen * 4 + _POSTED
        if _cas(state, 8 * r + 1, word, gen * 4 + _BACK) == word:
            _run_part(desc, r)                          # not taken yet: the caller runs it
            continue
        while _load_acquire(state, 8 * r + 1) != gen * 4 + _DONE:
            _sched_yield()
    _store_release(state, 1, 0)


AOT = {
    "worker_wait": ("I1 i i i i I1 I1 i", ("f4",)),
    "par_gemm": ("I1 I1 I1 A3 A3 A3 i i i i", ("f4", "f8")),
}
