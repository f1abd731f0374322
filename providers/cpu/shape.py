"""Shape and layout kernels: Reshape, Transpose, Concat, Split, Slice, Expand, Squeeze/Unsqueeze, Flatten,
Shape, Size, Constant, ConstantOfShape, Range, Tile, Identity, EyeLike, Trilu, DepthToSpace/SpaceToDepth,
CenterCropPad, Pad, Compress, ReverseSequence (CumSum/CumProd are in ``reduce``, OneHot/NonZero in ``indexing``,
TopK/Unique in ``sorting``).

Shape-like inputs (shape, axes, pads, starts, repeats, k, ...) are declared host inputs: they are read as
Python ints here, and a GPU provider reusing these kernels must not copy them to the device.
Reshape, Squeeze, Unsqueeze and Flatten return views of their input (no copy); so do Slice and Split.
"""
from __future__ import annotations

import math

import numpy as np

from engineroom.plugin_sdk import np_dtype
from engineroom.plugin_sdk.host_values import host_array as _host
from engineroom.plugin_sdk.host_values import host_ints as _ints
from engineroom.plugin_sdk.limits import check_tensor_size
from engineroom.providers.cpu.array_module import arrays
from engineroom.providers.cpu.registry import array_kernel

# --- helpers

def _axis(a: int, rank: int) -> int:
    a = int(a)
    if not -rank <= a < max(rank, 1):
        raise ValueError(f"axis {a} is out of range for rank {rank}")
    return a + rank if a < 0 else a


def _const(info, i):
    """The constant value of input ``i`` when known at session creation, else None."""
    c = info.const_inputs
    return c[i] if i < len(c) else None


def _has(info, i) -> bool:
    return i < len(info.input_names) and info.input_names[i] != ""


def _int_list(a) -> list[int]:
    """``host_ints(a)``; a 1-D integer array (the usual shape input) through ``tolist`` alone."""
    a = _host(a)
    return a.tolist() if a.ndim == 1 and a.dtype.kind in "iu" else _ints(a)


def _check_size(shape, dtype, limit) -> None:
    """``check_tensor_size``, skipped where even 64 bytes an element (more than any dtype counts) stay
    within the limit: the common small tensor pays one product."""
    if limit and math.prod(shape) * 64 > limit:
        check_tensor_size(shape, dtype, limit)


# --- Reshape

def _reshape_target(in_shape, shape, allowzero):
    if allowzero:
        out = list(shape)
    else:
        out = []
        for i, s in enumerate(shape):
            if s == 0:
                if i >= len(in_shape):
                    raise ValueError(f"Reshape: 0 at position {i}, but the input has rank {len(in_shape)}")
                s = in_shape[i]
            out.append(s)
    if -1 in out:
        # Infer -1 here: NumPy refuses it for empty tensors, where ONNX makes it 0 (or what the size allows).
        known = math.prod(d for d in out if d != -1)
        total = math.prod(in_shape)
        out[out.index(-1)] = total // known if known else 0
    return tuple(out)


@array_kernel("Reshape", since=1)
def reshape_v1(info):
    shape = list(info.attrs.get("shape", []))

    def run(x):
        return (x.reshape(_reshape_target(x.shape, shape, False)),)
    return run


@array_kernel("Reshape", since=5, host_inputs=(1,))
def reshape(info):
    allowzero = int(info.attrs.get("allowzero", 0))
    c = _const(info, 1)
    if c is not None:
        shape = _ints(c)
        if allowzero or 0 not in shape:
            fixed = tuple(shape)
            if -1 not in shape:
                def run_fixed(x, _s=None):
                    return (x.reshape(fixed),)
                return run_fixed

            def run_infer(x, _s=None):
                # NumPy infers the -1 itself, except for an empty tensor (ONNX makes it 0 there)
                return (x.reshape(fixed if x.size else _reshape_target(x.shape, shape, allowzero)),)
            return run_infer

        targets: dict = {}   # input shape -> output shape (a 0 copies an input dimension)

        def run_const(x, _s=None):
            t = targets.get(x.shape)
            if t is None:
                if len(targets) > 64:  # dynamic shapes: keep the cache bounded
                    targets.clear()
                t = targets[x.shape] = _reshape_target(x.shape, shape, allowzero)
            return (x.reshape(t),)
        return run_const

    def run(x, s):
        s = _host(s)
        sh = s.tolist()
        if s.ndim != 1 or (0 in sh and not allowzero) or (-1 in sh and not x.size):
            sh = _reshape_target(x.shape, _ints(s), allowzero)
        return (x.reshape(sh),)
    return run


