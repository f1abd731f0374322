"""onnxruntime's device API over engineroom's providers: ``get_ep_devices()`` and selection policies.

onnxruntime (1.22+) lists one :class:`OrtEpDevice` per (execution provider, hardware device) pair;
a session is then given providers either by device (``SessionOptions.add_provider_for_devices``)
or by a policy (``SessionOptions.set_provider_selection_policy``). Here the pairs come from the
providers discovered through the ``engineroom.providers`` entry point: each available provider
class contributes one entry per device of ``available_devices()``, typed by its ``device_kind``
("CPU" | "GPU" | "NPU").

A provider may describe its hardware further with an optional classmethod
``describe_device(device) -> dict`` whose keys ``vendor``, ``vendor_id`` and ``device_id`` fill the
:class:`OrtHardwareDevice` and whose other keys become its ``metadata``. Without it a CPU-type
device reports the host CPU's vendor (as onnxruntime does), other devices the provider's vendor.
"""
from __future__ import annotations

import enum
import functools
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from engineroom.errors import InvalidArgument

log = logging.getLogger("engineroom")


class OrtHardwareDeviceType(enum.IntEnum):
    """onnxruntime's hardware device types (same names and values)."""

    CPU = 0
    GPU = 1
    NPU = 2


class OrtExecutionProviderDevicePolicy(enum.IntEnum):
    """onnxruntime's automatic provider selection policies (same names and values)."""

    DEFAULT = 0
    PREFER_CPU = 1
    PREFER_NPU = 2
    PREFER_GPU = 3
    MAX_PERFORMANCE = 4
    MAX_EFFICIENCY = 5
    MIN_OVERALL_POWER = 6


@dataclass(frozen=True)
class OrtHardwareDevice:
    """A piece of hardware: its type, vendor (name and PCI id) and device id, as onnxruntime shows it."""

    type: OrtHardwareDeviceType
    vendor: str = ""
    vendor_id: int = 0
    device_id: int = 0
    metadata: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    def __repr__(self) -> str:
        return (f"OrtHardwareDevice(type={self.type.name}, vendor='{self.vendor}', vendor_id={self.vendor_id}, "
                f"device_id={self.device_id})")


@dataclass(frozen=True)
class OrtEpDevice:
    """One execution provider on one hardware device; pass a list of them to
    ``SessionOptions.add_provider_for_devices``. ``ep_options`` are the provider options that select
    this device (e.g. ``{"device_id": "1"}``)."""

    ep_name: str
    ep_vendor: str
    ep_metadata: dict[str, str]
    ep_options: dict[str, str]
    device: OrtHardwareDevice
    _device: Any = field(default=None, repr=False, compare=False)   # the plugin_sdk.Device behind it

    def __hash__(self) -> int:
        return hash((self.ep_name, self.device, tuple(sorted(self.ep_options.items()))))

    def __eq__(self, other) -> bool:
        return (isinstance(other, OrtEpDevice) and (self.ep_name, self.device, self.ep_options)
                == (other.ep_name, other.device, other.ep_options))

    def __repr__(self) -> str:
        return f"OrtEpDevice(ep_name='{self.ep_name}', ep_vendor='{self.ep_vendor}', device={self.device!r})"

    def memory_info(self, memory_type=0):
        """The OrtMemoryInfo of this device's memory (``OrtDeviceMemoryType.DEFAULT``; engineroom's providers have
        no separate host-accessible memory)."""
        from engineroom.memory_info import OrtMemoryInfo

        return OrtMemoryInfo.for_devices({self._device} if self._device is not None else set())


# PCI vendor ids of the CPU vendors /proc/cpuinfo names (what onnxruntime reports for the CPU device)
_CPU_VENDORS = {"GenuineIntel": ("Intel", 0x8086), "AuthenticAMD": ("AMD", 0x1022),
                "HygonGenuine": ("Hygon", 0x1D94), "CentaurHauls": ("VIA", 0x1106)}

