"""Running unmodified code written for onnxruntime on engineroom.

- :func:`install_as_onnxruntime` makes ``import onnxruntime`` — and ``onnxruntime.capi``,
  ``onnxruntime.capi._pybind_state``, ``onnxruntime.capi.onnxruntime_pybind11_state`` (with the exception
  classes code imports from there) and ``onnxruntime.capi.onnxruntime_inference_collection`` — resolve to
  engineroom in this process. Call it before the code imports onnxruntime.
- ``python -m engineroom.compat script.py ARGS`` / ``python -m engineroom.compat -m package ARGS`` runs a script
  or module that way (the launcher, :mod:`engineroom.compat.__main__`).
- The environment switch ``ENGINEROOM_AS_ONNXRUNTIME=1`` does the same for Python processes the user does not
  start, once ``python -m engineroom.compat --install-hook`` has put a one-line startup hook in the environment's
  site-packages (it imports nothing unless the variable is set).

Nothing changes unless one of these is used: with the real onnxruntime installed, ``import onnxruntime`` gets it.
The module reports the onnxruntime API version engineroom implements (:data:`ORT_API_VERSION`, what packages
branch on) as ``onnxruntime.__version__``; ``engineroom.__version__`` stays engineroom's.
"""
from __future__ import annotations

import logging
import os
import sys

ORT_API_VERSION = "1.32.0"        # the onnxruntime Python API the compat module implements (tested against)
ENV_SWITCH = "ENGINEROOM_AS_ONNXRUNTIME"
_SHIM = "engineroom.compat.onnxruntime"
# onnxruntime's module names -> engineroom's modules that stand in for them
MODULES = {
    "onnxruntime": _SHIM,
    "onnxruntime.capi": f"{_SHIM}.capi",
    "onnxruntime.capi._pybind_state": f"{_SHIM}.capi._pybind_state",
    "onnxruntime.capi.onnxruntime_pybind11_state": f"{_SHIM}.capi.onnxruntime_pybind11_state",
    "onnxruntime.capi.onnxruntime_inference_collection": f"{_SHIM}.capi.onnxruntime_inference_collection",
}
log = logging.getLogger("engineroom")
_saved: dict[str, object] = {}


def install_as_onnxruntime() -> None:
    """Make ``import onnxruntime`` and its ``capi`` modules resolve to engineroom in this process.

    Code that imported the real onnxruntime before this call keeps it (a warning says so); later imports, and
    attribute look-ups through ``sys.modules``, get engineroom.
    """
    import importlib

    current = sys.modules.get("onnxruntime")
    if current is not None and getattr(current, "__name__", "") == _SHIM:
        return
    if current is not None:
        log.warning("onnxruntime was imported before engineroom.install_as_onnxruntime(): modules that imported it "
                    "already keep the real onnxruntime; later imports get engineroom")
    for name in [n for n in sys.modules if n == "onnxruntime" or n.startswith("onnxruntime.")]:
        _saved[name] = sys.modules.pop(name)
    for alias, real in MODULES.items():
        sys.modules[alias] = importlib.import_module(real)


def uninstall_onnxruntime() -> None:
    """Undo :func:`install_as_onnxruntime` (the real onnxruntime modules seen before it come back)."""
    for alias in MODULES:
        mod = sys.modules.get(alias)
        if mod is not None and getattr(mod, "__name__", "").startswith(_SHIM):
            del sys.modules[alias]
    sys.modules.update(_saved)
    _saved.clear()


def switch_is_on(environ=os.environ) -> bool:
    return environ.get(ENV_SWITCH, "").strip().lower() not in ("", "0", "false", "no", "off")


HOOK_FILE = "engineroom-as-onnxruntime.pth"
# one line, run by Python's site module at startup: imports engineroom only when the switch is on
HOOK_LINE = (f"import os; os.environ.get({ENV_SWITCH!r}, '').strip().lower() not in ('', '0', 'false', 'no', 'off') "
             f"and __import__('engineroom.compat').compat.install_as_onnxruntime()\n")
