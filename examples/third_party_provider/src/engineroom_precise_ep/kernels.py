"""Kernels of PreciseExecutionProvider: every sum is accumulated in the provider's ``accumulator``
dtype (float64 by default) and rounded once to the output type.

Each kernel is a *factory*: engineroom calls it once per node with a ``KernelInfo`` (attributes with
ONNX defaults applied, constant inputs, the opset, the provider) and runs the function it returns,
``run(*inputs) -> tuple``, on every ``InferenceSession.run``. Work that does not depend on the
inputs (parsing attributes, widening constant weights) happens in the factory, once.
"""
from __future__ import annotations

import ml_dtypes
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from engineroom.plugin_sdk import KernelRegistry

registry = KernelRegistry()
kernel = registry.kernel

# Nodes whose first input has another dtype (integers, strings) are not claimed: the CPU provider
# behind this one takes them.
FLOATS = (np.float16, np.float32, np.float64, ml_dtypes.bfloat16)


def _const(info, i):
    """The value of input ``i`` when it is known at session creation (an initializer), else None."""
    return info.const_inputs[i] if i < len(info.const_inputs) else None


# -- MatMul, Gemm ------------------------------------------------------------------------------------------
@kernel("MatMul", since=1, types=FLOATS)
def matmul(info):
    acc = info.provider.accumulator
    w = _const(info, 1)
    w = None if w is None else np.asarray(w, acc)       # a constant weight is widened once, here

    def run(a, b):
        y = np.matmul(a.astype(acc), w if w is not None else b.astype(acc))
        return (y.astype(a.dtype),)

    return run


@kernel("Gemm", since=7, types=FLOATS)
def gemm(info):
    acc = info.provider.accumulator
    alpha, beta = float(info.attrs["alpha"]), float(info.attrs["beta"])
    trans_a, trans_b = int(info.attrs["transA"]), int(info.attrs["transB"])
    w = _const(info, 1)
    w = None if w is None else np.ascontiguousarray((w.T if trans_b else w).astype(acc))

    def run(a, b, c=None):
        out = a.dtype
        a = a.astype(acc)
        y = np.matmul(a.T if trans_a else a, w if w is not None else (b.T if trans_b else b).astype(acc))
        y *= alpha
        if c is not None:
            y += beta * c.astype(acc)
        return (y.astype(out),)

    return run


