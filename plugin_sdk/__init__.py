"""engineroom.plugin_sdk — the stable contract between the engineroom core and execution providers.

A provider is a class derived from :class:`ExecutionProvider` (or :class:`KernelProvider` /
:class:`CompilingProvider`) registered in the entry-point group ``engineroom.providers``::

    [project.entry-points."engineroom.providers"]
    MyExecutionProvider = "my_pkg.provider:MyExecutionProvider"

The core checks ``provider.sdk_version`` against :data:`SDK_VERSION` (same major) before using it.

What this package promises, and keeps within a major version: the base classes and their hooks
(``is_available``, ``available_devices``, ``get_capability``, ``to_device``/``to_host``/``copy``,
``holds``, ``synchronize``, ``host_input_indices``, ``compile``; optional ``from_pointer``,
``unavailable_reason``),
:class:`KernelRegistry` with its ``kernel`` decorator (``prepack``, ``host_only``), :class:`KernelInfo`/
:class:`NodeView`, :class:`Capability`, :class:`GraphView` (``add_note``: the notes channel)/
:class:`GroupView`, :class:`Device`, :class:`ProviderOptionError` and the error classes of
:mod:`~engineroom.plugin_sdk.errors` (the core's own); the helpers every kernel set shares
(``host_values``, ``geometry``, ``activations``, ``grouping``) and ``discovery``. An optional classmethod
``describe_device(device) -> dict`` (``vendor``, ``vendor_id``, ``device_id``, metadata) feeds
``engineroom.get_ep_devices()``.

``engineroom.plugin_sdk.testing`` is the conformance kit authors run from pytest or as
``python -m engineroom.plugin_sdk.testing MyExecutionProvider``; ``docs/writing-a-provider.md``
walks from an empty folder to a published wheel, with the code of ``examples/third_party_provider``.
"""
from __future__ import annotations

from engineroom.plugin_sdk.device import CPU, Device
from engineroom.plugin_sdk.errors import EngineroomError, Fail, InvalidArgument

SDK_VERSION = "1.0"
# resolved on first use: `import engineroom` reaches this package for its error classes, and the
# kernel/provider contract needs NumPy (~40 ms) and the dtype helpers onnx (~0.5 s)
_LAZY = {"np_dtype": "dtypes", "onnx_elem_type": "dtypes", "ort_type_name": "dtypes",
         "KernelDef": "kernel", "KernelInfo": "kernel", "KernelRegistry": "kernel", "NodeView": "kernel",
         "Capability": "provider", "CompilingProvider": "provider", "ExecutionProvider": "provider",
         "GraphView": "provider", "GroupView": "provider", "KernelProvider": "provider",
         "ProviderOptionError": "provider"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value          # later lookups are plain attribute reads
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

ENTRY_POINT_GROUP = "engineroom.providers"


def sdk_compatible(version: str) -> bool:
    """True when a provider built for SDK ``version`` can run on this SDK (same major version)."""
    try:
        return str(version).split(".")[0] == SDK_VERSION.split(".")[0]
    except Exception:  # noqa: BLE001 - a malformed version is simply incompatible
        return False


__all__ = [
    "CPU", "Capability", "CompilingProvider", "Device", "ENTRY_POINT_GROUP", "EngineroomError",
    "ExecutionProvider", "Fail", "GraphView", "GroupView", "InvalidArgument", "KernelDef", "KernelInfo",
    "KernelProvider", "KernelRegistry", "NodeView", "ProviderOptionError", "SDK_VERSION", "np_dtype",
    "onnx_elem_type", "ort_type_name", "sdk_compatible",
]
