"""Stages 6–7: copies across devices, kernels created once, and the flat plan the executor
(``engineroom.executor``) walks.

A plan is a list of :class:`Step` records (callable, input slots, output slots, slots to release,
kind: kernel, compiled group or copy) over one list of value slots. Slot 0 always holds None (absent
optional inputs); constants are prefilled in the template; every other slot is released right after
its last use.

Copy steps pass a value through when the target provider already ``holds`` it, so a graph input fed
already on the device that reads it (IOBinding) is not copied. A plan whose outputs end on devices
rather than on the host (IOBinding outputs bound to a device) is derived from the session's plan by
:meth:`Plan.with_output_devices`: the same kernels, without the copies to the host.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, NamedTuple

import numpy as np
import onnx_ir as ir

from engineroom.errors import Fail, InvalidGraph, NotImplemented
from engineroom.executor import Executor, Subgraph
from engineroom.partition import Partition, assign, group
from engineroom.plugin_sdk import (
    CPU,
    Device,
    ExecutionProvider,
    GraphView,
    GroupView,
    KernelInfo,
    KernelProvider,
    NodeView,
    ort_type_name,
)
from engineroom.plugin_sdk.limits import DEFAULT_MAX_TENSOR_BYTES
from engineroom.views import node_view, tensor_to_numpy

NONE_SLOT = 0


class Unclaimed(Exception):
    """Nodes no provider claimed (the session may expand function ops and try again)."""

    def __init__(self, nodes: list[ir.Node], views: list[NodeView]):
        super().__init__(f"{len(nodes)} unclaimed nodes")
        self.nodes = nodes
        self.views = views


# What a step is, for what reads the plan (errors, profiles, IOBinding's device reads, `inspect --html`).
KERNEL = "kernel"       # one node, run by its provider's kernel
COMPILED = "compiled"   # a group of nodes a compiling provider made into one callable
COPY = "copy"           # a value moved between devices (``route``: source and target providers)


class Step(NamedTuple):
    """One step of a plan: ``fn(*values of ins)`` returns the values of ``outs`` (a tuple); the slots in
    ``release`` are emptied after it (their last reader)."""

    fn: Callable
    ins: tuple[int, ...]
    outs: tuple[int, ...]
    release: tuple[int, ...]
    kind: str                               # KERNEL, COMPILED or COPY
    label: str                              # names the step in error messages
    info: tuple[str, str, str]              # (node name, op type, provider) as profiles name it
    route: tuple | None = None              # a COPY's (source provider, target provider)


@dataclass
class Plan:
    """The flat program of one graph (the main graph or a subgraph); :meth:`run` hands it to its
    :class:`~engineroom.executor.Executor`, made once here."""

    template: list
    input_names: list[str]
    input_slots: list[int]
    output_names: list[str]
    output_slots: list[int]
    steps: list[Step]
    partitions: list[Partition]
    n_copies: int
    notes: list[str] = field(default_factory=list)
    # where each graph output exists (device -> slot), where it is produced, and where it is returned
    output_places: list[dict[Device, int]] = field(default_factory=list)
    output_homes: list[Device] = field(default_factory=list)
    output_devices: list[Device] = field(default_factory=list)
    devices: dict[Device, ExecutionProvider] = field(default_factory=dict)   # a provider per device
    # (begin, end) pairs the providers run around each top-level run (ExecutionProvider.run_scope)
    run_scopes: tuple = ()

    def __post_init__(self) -> None:
        if not self.output_devices:
            self.output_devices = [CPU] * len(self.output_slots)
        self.input_devices = self._input_devices()
        self.executor = Executor(self.template, self.input_slots, self.output_slots, self.steps)

    @property
    def labels(self) -> list[str]:
        return [st.label for st in self.steps]

    @property
    def infos(self) -> list[tuple[str, str, str]]:
        return [st.info for st in self.steps]

    def run(self, feeds: list) -> list:
        if not self.run_scopes:
            return self.executor.run(feeds)
        for begin, _ in self.run_scopes:
            begin()
        try:
            return self.executor.run(feeds)
        finally:
            for _, end in reversed(self.run_scopes):
                end()

    def _input_devices(self) -> list[frozenset[Device]]:
        """Per input, the devices it is read on: a copy step's target, the host for any other step
        (and for an input returned as an output, the device that output is returned on)."""
        reads: dict[int, set[Device]] = {s: set() for s in self.input_slots}
        for st in self.steps:
            for s in st.ins:
                if s in reads:
                    reads[s].add(st.route[1].device if st.kind == COPY else CPU)
        for s, dev in zip(self.output_slots, self.output_devices):
            if s in reads:
                reads[s].add(dev)
        return [frozenset(reads[s]) for s in self.input_slots]

    def with_output_devices(self, devices: dict[int, Device]) -> "Plan":
        """This plan with output ``i`` returned on ``devices[i]`` instead of the host: the slot already
        on that device when there is one (its copy to the host is dropped if nothing else reads it),
        else one copy from where the output is produced. Kernels are shared with this plan."""
        template = list(self.template)
        steps = list(self.steps)
        out_slots = list(self.output_slots)
        out_devs = list(self.output_devices)
        for i, dev in devices.items():
            places = self.output_places[i]
            if dev in places and self.template[places[dev]] is None:
                s = places[dev]
            else:  # not there yet, or there as a constant every run shares: a fresh copy per run
                home = self.output_homes[i]
                template.append(None)
                s = len(template) - 1
                steps.append(_copy_step(self.devices[home], self.devices[dev], places[home], s,
                                        self.output_names[i], f"copy of output '{self.output_names[i]}'"))
            out_slots[i] = s
            out_devs[i] = dev
        read = {s for st in steps for s in st.ins} | set(out_slots)
        steps = _with_releases([st for st in steps if st.kind != COPY or any(o in read for o in st.outs)],
                               set(out_slots))
        return Plan(template, self.input_names, self.input_slots, self.output_names, out_slots, steps,
                    self.partitions, sum(st.kind == COPY for st in steps), self.notes,
                    self.output_places, self.output_homes, out_devs, self.devices, self.run_scopes)


def free_names(graph: ir.Graph) -> list[str]:
    """Names a graph reads from enclosing scopes (its subgraphs' included), in first-use order."""
    defined = {v.name for v in graph.inputs} | set(graph.initializers)
    for node in graph:
        defined.update(v.name for v in node.outputs)
    seen: dict[str, None] = {}
    for node in graph:
        for v in node.inputs:
            if v is not None and v.name and v.name not in defined:
                seen.setdefault(v.name)
        for a in node.attributes.values():
            for g in _graphs_of(a):
                for nm in free_names(g):
                    if nm not in defined:
                        seen.setdefault(nm)
    return list(seen)


def _signature(node: ir.Node) -> tuple:
    """The values a node reads and writes: a rewrite that rewires the node changes it, and
    ``PlanBuilder.reassign`` then rebuilds its view (a pass that retypes values in place says so instead)."""
    return tuple(map(id, node.inputs)), tuple(map(id, node.outputs))


def _outer_names(node: ir.Node) -> list[str]:
    """What a node's subgraphs (If/Loop/Scan bodies) read from enclosing scopes; [] for other nodes."""
    names: dict[str, None] = {}
    for a in node.attributes.values():
        for g in _graphs_of(a):
            names.update(dict.fromkeys(free_names(g)))
    return list(names)


def _graphs_of(a) -> list[ir.Graph]:
    if a.type == ir.AttributeType.GRAPH:
        return [a.value]
    if a.type == ir.AttributeType.GRAPHS:
        return list(a.value)
    return []


class PlanBuilder:
    """Builds the plan of one graph for an ordered list of provider instances."""

    def __init__(self, providers: list[ExecutionProvider], opsets: dict[str, int], ir_version: int,
                 host: ExecutionProvider):
        self.providers = providers
        self.opsets = opsets
        self.ir_version = ir_version
        self.host = host  # the provider that owns host memory (CPU provider, or a plain one)
        # graph -> its assignment: providers are asked once per graph, and sub-builders share it
        self._assigned: dict[ir.Graph, tuple] = {}
        self.max_tensor_bytes = DEFAULT_MAX_TENSOR_BYTES   # session.max_tensor_bytes, told to every kernel
        self.by_device: dict[Device, ExecutionProvider] = {CPU: host}
        for p in providers:
            self.by_device.setdefault(p.device, p)

    def _assign(self, graph: ir.Graph, outer_names) -> tuple:
        consts = {name: tensor_to_numpy(v.const_value) for name, v in graph.initializers.items()
                  if v.const_value is not None}
        input_names = [v.name for v in graph.inputs]
        for nm in input_names:  # overridable initializers are inputs, not constants
            consts.pop(nm, None)
        nodes = list(graph)
        protos = any(getattr(p, "reads_node_protos", True) for p in self.providers)
        views = [node_view(n, i, self.opsets, consts, protos) for i, n in enumerate(nodes)]
        outer = {i: names for i, n in enumerate(nodes) if (names := _outer_names(n))}
        gview = GraphView(nodes=[], opsets=dict(self.opsets), ir_version=self.ir_version,
                          graph_inputs=tuple(input_names) + tuple(outer_names),
                          graph_outputs=tuple(v.name for v in graph.outputs),
                          initializers=consts)
        owner, group_of, notes = assign(views, self.providers, gview)
        missing = [i for i, o in enumerate(owner) if o is None]
        if missing:
            raise Unclaimed([nodes[i] for i in missing], [views[i] for i in missing])
        return consts, input_names, nodes, views, outer, owner, group_of, notes, [_signature(n) for n in nodes]

    def owners(self, graph: ir.Graph, outer_names: list[str] = ()) -> dict[ir.Node, ExecutionProvider]:
        """Which provider takes each node of ``graph`` (the main graph, or a body reading ``outer_names``
        from enclosing scopes); may raise Unclaimed. The providers are asked here, once: ``reassign``
        updates the assignment after a rewrite, and ``build`` (of sub-plans too) uses it."""
        assigned = self._assigned[graph] = self._assign(graph, outer_names)
        return {n: self.providers[o] for n, o in zip(assigned[2], assigned[5])}

    def reassign(self, graph: ir.Graph, owners: dict[ir.Node, ExecutionProvider], retyped: bool = False) -> None:
        """The assignment of ``graph`` after passes rewrote it, without asking the providers again: each
        node's provider is the one ``owners`` names (the passes record there the nodes they make), else
        the first provider with a kernel for it. Views of nodes whose values did not change are kept,
        unless ``retyped`` (a pass changed values' types in place)."""
        consts0, input_names, nodes0, views0, _, owner0, group0, notes, sigs0 = self._assigned[graph]
        consts = {name: consts0[name] if name in consts0 and not retyped else tensor_to_numpy(v.const_value)
                  for name, v in graph.initializers.items() if v.const_value is not None and name not in input_names}
        protos = any(getattr(p, "reads_node_protos", True) for p in self.providers)
        before = {n: k for k, n in enumerate(nodes0)}
        rank = {id(p): i for i, p in enumerate(self.providers)}
        nodes = list(graph)
        views, owner, group_of, outer, sigs, missing = [], [], {}, {}, [], []
        for i, n in enumerate(nodes):
            k = before.get(n)
            sig = _signature(n)
            if k is not None and sig == sigs0[k] and not retyped:
                views.append(views0[k] if views0[k].index == i else replace(views0[k], index=i))
            else:
                views.append(node_view(n, i, self.opsets, consts, protos))
            sigs.append(sig)
            prov = owners.get(n)
            o = rank.get(id(prov)) if prov is not None else (owner0[k] if k is not None else None)
            if o is None:
                o = next((j for j, p in enumerate(self.providers) if isinstance(p, KernelProvider)
                          and p.kernel_for(views[i]) is not None), None)
            if o is None:
                missing.append(i)
            owner.append(o)
            if k is not None and k in group0:
                group_of[i] = group0[k]
            names = _outer_names(n)     # anew: a pass may have renamed what a body reads (float16 casts)
            if names:
                outer[i] = names
        if missing:
            raise Unclaimed([nodes[i] for i in missing], [views[i] for i in missing])
        self._assigned[graph] = consts, input_names, nodes, views, outer, owner, group_of, notes, sigs

    def build(self, graph: ir.Graph, outer_names: list[str] = ()) -> Plan:
        assigned = self._assigned.get(graph) or self._assign(graph, outer_names)
        consts, input_names, nodes, views, outer, owner, group_of, notes, _ = assigned
        parts = group(views, owner, group_of, self.providers, outer)
        return self._emit(graph, nodes, views, parts, consts, input_names, list(outer_names), outer, notes)

    # -- stage 6/7: slots, copies, kernels -----------------------------------------------------
    def _emit(self, graph, nodes, views, parts, consts, input_names, outer_names, outer, notes) -> Plan:
        template: list[Any] = [None]
        loc: dict[str, dict[Device, int]] = {}
        home: dict[str, Device] = {}

        def new_slot(value=None) -> int:
            template.append(value)
            return len(template) - 1

        for name, arr in consts.items():
            if isinstance(arr, np.ndarray):
                arr.flags.writeable = False  # shared by every run: a kernel must never write into it
            loc[name] = {CPU: new_slot(arr)}
            home[name] = CPU
        in_slots = []
        for name in [*input_names, *outer_names]:
            s = new_slot()
            in_slots.append(s)
            loc[name] = {CPU: s}
            home[name] = CPU

        steps: list[Step] = []
        n_copies = 0
        graph_outs = {v.name for v in graph.outputs}
        readers: dict[str, set[int]] = {}
        for k, part in enumerate(parts):
            for v in part.nodes:
                for nm in (*v.input_names, *outer.get(v.index, ())):
                    readers.setdefault(nm, set()).add(k)

        def slot_on(name: str, dev: Device) -> int:
            nonlocal n_copies
            if not name:
                return NONE_SLOT
            if name not in loc:
                raise InvalidGraph(f"value '{name}' is read before any node produces it (or is not defined)")
            places = loc[name]
            if dev in places:
                return places[dev]
            src_dev = home[name]
            src = self.by_device[src_dev]
            dst = self.by_device[dev]
            if name in consts:  # constants move once, at session creation
                s = new_slot(dst.to_device(consts[name]))
            else:
                s = new_slot()
                steps.append(_copy_step(src, dst, places[src_dev], s, name, f"copy of '{name}'"))
                n_copies += 1
            places[dev] = s
            return s

        def define(name: str, dev: Device) -> int:
            if not name:
                return new_slot()
            s = new_slot()
            loc[name] = {dev: s}
            home[name] = dev
            return s

        for k, part in enumerate(parts):
            prov = self.providers[part.provider_index]
            dev = prov.device
            if part.compiled:
                needed = {nm for v in part.nodes for nm in v.output_names
                          if nm in graph_outs or readers.get(nm, set()) - {k}}
                self._emit_compiled(part, k, prov, consts, needed, slot_on, define, steps)
                continue
            for v in part.nodes:
                host_in = set(prov.host_input_indices(v))
                ins = tuple(slot_on(nm, CPU if j in host_in else dev) for j, nm in enumerate(v.input_names))
                outer_nm = outer.get(v.index, [])
                ins += tuple(slot_on(nm, CPU) for nm in outer_nm)
                fn = self._kernel(prov, v, nodes[v.index], outer_nm)
                outs = tuple(define(nm, dev) for nm in v.output_names)
                steps.append(Step(fn, ins, outs, (), KERNEL, f"{v.describe()} on {prov.name}",
                                  (v.name or f"{v.op_type}_{v.index}", v.op_type, prov.name)))

        out_names = [v.name for v in graph.outputs]
        out_slots = [slot_on(nm, CPU) for nm in out_names]
        steps = _with_releases(steps, set(out_slots))
        return Plan(template, [*input_names, *outer_names], in_slots, out_names, out_slots, steps,
                    parts, n_copies, notes, [loc[nm] for nm in out_names], [home[nm] for nm in out_names],
                    [CPU] * len(out_names), dict(self.by_device))

    def _emit_compiled(self, part, k, prov, consts, needed, slot_on, define, steps) -> None:
        inside = {o for v in part.nodes for o in v.output_names if o}
        ins: dict[str, None] = {}
        inits: dict[str, np.ndarray] = {}
        types: dict[str, Any] = {}
        for v in part.nodes:
            for nm, tp in zip(v.input_names, v.input_types):
                if not nm or nm in inside:
                    continue
                if nm in consts:
                    inits[nm] = consts[nm]
                else:
                    ins.setdefault(nm)
                if tp is not None:
                    types[nm] = tp
            for nm, tp in zip(v.output_names, v.output_types):
                if tp is not None:
                    types[nm] = tp
        outs = [o for v in part.nodes for o in v.output_names if o and o in needed]
        gv = GroupView(part.nodes, list(ins), outs, dict(self.opsets), self.ir_version, types, inits)
        try:
            fn = prov.compile(gv)
        except Exception as e:  # noqa: BLE001 - a provider failure names the provider
            raise Fail(f"{prov.name} failed to compile a group of {len(part.nodes)} nodes "
                       f"({', '.join(sorted({v.op_type for v in part.nodes}))}): {type(e).__name__}: {e}") from e
        in_slots = tuple(slot_on(nm, prov.device) for nm in ins)
        out_slots = tuple(define(nm, prov.device) for nm in outs)
        steps.append(Step(fn, in_slots, out_slots, (), COMPILED,
                          f"compiled group of {len(part.nodes)} nodes on {prov.name}",
                          (f"{prov.name}_subgraph_{k}", f"{prov.name}_subgraph", prov.name)))

    def _kernel(self, prov: ExecutionProvider, v: NodeView, node: ir.Node, outer_nm: list[str]) -> Callable:
        extra = {}
        for name, a in node.attributes.items():
            graphs = _graphs_of(a)
            if graphs:
                subs = [Subgraph(self._sub_plan(g, outer_nm), outer_nm) for g in graphs]
                extra[name] = subs[0] if a.type == ir.AttributeType.GRAPH else subs
        if not isinstance(prov, KernelProvider):
            raise Fail(f"{prov.name} claimed {v.describe()} as a single node but serves no kernels")
        info = KernelInfo.from_view(v, num_outer=len(outer_nm), outer_names=tuple(outer_nm),
                                    max_tensor_bytes=self.max_tensor_bytes, xp=prov.xp, provider=prov)
        if extra:
            info.attrs = {**info.attrs, **extra}
        try:
            return prov.create_kernel(info)
        except (NotImplemented, Fail, InvalidGraph):
            raise
        except Exception as e:  # noqa: BLE001 - kernel factories validate attributes and constants
            raise Fail(f"{prov.name} could not create a kernel for {v.describe()}: {type(e).__name__}: {e}") from e

    def _sub_plan(self, g: ir.Graph, outer_nm: list[str]) -> Plan:
        sub = PlanBuilder(self.providers, self.opsets, self.ir_version, self.host)
        sub.max_tensor_bytes = self.max_tensor_bytes
        sub._assigned = self._assigned      # bodies assigned before the level-2 passes are not asked again
        return sub.build(g, outer_nm)


def _copy_step(src: ExecutionProvider, dst: ExecutionProvider, from_slot: int, to_slot: int, name: str,
               what: str) -> Step:
    """A copy of value ``name`` from ``src``'s device to ``dst``'s; a value ``dst`` already holds passes
    through (a graph input bound on the device that reads it)."""
    holds = dst.holds
    move = src.copy

    def copy(value):
        return (value if holds(value) else move(value, dst),)

    return Step(copy, (from_slot,), (to_slot,), (), COPY, f"{what} from {src.device} to {dst.device}",
                _copy_info(name, src, dst), (src, dst))


def _copy_info(name: str, src: ExecutionProvider, dst: ExecutionProvider) -> tuple[str, str, str]:
    """A copy step as onnxruntime's profile names it: a Memcpy node of the provider off the host."""
    if dst.device.is_host:
        return f"Memcpy_{name}_to_host", "MemcpyToHost", src.name
    if src.device.is_host:
        return f"Memcpy_{name}_from_host", "MemcpyFromHost", dst.name
    return f"Memcpy_{name}_{src.device}_to_{dst.device}", "Memcpy", dst.name


def _with_releases(steps: list[Step], keep: set[int]) -> list[Step]:
    """Each step with the slots whose last reader it is (and its outputs nobody reads) to release."""
    last: dict[int, int] = {}
    for i, st in enumerate(steps):
        for s in st.outs:
            last[s] = i
        for s in st.ins:
            last[s] = i
    rel: list[list[int]] = [[] for _ in steps]
    for s, i in last.items():
        if s != NONE_SLOT and s not in keep:
            rel[i].append(s)
    return [st._replace(release=tuple(r)) for st, r in zip(steps, rel)]


def type_string(dtype) -> str:
    from engineroom.plugin_sdk import onnx_elem_type

    try:
        return f"tensor({ort_type_name(onnx_elem_type(dtype))})"
    except Exception:  # noqa: BLE001
        return "unknown"
