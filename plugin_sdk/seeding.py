"""The process-wide seed of random ops that have no ``seed`` attribute (onnxruntime's ``set_seed``).

Without a seed each such node draws fresh entropy; after ``set_seed(s)`` the k-th node created gets seed
``s + k``, so a process that sets the seed and builds the same sessions reproduces their random outputs.
"""
from __future__ import annotations

import itertools
import threading

_state: dict = {"seed": None, "counter": itertools.count()}
_lock = threading.Lock()


def set_seed(seed: int) -> None:
    with _lock:
        _state["seed"] = int(seed)
        _state["counter"] = itertools.count()


def node_seed() -> int | None:
    """The seed for the next random node without a ``seed`` attribute (None: fresh entropy)."""
    with _lock:
        if _state["seed"] is None:
            return None
        return _state["seed"] + next(_state["counter"])
