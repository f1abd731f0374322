"""A session's construction pipeline, in one direction: the loaded model (level-1 passes done) →
function ops no provider has a kernel for expanded → partition (each provider asked once per graph:
the main graph, and each If/Loop/Scan body) → level-2/3 fusions, which update that assignment → the
plan. Also the error for nodes no provider claims, and the placement line."""
from __future__ import annotations

import contextlib
import gc
import logging

import onnx_ir as ir

from engineroom.errors import Fail, NotImplemented
from engineroom.functions import expand_unclaimed_functions
from engineroom.optimizer import eliminate_unused_initializers, optimize_extended
from engineroom.optimizer.subgraphs import nested_graphs_of
from engineroom.plan import Plan, PlanBuilder, Unclaimed, free_names, type_string
from engineroom.plugin_sdk import ExecutionProvider


@contextlib.contextmanager
def collector_paused():
    """Python's cyclic garbage collector held off while a session is made. Creation allocates ~10^5
    long-lived objects (the IR, views, kernels; the modules imported on first use), so the collector
    runs hundreds of times, each pass scanning what earlier passes kept: ~0.05-0.15 s of CPU per
    session (measured on the realworld set), peak memory unchanged. What is left for it afterwards it
    collects in its next pass. The switch is the process's: other threads' cycles wait as long. A
    collector the caller disabled stays disabled."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _opsets(model: ir.Model) -> dict[str, int]:
    return {("" if d == "ai.onnx" else d): v for d, v in model.opset_imports.items()}


def bodies(graph: ir.Graph):
    """(body, names it reads from enclosing scopes) for every If/Loop/Scan body nested in ``graph``, outer
    to inner. The names are those of all the graphs of the body's node, as the plan passes them."""
    for node in graph:
        graphs = [g for _, g in nested_graphs_of(node)]
        if not graphs:
            continue
        outer = list(dict.fromkeys(nm for g in graphs for nm in free_names(g)))
        for g in graphs:
            yield g, outer
            yield from bodies(g)


def build_plan(model: ir.Model, providers: list[ExecutionProvider], level: int, host: ExecutionProvider,
               max_tensor_bytes: int, strict: bool) -> Plan:
    """The plan of ``model`` (rewritten in place by the expansions and the level-2/3 fusions). ``host``:
    the provider owning host memory; ``strict``: the CPU fallback is disabled (for the unclaimed error)."""
    expand_unclaimed_functions(model, providers, _opsets(model))
    builder = PlanBuilder(providers, _opsets(model), model.ir_version or 10, host)
    builder.max_tensor_bytes = max_tensor_bytes
    try:
        owners = builder.owners(model.graph)
    except Unclaimed as u:
        raise unclaimed_error(u.views, providers, strict) from None
    if level >= 2:
        assigned = {}
        for body, outer in bodies(model.graph):
            try:
                assigned[body] = builder.owners(body, outer)
            except Unclaimed:
                pass       # reported when the body is planned
        done = optimize_extended(model, owners, level, assigned, providers=providers)
        if any(done.values()):
            eliminate_unused_initializers(model.graph)   # what the fused kernels prepared in their own form
            builder.opsets = _opsets(model)       # the fused ops' domains
            try:
                # the float16 pass widens values in place: every view of the main graph is made again
                builder.reassign(model.graph, owners, retyped=bool(done.get("Float16InFloat32")))
                for body, body_owners in assigned.items():
                    builder.reassign(body, body_owners)
            except Unclaimed as u:
                raise unclaimed_error(u.views, providers, strict) from None
    try:
        plan = builder.build(model.graph)
    except Unclaimed as u:   # a node of a subgraph (If/Loop/Scan body) that no provider claims
        raise unclaimed_error(u.views, providers, strict) from None
    return plan


def unclaimed_error(views, providers: list[ExecutionProvider], strict: bool) -> Exception:
    """One error naming the first node no provider claimed (op, domain, opset, input types, the providers
    asked): NotImplemented, or Fail when the CPU fallback was disabled and the CPU provider is absent."""
    v = views[0]
    dom = v.domain or "ai.onnx"
    types = ", ".join(type_string(d) if d is not None else "?" for d in v.input_dtypes) or "none"
    asked = ", ".join(p.name for p in providers)
    what = (f"{v.op_type}({v.opset}) node with name '{v.name}' (domain {dom}, opset {v.opset}, "
            f"input types: {types}); providers asked: {asked}")
    if len(views) > 1:
        what += f"; {len(views) - 1} more unclaimed node(s): " + ", ".join(
            dict.fromkeys(f"{w.op_type}" for w in views[1:]))
    if strict and not any(p.name == "CPUExecutionProvider" for p in providers):
        return Fail("This session contains graph nodes that no requested execution provider can run, and "
                    "fallback to CPU EP has been explicitly disabled by the user "
                    f"(session.disable_cpu_ep_fallback=1): {what}")
    return NotImplemented(f"Could not find an implementation for {what}")


def placement(plan: Plan, providers: list[ExecutionProvider]) -> tuple[str, int]:
    """The placement line (which provider took how many nodes, the copies, the providers' notes) and
    its log level: WARNING when several providers are used or the first took nothing, else INFO."""
    total = sum(len(p.nodes) for p in plan.partitions)
    parts = []
    for prov in providers:
        nodes = [n for p in plan.partitions if p.ep_name == prov.name for n in p.nodes]
        if not nodes:
            continue
        ops = list(dict.fromkeys(n.op_type for n in nodes))
        more = ", ..." if len(ops) > 6 else ""
        parts.append(f"{prov.name} took {len(nodes)}/{total} nodes ({', '.join(ops[:6])}{more})")
    line = "; ".join(parts) or "no nodes to run"
    line += f"; {plan.n_copies} copies inserted"
    if plan.notes:
        line += " [" + "; ".join(plan.notes) + "]"
    used = {p.ep_name for p in plan.partitions}
    level = logging.WARNING if len(used) > 1 or (
        providers and used and providers[0].name not in used) else logging.INFO
    return line, level
