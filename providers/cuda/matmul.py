"""MatMul and Gemm through cuBLAS (``cupy.matmul``), with constant weights uploaded, transposed and
scaled once, in the factory."""
from __future__ import annotations

import numpy as np

from engineroom.providers.cuda.registry import kernel

_FLOATS = frozenset(np.dtype(t) for t in (np.float16, np.float32, np.float64))


def _cpu_factory(op: str, opset: int):
    """The CPU provider's kernel factory for ``op`` (run with ``xp = cupy``) for the dtypes cuBLAS
    does not serve."""
    from engineroom.providers.cpu.registry import registry as cpu_registry

    return cpu_registry.lookup("", op, opset).factory


def _dtype(info, i=0):
    dts = info.input_dtypes
    return np.dtype(dts[i]) if len(dts) > i and dts[i] is not None else None


@kernel("MatMul", since=1)
def matmul(info):
    xp = info.xp
    dt = _dtype(info)
    if dt not in _FLOATS:
        return _cpu_factory("MatMul", info.opset)(info)
    consts = tuple(info.const_inputs) + (None, None)
    w = None if consts[1] is None else xp.asarray(np.ascontiguousarray(consts[1]))   # uploaded once
    nd = xp.ndarray

    def run(a, b):
        r = xp.matmul(a, b if w is None else w)
        return (r if r.__class__ is nd else xp.asarray(r),)        # 1-D x 1-D: NumPy gives a scalar

    return run


@kernel("Gemm", since=1)
def gemm(info):
    xp = info.xp
    dt = _dtype(info)
    if dt not in _FLOATS:
        return _cpu_factory("Gemm", info.opset)(info)
    a = info.attrs
    alpha = float(a.get("alpha", 1.0))
    beta = float(a.get("beta", 1.0))
    trans_a = bool(a.get("transA", 0))
    trans_b = bool(a.get("transB", 0))
    consts = tuple(info.const_inputs) + (None, None, None)
    has_c = len(info.input_names) > 2 and info.input_names[2] != ""
    fold_alpha = alpha != 1.0 and dt != np.dtype(np.float16)   # float16 scales after the product
    w = None
    if consts[1] is not None:
        b = np.asarray(consts[1])
        b = b.T if trans_b else b
        if fold_alpha:
            b = b * b.dtype.type(alpha)
        w = xp.asarray(np.ascontiguousarray(b.astype(dt, copy=False)))
    c_pack = None
    if has_c and consts[2] is not None:
        c = np.asarray(consts[2])
        c_pack = xp.asarray((c * c.dtype.type(beta)).astype(c.dtype) if beta != 1.0 else c)
    scale_after = alpha != 1.0 and (w is None or not fold_alpha)

    def run(A, B, C=None):
        y = xp.matmul(A.T if trans_a else A, w if w is not None else (B.T if trans_b else B))
        if scale_after:
            y *= y.dtype.type(alpha)
        if has_c and beta != 0.0:
            if c_pack is not None:
                y += c_pack
            elif beta == 1.0:
                y += C
            else:
                y += C * C.dtype.type(beta)
        return (y,)

    return run
