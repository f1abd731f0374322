"""Resource limits a kernel checks before it allocates a tensor whose size comes from data.

A model or a feed can ask a kernel for an output far larger than the machine (``ConstantOfShape`` of
``[10**6, 10**6]``, ``Expand``/``Tile``/``Range``/``Resize``/``Pad`` with huge sizes, a broadcast of
``[10**6, 1]`` against ``[1, 10**6]``). Such kernels call :func:`check_tensor_size` with the output's
shape and dtype before allocating; over the session's limit it raises :class:`TensorTooLarge`, which the
plan reports naming the node. The limit is the session config entry ``session.max_tensor_bytes``
(bytes, default: the machine's physical memory), handed to kernels as ``KernelInfo.max_tensor_bytes``.
"""
from __future__ import annotations

import math
import os

import numpy as np

MAX_TENSOR_BYTES_KEY = "session.max_tensor_bytes"


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not POSIX: 16 GiB
        return 16 << 30


DEFAULT_MAX_TENSOR_BYTES = _physical_memory()
# bytes counted per element of an object (string) tensor: its pointer and a minimal str object
_OBJECT_ITEM_BYTES = 8 + 49


class TensorTooLarge(MemoryError):
    """A tensor a kernel was asked to create would exceed ``session.max_tensor_bytes``."""


def _human(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if n < 1024 or unit == "EiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def tensor_bytes(shape, dtype) -> int:
    """The bytes a tensor of ``shape`` and ``dtype`` needs (exact Python integers: no overflow)."""
    dt = np.dtype(dtype)
    item = _OBJECT_ITEM_BYTES if dt.kind == "O" else dt.itemsize
    return math.prod(int(d) for d in shape) * item


def check_tensor_size(shape, dtype, limit: int | None, what: str = "output") -> None:
    """Raise :class:`TensorTooLarge` if a tensor of ``shape``/``dtype`` would exceed ``limit`` bytes.

    Call before allocating. Negative dims are left to the kernel's own checks; ``limit`` None or <= 0
    means no limit."""
    if limit is None or limit <= 0:
        return
    dims = [int(d) for d in shape]
    if any(d < 0 for d in dims):
        return
    need = tensor_bytes(dims, dtype)
    if need > limit:
        raise TensorTooLarge(
            f"the {what} of shape {tuple(dims)} ({math.prod(dims)} elements of {np.dtype(dtype)}) would need "
            f"{_human(need)} ({need} bytes), over the limit of {_human(limit)} ({limit} bytes; session config "
            f"'{MAX_TENSOR_BYTES_KEY}')")


def check_broadcast(shapes, dtype, limit: int | None, what: str = "output") -> tuple[int, ...] | None:
    """The broadcast shape of ``shapes`` after :func:`check_tensor_size` on it (None if they do not broadcast:
    the kernel's own call raises NumPy's error)."""
    try:
        out = np.broadcast_shapes(*shapes)
    except ValueError:
        return None
    check_tensor_size(out, dtype, limit, what)
    return out
