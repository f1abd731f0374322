"""engineroom presented as the ``onnxruntime`` module (see :mod:`engineroom.compat`): engineroom's public API
with onnxruntime's version numbers and package attributes."""
from __future__ import annotations

import engineroom as _er
from engineroom import *  # noqa: F403 - the whole public API, as onnxruntime's module has it
from engineroom.compat import ORT_API_VERSION
from engineroom.compat.onnxruntime import capi  # noqa: F401 - onnxruntime.capi, as the real package has it

__version__ = ORT_API_VERSION
version = ORT_API_VERSION
package_name = "onnxruntime"
cuda_version = ""          # engineroom is not built against CUDA (its CUDA provider uses CuPy's)

for _name in dir(_er):     # names engineroom exports beyond __all__ (its errors) too
    if not _name.startswith("_") and _name not in globals():
        globals()[_name] = getattr(_er, _name)


def get_version_string() -> str:
    """The onnxruntime API version engineroom implements (``engineroom.__version__`` is engineroom's)."""
    return ORT_API_VERSION


def preload_dlls(cuda: bool = True, cudnn: bool = True, msvc: bool = True, directory=None) -> None:
    """onnxruntime loads its CUDA / cuDNN / MSVC libraries here; engineroom loads no native libraries of its own
    (CuPy loads CUDA's when the CUDA provider starts), so there is nothing to preload."""


def print_debug_info() -> None:
    """Print what onnxruntime's debug dump gives: versions and the available providers."""
    print(f"onnxruntime API {ORT_API_VERSION} implemented by engineroom {_er.__version__}")
    print(_er.get_build_info())
    print("available providers:", ", ".join(_er.get_available_providers()))
