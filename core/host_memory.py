"""Host memory for runs: `SessionOptions.enable_cpu_mem_arena` (onnxruntime's default, True) keeps the
memory freed by one run for the next, as onnxruntime's CPU arena does.

Kernels return NumPy arrays, which come from the C library's malloc. glibc serves a large allocation
(past its dynamic mmap threshold, 128 KiB to 32 MiB) with a fresh mmap and gives it back on free, and
trims the heap's top; so a model whose intermediates are a few MB each faults every page of them in
again on every run (tashkeel_bilstm_int8: ~1,000 page faults a run, a quarter of its CPU time;
slanet_table ~6,400). With the arena on, this raises both thresholds once per process (`mallopt`): such
blocks then stay in the heap and the next run reuses them. Like onnxruntime's arena, the memory is not
returned to the system while the process lives; that is the trade. Outside glibc (no `mallopt`) it does
nothing. Once on it stays on for the process: a later session with the arena off does not turn it off.
"""
from __future__ import annotations

import ctypes
import threading

# allocations below this come from the heap and stay there when freed (1 GiB: every intermediate of the
# models we know; larger ones are mapped and unmapped as before)
KEEP_BELOW = 1 << 30
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3    # glibc's <malloc.h>

_lock = threading.Lock()
_state: list[bool] = []          # [whether mallopt took both settings], once tried


def keep_freed_memory(enabled: bool) -> bool:
    """Apply ``enable_cpu_mem_arena``; returns whether freed memory is now kept for reuse."""
    if not enabled:
        return bool(_state and _state[0])
    with _lock:
        if not _state:
            try:
                mallopt = ctypes.CDLL(None).mallopt
            except (OSError, AttributeError):    # not glibc (musl, macOS, Windows)
                _state.append(False)
            else:
                mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
                ok = mallopt(_M_MMAP_THRESHOLD, KEEP_BELOW) == 1 and mallopt(_M_TRIM_THRESHOLD, KEEP_BELOW) == 1
                _state.append(ok)
        return _state[0]
