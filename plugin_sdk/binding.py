"""Output buffers a run hands its kernels: the host arrays IOBinding bound to graph outputs.

onnxruntime allocates a bound output in the caller's buffer before the kernel producing it runs, so a
kernel can write there directly; ``GroupQueryAttention`` compares the buffers of ``past_key`` and
``present_key`` and, when the caller bound one buffer to both (onnxruntime-genai's shared KV cache),
appends the new keys in place instead of copying the past. ``bound_output(name)`` gives a kernel the
same chance: during ``run_with_iobinding`` it returns the host array bound to graph output ``name``
(None otherwise, and always None on other threads). A kernel that writes into it returns that array
as its output; the session then sees the output already in place and copies nothing.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any

class _State(threading.local):
    # a class default: a thread that never bound outputs reads None without getattr's AttributeError
    # (~0.8 us a call, as much as the small Concat that asks)
    buffers = None


_state = _State()


def bound_output(name: str) -> Any:
    """The host array bound to graph output ``name`` in the run in progress on this thread, or None."""
    bufs = _state.buffers
    return None if bufs is None else bufs.get(name)


@contextmanager
def bound_outputs(buffers: dict[str, Any]):
    """For the core: ``buffers`` (graph output name -> host array) are visible to kernels in this block."""
    prev = _state.buffers
    _state.buffers = buffers or None
    try:
        yield
    finally:
        _state.buffers = prev
