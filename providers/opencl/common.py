"""Helpers shared by the kernel modules: dtype sets, capability checks (host-side reads are the SDK's host_values).

Nothing here imports pyopencl; kernel modules import :mod:`runtime` only inside factories.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import numpy as np

from engineroom.plugin_sdk import NodeView

# NumPy dtype -> OpenCL C type (storage); bool is one byte on both sides.
CTYPES = {
    np.dtype(np.float32): "float", np.dtype(np.float64): "double",
    np.dtype(np.int8): "char", np.dtype(np.uint8): "uchar", np.dtype(np.int16): "short",
    np.dtype(np.uint16): "ushort", np.dtype(np.int32): "int", np.dtype(np.uint32): "uint",
    np.dtype(np.int64): "long", np.dtype(np.uint64): "ulong", np.dtype(np.bool_): "uchar",
}

F32 = np.dtype(np.float32)
F64 = np.dtype(np.float64)
I32 = np.dtype(np.int32)
I64 = np.dtype(np.int64)
BOOL = np.dtype(np.bool_)
FLOATS = frozenset({F32, F64})
INTS = frozenset({I32, I64})
NUMERIC = FLOATS | INTS
# every dtype a kernel can move (copies, views, Where, Cast): storage only, no arithmetic
STORABLE = frozenset(np.dtype(t) for t in (np.float32, np.float64, np.int8, np.uint8, np.int16, np.uint16,
                                           np.int32, np.uint32, np.int64, np.uint64, np.bool_))


def rt_of(info) -> Any:
    """The provider's runtime (context, queue, program cache)."""
    return info.provider.rt


def all_of(*checks: Callable[[NodeView], str | None]) -> Callable[[NodeView], str | None]:
    def check(view: NodeView) -> str | None:
        for c in checks:
            why = c(view)
            if why:
                return why
        return None

    return check


def inputs_in(allowed: Iterable, which: Iterable[int] | None = None, optional: bool = True):
    """Each listed input (all by default) present must have a known dtype in ``allowed``."""
    allowed = frozenset(np.dtype(t) for t in allowed)
    which = None if which is None else tuple(which)

    def check(view: NodeView) -> str | None:
        idx = range(len(view.input_names)) if which is None else which
        for i in idx:
            if not view.has_input(i):
                if optional:
                    continue
                return f"input {i} missing"
            dt = view.input_dtypes[i] if i < len(view.input_dtypes) else None
            if dt is None or np.dtype(dt) not in allowed:
                return f"input {i} dtype {dt} not supported"
        return None

    return check


def outputs_in(allowed: Iterable):
    allowed = frozenset(np.dtype(t) for t in allowed)

    def check(view: NodeView) -> str | None:
        for i, nm in enumerate(view.output_names):
            if nm and (view.output_dtypes[i] is None or np.dtype(view.output_dtypes[i]) not in allowed):
                return f"output {i} dtype {view.output_dtypes[i]} not supported"
        return None

    return check


def n_outputs(n: int):
    """At most ``n`` outputs are used (optional extra outputs unnamed)."""

    def check(view: NodeView) -> str | None:
        if any(nm for nm in view.output_names[n:]):
            return f"only the first {n} output(s) are supported"
        return None

    return check


def const_input(view: NodeView, i: int):
    """The constant value of input ``i``, or None."""
    if i < len(view.const_inputs):
        return view.const_inputs[i]
    return None


def norm_axis(a: int, rank: int) -> int:
    a = int(a)
    if not -rank <= a < max(rank, 1):
        raise ValueError(f"axis {a} out of range for rank {rank}")
    return a + rank if a < 0 else a
