"""Sequence and optional kernels: SequenceConstruct/Empty/At/Insert/Erase/Length, SplitToSequence,
ConcatFromSequence, SequenceMap, Optional, OptionalHasElement, OptionalGetElement.

A sequence is a Python list of arrays and is never mutated: every op that changes one returns a new
list (values may be shared between plans, subgraph iterations and the caller). An optional holding a
value is that value itself; an empty optional is None. Identity of sequences/optionals is the
shape module's Identity, which passes any value through.
"""
from __future__ import annotations

import numpy as np

from engineroom.providers.cpu.registry import kernel


def _position(pos, n: int, *, insert: bool) -> int:
    """A sequence position from a scalar tensor; negative counts from the back, out of range is an error."""
    p = int(np.asarray(pos).reshape(-1)[0])
    hi = n if insert else n - 1   # insertion may append at position n
    if p < -n or p > hi:
        raise IndexError(f"sequence position {p} is out of bounds for a sequence of length {n}")
    return p + n if p < 0 else p


@kernel("SequenceConstruct", since=11)
def sequence_construct(info):
    def run(*tensors):
        return (list(tensors),)
    return run


@kernel("SequenceEmpty", since=11)
def sequence_empty(info):
    def run():
        return ([],)
    return run


@kernel("SequenceLength", since=11)
def sequence_length(info):
    def run(seq):
        return (np.array(len(seq), dtype=np.int64),)
    return run


@kernel("SequenceAt", since=11, host_inputs=(1,))
def sequence_at(info):
    def run(seq, pos):
        return (seq[_position(pos, len(seq), insert=False)],)
    return run


@kernel("SequenceInsert", since=11, host_inputs=(2,))
def sequence_insert(info):
    def run(seq, tensor, pos=None):
        out = list(seq)
        if pos is None:
            out.append(tensor)
        else:
            out.insert(_position(pos, len(seq), insert=True), tensor)
        return (out,)
    return run


@kernel("SequenceErase", since=11, host_inputs=(1,))
def sequence_erase(info):
    def run(seq, pos=None):
        out = list(seq)
        if not out:
            raise IndexError("SequenceErase on an empty sequence")
        del out[-1 if pos is None else _position(pos, len(seq), insert=False)]
        return (out,)
    return run


@kernel("SplitToSequence", since=11, host_inputs=(1,))
def split_to_sequence(info):
    xp = info.xp
    axis0 = int(info.attrs.get("axis", 0))
    keepdims = int(info.attrs.get("keepdims", 1))

    def run(x, split=None):
        axis = axis0 + x.ndim if axis0 < 0 else axis0
        dim = x.shape[axis]
        if split is None:
            # One element per slice (views of x); keepdims=0 drops the split axis.
            parts = xp.split(x, dim, axis=axis) if dim else []
            return (list(parts) if keepdims else [xp.squeeze(p, axis=axis) for p in parts],)
        sp = np.asarray(split)
        if sp.ndim == 0:
            size = int(sp)
            if size <= 0:
                raise ValueError(f"split size must be positive, got {size}")
            sizes = [size] * (dim // size) + ([dim % size] if dim % size else [])
        else:
            sizes = [int(v) for v in sp]
            if sum(sizes) != dim:
                raise ValueError(f"split sizes {sizes} do not sum to dimension {dim} of axis {axis}")
        bounds = np.cumsum(sizes)[:-1].tolist()
        return (list(xp.split(x, bounds, axis=axis)),)

    return run


@kernel("ConcatFromSequence", since=11)
def concat_from_sequence(info):
    xp = info.xp
    axis = int(info.attrs["axis"])
    new_axis = int(info.attrs.get("new_axis", 0))

    def run(seq):
        if not seq:
            raise ValueError("ConcatFromSequence needs a non-empty sequence")
        if new_axis:
            return (xp.stack(seq, axis=axis),)
        return (xp.concatenate(seq, axis=axis),)

    return run


@kernel("SequenceMap", since=17)
def sequence_map(info):
    body = info.attrs["body"]
    n = info.num_inputs
    n_out = len(body.output_names)

    def run(*inputs):
        seq = inputs[0]
        extra = inputs[1:n]
        outer = inputs[n:]
        outs: list[list] = [[] for _ in range(n_out)]
        for i in range(len(seq)):
            # Sequence inputs are iterated in step with the first; tensors are passed whole each time.
            args = [seq[i], *[a[i] if isinstance(a, list) else a for a in extra]]
            for k, r in enumerate(body(args, outer)):
                outs[k].append(r)
        return tuple(outs)

    return run


@kernel("Optional", since=15)
def optional(info):
    def run(x=None):
        return (x,)
    return run


@kernel("OptionalHasElement", since=15)
def optional_has_element(info):
    def run(x=None):
        return (np.array(x is not None),)
    return run


@kernel("OptionalGetElement", since=15)
def optional_get_element(info):
    def run(x):
        if x is None:
            raise ValueError("OptionalGetElement: the optional input is empty")
        return (x,)
    return run
