"""Reductions: ReduceSum/Mean/Max/Min/Prod/L1/L2/LogSum/LogSumExp/SumSquare, ArgMax/ArgMin, and the running
forms CumSum/CumProd.

Every Reduce* op exists in two forms: ``axes`` as an attribute (old opsets) and ``axes`` as an
optional second input with ``noop_with_empty_axes`` (ReduceSum since 13, the others since 18).
Both forms share one implementation; the factory only decides where the axes come from.

Reducing over a zero-length axis yields the reduction's identity (0 for sums, 1 for products,
-inf / the dtype's minimum for max, ...), as the ONNX spec says. Reducing over no axes at all
(``noop_with_empty_axes``) reduces each element on its own, so ReduceSumSquare still squares.
"""
from __future__ import annotations

import math

import ml_dtypes
import numpy as np

from engineroom.providers.cpu.array_module import arrays
from engineroom.providers.cpu.registry import array_kernel
from engineroom.providers.cpu.shape import _axis, _ints

_LOW_FLOATS = {np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16)}


def _acc_dtype(dtype: np.dtype, needs_float: bool) -> np.dtype:
    """Accumulation dtype: float32 for half types (accuracy), float64 for ints where a float op is
    involved (mean, sqrt, log), else the input's own dtype (NumPy would widen int32 sums to int64)."""
    if dtype in _LOW_FLOATS:
        return np.dtype(np.float32)
    if needs_float and dtype.kind in "iub":
        return np.dtype(np.float64)
    return dtype


def _empty_identity(kind: str, dtype: np.dtype):
    """The value a reduction over an empty set yields."""
    if kind in ("sum", "l1", "l2", "sumsquare"):
        return 0
    if kind == "prod":
        return 1
    if kind == "mean":
        return np.nan if dtype.kind == "f" or dtype in _LOW_FLOATS else 0
    if dtype == np.bool_:
        return kind == "min"
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return info.max if kind == "min" else info.min
    return np.inf if kind == "min" else -np.inf


# rows up to this long are summed as one matrix-vector product with a vector of ones (one BLAS call, no
# per-row set-up: a mean over 1280 rows of 7x7 in a MobileNetV2 run cost 87 us as NumPy's reduction);
# longer rows keep NumPy's pairwise sum, whose rounding error grows with log n (a product's with n)
GEMV_MAX_ROW = 4096
_ONES: dict = {}


def _ones(xp, n, dtype):
    key = (n, dtype, xp)
    v = _ONES.get(key)
    if v is None:
        v = xp.ones(n, dtype=dtype)
        if len(_ONES) < 256:        # a bounded cache: idempotent, so concurrent first uses may both make one
            _ONES[key] = v
    return v


def row_sums(xp, rows):
    """The sums of the rows of a 2-D float32/float64 array, by ``GEMV_MAX_ROW`` (callers check it)."""
    return rows @ _ones(xp, rows.shape[1], rows.dtype)


def _middle_sums(xp, x3):
    """(A, B): the sums over the middle axis of a C-contiguous (A, n, B) float array, as A products of a
    vector of ones with an (n, B) block: NumPy's reduction over a middle axis of (64, 24, 128) took 40 us
    alone (65 in a trueocr_rec run), this 9."""
    return _ones(xp, x3.shape[1], x3.dtype) @ x3


def _normalize_axes(axes, ndim: int) -> tuple[int, ...]:
    return tuple(sorted({int(a) + ndim if int(a) < 0 else int(a) for a in axes}))


