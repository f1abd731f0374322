"""The CUDA provider's own kernels (the overrides); the provider's full registry is the CPU provider's
kernel set with these registered over it (see ``engineroom.providers.cuda``)."""
from __future__ import annotations

from engineroom.plugin_sdk import KernelRegistry

registry = KernelRegistry()
kernel = registry.kernel
