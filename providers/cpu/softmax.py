"""Softmax family and the losses built on it: Softmax, LogSoftmax, Hardmax, NegativeLogLikelihoodLoss,
SoftmaxCrossEntropyLoss.

Before opset 13 the softmax ops coerce the input to 2-D at ``axis`` (default 1) and normalize over
the whole trailing block; from 13 on they normalize along the single ``axis`` (default -1).
Arithmetic stays in float32 for float32 input; float16/bfloat16 are computed in float32 with each
elementwise step rounded to the storage type, which reproduces computing in that type.
"""
from __future__ import annotations

import math
import warnings

import numpy as np

from engineroom.plugin_sdk.geometry import softmax_blocks
from engineroom.providers.cpu._threadpool import parallel_ranges
from engineroom.providers.cpu.array_module import NUMPY, arrays
from engineroom.providers.cpu.registry import array_kernel

# a row of -inf (or one holding +inf) gives inf - inf = NaN, the answer onnxruntime returns silently;
# NumPy would warn from inside these kernels, so not from here (as in activation.py)
warnings.filterwarnings("ignore", category=RuntimeWarning, module=r"engineroom\.providers\.cpu\.softmax$")

_F32 = np.dtype(np.float32)
# up to this many elements the compiled softmax is one call on the caller's thread (a pool worker's wake-up
# costs more than the loop; and a (1, 4) classifier head paid the split's Python for nothing)
_SOFTMAX_ONE_CALL = 1 << 15


def _cdt(dt) -> np.dtype:
    dt = np.dtype(dt)
    return dt if dt in (np.dtype(np.float32), np.dtype(np.float64)) else np.dtype(np.float32)


def storage_rounder(dt):
    """For a narrow float type: float32 -> dt -> float32, i.e. where ONNX's arithmetic in dt rounds."""
    dt = np.dtype(dt)
    if _cdt(dt) == dt:
        return None

    def rnd(a):
        return a.astype(dt).astype(np.float32)

    rnd.dtype = dt
    return rnd


# Rows up to this long are summed the way the op's definition does in a type that NumPy reduces in
# the type itself (bfloat16 and the other ml_dtypes floats): sequentially, rounding every partial sum.
# Longer rows accumulate in float32 instead: a bfloat16 running sum stops growing at 256 ulps.
_SEQUENTIAL_SUM_MAX = 64


def rounded_sum(xp, e, axis, rnd):
    """Sum of float32 values ``e`` along ``axis`` as computed in rnd's storage type, rounded to it."""
    n = e.shape[axis]
    if rnd.dtype == np.dtype(np.float16) or n > _SEQUENTIAL_SUM_MAX:
        return rnd(xp.sum(e, axis=axis, keepdims=True))   # NumPy sums float16 in float32 (pairwise)
    ax = axis % e.ndim
    acc = None
    for j in range(n):
        t = e[(slice(None),) * ax + (slice(j, j + 1),)]
        acc = t if acc is None else rnd(acc + t)
    return acc


def softmax_array(xp, x, axis, rnd=None, zero_dead_rows=False):
    """exp(x - max) / sum along ``axis`` (computed in place in x's float type).

    ``rnd`` (narrow input types) rounds each step to the storage type, as computing the op in that
    type does. ``zero_dead_rows`` makes a row of all -inf give zeros instead of NaN (Attention).
    """
    if rnd is None and not zero_dead_rows and x.ndim and x.shape[axis] == 1:
        # a softmax over a length-1 axis: exp(x - x) is the result, 1 or NaN where x is inf/NaN as
        # below, without two reductions over rows of one ([1, 256, 1] along its last axis: ~6.8 -> 2.5 us)
        e = xp.subtract(x, x)
        return xp.exp(e, out=e)
    m = x.max(axis=axis, keepdims=True)
    if zero_dead_rows:
        m = xp.where(xp.isneginf(m), xp.zeros((), m.dtype), m)
    e = xp.subtract(x, m)
    if rnd is not None:
        e = rnd(xp.exp(rnd(e)))
        tot = rounded_sum(xp, e, axis, rnd)
    else:
        xp.exp(e, out=e)
        tot = e.sum(axis=axis, keepdims=True)
    if zero_dead_rows:
        tot = xp.where(tot == 0, xp.ones((), tot.dtype), tot)
    e /= tot
    return e if rnd is None else rnd(e)


def log_softmax_array(xp, x, axis, rnd=None):
    y = xp.subtract(x, x.max(axis=axis, keepdims=True))
    if rnd is not None:
        y = rnd(y)
        s = rounded_sum(xp, rnd(xp.exp(y)), axis, rnd)
        y -= rnd(xp.log(s))
        return rnd(y)
    y -= xp.log(xp.exp(y).sum(axis=axis, keepdims=True))
    return y


def _hardmax_array(xp, x, axis, rnd=None):
    idx = xp.expand_dims(xp.argmax(x, axis=axis), axis)      # first maximum wins ties
    ax = axis % x.ndim
    pos = xp.arange(x.shape[ax]).reshape(tuple(-1 if i == ax else 1 for i in range(x.ndim)))
    return (pos == idx).astype(x.dtype)


def _along(fn, old):
    """Wrap fn(xp, x, axis) with the old (2-D coerced) or new (single axis) semantics."""

    def run(x, *, xp, axis=None):
        dt = x.dtype
        if x.size == 0:
            return x.copy()
        xc = x.astype(_cdt(dt), copy=False)
        rnd = storage_rounder(dt)
        if old:
            y = fn(xp, xc.reshape(softmax_blocks(x.shape, 1 if axis is None else int(axis), 1)[:2]), 1,
                   rnd).reshape(x.shape)
        else:
            y = fn(xp, xc, -1 if axis is None else int(axis), rnd)
        return y.astype(dt, copy=False)

    return run


