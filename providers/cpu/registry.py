"""The CPU provider's kernel registry; every kernel module registers into it with ``@kernel``."""
from __future__ import annotations

from engineroom.plugin_sdk import KernelRegistry

registry = KernelRegistry()
kernel = registry.kernel
