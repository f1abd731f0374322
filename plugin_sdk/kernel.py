"""Kernels: the ``@kernel`` registry, and what a kernel factory is told about its node (``KernelInfo``).

A kernel is two-phase, as onnxruntime's OpKernel: the planner calls the registered *factory* once per
node with a :class:`KernelInfo` and gets back the callable the plan runs, ``fn(*inputs) -> tuple``.
A factory is a function whose first parameter is named ``info`` (any others have defaults). Any
other function is a *plain* kernel: it is called per run as ``fn(*inputs, xp=..., **attributes)``
(only the keywords it accepts) and returns one output, or a tuple for several; the SDK wraps it.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable

import numpy as np

from engineroom.plugin_sdk.limits import DEFAULT_MAX_TENSOR_BYTES


@dataclass
class NodeView:
    """One node as the partitioner shows it to providers: names, types, static shapes, attributes.

    ``attrs`` has ONNX defaults applied; tensor attributes are NumPy arrays, graph attributes are
    ``onnx.GraphProto`` here and planned subgraph objects in a :class:`KernelInfo`.
    ``input_dtypes``/``output_dtypes`` are NumPy dtypes (``None`` for an absent optional input or a
    non-tensor value); shapes are tuples of ints and strings (symbolic) or ``None`` where unknown.
    ``const_inputs`` holds the value of each input known at session creation (else ``None``).
    """

    index: int
    op_type: str
    domain: str
    opset: int
    name: str
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    input_dtypes: tuple[Any, ...]
    output_dtypes: tuple[Any, ...]
    input_shapes: tuple[Any, ...]
    output_shapes: tuple[Any, ...]
    attrs: dict[str, Any]
    const_inputs: tuple[Any, ...]
    input_types: tuple[Any, ...] = ()   # onnx.TypeProto per input (None where absent/unknown)
    output_types: tuple[Any, ...] = ()
    proto: Any = None                   # the onnx.NodeProto, for compiling providers

    @property
    def num_inputs(self) -> int:
        return len(self.input_names)

    def has_input(self, i: int) -> bool:
        return i < len(self.input_names) and self.input_names[i] != ""

    def describe(self) -> str:
        dom = self.domain or "ai.onnx"
        return f"node '{self.name}' ({dom}::{self.op_type}, opset {self.opset})"


@dataclass
class KernelInfo(NodeView):
    """A :class:`NodeView` plus what the kernel runs with: the array module and its provider.

    Control-flow nodes get their graph attributes as planned subgraphs (``attrs[name]`` is callable
    as ``sub(inputs: list, outer: list) -> list``); the values they read from the enclosing scope are
    passed to the kernel after its own inputs (``num_outer`` of them, named in ``outer_names``).
    """

    xp: Any = np
    provider: Any = None
    num_outer: int = 0
    outer_names: tuple[str, ...] = ()
    # bytes a kernel may allocate for one tensor whose size comes from data (plugin_sdk.limits)
    max_tensor_bytes: int = DEFAULT_MAX_TENSOR_BYTES

    @classmethod
    def from_view(cls, view: NodeView, **extra) -> "KernelInfo":
        return cls(**{f: getattr(view, f) for f in NodeView.__dataclass_fields__}, **extra)

    def with_(self, **changes) -> "KernelInfo":
        return replace(self, **changes)


@dataclass
class KernelDef:
    """A registered kernel: which op and versions it serves, what it needs, and its factory."""

    op_type: str
    domain: str
    since: int
    factory: Callable[[KernelInfo], Callable]
    types: frozenset | None = None          # allowed dtypes of input 0 (None: any)
    host_inputs: tuple[int, ...] = ()       # inputs read on the host (shape tensors, axes)
    supports: Callable[[NodeView], str | None] | None = None  # returns why not, or None
    # inputs the factory prepares and uploads itself when they are constant (weights): left on the host
    prepack: tuple[int, ...] = ()
    # runs only on host (NumPy) arrays: a provider on a device does not claim it from a shared kernel set
    host_only: bool = False

    def why_not(self, view: NodeView) -> str | None:
        """None if this kernel can run the node, else a short reason."""
        if self.types is not None and view.input_dtypes:
            dt = view.input_dtypes[0]
            if dt is not None and np.dtype(dt) not in self.types:
                return f"input dtype {np.dtype(dt)} not supported"
        if self.supports is not None:
            return self.supports(view)
        return None


def _wrap_plain(fn: Callable) -> Callable[[KernelInfo], Callable]:
    sig = inspect.signature(fn)
    takes_all = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    kw_names = {n for n, p in sig.parameters.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}

    def factory(info: KernelInfo):
        kw = {k: v for k, v in info.attrs.items() if takes_all or k in kw_names}
        if takes_all or "xp" in kw_names:
            kw["xp"] = info.xp
        if takes_all or "info" in kw_names:
            kw["info"] = info

        def run(*inputs):
            out = fn(*inputs, **kw)
            return out if type(out) is tuple else (out,)

        return run

    factory.__name__ = fn.__name__
    factory.__wrapped__ = fn
    return factory


def _is_factory(fn: Callable) -> bool:
    params = list(inspect.signature(fn).parameters.values())
    return bool(params) and params[0].name == "info" and all(p.default is not p.empty for p in params[1:])


class KernelRegistry:
    """Kernels of one provider by (domain, op); lookup picks the highest ``since`` <= the opset."""

    def __init__(self) -> None:
        self._defs: dict[tuple[str, str], list[KernelDef]] = {}

    def kernel(self, op_type: str | Iterable[str], domain: str = "", since: int = 1, *,
               types: Iterable | None = None, host_inputs: Iterable[int] = (),
               supports: Callable[[NodeView], str | None] | None = None,
               prepack: Iterable[int] = (), host_only: bool = False):
        """Decorator registering a factory (``def f(info)``) or a plain kernel for one or more ops.

        ``types``: allowed dtypes of input 0; ``host_inputs``: inputs always read on the host;
        ``supports(view)``: why the kernel cannot run a node, or None; ``prepack``: inputs the factory
        transforms and uploads itself when constant (``info.const_inputs``), so the core leaves those
        constants on the host; ``host_only``: the kernel takes NumPy arrays only, so a provider on a
        device that shares this registry does not claim it."""
        ops = [op_type] if isinstance(op_type, str) else list(op_type)
        tset = None if types is None else frozenset(np.dtype(t) for t in types)

        def deco(fn):
            factory = fn if _is_factory(fn) else _wrap_plain(fn)
            for op in ops:
                self.register(KernelDef(op, domain, since, factory, tset, tuple(host_inputs), supports,
                                        tuple(prepack), bool(host_only)))
            return fn

        return deco

    def register(self, kdef: KernelDef) -> None:
        lst = self._defs.setdefault((kdef.domain, kdef.op_type), [])
        lst[:] = [d for d in lst if d.since != kdef.since] + [kdef]
        lst.sort(key=lambda d: d.since)

    def update(self, other: "KernelRegistry") -> None:
        """Add (or override) every kernel of ``other``."""
        for lst in other._defs.values():
            for d in lst:
                self.register(d)

    def lookup(self, domain: str, op_type: str, opset: int) -> KernelDef | None:
        best = None
        for d in self._defs.get((domain, op_type), ()):
            if d.since <= opset:
                best = d
        return best

    def versions(self, domain: str, op_type: str) -> list[int]:
        return [d.since for d in self._defs.get((domain, op_type), ())]

    def ops(self) -> list[tuple[str, str]]:
        return sorted(self._defs)

    def __contains__(self, key: tuple[str, str]) -> bool:
        return key in self._defs
