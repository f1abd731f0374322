"""Compiled (numba) row pass of the ai.onnx.ml Normalizer (``ml.py``).

It mostly runs on a few rows (a request's samples) of a few to a few thousand columns, where its NumPy
form costs more in calls than in work: five whole-array calls (~4 us on 5 x 229 floats, ~2 us on
5 x 3), against ~1 us for one compiled pass over the rows. Norms are summed in float64 and each value
divided once (onnxruntime sums in float32: both agree to its rounding). A NaN makes its row NaN, as
there, but for the max norm, which passes over NaNs (onnxruntime's comparisons).
"""
from __future__ import annotations

import math

from numba import njit

AOT = {
    "normalize_rows": ("A2 A2 i", ("f4", "f8")),
}


# reassociated sums (vector lanes: 5 x 229 floats 2.2 -> 1.75 us); no flag that drops NaNs or infinities
@njit(nogil=True, boundscheck=False, fastmath={"reassoc", "contract"})
def normalize_rows(x, out, mode):  # pragma: no cover (compiled)
    """out = each row of x divided by its norm, mode 0 the row's max (signed and passing over NaNs, as
    onnxruntime), 1 the sum of |x|, 2 the square root of the sum of squares; a row whose norm is 0 is
    copied as it is."""
    for i in range(x.shape[0]):
        d = 0.0
        if mode == 0:
            d = -3.4028234663852886e38      # onnxruntime's start, -FLT_MAX: NaNs are passed over
            for j in range(x.shape[1]):
                v = float(x[i, j])
                if v > d:
                    d = v
        elif mode == 1:
            for j in range(x.shape[1]):
                d += abs(float(x[i, j]))
        else:
            for j in range(x.shape[1]):
                v = float(x[i, j])
                d += v * v
            d = math.sqrt(d)
        if d != 0.0:
            for j in range(x.shape[1]):
                out[i, j] = x[i, j] / d
        else:
            for j in range(x.shape[1]):
                out[i, j] = x[i, j]