_VENDOR_IDS = {"intel": 0x8086, "amd": 0x1022, "advanced": 0x1022, "nvidia": 0x10DE, "qualcomm": 0x5143,
               "apple": 0x106B, "arm": 0x13B5, "microsoft": 0x1414}


@functools.lru_cache(maxsize=1)
def _host_cpu() -> tuple[str, int]:
    import platform

    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("vendor_id", "CPU implementer"):
                    value = value.strip()
                    return _CPU_VENDORS.get(value, (value, 0))
    except OSError:
        pass
    return (platform.processor() or platform.machine() or "unknown", 0)


def _hardware(cls, dev) -> OrtHardwareDevice:
    kind = OrtHardwareDeviceType[str(getattr(cls, "device_kind", "CPU")).upper()]
    desc: dict[str, Any] = {}
    describe = getattr(cls, "describe_device", None)
    if callable(describe):
        try:
            desc = dict(describe(dev) or {})
        except Exception as e:  # noqa: BLE001 - a provider's description is optional; its failure is not fatal
            log.debug("%s.describe_device(%s) raised %s: %s", cls.name, dev, type(e).__name__, e)
    if kind == OrtHardwareDeviceType.CPU:
        vendor, vendor_id = _host_cpu()
        default_id = 0
    else:
        vendor, vendor_id, default_id = getattr(cls, "vendor", "") or "", 0, dev.id
    if "vendor" in desc and "vendor_id" not in desc:   # a vendor named without its id: look the id up
        vendor_id = _VENDOR_IDS.get(str(desc["vendor"]).split()[0].lower(), 0) if str(desc["vendor"]) else 0
    vendor = str(desc.pop("vendor", vendor))
    vendor_id = int(desc.pop("vendor_id", vendor_id))
    device_id = int(desc.pop("device_id", default_id))
    meta = {str(k): str(v) for k, v in desc.items()}
    meta.setdefault("device", str(dev))
    return OrtHardwareDevice(kind, vendor, vendor_id, device_id, meta)


def get_ep_devices() -> list[OrtEpDevice]:
    """One :class:`OrtEpDevice` per (available provider, device), in discovery order (CPU last)."""
    from engineroom import __version__, discovery

    out: list[OrtEpDevice] = []
    for name in discovery.available_provider_names():
        cls = discovery.provider_class(name)
        try:
            devices = list(cls.available_devices())
        except Exception as e:  # noqa: BLE001 - reported, the provider is left out
            log.warning("%s is left out of get_ep_devices(): available_devices() raised %s: %s",
                        name, type(e).__name__, e)
            continue
        meta = {"version": str(getattr(cls, "version", "") or __version__),
                "sdk_version": str(getattr(cls, "sdk_version", ""))}
        for dev in devices:
            opts = {"device_id": str(dev.id)} if "device_id" in getattr(cls, "options", {}) else {}
            out.append(OrtEpDevice(name, getattr(cls, "vendor", "") or "", dict(meta), opts, _hardware(cls, dev), dev))
    return out


# -- selection, as onnxruntime's provider_policy_context orders it -------------------------------------------
_TYPE_RANK = {OrtHardwareDeviceType.NPU: 0, OrtHardwareDeviceType.GPU: 1, OrtHardwareDeviceType.CPU: 2}
_CPU_EP = "CPUExecutionProvider"


def _sorted(devices: Sequence[OrtEpDevice]) -> list[OrtEpDevice]:
    """onnxruntime's device order: NPU, GPU, CPU; within a type, other providers before the CPU provider."""
    order = {id(d): i for i, d in enumerate(devices)}
    return sorted(devices, key=lambda d: (_TYPE_RANK[d.device.type], d.ep_name == _CPU_EP, order[id(d)]))


