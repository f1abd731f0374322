"""Providers for the SDK-contract tests (test_plugin_sdk.py): a provider raising the SDK's typed errors,
and a fake-device provider whose kernels declare ``prepack`` and ``host_only`` and which tells the user
what it left through the notes channel (``GraphView.add_note``). Registered through an entry point."""
from __future__ import annotations

from typing import ClassVar

import numpy as np
from device_providers import OnDevice, _DeviceProvider

from engineroom.plugin_sdk import Capability, GraphView, KernelProvider, KernelRegistry
from engineroom.plugin_sdk.errors import InvalidArgument


class PickyExecutionProvider(KernelProvider):
    """Host provider with one device: another device_id is the user's error (InvalidArgument); option
    fail=runtime makes it fail to start the way a broken device does (a RuntimeError)."""

    name: ClassVar[str] = "PickyExecutionProvider"
    vendor: ClassVar[str] = "tests"
    options: ClassVar[dict] = {"device_id": "0", "fail": ""}
    registry: ClassVar[KernelRegistry] = KernelRegistry()

    def __init__(self, **opts):
        super().__init__(**opts)
        if self.provider_options["fail"] == "runtime":
            raise RuntimeError("the device stopped answering")
        if self.provider_options["device_id"] != "0":
            raise InvalidArgument(f"{self.name}: no device {self.provider_options['device_id']}; devices: 0")


PickyExecutionProvider.registry.kernel("Relu", since=1)(lambda x: np.maximum(x, 0))

PACKING = KernelRegistry()


@PACKING.kernel("MatMul", since=1, prepack=(1,))
def _matmul(info):
    """Prepacks a constant B itself (transposed, 'uploaded' once); a computed B arrives on the device."""
    dev = info.provider.device
    b_const = info.const_inputs[1] if len(info.const_inputs) > 1 else None
    packed = None if b_const is None else OnDevice(np.ascontiguousarray(np.asarray(b_const).T), dev)
    info.provider.prepacked += packed is not None

    def run(a, b):
        assert isinstance(a, OnDevice) and a.device == dev, "MatMul: a copy of A is missing"
        if packed is not None:
            assert isinstance(b, np.ndarray), f"MatMul: the core uploaded the prepacked constant ({type(b).__name__})"
            return (OnDevice(a.array @ packed.array.T, dev),)
        assert isinstance(b, OnDevice) and b.device == dev, "MatMul: a copy of B is missing"
        return (OnDevice(a.array @ b.array, dev),)

    return run


@PACKING.kernel("Relu", since=1)
def _relu(info):
    dev = info.provider.device

    def run(x):
        assert isinstance(x, OnDevice) and x.device == dev, "Relu: a copy is missing"
        return (OnDevice(np.maximum(x.array, 0), dev),)

    return run


PACKING.kernel("Neg", since=1, host_only=True)(lambda x: np.negative(x))   # NumPy arrays only


class PackingExecutionProvider(_DeviceProvider):
    """A fake GPU over the PACKING kernel set; notes the nodes it has a kernel for but leaves."""

    name: ClassVar[str] = "PackingExecutionProvider"
    device_kind: ClassVar[str] = "GPU"
    kind = "fakepack"
    registry: ClassVar[KernelRegistry] = PACKING

    def __init__(self, **opts):
        super().__init__(**opts)
        self.prepacked = 0

    def get_capability(self, view: GraphView) -> list[Capability]:
        caps = [Capability([v]) for v in view.nodes if self.kernel_for(v) is not None]
        left = [v.op_type for v in view.nodes
                if self.kernel_for(v) is None and self.registry.lookup(v.domain, v.op_type, v.opset) is not None]
        if left:
            view.add_note(f"left {', '.join(left)}: NumPy-only kernels")
        return caps


class HostPackingExecutionProvider(KernelProvider):
    """The same kernel set on the host: host_only kernels are claimed there."""

    name: ClassVar[str] = "HostPackingExecutionProvider"
    vendor: ClassVar[str] = "tests"
    registry: ClassVar[KernelRegistry] = PACKING
