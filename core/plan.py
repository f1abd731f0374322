"""Stages 6–7: copies across devices, kernels created once, and the flat plan the executor walks.

A plan is a list of steps ``(callable, input slots, output slots, slots to release)`` over one list
of value slots. Slot 0 always holds None (absent optional inputs); constants are prefilled in the
template; every other slot is released right after its last use.

Copy steps pass a value through when the target provider already ``holds`` it, so a graph input fed
already on the device that reads it (IOBinding) is not copied. A plan whose outputs end on devices
rather than on the host (IOBinding outputs bound to a device) is derived from the session's plan by
:meth:`Plan.with_output_devices`: the same kernels, without the copies to the host.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, Callable

import numpy as np
import onnx_ir as ir

from engineroom.errors import Fail, InvalidGraph, NotImplemented, RuntimeException
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


class _NotStopped:
    terminate = False


_NOT_STOPPED = _NotStopped()
# What the run in progress on this thread was given (RunOptions, Profiler), read once per plan run, so
# subgraph plans (Loop / Scan / If bodies) see them too. Set by the session around a run.
class _Running(threading.local):
    # defaults as class attributes: measured ~0.7 us less per plan run (every Loop iteration) than reading
    # a plain threading.local's attributes with getattr(..., None)
    options = None
    profiler = None


running = _Running()


def terminated() -> Fail:
    err = Fail("Exiting due to terminate flag being set to true.")
    err._located = True
    return err


RUN_TIMEOUT_KEY = "run.timeout_ms"


class Deadline:
    """A run's RunOptions with a time limit (run config ``run.timeout_ms``): the plan reads ``terminate``
    before every step, and past the deadline that read raises the timeout error."""

    __slots__ = ("_options", "_at", "_ms")

    def __init__(self, options, ms: float):
        import time

        self._options, self._ms = options, ms
        self._at = time.monotonic() + ms / 1000.0

    def __getattr__(self, name: str):
        return getattr(self._options, name)

    @property
    def terminate(self) -> bool:
        import time

        if self._options.terminate:
            return True
        if time.monotonic() > self._at:
            err = Fail(f"Exiting because the run took longer than its time limit of {self._ms:g} ms "
                       f"(run config '{RUN_TIMEOUT_KEY}')")
            err._located = True
            raise err
        return False


class Unclaimed(Exception):
    """Nodes no provider claimed (the session may expand function ops and try again)."""

    def __init__(self, nodes: list[ir.Node], views: list[NodeView]):
        super().__init__(f"{len(nodes)} unclaimed nodes")
        self.nodes = nodes
        self.views = views


@dataclass
class Plan:
    """The flat program of one graph (the main graph or a subgraph)."""

    template: list
    input_names: list[str]
    input_slots: list[int]
    output_names: list[str]
    output_slots: list[int]
    steps: list[tuple]                  # (fn, in_slots, out_slots, release_slots)
    labels: list[str]                   # per step, for error messages
    partitions: list[Partition]
    n_copies: int
    notes: list[str] = field(default_factory=list)
    # where each graph output exists (device -> slot), where it is produced, and where it is returned
    output_places: list[dict[Device, int]] = field(default_factory=list)
    output_homes: list[Device] = field(default_factory=list)
    output_devices: list[Device] = field(default_factory=list)
    devices: dict[Device, ExecutionProvider] = field(default_factory=dict)   # a provider per device
    infos: list[tuple[str, str, str]] = field(default_factory=list)   # per step (name, op type, provider), profiling

    def __post_init__(self) -> None:
        # The executor's form of each step: an itemgetter for the inputs, the single output slot
        # when there is one, the releases or None. Half the per-step cost of the plain form.
        self._fast = [(fn, itemgetter(*ins) if ins else _no_inputs, len(ins) != 1,
                       outs[0] if len(outs) == 1 else None, outs, rel or None)
                      for fn, ins, outs, rel in self.steps]
        if not self.output_devices:
            self.output_devices = [CPU] * len(self.output_slots)
        self.input_devices = self._input_devices()

    def _input_devices(self) -> list[frozenset[Device]]:
        """Per input, the devices it is read on: a copy step's target, the host for any other step
        (and for an input returned as an output, the device that output is returned on)."""
        reads: dict[int, set[Device]] = {s: set() for s in self.input_slots}
        for fn, ins, _, _ in self.steps:
            route = getattr(fn, "route", None)
            for s in ins:
                if s in reads:
                    reads[s].add(route[1].device if route is not None else CPU)
        for s, dev in zip(self.output_slots, self.output_devices):
            if s in reads:
                reads[s].add(dev)
        return [frozenset(reads[s]) for s in self.input_slots]

    def with_output_devices(self, devices: dict[int, Device]) -> "Plan":
        """This plan with output ``i`` returned on ``devices[i]`` instead of the host: the slot already
        on that device when there is one (its copy to the host is dropped if nothing else reads it),
        else one copy from where the output is produced. Kernels are shared with this plan."""
        template = list(self.template)
        steps = [(fn, ins, outs) for fn, ins, outs, _ in self.steps]
        labels = list(self.labels)
        infos = list(self.infos)
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
                steps.append((_copy_fn(self.devices[home], self.devices[dev]), (places[home],), (s,)))
                labels.append(f"copy of output '{self.output_names[i]}' from {home} to {dev}")
                infos.append(_copy_info(self.output_names[i], self.devices[home], self.devices[dev]))
            out_slots[i] = s
            out_devs[i] = dev
        read = {s for _, ins, _ in steps for s in ins} | set(out_slots)
        kept = [k for k, (fn, _, outs) in enumerate(steps)
                if getattr(fn, "route", None) is None or any(o in read for o in outs)]
        steps = _with_releases([(*steps[k], ()) for k in kept], set(out_slots))
        return Plan(template, self.input_names, self.input_slots, self.output_names, out_slots, steps,
                    [labels[k] for k in kept], self.partitions,
                    sum(getattr(fn, "route", None) is not None for fn, *_ in steps), self.notes,
                    self.output_places, self.output_homes, out_devs, self.devices, [infos[k] for k in kept])

    def run(self, feeds: list) -> list:
        vals = self.template.copy()
        for s, v in zip(self.input_slots, feeds):
            vals[s] = v
        # RunOptions.terminate is read before every step (a plain attribute read), so another thread can stop
        # a run in progress; profiling takes its own timed loop, so this one stays as it is when it is off
        stop = getattr(running, "options", None) or _NOT_STOPPED
        i = -1
        try:
            profiler = getattr(running, "profiler", None)
            if profiler is not None:
                from engineroom.profiling import run_profiled

                try:
                    run_profiled(self, vals, profiler, stop)
                except Exception as e:
                    i = getattr(e, "_step", -1)
                    raise
                return [vals[s] for s in self.output_slots]
            for i, (fn, get, many, out1, outs, rel) in enumerate(self._fast):  # noqa: B007 - i names the step
                if stop.terminate:
                    raise terminated()
                res = fn(*get(vals)) if many else fn(get(vals))
                if out1 is not None:
                    vals[out1] = res[0]
                else:
                    for s, r in zip(outs, res):
                        vals[s] = r
                if rel is not None:
                    for s in rel:
                        vals[s] = None
        except Exception as e:
            if isinstance(e, (RuntimeException, Fail, NotImplemented)) and getattr(e, "_located", False):
                raise
            err = RuntimeException(f"Non-zero status code returned while running {self.labels[i]}: "
                                   f"{type(e).__name__}: {e}")
            err._located = True
            raise err from e
        return [vals[s] for s in self.output_slots]


def _no_inputs(vals) -> tuple:
    return ()


class Subgraph:
    """A planned graph attribute of a control-flow node: ``sub(inputs, outer) -> outputs``."""

    def __init__(self, plan: Plan, outer_names: list[str]):
        self.plan = plan
        self.input_names = plan.input_names[: len(plan.input_names) - len(outer_names)]
        self.output_names = plan.output_names
        self.outer_names = outer_names
        # per input, whether the body reads it (a Loop need not make an iteration number nobody reads)
        read = {s for _, ins, _, _ in plan.steps for s in ins} | set(plan.output_slots)
        self.reads_input = [s in read for s in plan.input_slots]

    def __call__(self, inputs: list, outer: list = ()) -> list:
        if not self.plan.steps:  # a body with no steps still stops (a Loop over it can run 2**63 times)
            stop = getattr(running, "options", None)
            if stop is not None and stop.terminate:
                raise terminated()
        return self.plan.run([*inputs, *outer])


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
        self._assigned: tuple | None = None   # (graph, assignment) from the last owners() call
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
        outer: dict[int, list[str]] = {}
        for i, n in enumerate(nodes):
            names: dict[str, None] = {}
            for a in n.attributes.values():
                for g in _graphs_of(a):
                    names.update(dict.fromkeys(free_names(g)))
            if names:
                outer[i] = list(names)
        gview = GraphView(nodes=[], opsets=dict(self.opsets), ir_version=self.ir_version,
                          graph_inputs=tuple(input_names) + tuple(outer_names),
                          graph_outputs=tuple(v.name for v in graph.outputs),
                          initializers=consts)
        owner, group_of, notes = assign(views, self.providers, gview)
        missing = [i for i, o in enumerate(owner) if o is None]
        if missing:
            raise Unclaimed([nodes[i] for i in missing], [views[i] for i in missing])
        return consts, input_names, nodes, views, outer, owner, group_of, notes

    def owners(self, graph: ir.Graph) -> dict[ir.Node, ExecutionProvider]:
        """Which provider would take each node (for provider-aware optimizations); may raise Unclaimed.
        A ``build`` of the same, unchanged graph reuses this assignment (providers are asked once)."""
        self._assigned = (graph, self._assign(graph, ()))
        _, _, nodes, _, _, owner, _, _ = self._assigned[1]
        return {n: self.providers[o] for n, o in zip(nodes, owner)}

    def build(self, graph: ir.Graph, outer_names: list[str] = ()) -> Plan:
        if self._assigned is not None and self._assigned[0] is graph and not outer_names:
            assigned = self._assigned[1]
        else:
            assigned = self._assign(graph, outer_names)
        consts, input_names, nodes, views, outer, owner, group_of, notes = assigned
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

        steps: list[tuple] = []
        labels: list[str] = []
        infos: list[tuple[str, str, str]] = []
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
                steps.append((_copy_fn(src, dst), (places[src_dev],), (s,), ()))
                labels.append(f"copy of '{name}' from {src_dev} to {dev}")
                infos.append(_copy_info(name, src, dst))
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
                self._emit_compiled(part, prov, consts, needed, slot_on, define, steps, labels)
                infos.append((f"{prov.name}_subgraph_{k}", f"{prov.name}_subgraph", prov.name))
                continue
            for v in part.nodes:
                host_in = set(prov.host_input_indices(v))
                ins = tuple(slot_on(nm, CPU if j in host_in else dev) for j, nm in enumerate(v.input_names))
                outer_nm = outer.get(v.index, [])
                ins += tuple(slot_on(nm, CPU) for nm in outer_nm)
                fn = self._kernel(prov, v, nodes[v.index], outer_nm)
                outs = tuple(define(nm, dev) for nm in v.output_names)
                steps.append((fn, ins, outs, ()))
                labels.append(f"{v.describe()} on {prov.name}")
                infos.append((v.name or f"{v.op_type}_{v.index}", v.op_type, prov.name))

        out_names = [v.name for v in graph.outputs]
        out_slots = [slot_on(nm, CPU) for nm in out_names]
        steps = _with_releases(steps, set(out_slots))
        return Plan(template, [*input_names, *outer_names], in_slots, out_names, out_slots, steps, labels,
                    parts, n_copies, notes, [loc[nm] for nm in out_names], [home[nm] for nm in out_names],
                    [CPU] * len(out_names), dict(self.by_device), infos)

    def _emit_compiled(self, part, prov, consts, needed, slot_on, define, steps, labels) -> None:
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
        steps.append((fn, in_slots, out_slots, ()))
        labels.append(f"compiled group of {len(part.nodes)} nodes on {prov.name}")

    def _kernel(self, prov: ExecutionProvider, v: NodeView, node: ir.Node, outer_nm: list[str]) -> Callable:
        extra = {}
        for name, a in node.attributes.items():
            graphs = _graphs_of(a)
            if graphs:
                subs = [Subgraph(self._sub_plan(g, outer_nm), outer_nm) for g in graphs]
                extra[name] = subs[0] if a.type == ir.AttributeType.GRAPH else subs
        info = KernelInfo.from_view(v, num_outer=len(outer_nm), outer_names=tuple(outer_nm),
                                    max_tensor_bytes=self.max_tensor_bytes)
        if extra:
            info.attrs = {**info.attrs, **extra}
        if not isinstance(prov, KernelProvider):
            raise Fail(f"{prov.name} claimed {v.describe()} as a single node but serves no kernels")
        try:
            return prov.create_kernel(info)
        except (NotImplemented, Fail, InvalidGraph):
            raise
        except Exception as e:  # noqa: BLE001 - kernel factories validate attributes and constants
            raise Fail(f"{prov.name} could not create a kernel for {v.describe()}: {type(e).__name__}: {e}") from e

    def _sub_plan(self, g: ir.Graph, outer_nm: list[str]) -> Plan:
        sub = PlanBuilder(self.providers, self.opsets, self.ir_version, self.host)
        sub.max_tensor_bytes = self.max_tensor_bytes
        return sub.build(g, outer_nm)


def _copy_fn(src: ExecutionProvider, dst: ExecutionProvider) -> Callable:
    """A copy step from ``src``'s device to ``dst``'s; a value ``dst`` already holds passes through
    (a graph input bound on the device that reads it). ``route`` marks the step as a copy."""
    holds = dst.holds
    move = src.copy

    def copy(value):
        return (value if holds(value) else move(value, dst),)

    copy.route = (src, dst)
    return copy


def _copy_info(name: str, src: ExecutionProvider, dst: ExecutionProvider) -> tuple[str, str, str]:
    """A copy step as onnxruntime's profile names it: a Memcpy node of the provider off the host."""
    if dst.device.is_host:
        return f"Memcpy_{name}_to_host", "MemcpyToHost", src.name
    if src.device.is_host:
        return f"Memcpy_{name}_from_host", "MemcpyFromHost", dst.name
    return f"Memcpy_{name}_{src.device}_to_{dst.device}", "Memcpy", dst.name


def _with_releases(steps: list[tuple], keep: set[int]) -> list[tuple]:
    """Attach to each step the slots whose last reader it is (and outputs nobody reads)."""
    last: dict[int, int] = {}
    for i, (_, ins, outs, _) in enumerate(steps):
        for s in outs:
            last[s] = i
        for s in ins:
            last[s] = i
    rel: list[list[int]] = [[] for _ in steps]
    for s, i in last.items():
        if s != NONE_SLOT and s not in keep:
            rel[i].append(s)
    return [(fn, ins, outs, tuple(r)) for (fn, ins, outs, _), r in zip(steps, rel)]


def type_string(dtype) -> str:
    from engineroom.plugin_sdk import onnx_elem_type

    try:
        return f"tensor({ort_type_name(onnx_elem_type(dtype))})"
    except Exception:  # noqa: BLE001
        return "unknown"
