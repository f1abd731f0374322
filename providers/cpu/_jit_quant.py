"""Compiled (numba) loops for dynamic quantization, float32: DynamicQuantizeLinear's quantization to uint8
in one pass (its range from ``_jit_elementwise.min_max``, split over the pool on large tensors), and the
whole op in one call for the smaller ones (``dynamic_quantize_u8``).

NumPy needs five passes over the activation to quantize it (divide, rint, add the zero point, clip,
cast); here it is one. The results are NumPy's bit for bit: a float32 division by the scale, rounding
half to even, the zero point added in float32.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from engineroom.providers.cpu.compiled._jit_elementwise import min_max
from engineroom.providers.cpu.compiled._jit_transformer import F0, F1, ROUND, _fmax, _fmin

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


@njit(nogil=True, boundscheck=False, error_model="numpy")
def dynamic_quantize_u8(x, y, params):  # pragma: no cover (compiled)
    """DynamicQuantizeLinear in one call (a transformer's activations: 32 a run in T5's encoder, where the
    Python around three calls cost as much as the passes): the range of x (n >= 1,) widened to hold 0,
    scale (max - min) / 255 and zero point clip(rint(0 - min / scale), 0, 255) in float32 (onnxruntime's
    arithmetic), then y as :func:`quantize_u8`. params (3,) float32 out: scale, zero point, and 1.0 where
    that was done; 0.0, y unwritten, where x holds a NaN or an infinity or is all zeros (the caller's
    NumPy path handles those as onnxruntime does)."""
    min_max(x, params)
    if params[2] != F0:
        params[2] = F0
        return
    lo = _fmin(params[0], F0)
    hi = _fmax(params[1], F0)
    if not (lo > -np.inf and hi < np.inf):
        return
    scale = (hi - lo) / _U8_MAX
    if not (scale > F0 and scale < np.inf):
        return
    zp = _fmax(_fmin(np.rint(F0 - lo / scale), _U8_MAX), F0)
    quantize_u8(x, y, scale, zp)
    params[0] = scale
    params[1] = zp
    params[2] = F1


# the variants compiled ahead of time (see _jit): argument kinds, dtypes
AOT = {
    "quantize_u8": ("A1 U1 s s", ("f4",)),
    "dynamic_quantize_u8": ("A1 U1 A1", ("f4",)),
}
