"""Compiled (numba) loop for dynamic quantization, float32: DynamicQuantizeLinear's quantization to uint8
in one pass (its range comes from NumPy's min and max, which are SIMD reductions already).

NumPy needs five passes over the activation to quantize it (divide, rint, add the zero point, clip,
cast); here it is one. The results are NumPy's bit for bit: a float32 division by the scale, rounding
half to even, the zero point added in float32.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from engineroom.providers.cpu.compiled._jit_transformer import F0, ROUND, _fmax, _fmin

_f = np.float32
# |x / scale| past this quantizes to 0 or 255 whatever the zero point (0..255): clamping there first keeps
# the round-to-integer trick (v + 1.5 * 2^23 - 1.5 * 2^23) exact
_Q_LIM = _f(1024.0)
_U8_MAX = _f(255.0)


@njit(nogil=True, boundscheck=False, error_model="numpy")
def quantize_u8(x, y, scale, zp):  # pragma: no cover (compiled)
    """y = clip(rint(x / scale) + zp, 0, 255) as uint8; x (n,) without NaNs, zp an integer in 0..255."""
    for i in range(x.shape[0]):
        v = _fmax(_fmin(x[i] / scale, _Q_LIM), -_Q_LIM)
        r = (v + ROUND) - ROUND
        y[i] = np.uint8(_fmax(_fmin(r + zp, _U8_MAX), F0))


# the variants compiled ahead of time (see _jit): argument kinds, dtypes
AOT = {
    "quantize_u8": ("A1 U1 s s", ("f4",)),
}
