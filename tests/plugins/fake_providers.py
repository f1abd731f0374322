"""Small providers for partition tests, registered the way a plugin is (an entry point in a
dist-info folder on sys.path, see conftest.py). Their values live in ``Boxed`` wrappers on a fake
device, so a missing copy fails loudly instead of silently computing on host arrays."""
from __future__ import annotations

from typing import ClassVar

import numpy as np

from engineroom.plugin_sdk import Device, KernelProvider, KernelRegistry
from engineroom.plugin_sdk.errors import EPFail


class Boxed:
    """A value on the fake device."""

    def __init__(self, array, device):
        self.array = array
        self.device = device


def _registry(ops, host_inputs=None):
    reg = KernelRegistry()
    impl = {"Add": np.add, "Mul": np.multiply, "Sub": np.subtract, "Relu": lambda x: np.maximum(x, 0),
            "Neg": np.negative, "Reshape": lambda x, s: x.reshape(s)}
    for op in ops:
        def factory(info, f=impl[op], host=(host_inputs or {}).get(op, ())):  # noqa: B008 - bound per op
            dev = info.provider.device

            def run(*xs):
                args = []
                for j, x in enumerate(xs):
                    if j in host:
                        assert isinstance(x, np.ndarray), f"host input {j} of {info.op_type} must be a host array"
                        args.append(x)
                    else:
                        assert isinstance(x, Boxed) and x.device == dev, (
                            f"{info.op_type} on {dev} got {type(x).__name__} — a copy is missing")
                        args.append(x.array)
                return (Boxed(np.asarray(f(*args)), dev),)
            return run
        reg.kernel(op, since=1, host_inputs=(host_inputs or {}).get(op, ()))(factory)
    return reg


class _Fake(KernelProvider):
    device_kind: ClassVar[str] = "GPU"
    vendor: ClassVar[str] = "tests"
    options: ClassVar[dict] = {"device_id": "0"}
    kind = "fake"

    def __init__(self, **opts):
        super().__init__(**opts)
        self.device = Device(self.kind, int(self.provider_options["device_id"]))
        self.copies = 0

    def to_device(self, array):
        self.copies += 1
        return Boxed(np.asarray(array), self.device)

    def to_host(self, value):
        assert isinstance(value, Boxed), "to_host of a value not on the fake device"
        return value.array


class AddMulExecutionProvider(_Fake):
    """Claims Add and Mul only."""

    name: ClassVar[str] = "AddMulExecutionProvider"
    registry: ClassVar[KernelRegistry] = _registry(["Add", "Mul", "Reshape"], {"Reshape": (1,)})


class NegExecutionProvider(_Fake):
    """Claims Neg and Relu only, on a second fake device type."""

    name: ClassVar[str] = "NegExecutionProvider"
    kind = "fake2"
    registry: ClassVar[KernelRegistry] = _registry(["Neg", "Relu"])


class BrokenExecutionProvider(_Fake):
    """Fails to start: a provider that must be reported, never silently replaced."""

    name: ClassVar[str] = "BrokenExecutionProvider"
    registry: ClassVar[KernelRegistry] = _registry(["Add"])

    def __init__(self, **opts):
        raise RuntimeError("driver not found")


class OldSdkExecutionProvider(_Fake):
    """Built for an incompatible plugin SDK."""

    name: ClassVar[str] = "OldSdkExecutionProvider"
    sdk_version: ClassVar[str] = "0.1"
    registry: ClassVar[KernelRegistry] = _registry(["Add"])


def _one_kernel(op, compute):
    """A registry with one kernel for ``op``: ``compute(provider class, *host arrays)`` gives the host result."""
    reg = KernelRegistry()

    def factory(info):
        cls, dev = type(info.provider), info.provider.device

        def run(*xs):
            assert all(isinstance(x, Boxed) and x.device == dev for x in xs), f"{op}: a copy is missing"
            return (Boxed(np.asarray(compute(cls, *(x.array for x in xs))), dev),)
        return run
    reg.kernel(op, since=1)(factory)
    return reg


def _probed_matmul(cls, a, b):
    cls.seen.append(cls.probe())
    return a @ b


def _add_unless_lost(cls, a, b):
    if cls.lost:
        raise EPFail("the device was lost")
    return a + b


class ProbeExecutionProvider(_Fake):
    """Claims MatMul; each run of its kernel appends ``probe()`` to ``seen``: what a test reads from inside a run."""

    name: ClassVar[str] = "ProbeExecutionProvider"
    kind = "probe"
    registry: ClassVar[KernelRegistry] = _one_kernel("MatMul", _probed_matmul)
    probe: ClassVar = staticmethod(lambda: None)
    seen: ClassVar[list] = []


class LostDeviceExecutionProvider(_Fake):
    """Claims Add; while ``lost`` is set its kernel raises EPFail, as a device lost in the middle of a run would."""

    name: ClassVar[str] = "LostDeviceExecutionProvider"
    kind = "lost"
    registry: ClassVar[KernelRegistry] = _one_kernel("Add", _add_unless_lost)
    lost: ClassVar[bool] = False
