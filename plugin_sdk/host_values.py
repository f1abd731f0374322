"""Reading small values on the host, as every provider's kernels do: per-axis attributes (strides, pads)
with their default filled in, and host inputs (shapes, axes, RoIs) as NumPy arrays or Python ints.
Call these in a kernel factory or once per run on a few numbers, never per element."""
from __future__ import annotations

from typing import Any

import numpy as np


def ints(v: Any, n: int, default: int) -> list[int]:
    """A per-axis attribute as Python ints, or ``[default] * n`` where it is absent or empty."""
    return [int(t) for t in v] if v is not None and len(v) else [default] * n


def host_array(a: Any) -> np.ndarray | None:
    """A host input as a NumPy array (None stays None). A device array that arrived anyway is copied
    back through its ``get()`` (CuPy's spelling); anything else goes through ``np.asarray``."""
    if a is None or isinstance(a, np.ndarray):
        return a
    get = getattr(a, "get", None)
    return get() if callable(get) else np.asarray(a)


def host_ints(a: Any) -> list[int]:
    """A shape-like host input (any rank) as a flat list of Python ints (no int64 overflow later)."""
    return [int(t) for t in host_array(a).reshape(-1).tolist()]