def select_ep_devices(devices: Sequence[OrtEpDevice], policy: OrtExecutionProviderDevicePolicy
                      ) -> list[OrtEpDevice]:
    """The devices ``policy`` picks, in priority order, the CPU provider last as fallback.

    As onnxruntime: DEFAULT and PREFER_CPU take the CPU-type devices; PREFER_GPU and MAX_PERFORMANCE
    the GPU-type ones; PREFER_NPU, MAX_EFFICIENCY and MIN_OVERALL_POWER the NPU-type ones; each then
    falls back to the CPU provider.
    """
    policy = OrtExecutionProviderDevicePolicy(policy)
    want = {OrtExecutionProviderDevicePolicy.DEFAULT: OrtHardwareDeviceType.CPU,
            OrtExecutionProviderDevicePolicy.PREFER_CPU: OrtHardwareDeviceType.CPU,
            OrtExecutionProviderDevicePolicy.PREFER_GPU: OrtHardwareDeviceType.GPU,
            OrtExecutionProviderDevicePolicy.MAX_PERFORMANCE: OrtHardwareDeviceType.GPU,
            OrtExecutionProviderDevicePolicy.PREFER_NPU: OrtHardwareDeviceType.NPU,
            OrtExecutionProviderDevicePolicy.MAX_EFFICIENCY: OrtHardwareDeviceType.NPU,
            OrtExecutionProviderDevicePolicy.MIN_OVERALL_POWER: OrtHardwareDeviceType.NPU}[policy]
    ordered = _sorted(devices)
    picked = [d for d in ordered if d.device.type == want and d.ep_name != _CPU_EP]
    picked += [d for d in ordered if d.ep_name == _CPU_EP]
    return picked


def _group_by_provider(devices: Sequence[OrtEpDevice]) -> list[tuple[str, dict[str, str]]]:
    """(provider name, options) per provider, first device of each provider first."""
    out: dict[str, dict[str, str]] = {}
    for d in devices:
        out.setdefault(d.ep_name, dict(d.ep_options))
    return list(out.items())


def providers_for_session(so) -> list[tuple[str, dict[str, str]]]:
    """The ``providers`` list a session gets from SessionOptions that carry devices or a policy."""
    if so._ep_devices:
        return [(name, dict(opts)) for name, opts in so._ep_devices]
    devices = get_ep_devices()
    if so._policy_delegate is not None:
        picked = so._policy_delegate(devices, {}, {}, len(devices))
        if not isinstance(picked, (list, tuple)) or not all(isinstance(d, OrtEpDevice) for d in picked):
            raise InvalidArgument("the provider selection policy delegate must return a list of OrtEpDevice "
                                  f"taken from the devices it was given, got {picked!r}")
        return _group_by_provider(picked)
    picked = select_ep_devices(devices, so._policy)
    if so.config("session.disable_cpu_ep_fallback") == "1" and any(d.ep_name != _CPU_EP for d in picked):
        picked = [d for d in picked if d.ep_name != _CPU_EP]    # no CPU fallback asked for
    return _group_by_provider(picked)


def provider_for_devices(devices: Sequence[OrtEpDevice], options: dict) -> tuple[str, dict[str, str]]:
    """The (name, options) entry ``SessionOptions.add_provider_for_devices`` records."""
    devices = list(devices)
    if not devices or not all(isinstance(d, OrtEpDevice) for d in devices):
        raise InvalidArgument("add_provider_for_devices expects a non-empty list of OrtEpDevice from get_ep_devices()")
    names = sorted({d.ep_name for d in devices})
    if len(names) != 1:
        raise InvalidArgument("All OrtEpDevice values in ep_devices must have the same execution provider; "
                              f"got {', '.join(names)}")
    merged = {**devices[0].ep_options, **{str(k): str(v) for k, v in dict(options or {}).items()}}
    return names[0], merged


SelectionDelegate = Callable[[list, dict, dict, int], list]

__all__ = ["OrtEpDevice", "OrtExecutionProviderDevicePolicy", "OrtHardwareDevice", "OrtHardwareDeviceType",
           "get_ep_devices", "select_ep_devices"]
