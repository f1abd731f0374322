"""Softmax family and the losses built on it: Softmax, LogSoftmax, Hardmax, NegativeLogLikelihoodLoss,
SoftmaxCrossEntropyLoss.

Before opset 13 the softmax ops coerce the input to 2-D at ``axis`` (default 1) and normalize over
the whole trailing block; from 13 on they normalize along the single ``axis`` (default -1).
Arithmetic stays in float32 for float32 input (float16/bfloat16 widen to float32 and come back).
"""
from __future__ import annotations

import numpy as np
from engineroom.providers.cpu.registry import kernel


def _cdt(dt) -> np.dtype:
    dt = np.dtype(dt)
    return dt if dt in (np.dtype(np.float32), np.dtype(np.float64)) else np.dtype(np.float32)


def softmax_array(xp, x, axis):
    """exp(x - max) / sum along ``axis`` (one allocation: the result is computed in place)."""
    e = x - xp.max(x, axis=axis, keepdims=True)
    xp.exp(e, out=e)
    e /= xp.sum(e, axis=axis, keepdims=True)
    return e


def log_softmax_array(xp, x, axis):
    y = x - xp.max(x, axis=axis, keepdims=True)
    y -= xp.log(xp.sum(xp.exp(y), axis=axis, keepdims=True))
    return y


def _along(fn, old):
    """Wrap fn(xp, x, axis) with the old (2-D coerced) or new (single axis) semantics."""

    def run(x, *, xp, axis=None):
        dt = x.dtype
        xc = x.astype(_cdt(dt), copy=False)
        if old:
            ax = 1 if axis is None else int(axis)
            ax = ax + x.ndim if ax < 0 else ax
            lead = int(np.prod(x.shape[:ax]))
            y = fn(xp, xc.reshape(lead, -1), 1).reshape(x.shape)
        else:
            y = fn(xp, xc, -1 if axis is None else int(axis))
        return y.astype(dt, copy=False)

    return run


def _hardmax_array(xp, x, axis):
    idx = xp.argmax(x, axis=axis)
    y = xp.zeros(x.shape, dtype=x.dtype)
    xp.put_along_axis(y, xp.expand_dims(idx, axis), 1, axis=axis)
    return y


_softmax_old = _along(softmax_array, True)
_softmax_new = _along(softmax_array, False)
_logsoftmax_old = _along(log_softmax_array, True)
_logsoftmax_new = _along(log_softmax_array, False)
_hardmax_old = _along(_hardmax_array, True)
_hardmax_new = _along(_hardmax_array, False)


@kernel("Softmax", since=1)
def softmax_1(x, *, xp, axis=1):
    return _softmax_old(x, xp=xp, axis=axis)


@kernel("Softmax", since=13)
def softmax_13(x, *, xp, axis=-1):
    return _softmax_new(x, xp=xp, axis=axis)


@kernel("LogSoftmax", since=1)
def log_softmax_1(x, *, xp, axis=1):
    return _logsoftmax_old(x, xp=xp, axis=axis)


@kernel("LogSoftmax", since=13)
def log_softmax_13(x, *, xp, axis=-1):
    return _logsoftmax_new(x, xp=xp, axis=axis)


@kernel("Hardmax", since=1)
def hardmax_1(x, *, xp, axis=1):
    return _hardmax_old(x, xp=xp, axis=axis)


@kernel("Hardmax", since=13)
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
    if reduction == "none":
        return loss
    if reduction == "sum":
        return xp.asarray(loss.sum(dtype=logp.dtype))
    den = w.sum(dtype=logp.dtype)
    return xp.asarray(loss.sum(dtype=logp.dtype) / den)


@kernel("NegativeLogLikelihoodLoss", since=12)
def negative_log_likelihood_loss(info):
    xp = info.xp
    reduction = info.attrs.get("reduction", "mean")
    ignore_index = info.attrs.get("ignore_index")

    def run(x, target, weight=None):
        dt = x.dtype
        y = nll_loss(xp, x.astype(_cdt(dt), copy=False), target, weight, reduction, ignore_index)
        return (xp.asarray(y).astype(dt, copy=False),)

    return run


@kernel("SoftmaxCrossEntropyLoss", since=12)
def softmax_cross_entropy_loss(info):
    xp = info.xp
    reduction = info.attrs.get("reduction", "mean")
    ignore_index = info.attrs.get("ignore_index")

    def run(scores, labels, weights=None):
        dt = scores.dtype
        logp = log_softmax_array(xp, scores.astype(_cdt(dt), copy=False), 1)
        loss = nll_loss(xp, logp, labels, weights, reduction, ignore_index)
        return xp.asarray(loss).astype(dt, copy=False), logp.astype(dt, copy=False)

    return run
