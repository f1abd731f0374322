"""engineroom: an ONNX inference engine with the onnxruntime Python API (``import engineroom as ort``),
whose work is done by execution providers that a partitioner assigns graph nodes to."""
from __future__ import annotations

import sys

from engineroom.devices import (
    OrtEpDevice,
    OrtExecutionProviderDevicePolicy,
    OrtHardwareDevice,
    OrtHardwareDeviceType,
    get_ep_devices,
)
from engineroom.errors import (
    EngineroomError,
    EPFail,
    Fail,
    InvalidArgument,
    InvalidGraph,
    InvalidProtobuf,
    NoModel,
    NoSuchFile,
    NotImplemented,
    RuntimeException,
)
from engineroom.logger import set_default_logger_callback, set_default_logger_severity, set_default_logger_verbosity
from engineroom.options import ExecutionMode, ExecutionOrder, GraphOptimizationLevel, RunOptions, SessionOptions
from engineroom.plugin_sdk import engine as _sdk_engine

__version__ = "0.1.0"

# Names whose modules need onnx / onnx_ir (with ml_dtypes and sympy: ~0.7 s of CPU at import) are
# imported on first use, so `import engineroom` costs about what `import onnxruntime` does.
_LAZY = {
    **{n: ("engineroom.memory_info", n) for n in (
        "OrtAllocatorType", "OrtArenaCfg", "OrtDevice", "OrtDeviceMemoryType", "OrtDeviceVendorId",
        "OrtMemoryInfo", "OrtMemoryInfoDeviceType", "OrtMemType")},
    "OrtEpAssignedNode": ("engineroom.partition", "AssignedNode"),
    "OrtEpAssignedSubgraph": ("engineroom.partition", "Partition"),
    "InferenceSession": ("engineroom.session", "InferenceSession"),
    "ModelMetadata": ("engineroom.session", "ModelMetadata"),
    "NodeArg": ("engineroom.session", "NodeArg"),
    "IOBinding": ("engineroom.iobinding", "IOBinding"),
    "SessionIOBinding": ("engineroom.iobinding", "IOBinding"),  # onnxruntime's C-level binding class
    "OrtValue": ("engineroom.values", "OrtValue"),
}


def __getattr__(name: str):
    where = _LAZY.get(name)
    if where is None:
        raise AttributeError(f"module 'engineroom' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(where[0]), where[1])
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


def get_all_providers() -> list[str]:
    """Every provider registered through the ``engineroom.providers`` entry point."""
    from engineroom import discovery

    return discovery.provider_names()


def get_available_providers() -> list[str]:
    """Registered providers that can start on this machine, in onnxruntime's order (CPU last)."""
    from engineroom import discovery

    return discovery.available_provider_names()


def get_device() -> str:
    """"GPU" when a GPU provider is available, else "CPU" (as onnxruntime reports its build)."""
    from engineroom import discovery

    for name in discovery.available_provider_names():
        cls = discovery.provider_class(name)
        if cls is not None and cls.device_kind == "GPU":
            return "GPU"
    return "CPU"


from engineroom.runtime_info import (  # noqa: E402 - the functions below import from the names above
    copy_tensors,
    disable_telemetry_events,
    enable_telemetry_events,
    get_build_info,
    get_version_string,
    has_collective_ops,
    set_global_thread_pool_sizes,
    set_seed,
)

# the SDK's conformance kit drives sessions through this API; the SDK itself imports nothing from the core
_sdk_engine.register(sys.modules[__name__])


def install_as_onnxruntime() -> None:
    """Make ``import onnxruntime`` (and its ``capi`` modules) resolve to engineroom in this process:
    see :mod:`engineroom.compat`."""
    from engineroom.compat import install_as_onnxruntime as install

    install()


__all__ = [
    "ExecutionMode", "ExecutionOrder", "IOBinding", "OrtEpAssignedNode", "OrtEpAssignedSubgraph", "OrtAllocatorType",
    "OrtArenaCfg", "OrtDevice",
    "OrtDeviceMemoryType", "OrtDeviceVendorId", "OrtMemType", "OrtMemoryInfo", "OrtMemoryInfoDeviceType",
    "SessionIOBinding", "copy_tensors", "disable_telemetry_events", "enable_telemetry_events", "get_build_info",
    "get_version_string", "has_collective_ops", "install_as_onnxruntime", "set_default_logger_callback",
    "set_default_logger_severity", "set_default_logger_verbosity", "set_global_thread_pool_sizes", "set_seed",
    "EPFail", "EngineroomError", "Fail", "GraphOptimizationLevel", "InferenceSession", "InvalidArgument",
    "InvalidGraph", "InvalidProtobuf", "ModelMetadata", "NoModel", "NoSuchFile", "NodeArg", "NotImplemented",
    "OrtValue", "RunOptions", "RuntimeException", "SessionOptions", "get_all_providers",
    "get_available_providers", "get_device",
    "OrtEpDevice", "OrtExecutionProviderDevicePolicy", "OrtHardwareDevice", "OrtHardwareDeviceType", "get_ep_devices",
]
