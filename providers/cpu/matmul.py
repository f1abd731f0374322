"""Matrix kernels: MatMul, Gemm, MatMulInteger, QLinearMatMul, Einsum, Dropout, Attention, RotaryEmbedding.

Everything that multiplies matrices runs through BLAS: float32/float64 as they are, narrower floats
(float16, bfloat16, float8) in float32 and cast back, and the integer/quantized ops exactly in float64
(products of 8-bit values summed over any realistic K stay far below 2**53). Gemm folds a constant
``alpha * op(B)`` into one contiguous matrix, and ``beta * C`` likewise, once in the factory.
"""
from __future__ import annotations

import numpy as np
from engineroom.providers.cpu.registry import kernel


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


def matmul_any(xp, a, b):
    """a @ b with ONNX (NumPy) semantics for any dtype; narrow floats go through float32."""
    dt = a.dtype
    if _blas_ok(dt) or dt.kind in "iub":
        return xp.matmul(a, b)
    return xp.matmul(a.astype(np.float32), b.astype(np.float32)).astype(dt)


@kernel("MatMul", since=1)
def matmul(info):
    xp = info.xp
    bc = info.const_inputs[1] if len(info.const_inputs) > 1 else None
    if bc is not None and is_float(bc.dtype) and not _blas_ok(bc.dtype):
        # narrow float constant weight: widen once, not per run
        bw = xp.asarray(np.asarray(bc).astype(np.float32))
        dt = bc.dtype

        def run_narrow(a, _b):
            return (xp.matmul(a.astype(np.float32), bw).astype(dt),)
        return run_narrow

    def run(a, b):
        return (matmul_any(xp, a, b),)

    return run


@kernel("Gemm", since=1)
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
        bpack = xp.asarray(np.ascontiguousarray(b))
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
            y = xp.matmul(Am.astype(cdt, copy=False), bpack)
            scaled = fold_alpha
        else:
            Bm = B.T if trans_b else B
            y = xp.matmul(Am.astype(cdt, copy=False), Bm.astype(cdt, copy=False))
            scaled = False
        if alpha != 1.0 and not scaled:
            y = y * alpha if not isf else xp.multiply(y, np.asarray(alpha, cdt), out=y)
        if C is not None and beta != 0.0:
            if cpack is not None:
                cv = cpack
            else:
                cv = C.astype(cdt, copy=False)
                if beta != 1.0:
                    cv = cv * (np.asarray(beta, cdt) if isf else beta)
            if isf and cv.dtype == y.dtype and np.broadcast_shapes(y.shape, cv.shape) == y.shape:
                xp.add(y, cv, out=y)
            else:
                y = y + cv
        return (y.astype(odt, copy=False),)

    return run


# ---------------------------------------------------------------------------------------------
# integer / quantized matmul


@kernel("MatMulInteger", since=10)
def matmul_integer(info):
    xp = info.xp

    def run(A, B, a_zp=None, b_zp=None):
        af = A.astype(np.float64)
        if a_zp is not None:
            z = xp.asarray(a_zp).astype(np.float64)
            # per-row zero point of A: shape (M,) or (..., M, 1)
            af -= z.reshape(()) if z.size == 1 else (z.reshape(-1, 1) if z.ndim == 1 else z)
        bf = B.astype(np.float64)
        if b_zp is not None:
            z = xp.asarray(b_zp).astype(np.float64)
            bf -= z.reshape(()) if z.size == 1 else z        # per-column: shape (N,) broadcasts on the last axis
        return (xp.matmul(af, bf).astype(np.int32),)

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


@kernel("QLinearMatMul", since=10)
def qlinear_matmul(info):
    xp = info.xp

    def run(a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp):
        af = a.astype(np.float64)
        if a_zp is not None:
            z = xp.asarray(a_zp).astype(np.float64)
            af -= z.reshape(()) if z.size == 1 else z.reshape(-1, 1)
        bf = b.astype(np.float64)
        if b_zp is not None:
            z = xp.asarray(b_zp).astype(np.float64)
            bf -= z.reshape(()) if z.size == 1 else z.reshape(-1)
        acc = xp.matmul(af, bf)
        sa = xp.asarray(a_scale).astype(np.float64)
        sb = xp.asarray(b_scale).astype(np.float64)
        sa = sa.reshape(()) if sa.size == 1 else sa.reshape(-1, 1)
        sb = sb.reshape(()) if sb.size == 1 else sb.reshape(-1)
        sy = xp.asarray(y_scale).astype(np.float64).reshape(())
        y = acc * (sa * sb / sy)
        out_dt = y_zp.dtype if y_zp is not None else a.dtype
        return (_quant_out(xp, y, y_zp, out_dt),)

    return run


# ---------------------------------------------------------------------------------------------
# Einsum / Dropout


@kernel("Einsum", since=12)
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


@kernel("Dropout", since=1)
def dropout_old(info):
    """Dropout before opset 12: ratio is an attribute; in inference (the engine's case) an identity."""
    xp = info.xp

    def run(x):
        return x, xp.ones(x.shape, dtype=bool)

    return run


@kernel("Dropout", since=12, host_inputs=(1, 2))
def dropout(info):
    """Identity unless training_mode is true; then the mask keeps each element with probability 1 - ratio.

    With a ``seed`` attribute the mask is reproducible: every run draws from NumPy's legacy generator
    seeded with it (the same stream ``np.random.seed(seed); np.random.uniform`` gives).
    """
    xp = info.xp
    seed = info.attrs.get("seed")
    rng = np.random.default_rng() if seed is None else None

    def run(x, ratio=None, training_mode=None):
        training = training_mode is not None and bool(np.asarray(training_mode).reshape(-1)[0])
        r = 0.5 if ratio is None else float(np.asarray(ratio).reshape(-1)[0])
        if not training or r == 0.0:
            return x, xp.ones(x.shape, dtype=bool)
        u = np.random.RandomState(int(seed)).uniform(0.0, 1.0, x.shape) if seed is not None else \
            rng.uniform(0.0, 1.0, x.shape)
        mask = xp.asarray(u >= r)
        scale = 1.0 / (1.0 - r)
        cdt = _fdt(x.dtype)
        y = (x.astype(cdt) * mask * np.asarray(scale, cdt)).astype(x.dtype)
        return y, mask

    return run
