"""Shape and data-movement kernels: Reshape/Flatten/Squeeze/Unsqueeze as views of the same device
buffer (their shape/axes inputs are read on the host), Transpose/Slice/Expand/Concat/Split as one
strided copy each, Gather with a small index kernel, Shape/Size read from the array's metadata."""
from __future__ import annotations

import numpy as np

from engineroom.plugin_sdk.host_values import host_ints
from engineroom.providers.opencl.common import I32, I64, STORABLE, inputs_in, norm_axis, rt_of
from engineroom.providers.opencl.registry import kernel
from engineroom.providers.opencl.strided import Strided, broadcast_strides, contiguous_strides


def _view(rt, x, shape):
    shape = tuple(int(s) for s in shape)
    if int(np.prod(shape)) != x.size:
        raise ValueError(f"cannot reshape a tensor of shape {tuple(x.shape)} to {shape}")
    if x.size == 0:
        return rt.empty(shape, x.dtype)
    return x.reshape(shape)


def reshape_target(in_shape, shape, allowzero: bool) -> tuple[int, ...]:
    out = list(shape)
    if not allowzero:
        for i, s in enumerate(out):
            if s == 0:
                out[i] = in_shape[i]
    if -1 in out:
        known = int(np.prod([s for s in out if s != -1]))
        total = int(np.prod(in_shape))
        out[out.index(-1)] = total // known if known else 0
    return tuple(out)


@kernel("Reshape", since=5, types=STORABLE, host_inputs=(1,))
def reshape(info):
    rt = rt_of(info)
    allowzero = bool(info.attrs.get("allowzero", 0))

    def run(x, shape):
        return (_view(rt, x, reshape_target(x.shape, host_ints(shape), allowzero)),)

    return run


@kernel("Flatten", since=1, types=STORABLE)
def flatten(info):
    rt = rt_of(info)
    axis = int(info.attrs["axis"])

    def run(x):
        a = axis + x.ndim if axis < 0 else axis
        return (_view(rt, x, (int(np.prod(x.shape[:a])), int(np.prod(x.shape[a:])))),)

    return run


def _squeezed(shape, axes):
    if axes is None:
        return tuple(s for s in shape if s != 1)
    ax = {norm_axis(a, len(shape)) for a in axes}
    return tuple(s for i, s in enumerate(shape) if i not in ax)


def _unsqueezed(shape, axes):
    rank = len(shape) + len(axes)
    ax = sorted(norm_axis(a, rank) for a in axes)
    out = list(shape)
    for a in ax:
        out.insert(a, 1)
    return tuple(out)


@kernel("Squeeze", since=1, types=STORABLE)
def squeeze_attr(info):
    rt = rt_of(info)
    axes = info.attrs.get("axes")
    return lambda x: (_view(rt, x, _squeezed(x.shape, axes)),)


@kernel("Squeeze", since=13, types=STORABLE, host_inputs=(1,))
def squeeze(info):
    rt = rt_of(info)
    return lambda x, axes=None: (_view(rt, x, _squeezed(x.shape, None if axes is None else host_ints(axes))),)


@kernel("Unsqueeze", since=1, types=STORABLE)
def unsqueeze_attr(info):
    rt = rt_of(info)
    axes = [int(a) for a in info.attrs.get("axes", [])]
    return lambda x: (_view(rt, x, _unsqueezed(x.shape, axes)),)


@kernel("Unsqueeze", since=13, types=STORABLE, host_inputs=(1,))
def unsqueeze(info):
    rt = rt_of(info)
    return lambda x, axes: (_view(rt, x, _unsqueezed(x.shape, host_ints(axes))),)


# -- strided copies ----------------------------------------------------------------------------------
def _copier(info, dt=None):


    dt = np.dtype(dt if dt is not None else info.input_dtypes[0])
    return Strided(rt_of(info), "x0", [dt], dt)