_softmax_old = _along(softmax_array, True)
_softmax_new = _along(softmax_array, False)
_logsoftmax_old = _along(log_softmax_array, True)
_logsoftmax_new = _along(log_softmax_array, False)
_hardmax_old = _along(_hardmax_array, True)
_hardmax_new = _along(_hardmax_array, False)


def _softmax_compiled(x, axis):
    """Softmax over the trailing block from ``axis`` (for the last axis alone: opset 13's meaning) as
    one compiled pass per row (``_jit_transformer``), for float32 NumPy arrays where numba is installed;
    None where that does not apply."""
    if x.dtype != _F32 or x.__class__ is not np.ndarray or not x.size:
        return None
    jit = NUMPY.compiled("transformer")
    if jit is None:
        return None
    x = np.ascontiguousarray(x)
    rows = (math.prod(x.shape[:axis]), -1)
    y = np.empty(x.shape, _F32)
    x2, y2 = x.reshape(rows), y.reshape(rows)
    if x.size <= _SOFTMAX_ONE_CALL:
        jit.softmax(x2, y2)
    else:       # rows are independent: large inputs split over the provider's pool (the loop releases the GIL)
        parallel_ranges(lambda i, j: jit.softmax(x2[i:j], y2[i:j]), rows[0], x.size)
    return y


@array_kernel("Softmax", since=1)
def softmax_1(x, *, xp, axis=1):
    if arrays(xp).host:
        ax = int(axis) + x.ndim if int(axis) < 0 else int(axis)
        # (rows of one, the trailing block from axis holding one element, take softmax_array's shortcut)
        y = _softmax_compiled(x, ax) if 0 <= ax < x.ndim and x.size != math.prod(x.shape[:ax]) else None
        if y is not None:
            return y
    return _softmax_old(x, xp=xp, axis=axis)


@array_kernel("Softmax", since=13)
def softmax_13(x, *, xp, axis=-1):
    if arrays(xp).host and x.ndim and int(axis) in (-1, x.ndim - 1) and x.shape[-1] != 1:
        # (rows of one take softmax_array's shortcut: cheaper than a compiled call)
        y = _softmax_compiled(x, x.ndim - 1)
        if y is not None:
            return y
    return _softmax_new(x, xp=xp, axis=axis)


@array_kernel("LogSoftmax", since=1)
def log_softmax_1(x, *, xp, axis=1):
    return _logsoftmax_old(x, xp=xp, axis=axis)


@array_kernel("LogSoftmax", since=13)
def log_softmax_13(x, *, xp, axis=-1):
    return _logsoftmax_new(x, xp=xp, axis=axis)


@array_kernel("Hardmax", since=1)
def hardmax_1(x, *, xp, axis=1):
    return _hardmax_old(x, xp=xp, axis=axis)


@array_kernel("Hardmax", since=13)
def hardmax_13(x, *, xp, axis=-1):
    return _hardmax_new(x, xp=xp, axis=axis)


# ---------------------------------------------------------------------------------------------
# losses


def nll_loss(xp, logp, target, weight, reduction, ignore_index):
    """Weighted NLL of log-probabilities ``logp`` (N, C, d...) at ``target`` (N, d...), in logp's dtype."""
    t = target.astype(np.int64)
    ignored = (t == ignore_index) if ignore_index is not None else None
    tc = xp.where(ignored, 0, t) if ignored is not None else t
    picked = xp.take_along_axis(logp, xp.expand_dims(tc, 1), axis=1)[:, 0]
    if weight is not None:
        w = weight.astype(logp.dtype, copy=False)[tc]
    else:
        w = xp.ones(t.shape, dtype=logp.dtype)
    if ignored is not None:
        w = xp.where(ignored, xp.zeros((), logp.dtype), w)
    loss = -picked * w
    if ignored is not None:   # an ignored position adds 0, even where its log-probability is NaN or inf
        loss = xp.where(ignored, xp.zeros((), logp.dtype), loss)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return xp.asarray(loss.sum(dtype=logp.dtype))
    den = w.sum(dtype=logp.dtype)
    return xp.asarray(loss.sum(dtype=logp.dtype) / den)


def _reduction(info) -> str:
    r = info.attrs.get("reduction", "mean")
    r = r.decode() if isinstance(r, bytes) else r
    if r not in ("none", "sum", "mean"):
        raise ValueError(f"{info.op_type}: reduction must be 'none', 'sum' or 'mean', got {r!r}")
    return r


@array_kernel("NegativeLogLikelihoodLoss", since=12)
def negative_log_likelihood_loss(info):
    xp = info.xp
    reduction = _reduction(info)
    ignore_index = info.attrs.get("ignore_index")

    def run(x, target, weight=None):
        dt = x.dtype
        y = nll_loss(xp, x.astype(_cdt(dt), copy=False), target, weight, reduction, ignore_index)
        return (xp.asarray(y).astype(dt, copy=False),)

    return run


@array_kernel("SoftmaxCrossEntropyLoss", since=12)
def softmax_cross_entropy_loss(info):
    xp = info.xp
    reduction = _reduction(info)
    ignore_index = info.attrs.get("ignore_index")

    def run(scores, labels, weights=None):
        dt = scores.dtype
        logp = log_softmax_array(xp, scores.astype(_cdt(dt), copy=False), 1)
        loss = nll_loss(xp, logp, labels, weights, reduction, ignore_index)
        return xp.asarray(loss).astype(dt, copy=False), logp.astype(dt, copy=False)

    return run
