"""Gather / scatter kernels: Gather, GatherElements, GatherND, Scatter, ScatterElements, ScatterND; and the
index-producing OneHot and NonZero.

Indices may be negative (counted from the end of the axis); NumPy fancy indexing accepts them as they are
and raises IndexError for anything out of range. Scatter kernels copy the data input and update the copy.
"""
from __future__ import annotations

import numpy as np

from engineroom.plugin_sdk.limits import check_tensor_size
from engineroom.providers.cpu.array_module import arrays
from engineroom.providers.cpu.registry import array_kernel
from engineroom.providers.cpu.shape import _host


def _axis(a: int, rank: int) -> int:
    a = int(a)
    if not -rank <= a < max(rank, 1):
        raise ValueError(f"axis {a} is out of range for rank {rank}")
    return a + rank if a < 0 else a


def _check_range(xp, idx, dim, op):
    if not idx.size:
        return
    if idx.size <= 64 and idx.__class__ is np.ndarray:
        # a few indices (a decoder step's row): Python's min/max of a list beat two ufunc reductions
        v = idx.ravel().tolist()
        hi, lo = max(v), min(v)
    else:
        hi, lo = int(idx.max()), int(idx.min())
    if hi >= dim or lo < -dim:
        raise IndexError(f"{op}: index out of range [{-dim}, {dim - 1}]")


# --- Gather

@array_kernel("Gather", since=1)
def gather(info):
    xp = info.xp
    axis = int(info.attrs.get("axis", 0))
    c = info.const_inputs[1] if len(info.const_inputs) > 1 else None
    if c is not None and c.ndim == 0:
        # Scalar constant index (Shape -> Gather, token picking): a plain basic index, no fancy gather.
        k = int(c)

        by_rank_k: dict = {}     # rank -> (axis, the basic index taking k along it)

        def run_scalar(x, _i=None):
            got = by_rank_k.get(x.ndim)
            if got is None:
                a = _axis(axis, x.ndim)
                got = by_rank_k[x.ndim] = (a, (slice(None),) * a + (k, ...))
            d = x.shape[got[0]]
            if not -d <= k < d:
                raise IndexError(f"Gather: index {k} is out of range for dimension {d}")
            return (xp.array(x[got[1]]),)  # a contiguous copy; 0-d stays 0-d (ascontiguousarray makes it 1-d)
        return run_scalar

    by_rank: dict = {}      # rank -> axis
    nd, i64 = xp.ndarray, np.dtype(np.int64)

    def run(x, indices):
        a = by_rank.get(x.ndim)
        if a is None:
            a = by_rank[x.ndim] = _axis(axis, x.ndim)
        if indices.dtype != i64:
            indices = indices.astype(i64)
        r = x.take(indices, axis=a)
        return (r if r.__class__ is nd else xp.asarray(r),)
    return run


# --- GatherElements

def _elements_index(xp, indices, axis):
    """Full fancy index addressing ``data[..., indices, ...]`` element-wise along ``axis``."""
    nd = indices.ndim
    idx = []
    for d in range(nd):
        if d == axis:
            idx.append(indices)
        else:
            shp = [1] * nd
            shp[d] = indices.shape[d]
            idx.append(xp.arange(indices.shape[d]).reshape(shp))
    return tuple(idx)


@array_kernel("GatherElements", since=11)
def gather_elements(info):
    xp = info.xp
    axis = int(info.attrs.get("axis", 0))

    def run(x, indices):
        a = _axis(axis, x.ndim)
        indices = indices.astype(np.int64, copy=False)
        _check_range(xp, indices, x.shape[a], "GatherElements")
        return (x[_elements_index(xp, indices, a)],)
    return run


# --- GatherND

@array_kernel("GatherND", since=11)
def gather_nd(info):
    xp = info.xp
    batch_dims = int(info.attrs.get("batch_dims", 0))

    def run(x, indices):
        b = batch_dims
        k = indices.shape[-1]
        bshape = x.shape[:b]
        nb = int(np.prod(bshape, dtype=np.int64))
        data = x.reshape((nb,) + x.shape[b:])
        ind = indices.astype(np.int64, copy=False).reshape(nb, -1, k)
        fancy = (xp.arange(nb).reshape(nb, 1),) + tuple(ind[..., j] for j in range(k))
        out = data[fancy]  # (nb, m) + data.shape[1 + k:]
        return (out.reshape(indices.shape[:-1] + x.shape[b + k:]),)
    return run


