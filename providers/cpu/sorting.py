"""Sorting and selection: TopK (a compiled one-pass loop for a small k, else a full stable sort, or partition
then sort of the k kept for a large axis and a small k) and Unique (NumPy-only: ``np.unique`` over the host
array, first-occurrence order on request)."""
from __future__ import annotations

import numpy as np

from engineroom.providers.cpu.array_module import arrays
from engineroom.providers.cpu.registry import array_kernel, kernel
from engineroom.providers.cpu.shape import _axis, _host, _ints

# shorter axes take the partition path too from this many elements in all (its NumPy calls cost ~20 us
# a call, a full stable sort grows with the rows): a CTC decoder's top 8 of 223 classes over 128 steps,
# 771 -> 302 us; 128 x 64 154 -> 103 us; one row of 223 stays sorted (8 us against 26)
_PARTITION_MIN_SIZE = 4096
# k up to this takes the compiled loop (``_jit_sorting``: an insertion into a sorted buffer of k, O(n k) at
# worst, for float32/float64 without NaN): the CTC decoder's top 8 of 223 over 128 steps above, 300-390 us
# in a run (onnxruntime 64) -> about 30
_COMPILED_MAX_K = 32
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _topk_sorted(xp, x, k, a, largest):
    """Top k along axis ``a`` by a full stable sort; ties go to the lower index."""
    n = x.shape[a]
    sl = [slice(None)] * x.ndim
    sl[a] = slice(0, k)
    if largest:
        # Stable sort of the reversed axis, read backwards: descending values, ties by lower index.
        order = xp.flip(xp.argsort(xp.flip(x, axis=a), axis=a, kind="stable"), axis=a)
        return (n - 1) - order[tuple(sl)]
    return xp.argsort(x, axis=a, kind="stable")[tuple(sl)]


def _topk_partition(xp, x2, k, largest):
    """Top k of each row of a 2-D array in O(n): partition for the k-th value, then keep everything
    beyond it plus the lowest-index ties, and sort only those k."""
    m, n = x2.shape
    kth = xp.partition(x2, n - k if largest else k - 1, axis=1)[:, n - k if largest else k - 1][:, None]
    beyond = x2 > kth if largest else x2 < kth
    tie = x2 == kth
    need = k - beyond.sum(axis=1, keepdims=True)
    sel = beyond | (tie & (xp.cumsum(tie, axis=1) <= need))
    cols = xp.nonzero(sel)[1].reshape(m, k)  # row-major: each row's k columns, ascending
    vals = xp.take_along_axis(x2, cols, axis=1)
    return xp.take_along_axis(cols, _topk_sorted(xp, vals, k, 1, largest), axis=1)


def _topk_compiled(jit, x, k, a, largest):
    """(values, indices) from the compiled loop, rows along axis ``a`` (see ``_COMPILED_MAX_K``)."""
    n = x.shape[a]
    xm = np.ascontiguousarray(np.moveaxis(x, a, -1))
    x2 = xm.reshape(-1, n)
    vals = np.empty((x2.shape[0], k), dtype=x.dtype)
    idx = np.empty((x2.shape[0], k), dtype=np.int64)
    jit.topk_rows(x2, k, int(largest), vals, idx)
    shape = xm.shape[:-1] + (k,)
    if a == x.ndim - 1:
        return vals.reshape(shape), idx.reshape(shape)
    return (np.ascontiguousarray(np.moveaxis(vals.reshape(shape), -1, a)),
            np.ascontiguousarray(np.moveaxis(idx.reshape(shape), -1, a)))


def _topk(xp, x, k, axis, largest, jit=None):
    a = _axis(axis, x.ndim)
    n = x.shape[a]
    if k < 0 or k > n:
        raise ValueError(f"TopK: k={k} is out of range for dimension {n}")
    if k == 1 and n > 0 and np.dtype(x.dtype).kind in "fiu" and not xp.isnan(x).any():
        # the best of each row (a CTC decoder's TopK): argmax/argmin, whose ties go to the lower index
        idx = xp.expand_dims(xp.argmax(x, axis=a) if largest else xp.argmin(x, axis=a), a)
    elif jit is not None and 0 < k <= _COMPILED_MAX_K and x.dtype in _FLOATS and not np.isnan(x).any():
        return _topk_compiled(jit, x, k, a, largest)
    elif 0 < k * 8 <= n and (n >= 256 or x.size >= _PARTITION_MIN_SIZE) and np.dtype(x.dtype).kind in "fiu" \
            and not xp.isnan(x).any():
        xm = xp.moveaxis(x, a, -1)
        lead = xm.shape[:-1]
        idx = _topk_partition(xp, xm.reshape(-1, n), k, largest)
        idx = xp.moveaxis(idx.reshape(lead + (k,)), -1, a)
    else:
        idx = _topk_sorted(xp, x, k, a, largest)
    idx = idx.astype(np.int64, copy=False)
    return xp.take_along_axis(x, idx, axis=a), idx


@array_kernel("TopK", since=1)
def topk_v1(info):
    xp = info.xp
    k = int(info.attrs["k"])
    axis = int(info.attrs.get("axis", -1))

    jit = arrays(xp).compiled("sorting")

    def run(x):
        return _topk(xp, x, k, axis, True, jit)
    return run


@array_kernel("TopK", since=10, host_inputs=(1,))
def topk(info):
    xp = info.xp
    axis = int(info.attrs.get("axis", -1))
    largest = int(info.attrs.get("largest", 1))

    jit = arrays(xp).compiled("sorting")

    def run(x, k):
        # sorted=0 leaves the order undefined; a sorted result is a valid answer.
        return _topk(xp, x, _ints(k)[0], axis, largest, jit)
    return run


@kernel("Unique", since=11)
def unique(info):
    xp = info.xp
    axis = info.attrs.get("axis")
    sorted_ = int(info.attrs.get("sorted", 1))

    def run(x):
        xh = _host(x)
        a = None if axis is None else _axis(axis, xh.ndim)
        src = xh.reshape(-1) if a is None else xh
        y, first, inverse, counts = np.unique(src, return_index=True, return_inverse=True, return_counts=True, axis=a)
        inverse = inverse.reshape(-1)
        if not sorted_:
            # Order of first occurrence instead of sorted order.
            order = np.argsort(first, kind="stable")
            y = np.take(y, order, axis=0 if a is None else a)
            first, counts = first[order], counts[order]
            remap = np.empty_like(order)
            remap[order] = np.arange(order.shape[0])
            inverse = remap[inverse]
        i64 = np.int64
        return tuple(xp.asarray(v) for v in (y, first.astype(i64), inverse.astype(i64), counts.astype(i64)))
    return run
