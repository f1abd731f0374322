"""OpenCLExecutionProvider: OpenCL C kernels over pyopencl (tested on PoCL's CPU device).

Values between this provider's nodes are ``pyopencl.array.Array`` in the device's memory;
``to_device``/``to_host`` are real transfers, so the core's copy nodes are real copies. Kernels live
in one module per op family (``elementwise``, ``matmul``, ``conv``, ``pool``, ``norm``, ``reduce``,
``shape``) and register into this provider's own registry; programs are compiled once per device
context (:mod:`engineroom.providers.opencl.runtime`).

pyopencl is imported lazily: importing this package (which the entry point does) needs only NumPy;
``is_available()`` imports pyopencl and lists devices once, caching the answer and the reason.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Any, ClassVar

import numpy as np

from engineroom.plugin_sdk import (
    Capability,
    Device,
    GraphView,
    KernelProvider,
    KernelRegistry,
    NodeView,
    ProviderOptionError,
)
from engineroom.plugin_sdk.errors import InvalidArgument
from engineroom.providers.opencl.common import STORABLE
from engineroom.providers.opencl.registry import registry as _registry

_NOT_KERNELS = {"registry", "runtime", "strided", "common"}
for _m in pkgutil.iter_modules(__path__):
    if _m.name not in _NOT_KERNELS and not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")

_probe: dict[str, Any] = {}


def _probe_devices() -> tuple[list, str]:
    """(devices under the default filter, why none) — computed once per process, never raises."""
    if "devices" not in _probe:
        devices: list = []
        reason = ""
        try:
            from engineroom.providers.opencl import runtime

            devices = runtime.list_devices()
            if not devices:
                reason = "pyopencl found no OpenCL platform with a device (install an ICD, e.g. pocl)"
        except ImportError as e:
            reason = f"pyopencl is not installed ({e}); pip install 'engineroom[opencl]'"
        except Exception as e:  # noqa: BLE001 - is_available never raises; the reason is kept for users
            reason = f"OpenCL is unusable here: {type(e).__name__}: {e}"
        _probe["devices"] = devices
        _probe["reason"] = reason
    return _probe["devices"], _probe["reason"]


class _DeviceKind:
    """``device_kind`` read on the class: the type of the first OpenCL device ("CPU" under PoCL)."""

    def __get__(self, obj, cls) -> str:
        if obj is not None and getattr(obj, "_kind", None):
            return obj._kind
        devices, _ = _probe_devices()
        if not devices:
            return "GPU"
        from engineroom.providers.opencl import runtime

        return runtime.device_kind(devices[0])


class OpenCLExecutionProvider(KernelProvider):
    """Runs the nodes its OpenCL kernels handle on one OpenCL device.

    Options (strings, as onnxruntime's): ``device_id`` — index among the devices that pass the
    filters; ``platform`` — substring of the platform name or vendor (e.g. "pocl", "nvidia");
    ``device_type`` — "gpu", "cpu", "accelerator" or "all".
    """

    name: ClassVar[str] = "OpenCLExecutionProvider"
    vendor: ClassVar[str] = "engineroom"
    device_kind = _DeviceKind()
    options: ClassVar[dict[str, Any]] = {"device_id": "0", "platform": "", "device_type": "all"}
    registry: ClassVar[KernelRegistry] = _registry

    def __init__(self, **provider_options: Any) -> None:
        super().__init__(**provider_options)
        from engineroom.providers.opencl import runtime

        opts = self.provider_options
        try:
            dev_id = int(opts["device_id"])
        except ValueError:
            raise ProviderOptionError(f"{self.name}: device_id must be an integer, got {opts['device_id']!r}") from None
        try:
            devices = runtime.list_devices(opts["platform"], opts["device_type"])
        except ValueError as e:
            raise ProviderOptionError(f"{self.name}: {e}") from None
        if not 0 <= dev_id < len(devices):
            names = ", ".join(f"{i}: {d.name.strip()} ({d.platform.name.strip()})" for i, d in enumerate(devices))
            raise InvalidArgument(f"{self.name}: no OpenCL device {dev_id} (platform filter {opts['platform']!r}, "
                                  f"device_type {opts['device_type']!r}); devices: {names or 'none'}")
        self.rt = runtime.runtime_for(devices[dev_id])
        self._kind = runtime.device_kind(devices[dev_id])
        self.device = Device("opencl", dev_id)
        self.xp = None  # kernels use self.rt, not an array module
        import pyopencl.array

        self._array_type = pyopencl.array.Array

    # -- availability and devices --------------------------------------------------------------
    @classmethod
    def is_available(cls) -> bool:
        return bool(_probe_devices()[0])

    @classmethod
    def unavailable_reason(cls) -> str:
        """Why ``is_available()`` is False ("" when it is True)."""
        return _probe_devices()[1]

    @classmethod
    def available_devices(cls) -> list[Device]:
        return [Device("opencl", i) for i in range(len(_probe_devices()[0]))]

    @classmethod
    def describe_device(cls, device: Device) -> dict:
        from engineroom.providers.opencl import runtime

        devices, _ = _probe_devices()
        d = devices[device.id]
        desc = {"device_id": device.id, "name": d.name.strip(), "platform": d.platform.name.strip(),
                "opencl": d.version.strip()}
        if runtime.device_kind(d) != "CPU":  # a CPU device reports the host CPU's vendor, as onnxruntime does
            desc.update(vendor=d.vendor.strip(), vendor_id=int(d.vendor_id))
        return desc

    # -- capability ----------------------------------------------------------------------------
    def kernel_for(self, view: NodeView):
        kdef = super().kernel_for(view)
        if kdef is None:
            return None
        # every tensor present must be of a known dtype this device can hold (no sequences/optionals)
        present = [d for i, d in enumerate(view.input_dtypes) if view.has_input(i)]
        present += [d for i, d in enumerate(view.output_dtypes) if view.output_names[i]]
        for dt in present:
            if dt is None or np.dtype(dt) not in STORABLE:
                return None
            if np.dtype(dt) == np.float64 and not self.rt.fp64:
                return None
        return kdef

    def get_capability(self, view: GraphView) -> list[Capability]:
        """Every node a kernel handles, except shape arithmetic, which stays on the host.

        Nodes whose tensors are all integer/bool (Squeeze/Concat/Gather/Equal over int64 shapes...)
        feed host-resident inputs (Reshape's shape, Slice's starts); computing them here would only
        add copies, so they are left to the CPU provider, as onnxruntime's GPU providers do. Shape
        and Size read only metadata: they are claimed when their input is produced on this device
        (the CPU provider would need the whole tensor copied back to read its shape), else left. Float
        arithmetic upstream of a dynamic quantizer is left too, with a note: OpenCL's float kernels are
        not the CPU provider's to the ulp, and that quantization grows an ulp into a wrong result.
        """
        self.note_dynamic_quantization(view)
        return [Capability([v]) for v in self.device_claims(view)]

    # -- data transfer -------------------------------------------------------------------------
    def to_device(self, array: np.ndarray) -> Any:
        return self.rt.to_device(np.asarray(array))

    def to_host(self, value: Any) -> np.ndarray:
        if isinstance(value, np.ndarray):
            return value
        return self.rt.to_host(value)

    def holds(self, value: Any) -> bool:
        """A pyopencl array in this device's context (what the kernels take)."""
        return isinstance(value, self._array_type) and value.context == self.rt.ctx

    def synchronize(self) -> None:
        self.rt.finish()


__all__ = ["OpenCLExecutionProvider"]
