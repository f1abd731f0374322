"""MatMul and Gemm through cuBLAS (``cupy.matmul``).

Constant weights are not prepacked here: the plan already uploads each constant once, at session
creation, and a second device copy per kernel would double the weights' GPU memory. A transposed
operand is passed as a transposed view (cuBLAS reads it with its transpose flag); Gemm's alpha
scales the product (one elementwise pass, only when alpha is not 1).
"""
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
    nd = xp.ndarray

    def run(a, b):
        r = xp.matmul(a, b)
        return (r if r.__class__ is nd else xp.asarray(r),)        # 1-D x 1-D: NumPy gives a scalar

    return run


@kernel("Gemm", since=1)
def gemm(info):
    xp = info.xp
    dt = _dtype(info)
    if dt not in _FLOATS:
        return _cpu_factory("Gemm", info.opset)(info)
    a = info.attrs
    alpha, beta, trans_a, trans_b = float(a["alpha"]), float(a["beta"]), bool(a["transA"]), bool(a["transB"])
    has_c = len(info.input_names) > 2 and info.input_names[2] != "" and beta != 0.0
    consts = tuple(info.const_inputs) + (None, None, None)
    c_scaled = None
    if has_c and beta != 1.0 and consts[2] is not None:            # a small bias: scaled once
        c = np.asarray(consts[2])
        c_scaled = xp.asarray((c * c.dtype.type(beta)).astype(c.dtype))

    def run(A, B, C=None):
        y = xp.matmul(A.T if trans_a else A, B.T if trans_b else B)
        if alpha != 1.0:
            y *= y.dtype.type(alpha)
        if has_c:
            if c_scaled is not None:
                y += c_scaled
            elif beta == 1.0:
                y += C
            else:
                y += C * C.dtype.type(beta)
        return (y,)

    return run