def _reduce(kind: str, xp, x, axes: tuple[int, ...] | None, keepdims: bool):
    """Reduce ``x`` over ``axes`` (None: all axes; (): none) and return an array of x's dtype."""
    dtype = x.dtype
    if axes is None:
        axes = tuple(range(x.ndim))
    if x.size == 0 and any(x.shape[a] == 0 for a in axes):
        shape = tuple(1 if i in axes else d for i, d in enumerate(x.shape)) if keepdims else \
            tuple(d for i, d in enumerate(x.shape) if i not in axes)
        return xp.full(shape, _empty_identity(kind, dtype), dtype=dtype)
    if kind in ("sum", "mean", "max", "min") and dtype.kind == "f" and dtype not in _LOW_FLOATS and \
            x.size and axes and axes == tuple(range(x.ndim - len(axes), x.ndim)) and x.flags.c_contiguous:
        # trailing axes of a C-contiguous tensor (global pooling): one contiguous row per output,
        # which NumPy sums pairwise in one inner loop instead of iterating the axes one by one
        lead = x.shape[:x.ndim - len(axes)]
        rows = x.reshape(math.prod(lead), -1)
        if kind in ("sum", "mean") and rows.shape[1] <= GEMV_MAX_ROW:
            r = row_sums(xp, rows)
            if kind == "mean":
                r /= rows.shape[1]
        else:
            r = getattr(rows, kind)(axis=1)
        return r.reshape(lead + (1,) * len(axes) if keepdims else lead)
    if kind in ("sum", "mean") and dtype.kind == "f" and dtype not in _LOW_FLOATS and x.size and axes and \
            axes == tuple(range(axes[0], axes[0] + len(axes))) and x.flags.c_contiguous:
        # a block of consecutive inner axes: an (A, n, B) view summed over its middle axis
        n = math.prod(x.shape[a] for a in axes)
        if n <= GEMV_MAX_ROW:
            r = _middle_sums(xp, x.reshape(math.prod(x.shape[:axes[0]]), n, -1))
            if kind == "mean":
                r /= n
            shape = tuple(1 if i in axes else d for i, d in enumerate(x.shape)) if keepdims else \
                tuple(d for i, d in enumerate(x.shape) if i not in axes)
            return r.reshape(shape)
    if kind in ("max", "min"):
        if arrays(xp).host:
            # the ufunc's reduce, what np.max calls after ~2 us of Python argument handling
            r = (np.maximum if kind == "max" else np.minimum).reduce(x, axis=axes, keepdims=keepdims)
            return r if r.__class__ is np.ndarray else np.asarray(r, dtype=dtype)
        r = (xp.max if kind == "max" else xp.min)(x, axis=axes, keepdims=keepdims)
        return xp.asarray(r, dtype=dtype)
    acc = _acc_dtype(dtype, kind in ("mean", "l2", "logsum", "logsumexp"))
    # Passing dtype= when it is the input's own costs NumPy a slower buffered loop: only when needed.
    dt = None if acc == dtype else acc
    if kind == "sum":
        r = xp.sum(x, axis=axes, keepdims=keepdims, dtype=dt)
    elif kind == "mean":
        r = xp.mean(x, axis=axes, keepdims=keepdims, dtype=dt)
    elif kind == "prod":
        r = xp.prod(x, axis=axes, keepdims=keepdims, dtype=dt)
    elif kind == "l1":
        r = xp.sum(xp.abs(x), axis=axes, keepdims=keepdims, dtype=dt)
    elif kind == "l2":
        xa = x.astype(acc, copy=False)
        r = xp.sqrt(xp.sum(xa * xa, axis=axes, keepdims=keepdims))
    elif kind == "sumsquare":
        xa = x.astype(acc, copy=False)
        r = xp.sum(xa * xa, axis=axes, keepdims=keepdims)
    elif kind == "logsum":
        with np.errstate(divide="ignore", invalid="ignore"):
            r = xp.log(xp.sum(x, axis=axes, keepdims=keepdims, dtype=dt))
    elif kind == "logsumexp":
        xa = x.astype(acc, copy=False)
        m = xp.max(xa, axis=axes, keepdims=True)
        # Shift by the max for stability; an all -inf (or inf) slice keeps a zero shift.
        m = xp.where(xp.isfinite(m), m, 0)
        with np.errstate(divide="ignore", over="ignore"):
            r = xp.log(xp.sum(xp.exp(xa - m), axis=axes, keepdims=True)) + m
        if not keepdims:
            r = xp.squeeze(r, axis=axes)
    else:  # pragma: no cover - the table below lists every kind
        raise ValueError(kind)
    r = xp.asarray(r)
    return r if r.dtype == dtype else r.astype(dtype)


_KINDS = {
    "ReduceSum": "sum", "ReduceMean": "mean", "ReduceMax": "max", "ReduceMin": "min",
    "ReduceProd": "prod", "ReduceL1": "l1", "ReduceL2": "l2", "ReduceLogSum": "logsum",
    "ReduceLogSumExp": "logsumexp", "ReduceSumSquare": "sumsquare",
}


def _reduce_attr_axes(info):
    """Old form: ``axes`` attribute (absent: all axes)."""
    kind = _KINDS[info.op_type]
    xp = info.xp
    keepdims = int(info.attrs.get("keepdims", 1)) == 1   # as onnxruntime: any other value is false
    axes_attr = info.attrs.get("axes")

    by_rank: dict = {}      # rank -> the attribute's axes normalized

    def run(x):
        if axes_attr is None:
            return (_reduce(kind, xp, x, None, keepdims),)
        axes = by_rank.get(x.ndim)
        if axes is None:
            axes = by_rank[x.ndim] = _normalize_axes(axes_attr, x.ndim)
        return (_reduce(kind, xp, x, axes, keepdims),)

    return run