@kernel("Transpose", since=1, types=STORABLE)
def transpose(info):
    rt = rt_of(info)
    perm_attr = info.attrs.get("perm")
    copy = _copier(info)

    def run(x):
        perm = [int(p) for p in perm_attr] if perm_attr else list(range(x.ndim))[::-1]
        shape = tuple(x.shape[p] for p in perm)
        cs = contiguous_strides(x.shape)
        y = rt.empty(shape, x.dtype)
        copy(shape, [(x.base_data, 0, tuple(cs[p] for p in perm))], (y.base_data, 0, contiguous_strides(shape)))
        return (y,)

    return run


@kernel("Concat", since=4, types=STORABLE, supports=inputs_in(STORABLE))
def concat(info):
    rt = rt_of(info)
    axis_attr = int(info.attrs["axis"])
    copy = _copier(info)

    def run(*xs):
        ref = xs[0]
        axis = norm_axis(axis_attr, ref.ndim)
        shape = list(ref.shape)
        shape[axis] = sum(x.shape[axis] for x in xs)
        y = rt.empty(shape, ref.dtype)
        ost = contiguous_strides(shape)
        off = 0
        for x in xs:
            if x.size:
                copy(x.shape, [(x.base_data, 0, contiguous_strides(x.shape))], (y.base_data, off * ost[axis], ost))
            off += x.shape[axis]
        return (y,)

    return run


