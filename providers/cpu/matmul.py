"""Matrix kernels: MatMul, Gemm, MatMulInteger, QLinearMatMul, Einsum (Attention and RotaryEmbedding are in
``attention``, Dropout in ``random``).

Everything that multiplies matrices runs through BLAS: float32/float64 as they are, narrower floats
(float16, bfloat16, float8) in float32 and cast back, and the integer/quantized ops exactly on float BLAS
(``intgemm``: float32 where the sum fits its 24-bit significand, in chunks of K where it does not, with
the constant weight prepared once). Gemm folds a constant
``alpha * op(B)`` into one contiguous matrix, and ``beta * C`` likewise, once in the factory.
"""
from __future__ import annotations

import numpy as np

from engineroom.providers.cpu import intgemm
from engineroom.providers.cpu.array_module import arrays
from engineroom.providers.cpu.registry import array_kernel


def _fdt(dt) -> np.dtype:
    """Float type the arithmetic for dtype ``dt`` runs in."""
    dt = np.dtype(dt)
    return dt if dt in (np.dtype(np.float32), np.dtype(np.float64)) else np.dtype(np.float32)


def is_float(dt) -> bool:
    """True for NumPy floats and the ml_dtypes ones (bfloat16, float8..., whose kind is 'V')."""
    dt = np.dtype(dt)
    return dt.kind == "f" or (dt.kind == "V" and "float" in dt.name)


def _blas_ok(dt) -> bool:
    return np.dtype(dt) in (np.dtype(np.float32), np.dtype(np.float64))


# ---------------------------------------------------------------------------------------------
# MatMul / Gemm


def _matmul_2d_b(xp, a, b):
    """a @ b; an N-D a times a 2-D b runs as one 2-D GEMM (NumPy would loop over a's batch)."""
    if b.ndim == 2 and a.ndim > 2 and a.flags.c_contiguous:
        return arrays(xp).matmul(a.reshape(-1, a.shape[-1]), b).reshape(a.shape[:-1] + (b.shape[1],))
    return arrays(xp).matmul(a, b)