def _reduce_input_axes(info):
    """New form: optional ``axes`` input; empty/absent axes reduce all, or nothing with noop_with_empty_axes."""
    kind = _KINDS[info.op_type]
    xp = info.xp
    keepdims = int(info.attrs.get("keepdims", 1)) == 1   # as onnxruntime: any other value is false
    noop = bool(info.attrs.get("noop_with_empty_axes", 0))
    const = info.const_inputs[1] if len(info.const_inputs) > 1 else None
    fixed = None if const is None else [int(a) for a in np.asarray(const).ravel()]

    def run(x, axes=None):
        raw = fixed if fixed is not None else (None if axes is None else [int(a) for a in np.asarray(axes).ravel()])
        if not raw:
            ax = () if noop else None
        else:
            ax = _normalize_axes(raw, x.ndim)
        return (_reduce(kind, xp, x, ax, keepdims),)

    return run


for _op in _KINDS:
    array_kernel(_op, since=1)(_reduce_attr_axes)
    array_kernel(_op, since=13 if _op == "ReduceSum" else 18, host_inputs=(1,))(_reduce_input_axes)


def _arg_factory(info):
    """ArgMax/ArgMin: int64 indices along ``axis``; ``select_last_index`` picks the last of ties."""
    xp = info.xp
    is_max = info.op_type == "ArgMax"
    axis = int(info.attrs.get("axis", 0))
    keepdims = int(info.attrs.get("keepdims", 1)) == 1   # as onnxruntime: any other value is false
    last = bool(info.attrs.get("select_last_index", 0))
    fn = xp.argmax if is_max else xp.argmin

    def run(x):
        ax = axis + x.ndim if axis < 0 else axis
        if last:
            # Search the reversed axis for the first hit; map back to the original index.
            n = x.shape[ax]
            r = (n - 1) - fn(xp.flip(x, axis=ax), axis=ax, keepdims=keepdims)
        else:
            r = fn(x, axis=ax, keepdims=keepdims)
        return (xp.asarray(r).astype(np.int64, copy=False),)

    return run


array_kernel(["ArgMax", "ArgMin"], since=1)(_arg_factory)


# --- CumSum / CumProd

def _cumulative(info, op: str, identity: int):
    xp = info.xp
    exclusive = int(info.attrs.get("exclusive", 0))
    reverse = int(info.attrs.get("reverse", 0))
    scan = getattr(xp, op)
    if arrays(xp).host:
        # the ufunc's accumulate, what np.cumsum / np.cumprod call after ~2 us of Python argument handling
        accumulate = (np.add if op == "cumsum" else np.multiply).accumulate

        def scan(src, axis, dtype):
            return accumulate(src, axis=axis, dtype=dtype) if src.ndim else getattr(np, op)(src, axis, dtype)
    const = info.const_inputs[1] if len(info.const_inputs) > 1 else None
    fixed = None if const is None else _ints(const)[0]
    by_rank: dict = {}      # rank -> the constant axis normalized

    def run(x, axis):
        if fixed is None:
            a = _axis(_ints(axis)[0], x.ndim)
        else:
            a = by_rank.get(x.ndim)
            if a is None:
                a = by_rank[x.ndim] = _axis(fixed, x.ndim)
        src = xp.flip(x, axis=a) if reverse else x
        cs = scan(src, axis=a, dtype=x.dtype)
        if exclusive:  # shift by one along the axis, the op's identity coming in first
            out = xp.full_like(cs, identity)
            dst = [slice(None)] * x.ndim
            srcs = [slice(None)] * x.ndim
            dst[a] = slice(1, None)
            srcs[a] = slice(None, -1)
            out[tuple(dst)] = cs[tuple(srcs)]
            cs = out
        if reverse:
            cs = xp.ascontiguousarray(xp.flip(cs, axis=a))
        return (cs,)
    return run


@array_kernel("CumSum", since=11, host_inputs=(1,))
def cumsum(info):
    return _cumulative(info, "cumsum", 0)


@array_kernel("CumProd", since=26, host_inputs=(1,))
def cumprod(info):
    return _cumulative(info, "cumprod", 1)
