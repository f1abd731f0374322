"""The OpenCL side of the provider: device discovery, one context/queue/memory pool per device, the
program cache, and launch helpers. This is the only module that imports pyopencl at its top, and it
is itself imported lazily (by the provider's constructor and by kernel factories), so
``import engineroom`` never needs pyopencl.

One :class:`Runtime` per OpenCL device is shared by every session in the process: programs are
compiled once per context (and PoCL's own on-disk kernel cache and pyopencl's binary cache make a
second process cheap too); values are ``pyopencl.array.Array`` allocated from a memory pool, so a
buffer released by the plan is reused by the next node without a driver call.
"""
from __future__ import annotations

import threading
from typing import Any, Sequence

import numpy as np
import pyopencl as cl
import pyopencl.array as cla
from pyopencl.tools import ImmediateAllocator, MemoryPool

from engineroom.providers.opencl.common import CTYPES

__all__ = ["CTYPES", "Runtime", "grid", "list_devices", "runtime_for"]

_DEVICE_TYPES = {"": None, "all": None, "gpu": cl.device_type.GPU, "cpu": cl.device_type.CPU,
                 "accelerator": cl.device_type.ACCELERATOR}


def list_devices(platform: str = "", device_type: str = "") -> list:
    """OpenCL devices whose platform name/vendor contains ``platform`` (case-insensitive) and whose
    type is ``device_type`` ("gpu", "cpu", "accelerator", or "" / "all"), in platform order."""
    want = _DEVICE_TYPES.get(device_type.strip().lower(), "bad")
    if want == "bad":
        raise ValueError(f"device_type must be one of gpu, cpu, accelerator, all; got {device_type!r}")
    out = []
    for p in cl.get_platforms():
        if platform and platform.lower() not in f"{p.name} {p.vendor}".lower():
            continue
        try:
            devs = p.get_devices()
        except cl.Error:  # a platform without devices raises CL_DEVICE_NOT_FOUND
            continue
        out.extend(d for d in devs if want is None or d.type & want)
    return out


def device_kind(dev) -> str:
    """OrtHardwareDeviceType name of an OpenCL device."""
    if dev.type & cl.device_type.GPU:
        return "GPU"
    if dev.type & cl.device_type.ACCELERATOR:
        return "NPU"
    return "CPU"


_RUNTIMES: dict[Any, "Runtime"] = {}
_RUNTIMES_LOCK = threading.Lock()


def runtime_for(dev) -> "Runtime":
    """The process-wide runtime (context, queue, pool, programs) of one OpenCL device."""
    key = (dev.platform.name, dev.name, dev.int_ptr)
    with _RUNTIMES_LOCK:
        rt = _RUNTIMES.get(key)
        if rt is None:
            rt = _RUNTIMES[key] = Runtime(dev)
        return rt


def round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def _pow2_at_least(n: int) -> int:
    p = 1
    while p < n:
        p *= 2
    return p


class Runtime:
    """Context, in-order queue, memory pool and compiled programs of one device."""

    def __init__(self, dev) -> None:
        self.device = dev
        self.ctx = cl.Context([dev])
        self.queue = cl.CommandQueue(self.ctx)
        self.pool = MemoryPool(ImmediateAllocator(self.queue))
        self.fp64 = "cl_khr_fp64" in dev.extensions
        self.fp16 = "cl_khr_fp16" in dev.extensions
        self.max_wg = int(dev.max_work_group_size)
        self.lock = threading.RLock()          # pyopencl kernels set their arguments, then enqueue
        self._programs: dict[tuple[str, str], Any] = {}
        self._kernels: dict[tuple[str, str, str], Any] = {}
        self._consts: dict[tuple, Any] = {}
        self.compiles = 0

    # -- programs ------------------------------------------------------------------------------
    def program(self, src: str, options: str = ""):
        key = (src, options)
        prg = self._programs.get(key)
        if prg is None:
            with self.lock:
                prg = self._programs.get(key)
                if prg is None:
                    prg = cl.Program(self.ctx, src).build(options=options)
                    self.compiles += 1
                    self._programs[key] = prg
        return prg

    def kernel(self, src: str, name: str, argtypes: Sequence | None = None, options: str = ""):
        """A kernel of a (cached) program; ``argtypes`` as pyopencl's ``set_scalar_arg_dtypes``."""
        key = (src, options, name)
        k = self._kernels.get(key)
        if k is None:
            with self.lock:
                k = self._kernels.get(key)
                if k is None:
                    k = cl.Kernel(self.program(src, options), name)
                    if argtypes is not None:
                        k.set_scalar_arg_dtypes(list(argtypes))
                    self._kernels[key] = k
        return k

    # -- memory --------------------------------------------------------------------------------
    # Transfers drain the queue first. On PoCL 3.0 a blocking read/write on an in-order queue was
    # seen to overlap a kernel still running on a buffer the memory pool had just recycled (a prefix
    # of the output read stale); the copies sit only at partition boundaries, so waiting is cheap.
    def empty(self, shape, dtype) -> cla.Array:
        return cla.Array(self.queue, tuple(int(s) for s in shape), np.dtype(dtype), allocator=self.pool)

    def to_device(self, a) -> cla.Array:
        a = np.asarray(a)
        if not a.flags.c_contiguous:
            a = a.copy()  # (np.ascontiguousarray would turn a 0-d array into 1-d)
        out = self.empty(a.shape, a.dtype)
        if a.size:
            with self.lock:
                self.queue.finish()  # see the note on transfers above
                cl.enqueue_copy(self.queue, out.base_data, a, is_blocking=True)
        return out

    def to_host(self, a: cla.Array) -> np.ndarray:
        out = np.empty(a.shape, a.dtype)
        if a.size:
            with self.lock:
                self.queue.finish()  # see the note on transfers above
                cl.enqueue_copy(self.queue, out, a.base_data, src_offset=a.offset, is_blocking=True)
        return out

    def const_ints(self, values: Sequence[int]):
        """A small read-only int32 buffer (geometry, strides, batch offsets), cached by content."""
        key = ("i32", tuple(int(v) for v in values))
        b = self._consts.get(key)
        if b is None:
            arr = np.asarray(key[1] or (0,), np.int32)
            b = cl.Buffer(self.ctx, cl.mem_flags.READ_ONLY | cl.mem_flags.COPY_HOST_PTR, hostbuf=arr)
            with self.lock:
                if len(self._consts) > 4096:
                    self._consts.clear()
                self._consts[key] = b
        return b

    # -- launching -----------------------------------------------------------------------------
    def launch(self, knl, gsize: Sequence[int], lsize: Sequence[int] | None, *args) -> None:
        with self.lock:
            knl(self.queue, tuple(gsize), None if lsize is None else tuple(lsize), *args)

    def finish(self) -> None:
        self.queue.finish()


def grid(shape: Sequence[int], cap: int = 64) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(global, local) sizes covering ``shape`` (1–3 dims) with work-groups of at most ``cap`` items,
    the first dimension taking as much of the group as it can use."""
    shape = [max(1, int(s)) for s in shape]
    loc = []
    left = cap
    for s in shape:
        l_ = min(_pow2_at_least(s), left)
        loc.append(l_)
        left = max(1, left // l_)
    return tuple(round_up(s, l_) for s, l_ in zip(shape, loc)), tuple(loc)