# -- Conv (1-D, 2-D, 3-D, ...: groups, strides, dilations, pads, auto_pad) ----------------------------------
def _pads(x_shape, w_shape, strides, dilations, pads, auto_pad):
    nd = len(w_shape) - 2
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for i in range(nd):
            extent = (w_shape[2 + i] - 1) * dilations[i] + 1
            out = -(-x_shape[2 + i] // strides[i])
            total = max(0, (out - 1) * strides[i] + extent - x_shape[2 + i])
            small = total // 2
            begin.append(small if auto_pad == "SAME_UPPER" else total - small)
            end.append(total - begin[-1])
        return begin, end
    if auto_pad == "VALID" or not pads:
        return [0] * nd, [0] * nd
    return list(pads[:nd]), list(pads[nd:])


@kernel("Conv", since=1, types=FLOATS)
def conv(info):
    acc = info.provider.accumulator
    group = int(info.attrs["group"])
    auto_pad = info.attrs["auto_pad"]
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    w_const = _const(info, 1)
    w_const = None if w_const is None else np.asarray(w_const, acc)

    def run(x, w, b=None):
        w = w_const if w_const is not None else w.astype(acc)
        nd = w.ndim - 2
        strides = list(info.attrs.get("strides") or [1] * nd)
        dilations = list(info.attrs.get("dilations") or [1] * nd)
        begin, end = _pads(x.shape, w.shape, strides, dilations, info.attrs.get("pads"), auto_pad)
        xp = np.pad(x.astype(acc), [(0, 0), (0, 0)] + list(zip(begin, end)))
        extent = [(w.shape[2 + i] - 1) * dilations[i] + 1 for i in range(nd)]
        windows = sliding_window_view(xp, extent, axis=tuple(range(2, 2 + nd)))    # N, C, out..., extent...
        windows = windows[(slice(None), slice(None)) + tuple(slice(None, None, s) for s in strides)
                          + tuple(slice(None, None, d) for d in dilations)]        # N, C, out..., kernel...
        c_per, m_per = x.shape[1] // group, w.shape[0] // group
        sum_axes = ([1] + list(range(2 + nd, 2 + 2 * nd)), [1] + list(range(2, 2 + nd)))
        y = np.concatenate([
            np.moveaxis(np.tensordot(windows[:, g * c_per:(g + 1) * c_per], w[g * m_per:(g + 1) * m_per],
                                     axes=sum_axes), -1, 1)
            for g in range(group)], axis=1)
        if b is not None:
            y += b.astype(acc).reshape((1, -1) + (1,) * nd)
        return (y.astype(x.dtype),)

    return run


# -- ReduceSum, ReduceMean ---------------------------------------------------------------------------------
def _reduce(x, axes, keepdims, fn, acc):
    axes = None if axes is None else tuple(int(a) % max(x.ndim, 1) for a in axes)
    return np.asarray(fn(x.astype(acc), axis=axes, keepdims=keepdims)).astype(x.dtype)


def _reduce_axes_attribute(fn):
    """Opsets where ``axes`` is an attribute (absent: reduce every axis)."""
    def factory(info):
        acc, keepdims, axes = info.provider.accumulator, bool(info.attrs["keepdims"]), info.attrs.get("axes")

        def run(x):
            return (_reduce(x, axes, keepdims, fn, acc),)
        return run
    return factory


def _reduce_axes_input(fn):
    """Opsets where ``axes`` is an optional input, read on the host (``host_inputs=(1,)``)."""
    def factory(info):
        acc, keepdims = info.provider.accumulator, bool(info.attrs["keepdims"])
        noop = bool(info.attrs.get("noop_with_empty_axes", 0))

        def run(x, axes=None):
            if axes is None or np.size(axes) == 0:
                return (x,) if noop else (_reduce(x, None, keepdims, fn, acc),)
            return (_reduce(x, np.asarray(axes).ravel(), keepdims, fn, acc),)
        return run
    return factory


kernel("ReduceSum", since=1, types=FLOATS)(_reduce_axes_attribute(np.sum))
kernel("ReduceSum", since=13, types=FLOATS, host_inputs=(1,))(_reduce_axes_input(np.sum))
kernel("ReduceMean", since=1, types=FLOATS)(_reduce_axes_attribute(np.mean))
kernel("ReduceMean", since=18, types=FLOATS, host_inputs=(1,))(_reduce_axes_input(np.mean))


# -- Softmax, LogSoftmax -----------------------------------------------------------------------------------
def _softmax(x, axis, log):
    shifted = x - x.max(axis=axis, keepdims=True)
    if log:
        return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))
    e = np.exp(shifted)
    return e / e.sum(axis=axis, keepdims=True)


def _softmax_factory(log):
    def factory(info):
        acc, axis = info.provider.accumulator, int(info.attrs["axis"])
        flatten = info.opset < 13          # before opset 13: over the 2-D view [prod(:axis), prod(axis:)]

        def run(x):
            if x.size == 0:
                return (x,)
            a = axis % x.ndim
            if flatten:
                y = _softmax(x.astype(acc).reshape(int(np.prod(x.shape[:a])), -1), 1, log).reshape(x.shape)
            else:
                y = _softmax(x.astype(acc), a, log)
            return (y.astype(x.dtype),)
        return run
    return factory


kernel("Softmax", since=1, types=FLOATS)(_softmax_factory(log=False))
kernel("LogSoftmax", since=1, types=FLOATS)(_softmax_factory(log=True))
