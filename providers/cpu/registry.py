"""The CPU provider's kernel registry, which is also the kernel set other providers reuse.

Every kernel module registers into it. ``@kernel`` registers a NumPy-only kernel: one that calls
NumPy, Python loops or compiled loops on its inputs directly. ``@array_kernel`` registers a kernel
written against its array module ``xp`` (with ``array_module.arrays(xp)`` for what differs between
modules). The declaration is the SDK's ``KernelDef.host_only``, True unless a kernel says otherwise, so
a new kernel is NumPy-only until it does; a provider that runs the set on another array module takes
``registry.array_kernels()``.
"""
from __future__ import annotations

from typing import Iterable

from engineroom.plugin_sdk import KernelRegistry


class KernelSet(KernelRegistry):
    """A ``KernelRegistry`` whose kernels are NumPy-only (``host_only``) unless declared otherwise."""

    def kernel(self, op_type: str | Iterable[str], domain: str = "", since: int = 1, *,
               any_array_module: bool = False, **kw):
        """``KernelRegistry.kernel``; ``any_array_module=True`` declares the kernel written against ``xp``."""
        return super().kernel(op_type, domain, since, host_only=not any_array_module, **kw)

    def array_kernel(self, op_type: str | Iterable[str], domain: str = "", since: int = 1, **kw):
        """``kernel`` for a kernel written against its array module ``xp``."""
        return self.kernel(op_type, domain, since, any_array_module=True, **kw)

    def runs_on_any_array_module(self, domain: str, op_type: str, since: int) -> bool:
        return any(d.since == since and not d.host_only for d in self._defs.get((domain, op_type), ()))

    def array_kernels(self) -> KernelRegistry:
        """The kernels declared ``array_kernel``: the set a provider with another array module reuses."""
        out = KernelRegistry()
        for lst in self._defs.values():
            for d in lst:
                if not d.host_only:
                    out.register(d)
        return out


registry = KernelSet()
kernel = registry.kernel                # NumPy only
array_kernel = registry.array_kernel    # any array module (through xp and array_module.arrays)
