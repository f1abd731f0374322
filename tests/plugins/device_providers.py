"""Providers for the device-API, selection-policy and conformance-kit tests (test_plugin_sdk.py),
registered through an entry point the way an installed wheel registers one. Values of the GPU and
NPU providers live in ``OnDevice`` wrappers, so a missing copy fails loudly."""
from __future__ import annotations

from typing import ClassVar

import numpy as np

from engineroom.plugin_sdk import Device, ExecutionProvider, KernelProvider, KernelRegistry


class OnDevice:
    """A value on a fake device."""

    def __init__(self, array, device):
        self.array = np.array(array, copy=True)
        self.device = device


def _registry(ops: dict) -> KernelRegistry:
    reg = KernelRegistry()
    for op, fn in ops.items():
        def factory(info, fn=fn):
            dev = info.provider.device

            def run(*xs):
                for x in xs:
                    assert isinstance(x, OnDevice) and x.device == dev, f"{info.op_type}: a copy is missing"
                return (OnDevice(fn(*[x.array for x in xs]), dev),)
            return run
        reg.kernel(op, since=1)(factory)
    return reg


class _DeviceProvider(KernelProvider):
    vendor: ClassVar[str] = "tests"
    options: ClassVar[dict] = {"device_id": "0"}
    kind = "fakegpu"
    count = 1

    def __init__(self, **opts):
        super().__init__(**opts)
        self.device = Device(self.kind, int(self.provider_options["device_id"]))

    @classmethod
    def available_devices(cls):
        return [Device(cls.kind, i) for i in range(cls.count)]

    def to_device(self, array):
        return OnDevice(array, self.device)

    def to_host(self, value):
        assert isinstance(value, OnDevice), f"{self.name}.to_host got {type(value).__name__}"
        return np.array(value.array, copy=True)


class FakeGpuExecutionProvider(_DeviceProvider):
    """Two GPUs; claims Relu and Add."""

    name: ClassVar[str] = "FakeGpuExecutionProvider"
    device_kind: ClassVar[str] = "GPU"
    count = 2
    registry: ClassVar[KernelRegistry] = _registry({"Relu": lambda x: np.maximum(x, 0), "Add": np.add})

    @classmethod
    def describe_device(cls, device):
        return {"vendor": "NVIDIA", "device_id": 0x2684 + device.id, "name": f"Fake GPU {device.id}"}


class FakeNpuExecutionProvider(_DeviceProvider):
    """One NPU; claims Relu."""

    name: ClassVar[str] = "FakeNpuExecutionProvider"
    device_kind: ClassVar[str] = "NPU"
    kind = "fakenpu"
    registry: ClassVar[KernelRegistry] = _registry({"Relu": lambda x: np.maximum(x, 0)})


class HostOnlyExecutionProvider(KernelProvider):
    """A CPU-type provider other than the CPU provider; claims Relu."""

    name: ClassVar[str] = "HostOnlyExecutionProvider"
    vendor: ClassVar[str] = "tests"
    registry: ClassVar[KernelRegistry] = KernelRegistry()


HostOnlyExecutionProvider.registry.kernel("Relu", since=1)(lambda x: np.maximum(x, 0))


class WrongAddExecutionProvider(_DeviceProvider):
    """Claims Add but subtracts, and Mul but raises: the kit must count them wrong and erroneous."""

    name: ClassVar[str] = "WrongAddExecutionProvider"
    device_kind: ClassVar[str] = "GPU"
    kind = "fakegpu2"

    @staticmethod
    def _raise(*_):
        raise RuntimeError("Mul kernel crashed")

    registry: ClassVar[KernelRegistry] = _registry({"Add": np.subtract, "Mul": _raise})


class LossyCopyExecutionProvider(_DeviceProvider):
    """Loses the dtype of float16 and bool on the way back, and accepts any option."""

    name: ClassVar[str] = "LossyCopyExecutionProvider"
    device_kind: ClassVar[str] = "GPU"
    kind = "fakegpu3"
    registry: ClassVar[KernelRegistry] = KernelRegistry()

    def __init__(self, **opts):
        ExecutionProvider.__init__(self)
        self.device = Device(self.kind, 0)

    def to_host(self, value):
        a = super().to_host(value)
        return a.astype(np.float32) if a.dtype in (np.float16, np.bool_) else a


class CrashingExecutionProvider(_DeviceProvider):
    """Its Neg kernel kills the process as a segfault in a driver would (for the kit's ``isolate``)."""

    name: ClassVar[str] = "CrashingExecutionProvider"
    device_kind: ClassVar[str] = "GPU"
    kind = "fakegpu4"

    @staticmethod
    def _crash(x):
        import os
        import signal

        os.kill(os.getpid(), signal.SIGSEGV)

    registry: ClassVar[KernelRegistry] = _registry({"Neg": _crash, "Relu": lambda x: np.maximum(x, 0)})


class RaisingAvailabilityExecutionProvider(KernelProvider):
    """``is_available`` raises (the contract says it never does)."""

    name: ClassVar[str] = "RaisingAvailabilityExecutionProvider"

    @classmethod
    def is_available(cls):
        raise OSError("libfake.so: cannot open shared object file")


class badname(KernelProvider):  # noqa: N801 - a name that breaks the naming rule on purpose
    """Registered as BadNameExecutionProvider, but calls itself something else."""

    name: ClassVar[str] = "badname"

    @classmethod
    def is_available(cls):
        return False    # kept out of get_ep_devices and the policy tests; the kit checks its name anyway
