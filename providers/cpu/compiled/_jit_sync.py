"""Compiled waits for the CPU provider's worker pool (``_threadpool``): spinning on a flag with the GIL
released, so that handing a part of a kernel to a worker costs microseconds, not a wake-up.

A Python worker asleep on a condition takes 50-100 us to run again on this kind of machine (the idle
core's wake-up), which is more than half of a 100-200 us kernel: splitting those over two cores did not
pay. A worker that spins here between parts sees a new one at once. The GIL is the other half: a thread
that wants it while the other holds it sleeps on it, with the same wake-up cost. So each side announces
what the other waits for only from inside these functions (after the exported wrapper released the GIL:
``worker_wait``'s store of its ``done`` slot), and each spins a little longer (``extra``) after it saw its
flag change, so that the other side has left the interpreter for its own kernel before it asks for the GIL.
A 64x64x3136 GEMM (12.8M multiply-adds) went from 176 to 102 us on two threads this way (OpenBLAS's own
threads: 107); the same split over the sleeping pool took 213.

The flags are int64 arrays written by one thread and read by others: the reads are atomic acquire loads
(which the compiler can neither hoist out of the loop nor merge), with the CPU's spin-wait hint (x86
``pause``); the stores are atomic release stores. Each turn of a wait offers the core to any other runnable
thread (``sched_yield``, ~0.2 us when there is none): OpenBLAS's threads spin between their GEMMs for
~0.1 s and the scheduler then puts our worker on the caller's core, where a wait that never yields took
half of the caller's time (mobilenet_v2's runs 2x slower for that 0.1 s).
"""
from __future__ import annotations

import platform

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

_PAUSE = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


@intrinsic
def _load_acquire(typingctx, arr, idx):
    """arr[idx] as an atomic acquire load (int64 array), followed by a spin-wait hint."""
    sig = types.int64(arr, idx)

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        ptr = builder.gep(ary.data, [args[1]])
        value = builder.load_atomic(ptr, "acquire", 8)
        if _PAUSE:
            pause = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                                   "llvm.x86.sse2.pause")
            builder.call(pause, [])
        return value

    return sig, codegen


@intrinsic
def _store_release(typingctx, arr, idx, value):
    """arr[idx] = value as an atomic release store (int64 array)."""
    sig = types.void(arr, idx, value)

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        ptr = builder.gep(ary.data, [args[1]])
        builder.store_atomic(args[2], ptr, "release", 8)
        return context.get_dummy_value()

    return sig, codegen


_sched_yield = types.ExternalFunction("sched_yield", types.int32())


@njit(nogil=True, boundscheck=False)
def worker_wait(state, slot, seen, limit, extra):  # pragma: no cover (compiled)
    """A worker between parts: state[slot] = seen (its last generation is done), then spin while
    state[0] == seen, at most ``limit`` turns; once it changed, ``extra`` turns more."""
    _store_release(state, slot, seen)
    i = 0
    while _load_acquire(state, 0) == seen and i < limit:
        _sched_yield()
        i += 1
    if i < limit:
        for _ in range(extra):
            _sched_yield()


@njit(nogil=True, boundscheck=False)
def wait_at_least(state, slot, want, limit, extra):  # pragma: no cover (compiled)
    """The caller: spin while state[slot] < want, at most ``limit`` turns; once reached, ``extra`` turns
    more (the other thread is on its way out of the interpreter)."""
    i = 0
    while _load_acquire(state, slot) < want and i < limit:
        _sched_yield()
        i += 1
    if i < limit:
        for _ in range(extra):
            _sched_yield()


AOT = {
    "worker_wait": ("I1 i i i i", ("f4",)),
    "wait_at_least": ("I1 i i i i", ("f4",)),
}
