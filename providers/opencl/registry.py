"""The OpenCL provider's own kernel registry (never the CPU provider's); kernel modules register into it
with ``kernel`` (the SDK's ``KernelRegistry.kernel``: its ``prepack`` marks inputs a factory uploads
itself, transformed, when they are constant, such as Gemm's weights and bias, and the SDK reports
them as host-resident so the core does not also upload the raw constant)."""
from __future__ import annotations

from engineroom.plugin_sdk import KernelRegistry

registry = KernelRegistry()
kernel = registry.kernel
