"""Compiled (numba) elementwise loops for float32: Tanh with onnxruntime's (MLAS's) rational approximation,
and the range (min, max, any NaN) of DynamicQuantizeLinear.

NumPy's tanh is an exact libm call per element (no SIMD); MLAS computes tanh as a rational polynomial on
the input clamped to +-9, which vectorizes. The polynomial is the one the LSTM loops and FastGelu use
(``_jit_transformer._mlas_tanh1``, one definition), so Tanh and the recurrent gates give onnxruntime's
numbers alike (bit for bit here).
Sigmoid keeps ``_jit_vision.sigmoid`` (exp-based, relatively exact in the tails, where MLAS's logistic
is only absolutely so: 8.9e-8 for 4.1e-8 at x = -17). Each loop takes a contiguous 1-D range: the kernels
split big tensors over the CPU provider's pool (the loops release the GIL).
"""
from __future__ import annotations

from numba import njit

from engineroom.providers.cpu.compiled._jit_transformer import F0, F1, _fmax, _fmin
from engineroom.providers.cpu.compiled._jit_transformer import _mlas_tanh1 as _tanh


@njit(nogil=True, boundscheck=False, error_model="numpy")
def tanh(x, y):  # pragma: no cover (compiled)
    """y = tanh(x) as MLAS computes it (input clamped to +-9, NaN kept); x, y (n,) float32."""
    for i in range(x.shape[0]):
        y[i] = _tanh(x[i])


@njit(nogil=True, boundscheck=False, error_model="numpy")
def min_max(x, out):  # pragma: no cover (compiled)
    """out[0], out[1] = the min and max of x (n >= 1,) float32, NaNs skipped; out[2] = 1 where x holds a
    NaN, else 0. One loop that vectorizes: LLVM's minnum/maxnum, and the NaN test as a maxnum of 0/1
    (an integer or-reduction of the test kept the loop scalar: 10x slower)."""
    lo = x[0]
    hi = x[0]
    nan = F0
    for i in range(x.shape[0]):
        v = x[i]
        lo = _fmin(lo, v)
        hi = _fmax(hi, v)
        nan = _fmax(nan, F1 if v != v else F0)
    out[0] = lo
    out[1] = hi
    out[2] = nan


# the variants compiled ahead of time (see compiled.jit): argument kinds, dtypes
AOT = {
    "tanh": ("A1 A1", ("f4",)),
    "min_max": ("A1 A1", ("f4",)),
}
