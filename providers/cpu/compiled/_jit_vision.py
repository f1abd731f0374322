"""Compiled (numba) loops for the small kernels of image models, float32 only: Sigmoid, HardSwish and QuickGelu
(x * sigmoid(alpha x), SiLU when alpha = 1), InstanceNormalization and nearest Resize by integer factors.

On the small tensors of a VAE decoder or a detector head NumPy spends most of its time between passes
(a sigmoid is four, an instance norm eight, nearest x2 two gathers); here every element is read once
and written once. exp is ``_jit_transformer``'s vectorizable one, so the loops run at full SIMD width.
Single-threaded on the calling thread, as the other ``_jit_`` modules.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from engineroom.providers.cpu.compiled._jit_transformer import (
    EXP_HI,
    EXP_LO,
    F0,
    F1,
    _exp_core,
    _fmax,
    _fmin,
    _row_sum,
)

SIXTH, HALF_ = np.float32(1.0 / 6.0), np.float32(0.5)


@njit(nogil=True, boundscheck=False, error_model="numpy")
def sigmoid(x, y):  # pragma: no cover (compiled)
    """y = 1 / (1 + e^-x), x and y (n,) C-contiguous float32."""
    for i in range(x.shape[0]):
        v = x[i]
        # e^-v clamped: beyond +-88 the result is 0 or 1 to float32 precision anyway; NaN put back after
        s = F1 / (F1 + _exp_core(_fmax(_fmin(-v, EXP_HI), EXP_LO)))
        # -inf: exactly 0, as the NumPy path and onnxruntime (the clamp would leave 6e-39, and x * it -inf not NaN)
        y[i] = v if v != v else (F0 if v == -np.inf else s)


@njit(nogil=True, boundscheck=False, error_model="numpy")
def quick_gelu(x, alpha, y):  # pragma: no cover (compiled)
    """y = x / (1 + e^(-alpha x)) = x sigmoid(alpha x), x and y (n,) C-contiguous float32."""
    for i in range(x.shape[0]):
        v = x[i]
        t = -alpha * v
        # NaN x gives NaN through the division; the clamp keeps 1 + e finite, and past it the true value
        # is below float32's range: a signed zero, as x * sigmoid(alpha x) in float32
        q = v / (F1 + _exp_core(_fmax(_fmin(t, EXP_HI), EXP_LO)))
        y[i] = v * F0 if t > EXP_HI else q


@njit(nogil=True, boundscheck=False, error_model="numpy")
def hard_swish(x, y):  # pragma: no cover (compiled)
    """y = x * clip(x / 6 + 1/2, 0, 1) (x times float32(1/6), as the NumPy path: bit for bit the same),
    x and y (n,) C-contiguous float32; a NaN x gives NaN (0 or 1 times NaN)."""
    for i in range(x.shape[0]):
        v = x[i]
        y[i] = _fmax(_fmin(v * SIXTH + HALF_, F1), F0) * v


@njit(nogil=True, boundscheck=False, fastmath={"reassoc", "nsz", "contract"})
def _row_dev_sums(a, m):  # pragma: no cover (compiled)
    """sum(a - m) and sum((a - m)^2), one partial sum per SIMD lane (fastmath kept to this function)."""
    s1 = F0
    s2 = F0
    for i in range(a.shape[0]):
        d = a[i] - m
        s1 += d
        s2 += d * d
    return s1, s2


@njit(nogil=True, boundscheck=False, error_model="numpy")
def instance_norm(x, scale, bias, eps, y):  # pragma: no cover (compiled)
    """y[r] = (x[r] - mean) / sqrt(var + eps) * scale[c] + bias[c], c = r mod C, with the corrected
    two-pass variance. x, y (N*C, n) C-contiguous float32, scale and bias (C,), eps float32."""
    R, n = x.shape
    C = scale.shape[0]
    rn = F1 / np.float32(n)
    for r in range(R):
        xr = x[r]
        yr = y[r]
        m0 = _row_sum(xr) * rn
        # corrected two-pass: the float32 first mean m0 is off by up to an ulp of the row's magnitude;
        # the deviations' own mean c puts it right (and c^2 comes out of the variance)
        s1, s2 = _row_dev_sums(xr, m0)
        c = s1 * rn
        v = _fmax(s2 * rn - c * c, F0)
        a = scale[r % C] / np.sqrt(v + eps)
        # (x - m0 - c) a + bias, the correction kept apart from m0: m0 + c rounded to float32 would
        # move every output by up to half an ulp of the mean
        b = bias[r % C] - c * a
        for i in range(n):
            yr[i] = (xr[i] - m0) * a + b


@njit(nogil=True, boundscheck=False)
def resize_nearest(x, sh, sw, y):  # pragma: no cover (compiled)
    """Each input row x[r] (W values) becomes sh output rows of W sw values, output j reading input j // sw:
    nearest Resize of the last two axes by sh, sw. x (R, W), y (R, sh W sw) C-contiguous float32."""
    R, W = x.shape
    Wo = W * sw
    # flat indices: row views of the arrays cost more than the copying itself (measured)
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    if sh == 2 and sw == 2:     # the common x2, all four stores from one load
        W2 = 2 * W              # not Wo: that the rows are 2 W apart is what lets the stores vectorize
        for r in range(R):
            xb = r * W
            yb = r * 2 * W2
            for j in range(W):
                v = xf[xb + j]
                yf[yb + 2 * j] = v
                yf[yb + 2 * j + 1] = v
                yf[yb + W2 + 2 * j] = v
                yf[yb + W2 + 2 * j + 1] = v
        return
    for r in range(R):
        xb = r * W
        yb = r * sh * Wo
        if sw == 2:
            for j in range(W):
                v = xf[xb + j]
                yf[yb + 2 * j] = v
                yf[yb + 2 * j + 1] = v
        else:
            for j in range(W):
                v = xf[xb + j]
                for k in range(sw):
                    yf[yb + j * sw + k] = v
        for t in range(1, sh):
            for j in range(Wo):
                yf[yb + t * Wo + j] = yf[yb + j]


# the variants compiled ahead of time (see compiled.jit): argument kinds, dtypes
AOT = {
    "sigmoid": ("A1 A1", ("f4",)),
    "hard_swish": ("A1 A1", ("f4",)),
    "quick_gelu": ("A1 s A1", ("f4",)),
    "instance_norm": ("A2 A1 A1 s A2", ("f4",)),
    "resize_nearest": ("A2 i i A2", ("f4",)),
}
