"""Provider base classes: the contract between the engineroom core and an execution provider."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import numpy as np

from engineroom.plugin_sdk.device import CPU, Device
from engineroom.plugin_sdk.dynamic_quantization import describe as describe_declined
from engineroom.plugin_sdk.dynamic_quantization import upstream_of_dynamic_quantization
from engineroom.plugin_sdk.errors import InvalidArgument
from engineroom.plugin_sdk.kernel import KernelDef, KernelInfo, KernelRegistry, NodeView


class ProviderOptionError(InvalidArgument):
    """A provider option that the provider does not know or cannot accept (an ``InvalidArgument``, so
    a ``ValueError``): the session raises it to the user instead of falling back to another provider."""


@dataclass
class Capability:
    """What a provider claims: one node (served by a kernel) or a group of nodes (to compile)."""

    nodes: list[NodeView]
    kind: str = "kernel"          # "kernel" | "group"
    note: str = ""                # about these nodes, shown in the placement line (else GraphView.add_note)


@dataclass
class GraphView:
    """The nodes still unassigned, in topological order, with helpers for compiling providers."""

    nodes: list[NodeView]
    opsets: dict[str, int]
    ir_version: int = 10
    all_nodes: list[NodeView] = field(default_factory=list)   # the whole graph, assigned or not
    graph_inputs: tuple[str, ...] = ()
    graph_outputs: tuple[str, ...] = ()
    value_types: dict[str, Any] = field(default_factory=dict)  # name -> onnx.TypeProto
    initializers: dict[str, np.ndarray] = field(default_factory=dict)
    # what the provider being asked wants the user told (nodes it leaves and why): the placement line
    notes: list[str] = field(default_factory=list)

    def add_note(self, text: str) -> None:
        """Tell the user something about this provider's placement (the core adds the provider's name)."""
        if text:
            self.notes.append(text)


@dataclass
class GroupView:
    """A claimed group handed to ``CompilingProvider.compile``: its nodes and its boundary."""

    nodes: list[NodeView]
    inputs: list[str]             # values read from outside the group, in call order
    outputs: list[str]            # values the group produces for outside use, in return order
    opsets: dict[str, int]
    ir_version: int
    value_types: dict[str, Any]   # name -> onnx.TypeProto (inputs/outputs where known)
    initializers: dict[str, np.ndarray]   # constants the group reads (not among ``inputs``)

    def to_model(self):
        """The group as a standalone ``onnx.ModelProto`` (initializers included)."""
        from onnx import helper, numpy_helper

        def vi(name):
            t = self.value_types.get(name)
            v = helper.make_value_info(name, t) if t is not None else helper.make_empty_tensor_value_info(name)
            return v

        inits = [numpy_helper.from_array(np.asarray(a), n) for n, a in self.initializers.items()]
        graph = helper.make_graph([n.proto for n in self.nodes], "group",
                                  [vi(n) for n in self.inputs], [vi(n) for n in self.outputs], inits)
        return helper.make_model(graph, ir_version=self.ir_version,
                                 opset_imports=[helper.make_opsetid(d, v) for d, v in self.opsets.items()])


class ExecutionProvider:
    """Base of every provider. Subclasses set ``name``, ``options`` (accepted options and defaults)
    and ``device``, and override what they do better than the host defaults below."""

    name: ClassVar[str] = "ExecutionProvider"
    vendor: ClassVar[str] = ""
    device_kind: ClassVar[str] = "CPU"      # OrtHardwareDeviceType: "CPU" | "GPU" | "NPU"
    sdk_version: ClassVar[str] = "1.0"      # the plugin SDK version this provider was built for
    options: ClassVar[dict[str, Any]] = {}  # option name -> default (as strings, like ORT)
    xp: Any = np
    # whether get_capability / compile / kernels read NodeView.input_types, output_types and proto (ONNX
    # protos made per node); a session whose providers all say False builds its views without them
    reads_node_protos: ClassVar[bool] = True
    # limits this provider measured on the optimizer's fusions of its nodes, by "<fused op>.<limit>" (the
    # fusion pass named by the op reads them); none by default
    fusion_limits: ClassVar[dict[str, int]] = {}

    def __init__(self, **provider_options: Any) -> None:
        unknown = sorted(set(provider_options) - set(self.options))
        if unknown:
            known = ", ".join(sorted(self.options)) or "none"
            raise ProviderOptionError(
                f"{self.name}: unknown provider option(s) {', '.join(map(repr, unknown))}; known options: {known}")
        self.provider_options = {k: str(v) for k, v in {**self.options, **provider_options}.items()}
        self.device: Device = CPU

    @classmethod
    def is_available(cls) -> bool:
        """Cheap check that the provider can start here; never raises."""
        return True

    @classmethod
    def unavailable_reason(cls) -> str:
        """Why ``is_available()`` is False, for the session's warning ("" when it is True or unknown)."""
        return ""

    @classmethod
    def available_devices(cls) -> list[Device]:
        """Devices this provider can run on (for ``get_ep_devices``)."""
        return [CPU] if cls.is_available() else []

    @classmethod
    def prepare_machine(cls, progress: bool = True) -> dict[str, str | None]:
        """Build now, once per machine, what the provider would otherwise build on first use (compiled
        kernels, caches): ``python -m engineroom compile`` calls it. Returns {item: None when ready,
        else why not}. The default: nothing to build."""
        return {}

    def get_capability(self, view: GraphView) -> list[Capability]:
        raise NotImplementedError

    def kernel_for(self, view: NodeView) -> KernelDef | None:
        """The kernel that would run ``view`` on this provider, or None: the level-2 optimizer fuses a
        pattern only where its owner has a kernel for the fused node. None here (no kernels)."""
        return None

    # data transfer; the host defaults suit providers whose memory is the host's
    def to_device(self, array: np.ndarray) -> Any:
        return array

    def to_host(self, value: Any) -> np.ndarray:
        return value

    def copy(self, value: Any, target: "ExecutionProvider") -> Any:
        """Move ``value`` from this provider's device to ``target``'s; through the host by default."""
        return target.to_device(self.to_host(value))

    def holds(self, value: Any) -> bool:
        """Whether ``value`` is already in this provider's device memory, in the form its kernels take
        (a cheap type/device check, called by every copy step: a value the target holds is not copied).

        The default suits host providers (a NumPy array is held) and is False for a device provider
        that does not override it, so every copy to it happens, as before this hook existed.
        """
        return self.device.is_host and isinstance(value, np.ndarray)

    def from_pointer(self, pointer: int, shape: tuple[int, ...], dtype: np.dtype) -> Any:
        """A value over ``pointer`` (the address of a dense C-order buffer in this provider's device
        memory, owned by the caller) without copying it: IOBinding's ``bind_input``/``bind_output``
        with a ``buffer_ptr``. Optional; the default says the provider cannot."""
        raise NotImplementedError(f"{self.name} cannot use a raw {self.device.type} pointer; "
                                  "bind an OrtValue on its device instead")

    def synchronize(self) -> None:
        """Wait for queued device work (called before results are handed to the user)."""

    def run_scope(self, config: dict[str, str]) -> tuple[Callable[[], None], Callable[[], None]] | None:
        """``(begin, end)``: called around each run of a session using this provider (``end`` in a
        ``finally``; runs may overlap on several threads), or None (the default) for nothing. ``config``: the
        session's config entries (``SessionOptions.add_session_config_entry``). The CPU provider, where
        ``session.intra_op.allow_spinning`` is "0" (or unset while other processes keep a core busy), holds BLAS at
        one thread for the run this way."""
        return None

    def host_input_indices(self, view: NodeView) -> tuple[int, ...]:
        """Inputs of ``view`` this provider reads on the host (not copied to its device)."""
        return ()