# --- Transpose

@array_kernel("Transpose", since=1)
def transpose(info):
    xp = info.xp
    perm = info.attrs.get("perm")
    perm = None if perm is None else tuple(int(p) for p in perm)

    def run(x):
        p = perm if perm is not None else tuple(range(x.ndim - 1, -1, -1))
        # A contiguous result, as onnxruntime produces: consumers (MatMul, Conv, elementwise) run faster on it.
        return (x.transpose(p).copy(),)  # copy(): C order, and keeps 0-d arrays 0-d
    return run


# --- Concat

@array_kernel("Concat", since=1)
def concat(info):
    xp = info.xp
    axis = int(info.attrs.get("axis", 1))  # opset 1 defaults to 1; opset 4+ requires it
    axes: dict = {}         # rank -> axis

    def run(*xs):
        xs = [x for x in xs if x is not None]
        if len(xs) == 1:
            return (xs[0].copy(),)
        a = axes.get(xs[0].ndim)
        if a is None:
            a = axes[xs[0].ndim] = _axis(axis, xs[0].ndim)
        return (xp.concatenate(xs, axis=a),)

    if not arrays(xp).host or len(info.input_names) != 2:
        return run
    # two host arrays: a KV cache fed back run after run grows in place (llm.GrowingConcat), or is
    # written straight into the buffer IOBinding bound to the output
    from engineroom.plugin_sdk.binding import bound_output
    from engineroom.providers.cpu.llm import GrowingConcat

    grow: dict = {}         # rank -> GrowingConcat
    out_name = info.output_names[0]

    def run_growing(past, new):
        if past is None or new is None or past.ndim < 2 or past.__class__ is not np.ndarray \
                or new.__class__ is not np.ndarray:
            return run(past, new)
        dst = bound_output(out_name)
        if dst is not None and dst.__class__ is np.ndarray and dst.dtype == past.dtype == new.dtype \
                and dst.ndim == past.ndim == new.ndim and not np.may_share_memory(dst, past) \
                and not np.may_share_memory(dst, new):
            a = _axis(axis, past.ndim)
            if dst.shape == past.shape[:a] + (past.shape[a] + new.shape[a],) + past.shape[a + 1:]:
                np.concatenate((past, new), axis=a, out=dst)
                return (dst,)
        if past.ndim < 3:
            # a cache fed back has batch, sequence and feature axes at least; tracking an output costs ~1 us
            # a call (a weak reference), which the many small rank-2 Concats of shape arithmetic never repay
            return run(past, new)
        g = grow.get(past.ndim)
        if g is None:
            g = grow.setdefault(past.ndim, GrowingConcat(_axis(axis, past.ndim)))
        return (g(past, new),)

    shape0 = info.input_shapes[0] if info.input_shapes else None
    if shape0 is None or not -len(shape0) <= axis < len(shape0) or not isinstance(shape0[axis], int):
        return run_growing
    # the first input's length along the axis is static: it never comes back longer, nothing grows
    concatenate = np.concatenate

    def run_two(a, b):
        if a is None or b is None or bound_output(out_name) is not None:
            return run_growing(a, b)
        ax = axes.get(a.ndim)
        if ax is None:
            ax = axes[a.ndim] = _axis(axis, a.ndim)
        return (concatenate((a, b), axis=ax),)
    return run_two


# --- Split