# --- scatter

def _reduce_at(xp, out, idx, updates, reduction):
    if reduction == "none":
        # Duplicates: the last update wins, as with sequential assignment.
        out[idx] = updates
    elif reduction == "add":
        xp.add.at(out, idx, updates)
    elif reduction == "mul":
        xp.multiply.at(out, idx, updates)
    elif reduction == "max":
        xp.maximum.at(out, idx, updates)
    elif reduction == "min":
        xp.minimum.at(out, idx, updates)
    else:
        raise ValueError(f"unknown reduction '{reduction}'")


def _scatter_elements(info, reduction):
    xp = info.xp
    axis = int(info.attrs.get("axis", 0))

    grids: dict = {}    # (indices' shape, axis) -> the full index (its aranges made once; the indices go in)

    def run(x, indices, updates):
        a = _axis(axis, x.ndim)
        indices = indices.astype(np.int64, copy=False)
        _check_range(xp, indices, x.shape[a], info.op_type)
        out = x.copy()
        key = (indices.shape, a)
        grid = grids.get(key)
        if grid is None:
            grid = _elements_index(xp, indices, a)
            if len(grids) < 16:     # a few shapes a session sees; more are built per call
                grids[key] = grid
        idx = grid[:a] + (indices,) + grid[a + 1:]
        _reduce_at(xp, out, idx, updates.astype(x.dtype, copy=False), reduction)
        return (out,)
    return run


@array_kernel("Scatter", since=9)
def scatter(info):
    return _scatter_elements(info, "none")


@array_kernel("ScatterElements", since=11)
def scatter_elements(info):
    return _scatter_elements(info, str(info.attrs.get("reduction", "none")))


@array_kernel("ScatterND", since=11)
def scatter_nd(info):
    xp = info.xp
    reduction = str(info.attrs.get("reduction", "none"))

    def run(x, indices, updates):
        out = x.copy()
        indices = indices.astype(np.int64, copy=False)
        # one index array per leading axis of x: the rows of the transposed [n, k] indices (views)
        idx = tuple(indices.T) if indices.ndim == 2 else \
            tuple(indices[..., j] for j in range(indices.shape[-1]))
        if updates.dtype != x.dtype:
            updates = updates.astype(x.dtype)
        if reduction == "none":     # duplicates: the last update wins, as with sequential assignment
            out[idx] = updates
        else:
            _reduce_at(xp, out, idx, updates, reduction)
        return (out,)
    return run


# --- OneHot / NonZero

@array_kernel("OneHot", since=9, host_inputs=(1,))
def one_hot(info):
    xp = info.xp
    axis = int(info.attrs.get("axis", -1))
    host = arrays(xp).host

    def run(indices, depth, values):
        d = int(_host(depth).reshape(-1)[0])
        rank = indices.ndim + 1
        a = _axis(axis, rank)
        if indices.size == 1 and a == rank - 1 and host and d <= 1 << 20:
            # one index (a decoder step's token in a Loop body): fill the row and set one element, no
            # compare against an arange (~6 -> ~1 us a call)
            off, on = values.reshape(-1)[:2].tolist()
            out = np.full((*indices.shape, d), off, dtype=values.dtype)
            k = int(indices.reshape(-1)[0])
            if -d <= k < d:     # out-of-range: an all-off row, as below
                out.reshape(-1)[k] = on
            return (out,)
        check_tensor_size((*indices.shape[:a], d, *indices.shape[a:]), values.dtype, info.max_tensor_bytes)
        idx = indices.astype(np.int64)
        idx = xp.where(idx < 0, idx + d, idx)
        # Out-of-range indices give an all-off row (they match no position).
        shp = [1] * rank
        shp[a] = d
        hot = xp.expand_dims(idx, a) == xp.arange(d, dtype=np.int64).reshape(shp)
        off, on = values.reshape(-1)[0], values.reshape(-1)[1]
        return (xp.where(hot, on, off).astype(values.dtype, copy=False),)
    return run


@array_kernel("NonZero", since=9)
def non_zero(info):
    xp = info.xp

    def run(x):
        if x.ndim == 0:
            return (xp.zeros((1, 1 if bool(x) else 0), dtype=np.int64),)
        nz = x.nonzero()
        if x.ndim == 1:     # the one index array as a row: a view
            return (nz[0].astype(np.int64, copy=False).reshape(1, -1),)
        return (xp.stack(nz).astype(np.int64, copy=False),)
    return run