def _aligned(a: np.ndarray, align: int = 64) -> np.ndarray:
    """A C-contiguous copy of host array ``a`` starting on an ``align``-byte boundary. A prepared weight that
    BLAS reads in place (a one-row product: GEMV, no packing) is read ~25% faster 32-byte aligned than at a
    16-byte offset, where NumPy's allocations may start (1 x 1536 by 1536 x 128: 9.2 -> 7.0 us)."""
    buf = np.empty(a.nbytes + align, np.uint8)
    start = -buf.ctypes.data % align
    out = buf[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


def matmul_any(xp, a, b):
    """a @ b with ONNX (NumPy) semantics for any dtype; narrow floats go through float32."""
    dt = a.dtype
    if _blas_ok(dt) or dt.kind in "iub":
        return _matmul_2d_b(xp, a, b)
    return _matmul_2d_b(xp, a.astype(np.float32), b.astype(np.float32)).astype(dt)


@array_kernel("MatMul", since=1)
def matmul(info):
    xp = info.xp
    bc = info.const_inputs[1] if len(info.const_inputs) > 1 else None
    if bc is not None and is_float(bc.dtype) and not _blas_ok(bc.dtype):
        # narrow float constant weight: widen once, not per run
        bw = xp.asarray(np.asarray(bc).astype(np.float32))
        dt = bc.dtype

        def run_narrow(a, _b):
            return (_matmul_2d_b(xp, a.astype(np.float32), bw).astype(dt),)
        return run_narrow

    def run(a, b):
        return (matmul_any(xp, a, b),)

    if bc is not None and bc.ndim == 2 and np.dtype(bc.dtype) == np.float32 and arrays(xp).host:
        if bc.size < _SMALL_WEIGHT:
            return _matmul_small_weight(bc, run)
        return _matmul_few_rows(bc, run)
    return run


# A constant float32 weight of fewer elements than this (16x16, 14x8: the small heads of tiny models) is
# multiplied by NumPy's BLAS call directly, whatever the rows: the compiled few-rows loop's call costs more
# there (~2 us against ~1 us for a 4x16 by 16x16 product, thread CPU)
_SMALL_WEIGHT = 2048


def _matmul_small_weight(b, run):
    """MatMul by a small constant float32 weight on the host: one ``np.matmul`` on A seen as 2-D (no
    dtype or batch analysis per call), where the product is below the size the thread pool's policy
    looks at (``_threadpool.BLAS_SINGLE_MACS``: smaller products go straight to NumPy there too)."""
    from engineroom.providers.cpu._threadpool import BLAS_SINGLE_MACS

    K, N = b.shape
    if not K:
        return run
    # np.dot: the same BLAS product for 2-D operands, ~0.2 us less a call than the matmul gufunc's dispatch
    f32, nd, dot = np.dtype(np.float32), np.ndarray, np.dot
    max_rows = BLAS_SINGLE_MACS // max(b.size, 1)

    def run_small(a, b_):
        if b_ is b and a.__class__ is nd and a.dtype == f32 and a.ndim >= 2 and a.shape[-1] == K:
            if a.ndim == 2:
                if a.shape[0] < max_rows:
                    return (dot(a, b),)
            elif a.flags.c_contiguous and a.size < max_rows * K:
                return (dot(a.reshape(-1, K), b).reshape(a.shape[:-1] + (N,)),)
        return run(a, b_)

    return run_small


def _matmul_few_rows(b, run):
    """MatMul by a constant float32 weight: 2-8 rows of A (batched token-by-token decoding) go through a
    compiled loop over the weight transposed (``_jit_llm.gemm_few_rows``), made on the first such call so
    that models never run with a few rows keep one copy (GPT-2 batch-4 decode step 2.85 -> 2.14 ms CPU
    time; OpenBLAS packs the whole weight on every call). One row stays with BLAS's GEMV, as fast."""
    from engineroom.providers.cpu import _threadpool
    from engineroom.providers.cpu.array_module import NUMPY

    jit = NUMPY.compiled("llm")
    if jit is None:
        return run
    wt: list = []

    def run_few(a, b_):
        rows = a.size // a.shape[-1] if a.ndim >= 2 and a.shape[-1] else 0
        if rows == 1 and b_ is b and a.dtype == np.float32 and _threadpool._blas.outside() == 1:
            # one row and one BLAS thread: NumPy's GEMV as it is, not through the pool's wrapper (its
            # bookkeeping cost ~10 us a call in a GPT-2 decoding step, ~10% of it)
            return (np.matmul(a.reshape(1, a.shape[-1]), b).reshape(a.shape[:-1] + (b.shape[1],)),)
        if not (2 <= rows <= 8 and b_ is b and a.dtype == np.float32 and a.flags.c_contiguous):
            return run(a, b_)
        if not wt:
            wt.append(np.ascontiguousarray(b.T))
        y = np.empty(a.shape[:-1] + (b.shape[1],), np.float32)
        jit.gemm_few_rows(a.reshape(rows, a.shape[-1]), wt[0], y.reshape(rows, b.shape[1]))
        return (y,)

    return run_few


def _broadcasts_into(small: tuple, big: tuple) -> bool:
    """Whether shape ``small`` broadcasts to ``big`` without growing it (np.broadcast_shapes: ~5 us a call,
    as much as a small Gemm itself)."""
    return len(small) <= len(big) and all(s == 1 or s == b for s, b in zip(reversed(small), reversed(big)))


@array_kernel("Gemm", since=1)
def gemm(info):
    xp = info.xp
    a = info.attrs
    alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
    trans_a, trans_b = int(a.get("transA", 0)), int(a.get("transB", 0))
    consts = tuple(info.const_inputs) + (None,) * 3
    bconst, cconst = consts[1], consts[2]
    dt = np.dtype(info.input_dtypes[0]) if info.input_dtypes and info.input_dtypes[0] is not None else None
    fold_alpha = (dt is None or is_float(dt)) and alpha != 1.0
    bpack = cpack = None
    if bconst is not None:
        b = np.asarray(bconst)
        cdt = _fdt(b.dtype) if is_float(b.dtype) else b.dtype
        b = b.T if trans_b else b
        b = b.astype(cdt) * np.asarray(alpha, cdt) if fold_alpha else b.astype(cdt)
        bpack = _aligned(b) if arrays(xp).host else xp.asarray(np.ascontiguousarray(b))
    if cconst is not None:
        c = np.asarray(cconst)
        c = c.astype(_fdt(c.dtype)) if is_float(c.dtype) else c
        cpack = xp.asarray(c * np.asarray(beta, c.dtype if is_float(c.dtype) else np.float64) if beta != 1.0 else c)

    def run(A, B=None, C=None):
        odt = A.dtype
        isf = is_float(odt)
        cdt = _fdt(odt) if isf else odt
        Am = A.T if trans_a else A
        if bpack is not None:
            y = arrays(xp).matmul(Am.astype(cdt, copy=False), bpack)
            scaled = fold_alpha
        else:
            Bm = B.T if trans_b else B
            y = arrays(xp).matmul(Am.astype(cdt, copy=False), Bm.astype(cdt, copy=False))
            scaled = False
        if alpha != 1.0 and not scaled:
            y = y * alpha if not isf else xp.multiply(y, cdt.type(alpha), out=y)
        if C is not None and beta != 0.0:
            if cpack is not None:
                cv = cpack
            else:
                cv = C.astype(cdt, copy=False)
                if beta != 1.0:
                    cv = cv * (cdt.type(beta) if isf else beta)
            if isf and cv.dtype == y.dtype and _broadcasts_into(cv.shape, y.shape):
                xp.add(y, cv, out=y)
            else:
                y = y + cv
        return (y.astype(odt, copy=False),)

    f32 = np.dtype(np.float32)
    if bpack is not None and bpack.dtype == f32 and not trans_a and arrays(xp).host and \
            (cconst is None or beta == 0.0 or (cpack.dtype == f32 and cpack.ndim <= 2 and
                                               (cpack.ndim < 2 or cpack.shape[0] == 1))):
        # float32 A by the prepared weight plus a row bias (a Loop body's cell, a classifier head: 7 per
        # slanet_table step): no dtype, alpha or broadcast decisions per call (~2.5 us of a 6 us Gemm)
        from engineroom.providers.cpu._threadpool import BLAS_SINGLE_MACS

        mm = arrays(xp).matmul
        bias = cpack if cconst is not None and beta != 0.0 else None
        add, dot = np.add, np.dot
        # products below the size the thread pool's policy looks at go to NumPy's 2-D product directly, as
        # there (np.dot: the same BLAS call as matmul, less dispatch; the small heads of tiny models: a
        # 1 x 128 by 128 x 128 Gemm pays ~0.5 us less)
        max_rows = (BLAS_SINGLE_MACS - 1) // max(bpack.size, 1)     # rows * weight size < BLAS_SINGLE_MACS

        def run_f32(A, B=None, C=None):
            if A.dtype != f32 or A.ndim != 2 or (C is not None and bias is None and beta != 0.0):
                return run(A, B, C)
            y = dot(A, bpack) if A.shape[0] <= max_rows else mm(A, bpack)
            if bias is not None:
                add(y, bias, out=y)
            return (y,)

        return run_f32
    return run


# ---------------------------------------------------------------------------------------------
# integer / quantized matmul


def _a_centered(xp, A, a_zp, dtype):
    """A - a_zp as integer-valued floats; a_zp per tensor or per row of A ((M,) or (..., M, 1))."""
    af = A.astype(dtype)
    if a_zp is not None:
        z = xp.asarray(a_zp).astype(dtype)
        af -= z.reshape(()) if z.size == 1 else (z.reshape(-1, 1) if z.ndim == 1 else z)
    return af


def _int_product(info, b_idx, bzp_idx):
    """fn(A, a_zp, B, b_zp) -> (A - a_zp) @ (B - b_zp), exact and integer-valued (float32 or float64; see
    ``intgemm``); a constant B (and zero point) is prepared once."""
    xp = info.xp
    consts = tuple(info.const_inputs) + (None,) * 9
    has_bzp = info.has_input(bzp_idx)
    prepared = None
    if arrays(xp).host and consts[b_idx] is not None and (not has_bzp or consts[bzp_idx] is not None) \
            and np.dtype(consts[b_idx].dtype).kind in "iu":
        prepared = intgemm.IntMatrix(consts[b_idx], consts[bzp_idx] if has_bzp else None)

    def product(A, a_zp, B, b_zp):
        if not arrays(xp).host or A.dtype.kind not in "iu" or B.dtype.kind not in "iu":
            # other array modules, float8 operands (QLinearMatMul-21): float64, as the values are
            return xp.matmul(_a_centered(xp, A, a_zp, np.float64), _b_centered(xp, B, b_zp))
        amax = intgemm.int_bound(A.dtype, a_zp)
        bm = prepared
        if bm is None or amax > 255:        # a run-time B: bounded by its dtype, not measured
            bm = intgemm.IntMatrix(B, b_zp, amax, intgemm.int_bound(B.dtype, b_zp))
        return bm.matmul(_a_centered(xp, A, a_zp, bm.f.dtype), amax)

    return product


def _b_centered(xp, B, b_zp):
    bf = B.astype(np.float64)
    if b_zp is not None:
        z = xp.asarray(b_zp).astype(np.float64)
        bf -= z.reshape(()) if z.size == 1 else z.reshape(-1)     # per column: (N,) on the last axis
    return bf


@array_kernel("MatMulInteger", since=10)
def matmul_integer(info):
    product = _int_product(info, 1, 3)

    def run(A, B, a_zp=None, b_zp=None):
        return (product(A, a_zp, B, b_zp).astype(np.int32),)

    return run


def _quant_out(xp, y, zp, out_dt):
    """Round-half-even, add the zero point, saturate to the output type."""
    out_dt = np.dtype(out_dt)
    if out_dt.kind in "iu":
        y = xp.rint(y)
        if zp is not None:
            y += xp.asarray(zp).astype(np.float64).reshape(() if np.size(zp) == 1 else np.shape(zp))
        lim = np.iinfo(out_dt)
        return xp.clip(y, lim.min, lim.max).astype(out_dt)
    # float8 outputs (QLinearMatMul-21): saturating conversion
    if zp is not None:
        y = y + xp.asarray(zp).astype(np.float64)
    fi = _finfo_max(out_dt)
    if fi is not None:
        y = xp.clip(y, -fi, fi)
    return y.astype(np.float32).astype(out_dt)


def _finfo_max(dt):
    try:
        import ml_dtypes

        return float(ml_dtypes.finfo(dt).max)
    except Exception:  # noqa: BLE001 - not an ml_dtypes float: no saturation bound
        return None


@array_kernel("QLinearMatMul", since=10)
def qlinear_matmul(info):
    xp = info.xp
    product = _int_product(info, 3, 5)

    def run(a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp):
        acc = product(a, a_zp, b, b_zp)
        sa = xp.asarray(a_scale).astype(np.float64)
        sb = xp.asarray(b_scale).astype(np.float64)
        sa = sa.reshape(()) if sa.size == 1 else sa.reshape(-1, 1)
        sb = sb.reshape(()) if sb.size == 1 else sb.reshape(-1)
        sy = xp.asarray(y_scale).astype(np.float64).reshape(())
        y = acc * (sa * sb / sy)        # float64 (acc is exact, the scale float64): as before the fast path
        out_dt = y_zp.dtype if y_zp is not None else a.dtype
        return (_quant_out(xp, y, y_zp, out_dt),)

    return run


# ---------------------------------------------------------------------------------------------
# Einsum


@array_kernel("Einsum", since=12)
def einsum(info):
    xp = info.xp
    eq = info.attrs["equation"].replace(" ", "")
    n_in = len(info.input_names)

    def run(*ops):
        dt = ops[0].dtype
        if is_float(dt) and not _blas_ok(dt):
            ops = [o.astype(np.float32) for o in ops]
        # optimize=True routes two-operand contractions through BLAS (tensordot)
        y = xp.einsum(eq, *ops, optimize=n_in > 1)
        return (xp.asarray(y).astype(dt, copy=False),)

    return run