class KernelProvider(ExecutionProvider):
    """A provider serving single nodes from a :class:`KernelRegistry`."""

    registry: ClassVar[KernelRegistry] = KernelRegistry()

    def kernel_for(self, view: NodeView) -> KernelDef | None:
        kdef = self.registry.lookup(view.domain, view.op_type, view.opset)
        if kdef is None or kdef.why_not(view) is not None:
            return None
        if kdef.host_only and not self.device.is_host:
            return None     # a NumPy-only kernel in a kernel set shared with a device (registered host_only)
        return kdef

    def get_capability(self, view: GraphView) -> list[Capability]:
        return [Capability([n]) for n in view.nodes if self.kernel_for(n) is not None]

    def host_input_indices(self, view: NodeView) -> tuple[int, ...]:
        """The kernel's ``host_inputs``, plus its ``prepack`` inputs where they are constant (the
        factory prepares and uploads those itself, so the core does not upload the raw constant)."""
        kdef = self.registry.lookup(view.domain, view.op_type, view.opset)
        if kdef is None:
            return ()
        const = view.const_inputs or ()
        packed = tuple(i for i in kdef.prepack
                       if i < len(const) and const[i] is not None and i not in kdef.host_inputs)
        return tuple(kdef.host_inputs) + packed

    def device_claims(self, view: GraphView) -> list[NodeView]:
        """The nodes a provider with its own memory should take: those its kernels handle, except
        shape arithmetic (every tensor int32/int64/bool: it feeds host-resident inputs, so computing
        it on the device only adds copies, as onnxruntime's GPU providers leave it too),
        Shape/Size of a value not produced here (they read metadata; the host has it), and the float
        arithmetic upstream of a dynamic quantizer, which needs the CPU provider's rounding to the ulp
        (``plugin_sdk.dynamic_quantization``; ``note_dynamic_quantization`` says so)."""
        claimed = {v.index for v in view.nodes if self.kernel_for(v) is not None}
        producer = {o: v.index for v in (view.all_nodes or view.nodes) for o in v.output_names if o}
        near_dq = upstream_of_dynamic_quantization(view.all_nodes or view.nodes)
        take = []
        for v in view.nodes:
            if v.index not in claimed or v.index in near_dq:
                continue
            if v.op_type in ("Shape", "Size") and not v.domain:
                if producer.get(v.input_names[0]) not in claimed:
                    continue
            elif _shape_arithmetic(v):
                continue
            take.append(v)
        return take

    def note_dynamic_quantization(self, view: GraphView) -> None:
        """Add to ``view``'s notes the nodes ``device_claims`` left for being upstream of a dynamic
        quantizer (see ``plugin_sdk.dynamic_quantization``), for the placement line."""
        near_dq = upstream_of_dynamic_quantization(view.all_nodes or view.nodes)
        left = [v for v in view.nodes if v.index in near_dq and not _shape_arithmetic(v)
                and self.kernel_for(v) is not None]
        if left:
            view.add_note(describe_declined(left))

    def create_kernel(self, info: KernelInfo) -> Callable:
        """The callable that runs ``info``'s node: ``fn(*inputs) -> tuple``."""
        kdef = self.registry.lookup(info.domain, info.op_type, info.opset)
        if kdef is None:
            have = self.registry.versions(info.domain, info.op_type)
            raise NotImplementedError(f"{self.name} has no kernel for {info.describe()}; versions: {have}")
        if info.xp is not self.xp or info.provider is not self:   # built for this provider: no second copy
            info = info.with_(xp=self.xp, provider=self)
        return kdef.factory(info)


_SHAPE_DTYPES = frozenset(np.dtype(t) for t in (np.int32, np.int64, np.bool_))


def _shape_arithmetic(v: NodeView) -> bool:
    """All present inputs and outputs are int32/int64/bool (shape arithmetic, masks of shapes)."""
    dts = [d for d in (*v.input_dtypes, *v.output_dtypes) if d is not None]
    return bool(dts) and all(np.dtype(d) in _SHAPE_DTYPES for d in dts)


class CompilingProvider(ExecutionProvider):
    """A provider that claims groups of nodes and compiles each into one callable."""

    def compile(self, group: GroupView) -> Callable:
        """Return ``fn(*inputs) -> tuple`` for the group (inputs/outputs in ``group`` order)."""
        raise NotImplementedError
