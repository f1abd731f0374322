"""CPUExecutionProvider: NumPy kernels, one module per op family.

Every public module of this package other than this one, ``registry`` (the shared kernel set) and
``array_module`` (the per-array-module shim) is a kernel module; importing the package imports them all,
and each registers its kernels with ``@kernel`` (NumPy-only) or ``@array_kernel`` (written against
``xp``, reused by providers with another array module). ``compiled/`` holds the compiled loops' machinery.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import ClassVar

import numpy as np

from engineroom.plugin_sdk import KernelProvider, KernelRegistry
from engineroom.providers.cpu.registry import registry as _registry

_NOT_KERNELS = {"registry", "array_module", "compiled"}
for _m in pkgutil.iter_modules(__path__):
    if _m.name not in _NOT_KERNELS and not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")


class CPUExecutionProvider(KernelProvider):
    """The default provider: NumPy on the host."""

    name: ClassVar[str] = "CPUExecutionProvider"
    vendor: ClassVar[str] = "engineroom"
    device_kind: ClassVar[str] = "CPU"
    registry: ClassVar[KernelRegistry] = _registry
    xp = np
    # its float16 kernels compute in float32: at level 2 the optimizer widens its float16 regions once
    # (engineroom.optimizer.float16_compute) instead of every kernel casting its inputs and outputs
    computes_float16_in_float32: ClassVar[bool] = True
    # its kernels never read a node's ONNX protos: sessions on it alone skip making them (~25% of creation)
    reads_node_protos: ClassVar[bool] = False
    # the level-3 DepthwiseSeparableBlock pays only on small or strided depthwise convs: measured with the
    # compiled loops (compiled/_jit_nhwc.py), at 56x56 and above, stride 1, channels-first is as fast and
    # the block would only add its transposing passes
    fusion_limits: ClassVar[dict[str, int]] = {"DepthwiseSeparableBlock.max_stride1_pixels": 28 * 28}

    def run_scope(self, config: dict[str, str]):
        """``session.intra_op.allow_spinning`` = "0": the run's BLAS held at one thread and its GEMMs and
        loops split over the provider's worker pool (``_threadpool``): steady when another process takes a
        core, and on a quiet machine quick (its workers spin between parts, small kernels split too); "1":
        OpenBLAS's own spinning threads; unset (the default): the pool while other processes keep one of
        our cores busy (``_Load``), and on a quiet machine the quick pool or OpenBLAS's threads, whichever
        ran this session's first runs faster (``_threadpool.AutoMode``)."""
        spinning = config.get("session.intra_op.allow_spinning")
        if spinning == "1":
            return None
        from engineroom.providers.cpu import _threadpool

        if spinning == "0":
            return _threadpool.begin_pool_run, _threadpool.end_pool_run
        # unset: the pool while other processes keep a core busy; on a quiet machine the quick pool or
        # OpenBLAS's threads, whichever runs this session faster (``_threadpool.AutoMode``)
        _threadpool._load.prime()
        mode = _threadpool.AutoMode()
        return mode.begin, mode.end

    @classmethod
    def prepare_machine(cls, progress: bool = True) -> dict[str, str | None]:
        """Build the compiled-loop modules now (in the foreground, with a progress bar) instead of in
        the background on first use."""
        from engineroom.providers.cpu.compiled import jit

        return jit.build_all(progress=progress)