def _split_sizes(dim, n, split, num_outputs):
    if split is not None:
        if sum(split) != dim:
            raise ValueError(f"Split: sizes {split} do not add up to the dimension {dim}")
        return split
    if num_outputs is not None:
        n = num_outputs
    # Equal parts; with num_outputs the last chunk may be smaller (ceil-sized chunks).
    chunk = -(-dim // n) if n else 0
    sizes = [min(chunk, max(dim - i * chunk, 0)) for i in range(n)]
    return sizes


def _make_split(info, split_const, axis, num_outputs=None, split_input=None):
    n = len(info.output_names)

    def run(x, s=None):
        a = _axis(axis, x.ndim)
        split = split_const
        if split is None and s is not None and s.size:
            split = _ints(s)
        sizes = _split_sizes(x.shape[a], n, split, num_outputs)
        outs = []
        start = 0
        idx = [slice(None)] * x.ndim
        for sz in sizes:
            idx[a] = slice(start, start + sz)
            outs.append(x[tuple(idx)])
            start += sz
        return tuple(outs)
    return run


@array_kernel("Split", since=1, host_inputs=(1,))
def split_v1(info):
    split = info.attrs.get("split")
    c = _const(info, 1)
    if split is None and c is not None and c.size:
        split = _ints(c)
    return _make_split(info, None if split is None else list(split), int(info.attrs.get("axis", 0)))


@array_kernel("Split", since=2)
def split_v2(info):
    split = info.attrs.get("split")
    return _make_split(info, None if split is None else list(split), int(info.attrs.get("axis", 0)))


@array_kernel("Split", since=13, host_inputs=(1,))
def split_v13(info):
    c = _const(info, 1)
    split = _ints(c) if c is not None and c.size else None
    num_outputs = info.attrs.get("num_outputs")
    return _make_split(info, split, int(info.attrs.get("axis", 0)),
                       None if num_outputs is None else int(num_outputs))


# --- Slice

def _slice_index(shape, starts, ends, axes, steps):
    rank = len(shape)
    idx = [slice(None)] * rank
    if axes is None:
        axes = list(range(len(starts)))
    if steps is None:
        steps = [1] * len(starts)
    for s, e, a, st in zip(starts, ends, axes, steps):
        a = _axis(a, rank)
        d = shape[a]
        if st == 0:
            raise ValueError("Slice: step cannot be 0")
        if s < 0:
            s += d
        if e < 0:
            e += d
        if st > 0:
            s = min(max(s, 0), d)
            e = min(max(e, 0), d)
            idx[a] = slice(s, e, st)
        else:
            s = min(max(s, 0), d - 1)
            e = min(max(e, -1), d - 1)
            # -1 means "before the first element"; Python spells that None for a negative step.
            idx[a] = slice(s, None if e < 0 else e, st)
    return tuple(idx)


@array_kernel("Slice", since=1)
def slice_v1(info):
    starts = list(info.attrs.get("starts", []))
    ends = list(info.attrs.get("ends", []))
    axes = info.attrs.get("axes")
    cache: dict = {}

    def run(x):
        key = x.shape
        idx = cache.get(key)
        if idx is None:
            idx = cache[key] = _slice_index(x.shape, starts, ends, axes, None)
        return (x[idx],)
    return run


@array_kernel("Slice", since=10, host_inputs=(1, 2, 3, 4))
def slice_(info):
    consts = [_const(info, i) if _has(info, i) else None for i in range(1, 5)]
    all_const = all(consts[i] is not None for i in range(2)) and all(
        consts[i] is not None or not _has(info, i + 1) for i in range(2, 4))
    if all_const:
        starts, ends = _ints(consts[0]), _ints(consts[1])
        axes = _ints(consts[2]) if consts[2] is not None else None
        steps = _ints(consts[3]) if consts[3] is not None else None
        cache: dict = {}

        def run_const(x, *_):
            key = x.shape
            idx = cache.get(key)
            if idx is None:
                if len(cache) > 64:  # dynamic shapes: keep the cache bounded
                    cache.clear()
                idx = cache[key] = _slice_index(x.shape, starts, ends, axes, steps)
            return (x[idx],)
        return run_const

    def run(x, starts, ends, axes=None, steps=None):
        idx = _slice_index(x.shape, _ints(starts), _ints(ends), None if axes is None else _ints(axes),
                           None if steps is None else _ints(steps))
        return (x[idx],)
    return run


# --- Expand

def _broadcast_shape(a: tuple, b: list) -> tuple:
    """NumPy's broadcast of two shapes (``np.broadcast_shapes``, with less Python around it)."""
    if len(a) < len(b):
        a = (1,) * (len(b) - len(a)) + a
    elif len(b) < len(a):
        b = [1] * (len(a) - len(b)) + b
    out = []
    for p, q in zip(a, b):
        if p == q or q == 1:
            out.append(p)
        elif p == 1:
            out.append(q)
        else:
            raise ValueError(f"shape mismatch: objects cannot be broadcast to a single shape: {a} and {tuple(b)}")
    return tuple(out)


@array_kernel("Expand", since=8, host_inputs=(1,))
def expand(info):
    xp = info.xp

    limit = info.max_tensor_bytes

    def run(x, shape):
        out_shape = _broadcast_shape(x.shape, _int_list(shape))
        if out_shape == x.shape:
            return (x.copy(),)
        _check_size(out_shape, x.dtype, limit)
        # A real (writable, contiguous) tensor, not a read-only broadcast view.
        out = xp.empty(out_shape, dtype=x.dtype)
        out[...] = x
        return (out,)
    return run


# --- Squeeze / Unsqueeze / Flatten

def _squeeze(x, axes):
    if axes is None:
        shape = tuple(d for d in x.shape if d != 1)
    else:
        ax = {_axis(a, x.ndim) for a in axes}
        for a in ax:
            if x.shape[a] != 1:
                raise ValueError(f"Squeeze: dimension {a} of shape {x.shape} is not 1")
        shape = tuple(d for i, d in enumerate(x.shape) if i not in ax)
    return x.reshape(shape)


def _squeezer(axes):
    """The kernel ``run(x, _axes=None) -> (y,)`` squeezing fixed ``axes`` (None: every dimension of size 1):
    per input rank, the axes and a basic index that drops them (0 there, a view; the trailing ``...``
    keeps a 0-d result an array), made once."""
    if axes is None:
        return lambda x, _a=None: (_squeeze(x, None),)
    by_rank: dict = {}

    def prepare(rank):
        ax = sorted({_axis(a, rank) for a in axes})
        by_rank[rank] = got = (tuple(ax), tuple(0 if i in ax else slice(None) for i in range(rank)) + (...,))
        return got

    def run(x, _a=None):
        got = by_rank.get(x.ndim)
        ax, idx = got if got is not None else prepare(x.ndim)
        shape = x.shape
        for a in ax:
            if shape[a] != 1:
                raise ValueError(f"Squeeze: dimension {a} of shape {shape} is not 1")
        return (x[idx],)
    return run


@array_kernel("Squeeze", since=1)
def squeeze_v1(info):
    return _squeezer(info.attrs.get("axes"))


@array_kernel("Squeeze", since=13, host_inputs=(1,))
def squeeze(info):
    c = _const(info, 1)
    if c is not None:
        return _squeezer(_ints(c))

    def run(x, axes=None):
        return (_squeeze(x, None if axes is None else _ints(axes)),)
    return run


def _unsqueeze(x, axes):
    rank = x.ndim + len(axes)
    ax = sorted(_axis(a, rank) for a in axes)
    if len(set(ax)) != len(ax):
        raise ValueError(f"Unsqueeze: repeated axes {axes}")
    shape = list(x.shape)
    for a in ax:
        shape.insert(a, 1)
    return x.reshape(shape)


def _unsqueezer(axes):
    """The kernel ``run(x, _axes=None) -> (y,)`` unsqueezing fixed ``axes``: per input rank, a basic index
    with ``None`` at the new axes (a view), made once."""
    by_rank: dict = {}

    def prepare(rank):
        out_rank = rank + len(axes)
        ax = sorted(_axis(a, out_rank) for a in axes)
        if len(set(ax)) != len(ax):
            raise ValueError(f"Unsqueeze: repeated axes {axes}")
        by_rank[rank] = idx = tuple(None if i in ax else slice(None) for i in range(out_rank))
        return idx

    def run(x, _a=None):
        idx = by_rank.get(x.ndim)
        return (x[idx if idx is not None else prepare(x.ndim)],)
    return run


@array_kernel("Unsqueeze", since=1)
def unsqueeze_v1(info):
    return _unsqueezer(list(info.attrs.get("axes", [])))


@array_kernel("Unsqueeze", since=13, host_inputs=(1,))
def unsqueeze(info):
    c = _const(info, 1)
    if c is not None:
        return _unsqueezer(_ints(c))

    def run(x, axes):
        return (_unsqueeze(x, _ints(axes)),)
    return run


@array_kernel("Flatten", since=1)
def flatten(info):
    axis = int(info.attrs.get("axis", 1))

    def run(x):
        a = axis + x.ndim if axis < 0 else axis
        outer = math.prod(x.shape[:a])
        inner = math.prod(x.shape[a:])
        return (x.reshape(outer, inner),)
    return run


# --- Shape / Size

@array_kernel("Shape", since=1)
def shape(info):
    xp = info.xp
    start = int(info.attrs.get("start", 0))
    end = info.attrs.get("end")
    end = None if end is None else int(end)

    host = arrays(xp).host

    def run(x):
        # Python slicing clamps out-of-range start/end exactly as the spec asks.
        s = np.array(x.shape[start:end], dtype=np.int64)
        return (s if host else xp.asarray(s),)
    return run


@array_kernel("Size", since=1)
def size(x, *, xp):
    return xp.asarray(np.array(x.size, dtype=np.int64))


# --- Constant / ConstantOfShape

def _sparse_to_dense(sp) -> np.ndarray:
    from onnx import numpy_helper

    values = numpy_helper.to_array(sp.values)
    idx = numpy_helper.to_array(sp.indices).astype(np.int64)
    dims = tuple(int(d) for d in sp.dims)
    out = np.zeros(dims, dtype=values.dtype)
    if idx.ndim == 1:  # linearized indices
        out.reshape(-1)[idx] = values
    else:
        out[tuple(idx.T)] = values
    return out


def _constant_value(attrs) -> np.ndarray:
    if "value" in attrs:
        v = attrs["value"]
        return v if isinstance(v, np.ndarray) else np.asarray(v)
    if "value_float" in attrs:
        return np.array(attrs["value_float"], dtype=np.float32)
    if "value_floats" in attrs:
        return np.array(attrs["value_floats"], dtype=np.float32).reshape(-1)
    if "value_int" in attrs:
        return np.array(attrs["value_int"], dtype=np.int64)
    if "value_ints" in attrs:
        return np.array(attrs["value_ints"], dtype=np.int64).reshape(-1)
    if "value_string" in attrs:
        s = attrs["value_string"]
        return np.array(s.decode() if isinstance(s, bytes) else s, dtype=object)
    if "value_strings" in attrs:
        ss = [s.decode() if isinstance(s, bytes) else s for s in attrs["value_strings"]]
        out = np.empty(len(ss), dtype=object)
        out[:] = ss
        return out
    if "sparse_value" in attrs:
        sp = attrs["sparse_value"]
        return sp if isinstance(sp, np.ndarray) else _sparse_to_dense(sp)
    raise ValueError("Constant: no value attribute")


@array_kernel("Constant", since=1)
def constant(info):
    value = _constant_value(info.attrs)
    if value.dtype.kind in "US":
        value = value.astype(object)
    if value.dtype != object:
        value = info.xp.asarray(value)
    # The same buffer is returned every run; read-only so that no consumer can change it by accident.
    if isinstance(value, np.ndarray):
        value = value.view()
        value.flags.writeable = False

    def run():
        return (value,)
    return run


@array_kernel("ConstantOfShape", since=9, host_inputs=(0,))
def constant_of_shape(info):
    xp = info.xp
    v = info.attrs.get("value")
    if v is None:
        v = np.zeros(1, dtype=np.float32)
    v = np.asarray(v)
    dtype, fill = v.dtype, v.reshape(-1)[0]
    c = _const(info, 0)

    limit = info.max_tensor_bytes

    def run(shape):
        dims = tuple(_ints(shape))
        check_tensor_size(dims, dtype, limit)
        return (xp.full(dims, fill, dtype=dtype),)
    if c is not None:
        fixed = tuple(_ints(c))

        def run_const(_shape=None):
            check_tensor_size(fixed, dtype, limit)
            return (xp.full(fixed, fill, dtype=dtype),)
        return run_const
    return run


# --- Range

_I64 = 2 ** 63


def _range(info, stash_float):
    xp = info.xp
    max_bytes = info.max_tensor_bytes

    def scalar(v):
        return v.item() if v.ndim == 0 else _host(v).reshape(-1)[0]

    def run(start, limit, delta):
        dtype = start.dtype
        s, lim, d = scalar(start), scalar(limit), scalar(delta)
        if dtype.kind in "iu":
            s, lim, d = int(s), int(lim), int(d)
            if d == 0:
                raise ValueError("Range: delta cannot be 0")
            n = max(-(-(lim - s) // d), 0)
            _check_size((n,), dtype, max_bytes)
            # start + i * delta in int64 (arange's integer steps are exact), then the input's dtype
            stop = s + n * d
            if -_I64 <= stop < _I64 and -_I64 <= s < _I64:
                out = np.arange(s, stop, d, dtype=np.int64)
            else:
                out = np.arange(n, dtype=np.int64)
                out *= d
                out += s
            return (xp.asarray(out.astype(dtype, copy=False)),)
        if float(d) == 0:
            raise ValueError("Range: delta cannot be 0")
        span = (float(lim) - float(s)) / float(d)
        if not math.isfinite(span):
            raise ValueError(f"Range: the number of elements (limit - start) / delta = {span} is not finite")
        n = max(math.ceil(span), 0)
        _check_size((n,), dtype, max_bytes)
        # output[i] = start + i * delta, in float32 for 16-bit floats when stash_type asks for it.
        cdt = np.float32 if (stash_float and dtype.itemsize == 2) else dtype
        cs, cd = np.asarray(s, dtype=cdt), np.asarray(d, dtype=cdt)
        out = cs + np.arange(n).astype(cdt) * cd
        return (xp.asarray(out.astype(dtype, copy=False)),)
    return run


@array_kernel("Range", since=11, host_inputs=(0, 1, 2))
def range_v11(info):
    return _range(info, stash_float=False)


@array_kernel("Range", since=27, host_inputs=(0, 1, 2))
def range_(info):
    return _range(info, stash_float=int(info.attrs.get("stash_type", 1)) == 1)


# --- Identity

@array_kernel("Identity", since=1)
def identity(info):
    # Tensors, sequences and optionals pass through unchanged (values are never mutated in place).
    def run(x):
        return (x,)
    return run


# --- Tile

@array_kernel("Tile", since=1, host_inputs=(1, 2))
def tile_v1(info):
    xp = info.xp

    def run(x, tiles, axis):
        reps = [1] * x.ndim
        reps[_axis(_ints(axis)[0], x.ndim)] = _ints(tiles)[0]
        check_tensor_size([d * r for d, r in zip(x.shape, reps)], x.dtype, info.max_tensor_bytes)
        return (xp.tile(x, reps),)
    return run


def _tile_shapes(shape, reps, dtype, limit) -> tuple:
    """(output shape, buffer shape, source shape, spread) of ``_tiled``, checked against ``limit``."""
    out_shape, buf_shape, src_shape = [], [], []
    spread = True       # every repeated axis has length 1: the output is x broadcast, no extra axes
    for d, r in zip(shape, reps):
        out_shape.append(d * r)
        if r == 1:      # an axis not repeated needs no axis of repeats
            buf_shape.append(d)
            src_shape.append(d)
        else:
            buf_shape += (r, d)
            src_shape += (1, d)
            spread = spread and d == 1
    _check_size(out_shape, dtype, limit)
    return tuple(out_shape), tuple(buf_shape), tuple(src_shape), spread


def _tiled(xp, x, shapes):
    """``x`` repeated ``reps[i]`` times along each axis i: one broadcast copy into a buffer of shape
    (r0, d0, r1, d1, ...), seen as (r0 * d0, r1 * d1, ...) (what ``np.tile`` computes, with less
    Python around it); ``shapes`` from ``_tile_shapes``."""
    out_shape, buf_shape, src_shape, spread = shapes
    if spread:
        out = xp.empty(out_shape, dtype=x.dtype)
        out[...] = x
        return out
    buf = xp.empty(buf_shape, dtype=x.dtype)
    buf[...] = x.reshape(src_shape)
    return buf.reshape(out_shape)


@array_kernel("Tile", since=6, host_inputs=(1,))
def tile(info):
    xp = info.xp
    limit = info.max_tensor_bytes

    seen: dict = {}     # (input shape, dtype, repeats) -> _tile_shapes: a model tiles a few shapes, run after run

    def run(x, repeats):
        reps = _int_list(repeats)
        key = (x.shape, x.dtype, *reps)
        shapes = seen.get(key)
        if shapes is None:
            if len(reps) != x.ndim:
                raise ValueError(f"Tile: {len(reps)} repeats for an input of rank {x.ndim}")
            if reps and min(reps) < 0:
                raise ValueError(f"Tile: repeats {reps} must not be negative")
            if len(seen) > 64:      # dynamic shapes: keep the cache bounded
                seen.clear()
            shapes = seen[key] = _tile_shapes(x.shape, reps, x.dtype, limit)
        return (_tiled(xp, x, shapes),)
    return run


# --- EyeLike / Trilu

@array_kernel("EyeLike", since=9)
def eye_like(info):
    xp = info.xp
    k = int(info.attrs.get("k", 0))
    dt = info.attrs.get("dtype")
    out_dtype = None if dt is None else np_dtype(int(dt))

    def run(x):
        if x.ndim != 2:
            raise ValueError(f"EyeLike: input must be 2-D, got shape {x.shape}")
        return (xp.eye(x.shape[0], x.shape[1], k=k, dtype=out_dtype or x.dtype),)
    return run


@array_kernel("Trilu", since=14, host_inputs=(1,))
def trilu(info):
    xp = info.xp
    upper = int(info.attrs.get("upper", 1))

    def run(x, k=None):
        kk = 0 if k is None else _ints(k)[0]
        return (xp.triu(x, kk) if upper else xp.tril(x, kk),)
    return run


# --- DepthToSpace / SpaceToDepth

def _depth_to_space(info, mode):
    xp = info.xp
    bs = int(info.attrs["blocksize"])

    def run(x):
        b, c, h, w = x.shape
        oc = c // (bs * bs)
        if mode == "DCR":
            y = x.reshape(b, bs, bs, oc, h, w).transpose(0, 3, 4, 1, 5, 2)
        else:
            y = x.reshape(b, oc, bs, bs, h, w).transpose(0, 1, 4, 2, 5, 3)
        return (xp.ascontiguousarray(y).reshape(b, oc, h * bs, w * bs),)
    return run


@array_kernel("DepthToSpace", since=1)
def depth_to_space_v1(info):
    return _depth_to_space(info, "DCR")


@array_kernel("DepthToSpace", since=11)
def depth_to_space(info):
    return _depth_to_space(info, str(info.attrs.get("mode", "DCR")))


def _space_to_depth(info, mode):
    xp = info.xp
    bs = int(info.attrs["blocksize"])

    def run(x):
        b, c, h, w = x.shape
        y = x.reshape(b, c, h // bs, bs, w // bs, bs)
        y = y.transpose(0, 3, 5, 1, 2, 4) if mode == "DCR" else y.transpose(0, 1, 3, 5, 2, 4)
        return (xp.ascontiguousarray(y).reshape(b, c * bs * bs, h // bs, w // bs),)
    return run


@array_kernel("SpaceToDepth", since=1)
def space_to_depth_v1(info):
    return _space_to_depth(info, "DCR")


@array_kernel("SpaceToDepth", since=28)
def space_to_depth(info):
    return _space_to_depth(info, str(info.attrs.get("mode", "DCR")))


# --- Pad / CenterCropPad

def _pad(xp, x, pads, mode, value, limit=None):
    """ONNX Pad: ``pads`` is [begin_0..begin_{r-1}, end_0..end_{r-1}]; negative entries crop."""
    r = x.ndim
    if len(pads) != 2 * r:
        raise ValueError(f"Pad: {len(pads)} pads for an input of rank {r}")
    begins, ends = pads[:r], pads[r:]
    if any(p < 0 for p in pads):
        idx = tuple(slice(-b if b < 0 else 0, (x.shape[i] + e) if e < 0 else None)
                    for i, (b, e) in enumerate(zip(begins, ends)))
        x = x[idx]
        begins = [max(b, 0) for b in begins]
        ends = [max(e, 0) for e in ends]
    if not any(begins) and not any(ends):
        return x.copy()
    out_shape = tuple(d + b + e for d, b, e in zip(x.shape, begins, ends))
    check_tensor_size(out_shape, x.dtype, limit)
    if mode == "constant":
        out = xp.empty(out_shape, dtype=x.dtype)
        out[...] = value
        out[tuple(slice(b, b + d) for b, d in zip(begins, x.shape))] = x
        return out
    width = list(zip(begins, ends))
    if mode == "reflect":
        return xp.pad(x, width, mode="reflect")
    if mode == "edge":
        return xp.pad(x, width, mode="edge")
    if mode == "wrap":
        return xp.pad(x, width, mode="wrap")
    raise ValueError(f"Pad: unknown mode '{mode}'")


def _pad_value(x, v):
    if v is None:
        return "" if x.dtype == object else 0
    v = _host(v).reshape(-1)
    if v.size == 0:
        return "" if x.dtype == object else 0
    return v[0]


@array_kernel("Pad", since=1)
def pad_v1(info):
    xp = info.xp
    pads = [int(p) for p in info.attrs.get("pads", info.attrs.get("paddings", []))]
    mode = str(info.attrs.get("mode", "constant"))
    value = float(info.attrs.get("value", 0.0))

    def run(x):
        return (_pad(xp, x, pads, mode, value, info.max_tensor_bytes),)
    return run


@array_kernel("Pad", since=11, host_inputs=(1, 2, 3))
def pad(info):
    xp = info.xp
    mode = str(info.attrs.get("mode", "constant"))
    c = _const(info, 1)
    fixed = mode == "constant" and c is not None and not _has(info, 3) and c.size and min(_ints(c)) >= 0
    if fixed:
        # constant pads growing every axis (none cropped), all axes: the placement of the input in the
        # output, slice(begin, -end), is the same for any input shape
        p = _ints(c)
        r = len(p) // 2
        place = tuple(slice(b, -e if e else None) for b, e in zip(p[:r], p[r:]))
        limit = info.max_tensor_bytes

        def run_const(x, _pads=None, constant_value=None, _axes=None):
            if x.ndim != r or len(p) != 2 * r:
                return run(x, c, constant_value)
            if not any(p):
                return (x.copy(),)
            out_shape = tuple(d + b + e for d, b, e in zip(x.shape, p[:r], p[r:]))
            _check_size(out_shape, x.dtype, limit)
            out = xp.empty(out_shape, dtype=x.dtype)
            out[...] = _pad_value(x, constant_value)
            out[place] = x
            return (out,)

    def run(x, pads, constant_value=None, axes=None):
        p = _ints(pads)
        if axes is not None:
            ax = [_axis(a, x.ndim) for a in _ints(axes)]
            n = len(ax)
            full = [0] * (2 * x.ndim)
            for i, a in enumerate(ax):
                full[a] = p[i]
                full[x.ndim + a] = p[n + i]
            p = full
        return (_pad(xp, x, p, mode, _pad_value(x, constant_value), info.max_tensor_bytes),)

    return run_const if fixed else run


@array_kernel("CenterCropPad", since=18, host_inputs=(1,))
def center_crop_pad(info):
    xp = info.xp
    axes_attr = info.attrs.get("axes")

    def run(x, shape):
        target = _ints(shape)
        axes = list(range(x.ndim)) if axes_attr is None else [_axis(a, x.ndim) for a in axes_attr]
        src = [slice(None)] * x.ndim
        dst = [slice(None)] * x.ndim
        out_shape = list(x.shape)
        for a, t in zip(axes, target):
            d = x.shape[a]
            out_shape[a] = t
            if d >= t:  # crop: the window starts rounded down
                s = (d - t) // 2
                src[a] = slice(s, s + t)
            else:  # pad: the extra pixel of an odd total goes to the end
                s = (t - d) // 2
                dst[a] = slice(s, s + d)
        out = xp.zeros(out_shape, dtype=x.dtype)
        out[tuple(dst)] = x[tuple(src)]
        return (out,)
    return run


# --- Compress / ReverseSequence

@array_kernel("Compress", since=9)
def compress(info):
    xp = info.xp
    axis = info.attrs.get("axis")

    def run(x, condition):
        cond = condition.astype(bool, copy=False).reshape(-1)
        if axis is None:
            flat = x.reshape(-1)
            return (flat[:cond.shape[0]][cond[:flat.shape[0]]],)
        a = _axis(axis, x.ndim)
        n = min(cond.shape[0], x.shape[a])
        sel = xp.nonzero(cond[:n])[0]
        return (xp.take(x, sel, axis=a),)
    return run


@array_kernel("ReverseSequence", since=10)
def reverse_sequence(info):
    xp = info.xp
    batch_axis = int(info.attrs.get("batch_axis", 1))
    time_axis = int(info.attrs.get("time_axis", 0))

    def run(x, sequence_lens):
        ta, ba = _axis(time_axis, x.ndim), _axis(batch_axis, x.ndim)
        T, B = x.shape[ta], x.shape[ba]
        lens = sequence_lens.astype(np.int64, copy=False).reshape(1, B)
        t = xp.arange(T, dtype=np.int64).reshape(T, 1)
        src_t = xp.where(t < lens, lens - 1 - t, t)  # (T, B): source time step per (time, batch)
        shp = [1] * x.ndim
        shp[ta], shp[ba] = T, B
        order = (0, 1) if ta < ba else (1, 0)
        src = src_t.transpose(order).reshape(shp)
        src = xp.broadcast_to(src, x.shape)
        return (xp.take_along_axis(x, src, axis=ta),)
    return run
