"""Optional compiled loops for the CPU provider's hottest kernels, through numba.

NumPy runs one whole-array pass per operation; a few kernels (depthwise convolution, ...) need many
passes over small arrays and lose most of their time there. Where numba is installed (the ``jit``
extra), those kernels run one compiled loop instead, parallel over channels. Without it, or with
``ENGINEROOM_JIT=0`` in the environment, every kernel keeps its NumPy path: numba is an accelerator,
never a requirement, and results agree with the NumPy path to float rounding.

The compiled loops live in the ``_jit_*`` modules of this package, which import numba at their top;
``load(name)`` imports one of them only when numba is usable, so importing the provider stays cheap.
Compiled code is cached on disk (numba's ``cache=True``), so only the first session ever compiles.
"""
from __future__ import annotations

import importlib
import os
import threading

_lock = threading.Lock()
_modules: dict[str, object] = {}
_usable: list[bool] = []


def available() -> bool:
    """True where numba imports and ENGINEROOM_JIT is not "0" (decided once per process)."""
    if not _usable:
        with _lock:
            if not _usable:
                _usable.append(_probe())
    return _usable[0]


def _probe() -> bool:
    if os.environ.get("ENGINEROOM_JIT", "1") == "0":
        return False
    try:
        import numba  # noqa: F401  (the probe: import only)
    except Exception:   # not installed, or an llvmlite that does not load here: the NumPy paths serve
        return False
    return True


def load(name: str):
    """The compiled-kernel module ``engineroom.providers.cpu._jit_<name>``, or None without numba."""
    if not available():
        return None
    mod = _modules.get(name)
    if mod is None:
        mod = _modules[name] = importlib.import_module(f"engineroom.providers.cpu._jit_{name}")
    return mod