def _split_sizes(dim, n, split, num_outputs=None):
    if split is not None and len(split):
        return [int(s) for s in split]
    if num_outputs is not None:
        per = -(-dim // num_outputs)
        return [min(per, dim - per * i) for i in range(num_outputs)]
    return [dim // n] * n


def _split_factory(info, get_split):
    rt = rt_of(info)
    axis_attr = int(info.attrs.get("axis", 0))
    n = len(info.output_names)
    copy = _copier(info)

    def run(x, *rest):
        axis = norm_axis(axis_attr, x.ndim)
        sizes = get_split(x.shape[axis], n, rest)
        ist = contiguous_strides(x.shape)
        outs = []
        off = 0
        for s in sizes:
            shape = list(x.shape)
            shape[axis] = s
            y = rt.empty(shape, x.dtype)
            copy(shape, [(x.base_data, off * ist[axis], ist)], (y.base_data, 0, contiguous_strides(shape)))
            outs.append(y)
            off += s
        return tuple(outs)

    return run


@kernel("Split", since=2, types=STORABLE)
def split_attr(info):
    split = info.attrs.get("split")
    return _split_factory(info, lambda dim, n, rest: _split_sizes(dim, n, split))


@kernel("Split", since=13, types=STORABLE, host_inputs=(1,))
def split(info):
    num = info.attrs.get("num_outputs")

    def sizes(dim, n, rest):
        sp = host_ints(rest[0]) if rest and rest[0] is not None else None
        return _split_sizes(dim, n, sp, int(num) if num is not None and not sp else None)

    return _split_factory(info, sizes)


def _slice_layout(shape, starts, ends, axes, steps):
    """(out shape, element offset, strides) of x[slices] for a contiguous x."""
    cs = list(contiguous_strides(shape))
    out = list(shape)
    off = 0
    st = list(cs)
    axes = list(range(len(starts))) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    for s, e, a, k in zip(starts, ends, axes, steps):
        a = norm_axis(a, len(shape))
        if k == 0:
            raise ValueError("Slice step cannot be 0")
        big = 2 ** 62
        s = max(min(s, big), -big)
        e = max(min(e, big), -big)
        b, _, _ = slice(s, e, k).indices(shape[a])
        n = len(range(*slice(s, e, k).indices(shape[a])))
        out[a] = n
        off += b * cs[a] if n else 0
        st[a] = cs[a] * k
    return tuple(out), off, tuple(st)


def _slice_factory(info, params):
    rt = rt_of(info)
    copy = _copier(info)

    def run(x, *rest):
        shape, off, st = _slice_layout(x.shape, *params(rest))
        y = rt.empty(shape, x.dtype)
        if y.size:
            copy(shape, [(x.base_data, off, st)], (y.base_data, 0, contiguous_strides(shape)))
        return (y,)

    return run


@kernel("Slice", since=1, types=STORABLE)
def slice_attr(info):
    a = info.attrs
    starts = [int(v) for v in a["starts"]]
    ends = [int(v) for v in a["ends"]]
    axes = [int(v) for v in a["axes"]] if a.get("axes") else None
    return _slice_factory(info, lambda rest: (starts, ends, axes, None))


@kernel("Slice", since=10, types=STORABLE, host_inputs=(1, 2, 3, 4))
def slice_(info):
    def params(rest):
        starts, ends = host_ints(rest[0]), host_ints(rest[1])
        axes = host_ints(rest[2]) if len(rest) > 2 and rest[2] is not None else None
        steps = host_ints(rest[3]) if len(rest) > 3 and rest[3] is not None else None
        return starts, ends, axes, steps

    return _slice_factory(info, params)


@kernel("Expand", since=8, types=STORABLE, host_inputs=(1,))
def expand(info):
    rt = rt_of(info)
    copy = _copier(info)

    def run(x, shape):
        out = np.broadcast_shapes(tuple(x.shape), tuple(host_ints(shape)))
        y = rt.empty(out, x.dtype)
        if y.size:
            copy(out, [(x.base_data, 0, broadcast_strides(x.shape, out))], (y.base_data, 0, contiguous_strides(out)))
        return (y,)

    return run


# -- Gather ------------------------------------------------------------------------------------------
_GATHER = """
__kernel void gather(int inner, int nidx, int outer, int dim, __global const {T}* restrict x,
                     __global const {I}* restrict idx, __global {T}* restrict y) {{
  int i = get_global_id(0), j = get_global_id(1), o = get_global_id(2);
  if (i >= inner || j >= nidx || o >= outer) return;
  long k = idx[j];
  if (k < 0) k += dim;
  y[((long)o * nidx + j) * inner + i] = (k >= 0 && k < dim) ? x[((long)o * dim + k) * inner + i] : ({T})0;
}}
"""


@kernel("Gather", since=1, types=STORABLE, supports=inputs_in((I32, I64), which=(1,)))
def gather(info):
    from engineroom.providers.opencl.common import CTYPES
    from engineroom.providers.opencl.runtime import grid

    rt = rt_of(info)
    dt = np.dtype(info.input_dtypes[0])
    src = _GATHER.format(T=CTYPES[dt], I=CTYPES[np.dtype(info.input_dtypes[1])])
    knl = rt.kernel(src, "gather", [np.int32] * 4 + [None] * 3)
    axis_attr = int(info.attrs.get("axis", 0))

    def run(x, idx):
        axis = norm_axis(axis_attr, x.ndim)
        shape = tuple(x.shape[:axis]) + tuple(idx.shape) + tuple(x.shape[axis + 1:])
        y = rt.empty(shape, dt)
        if y.size:
            inner = int(np.prod(x.shape[axis + 1:]))
            outer = int(np.prod(x.shape[:axis]))
            g, l_ = grid((inner, idx.size, outer))
            rt.launch(knl, g, l_, inner, idx.size, outer, x.shape[axis], x.base_data, idx.base_data, y.base_data)
        return (y,)

    return run


# -- Shape / Size (metadata only; the result is a small upload) ------------------------------------
@kernel("Shape", since=1, types=STORABLE)
def shape_(info):
    rt = rt_of(info)
    start = info.attrs.get("start", 0)
    end = info.attrs.get("end")

    def run(x):
        s = np.asarray(x.shape, np.int64)
        n = len(s)
        b = max(0, min(n, start + n if start < 0 else start))
        e = n if end is None else max(0, min(n, end + n if end < 0 else end))
        return (rt.to_device(s[b:e]),)

    return run


@kernel("Size", since=1, types=STORABLE)
def size_(info):
    rt = rt_of(info)
    return lambda x: (rt.to_device(np.asarray(x.size, np.int64)),)

