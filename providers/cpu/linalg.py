"""Linear algebra beyond products: Det (through the array module's ``linalg``). MatMul, Gemm and Einsum
are in ``matmul``."""
from __future__ import annotations

import numpy as np

from engineroom.providers.cpu.registry import array_kernel


@array_kernel("Det", since=11)
def det(x, *, xp):
    calc = np.float32 if x.dtype.itemsize < 4 else x.dtype
    return xp.asarray(xp.linalg.det(x.astype(calc, copy=False))).astype(x.dtype, copy=False)
