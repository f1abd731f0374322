"""The CUDA side of the provider: whether CuPy and a device are there (asked once, never raising),
and the few CuPy calls the provider makes outside kernels. CuPy is imported only from functions here
and from kernel factories (which run when a session with this provider plans a graph).
"""
from __future__ import annotations

import importlib.util
import threading
from typing import Any

_probe: dict[str, Any] = {}
_probe_lock = threading.Lock()


def probe() -> tuple[int, str]:
    """(number of CUDA devices, why none) — computed once per process; never raises.

    ``importlib.util.find_spec`` answers "is CuPy installed" without importing it; only then is CuPy
    imported and the runtime asked for its device count (which fails without a driver or a GPU).
    """
    if "count" not in _probe:
        with _probe_lock:
            if "count" not in _probe:
                count, reason = 0, ""
                try:
                    if importlib.util.find_spec("cupy") is None:
                        reason = "CuPy is not installed (pip install 'engineroom[cuda]')"
                    else:
                        import cupy

                        count = int(cupy.cuda.runtime.getDeviceCount())
                        if count < 1:
                            reason = "no CUDA device: the CUDA runtime lists none"
                except Exception as e:  # noqa: BLE001 - is_available never raises; the reason is kept for users
                    count, reason = 0, f"no CUDA device: CuPy could not reach one ({type(e).__name__}: {e})"
                _probe["reason"] = reason
                _probe["count"] = count
    return _probe["count"], _probe["reason"]


def cupy_module():
    import cupy

    return cupy


def describe(device_id: int) -> dict:
    """Name, compute capability and memory of one device (for ``get_ep_devices``)."""
    cp = cupy_module()
    props = cp.cuda.runtime.getDeviceProperties(device_id)
    name = props.get("name", b"")
    return {"device_id": device_id, "name": name.decode() if isinstance(name, bytes) else str(name),
            "vendor": "NVIDIA", "vendor_id": 0x10DE,
            "compute_capability": f"{props.get('major', 0)}.{props.get('minor', 0)}",
            "total_memory": str(props.get("totalGlobalMem", 0))}


def wrap_pointer(cp, pointer: int, shape: tuple[int, ...], dtype, device_id: int):
    """A CuPy array over device memory the caller owns (no copy, no ownership taken)."""
    import numpy as np

    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    mem = cp.cuda.UnownedMemory(int(pointer), nbytes, None, device_id)
    return cp.ndarray(shape, dtype, cp.cuda.MemoryPointer(mem, 0))
