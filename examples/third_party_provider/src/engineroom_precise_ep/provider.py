"""The provider class: its name, vendor, device, options, and the kernels it serves."""
from __future__ import annotations

from typing import ClassVar

import numpy as np

from engineroom.plugin_sdk import KernelProvider, KernelRegistry, ProviderOptionError
from engineroom_precise_ep.kernels import registry


class PreciseExecutionProvider(KernelProvider):
    """Float kernels that accumulate in float64 (option ``accumulation="longdouble"`` for more)."""

    name: ClassVar[str] = "PreciseExecutionProvider"   # must match the entry point name
    vendor: ClassVar[str] = "Example Corp"
    device_kind: ClassVar[str] = "CPU"                 # what get_ep_devices() reports: CPU, GPU or NPU
    sdk_version: ClassVar[str] = "1.0"                 # the engineroom.plugin_sdk version this was written for
    options: ClassVar[dict] = {"accumulation": "float64"}   # every accepted option, with its default
    registry: ClassVar[KernelRegistry] = registry

    def __init__(self, **provider_options):
        super().__init__(**provider_options)            # rejects unknown options with ProviderOptionError
        accumulation = self.provider_options["accumulation"]
        if accumulation not in ("float64", "longdouble"):
            raise ProviderOptionError(f"{self.name}: accumulation must be 'float64' or 'longdouble', "
                                      f"got {accumulation!r}")
        self.accumulator = np.dtype(accumulation)

    @classmethod
    def is_available(cls) -> bool:
        return True                                     # NumPy is all it needs; must be cheap and never raise

    # Values live in host memory, so the SDK's defaults for to_device / to_host / copy are right.
