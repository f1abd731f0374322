"""onnxruntime's process-level functions: version and build strings, telemetry switches, the global thread
pool, the random seed, tensor copies."""
from __future__ import annotations

import operator


def get_version_string() -> str:
    """engineroom's version (``engineroom.compat`` reports the onnxruntime API version instead)."""
    from engineroom import __version__

    return __version__


def get_build_info() -> str:
    import numpy as np
    import onnx

    from engineroom import __version__

    return f"engineroom {__version__} (Python, NumPy {np.__version__}, onnx {onnx.__version__})"


def has_collective_ops() -> bool:
    """engineroom has no collective (multi-process NCCL / MPI) ops."""
    return False


def disable_telemetry_events() -> None:
    """engineroom sends no telemetry: there is nothing to switch off."""


def enable_telemetry_events() -> None:
    """engineroom sends no telemetry: nothing is switched on."""


def set_global_thread_pool_sizes(intra_op_num_threads: int = 0, inter_op_num_threads: int = 0) -> None:
    """Set the process's BLAS thread pool (engineroom's intra-op threads; the executor is sequential, so there is
    no inter-op pool to size)."""
    from engineroom.session import _set_blas_threads

    _set_blas_threads(operator.index(intra_op_num_threads))


def set_seed(seed: int) -> None:
    """Seed the random ops that have no ``seed`` attribute (RandomNormal, RandomUniform, Dropout, ...) created
    from now on."""
    from engineroom.plugin_sdk.seeding import set_seed as _set

    _set(operator.index(seed))


def copy_tensors(src: list, dst: list, stream=None) -> None:
    """Copy each OrtValue of ``src`` into the OrtValue at the same place in ``dst`` (same shape and type; either
    may be on a device)."""
    if len(src) != len(dst):
        from engineroom.errors import InvalidArgument

        raise InvalidArgument(f"copy_tensors: {len(src)} sources for {len(dst)} destinations")
    for s, d in zip(src, dst):
        d.update_inplace(s.numpy())
