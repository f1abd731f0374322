"""The OpenCL provider's own kernel registry (never the CPU provider's); kernel modules register into it.

``prepack`` marks inputs a factory uploads itself, transformed, when they are constant (Conv/Gemm
weights, BatchNormalization statistics): the provider reports them as host-resident for such nodes
(:meth:`OpenCLExecutionProvider.host_input_indices`), so the core does not also upload the raw
constant, and the factory reads them from ``info.const_inputs``.
"""
from __future__ import annotations

from typing import Callable, Iterable

from engineroom.plugin_sdk import KernelRegistry, NodeView

registry = KernelRegistry()
PREPACK: dict[tuple[str, str, int], tuple[int, ...]] = {}


def kernel(op_type: str | Iterable[str], since: int = 1, *, types: Iterable | None = None,
           host_inputs: Iterable[int] = (), supports: Callable[[NodeView], str | None] | None = None,
           prepack: Iterable[int] = (), domain: str = ""):
    """``registry.kernel`` plus ``prepack`` (inputs the factory uploads itself when constant)."""
    ops = [op_type] if isinstance(op_type, str) else list(op_type)
    for op in ops:
        PREPACK[(domain, op, since)] = tuple(prepack)
    return registry.kernel(ops, domain=domain, since=since, types=types, host_inputs=host_inputs,
                           supports=supports)
