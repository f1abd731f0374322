"""Optimizations inside control-flow bodies (If branches, Loop and Scan bodies), which the passes
written for the main graph do not see on their own.

Before the level-1 passes run on a body, the constants it reads are made its own:
- an initializer of an enclosing graph read by the body becomes an initializer of the body (the same
  tensor under a new name), so folding, fusions and the kernels' weight preparation see a constant;
- a Loop-carried value that the body hands back unchanged (output ``k`` is input ``k``) and that enters
  the Loop as a constant is that constant in every iteration: the body reads it as an initializer
  (exporters such as paddle2onnx carry a recurrent cell's weights this way, so every iteration
  transposed them again).
Bodies are visited outer to inner, so a constant folded in a body reaches the bodies nested in it.

After the level-1 passes, a Loop that surely runs its body at least once (constant trip count > 0 and
constant true condition) has its loop-invariant nodes hoisted in front of it: nodes that read only
constants, values of enclosing graphs and carried values the body hands back unchanged compute the same
thing in every iteration (slanet_table's decoder multiplied its encoder features by a weight 501 times).
The guard keeps onnxruntime's behaviour: a body that never runs never raises, and hoisted nodes run once
where they would have run in the first iteration anyway.
"""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import onnx_ir as ir

from engineroom.op_facts import RANDOM_OPS

_NONDETERMINISTIC = RANDOM_OPS | {"Dropout"}


def nested_graphs(graph: ir.Graph) -> Iterator[tuple[ir.Node, ir.Graph]]:
    """(node, body) for every graph attribute of the nodes of ``graph`` (not deeper)."""
    for node in list(graph):
        yield from nested_graphs_of(node)


def _names(graph: ir.Graph, out: set) -> set:
    out.update(v.name for v in (*graph.inputs, *graph.outputs) if v.name)
    out.update(graph.initializers)
    for node in graph:
        out.update(v.name for v in node.outputs if v.name)
        for _, g in nested_graphs_of(node):
            _names(g, out)
    return out


def nested_graphs_of(node: ir.Node) -> Iterator[tuple[ir.Node, ir.Graph]]:
    for a in node.attributes.values():
        if a.type == ir.AttributeType.GRAPH:
            yield node, a.value
        elif a.type == ir.AttributeType.GRAPHS:
            for g in a.value:
                yield node, g


class _Namer:
    """Fresh value names, none used anywhere in the model."""

    def __init__(self, model: ir.Model):
        self.used = _names(model.graph, set())

    def __call__(self, base: str) -> str:
        k = 0
        name = f"{base}__body"
        while name in self.used:
            k += 1
            name = f"{base}__body{k}"
        self.used.add(name)
        return name


def _outer_constant(v: ir.Value | None, body: ir.Graph) -> bool:
    return (v is not None and v.const_value is not None and v.is_initializer() and v.graph is not body
            and not v.is_graph_input())


def _own_copy(body: ir.Graph, v: ir.Value, namer: _Namer) -> ir.Value:
    new = ir.Value(name=namer(v.name or "const"), type=v.type, shape=v.shape, const_value=v.const_value)
    body.register_initializer(new)
    return new


def inline_outer_constants(body: ir.Graph, namer: _Namer) -> int:
    """Make the enclosing graphs' initializers read by ``body``'s nodes initializers of ``body``."""
    copies: dict[ir.Value, ir.Value] = {}
    for node in list(body):
        for i, v in enumerate(node.inputs):
            if _outer_constant(v, body):
                if v not in copies:
                    copies[v] = _own_copy(body, v, namer)
                node.replace_input_with(i, copies[v])
    return len(copies)


def loop_invariant_constants(loop: ir.Node, body: ir.Graph, namer: _Namer) -> int:
    """Loop-carried values passed through unchanged whose initial value is a constant: read as one."""
    if loop.op_type != "Loop" or loop.domain not in ("", "ai.onnx"):
        return 0
    n = 0
    carried = len(loop.inputs) - 2
    for j in range(carried):
        if 2 + j >= len(body.inputs) or 1 + j >= len(body.outputs):
            break
        b_in, b_out, init = body.inputs[2 + j], body.outputs[1 + j], loop.inputs[2 + j]
        if b_out is not b_in or init is None or not _outer_constant(init, body):
            continue
        uses = [(u.node, u.idx) for u in b_in.uses() if u.node.graph is body]
        if not uses:
            continue
        const = _own_copy(body, init, namer)
        for node, idx in uses:
            node.replace_input_with(idx, const)
        n += 1
    return n


def _const_truth(v: ir.Value | None, default: bool) -> bool | None:
    """The truth of a constant scalar input (``default`` when the input is absent), None when not constant."""
    if v is None:
        return default
    if v.const_value is None or v.is_graph_input():
        return None
    arr = np.asarray(v.const_value.numpy()).reshape(-1)
    return bool(arr[0]) if arr.size == 1 else None


def _axes(node: ir.Node):
    a = node.attributes.get("axes")
    if a is not None:
        return tuple(a.value)
    v = node.inputs[1] if len(node.inputs) > 1 else None
    if v is None or v.const_value is None:
        return None
    return tuple(np.asarray(v.const_value.numpy()).reshape(-1).tolist())


def _int_zero(v: ir.Value | None) -> bool:
    if v is None or v.const_value is None:
        return False
    arr = np.asarray(v.const_value.numpy())
    return arr.dtype.kind in "iub" and arr.size == 1 and not arr.any()


def _same_value(out: ir.Value, inp: ir.Value, depth: int = 8) -> bool:
    """Whether ``out`` always equals ``inp``: the same value, or it through Identity, an integer Add of a
    one-element zero, or an Unsqueeze that a Squeeze of the same axes undoes (paddle2onnx hands carried
    values back that way). A float x + 0 is not taken: it turns -0.0 into +0.0."""
    for _ in range(depth):
        if out is inp:
            return True
        p = out.producer()
        if p is None or p.domain not in ("", "ai.onnx") or not p.inputs or p.inputs[0] is None:
            return False
        if p.op_type == "Identity" or (p.op_type == "Add" and len(p.inputs) == 2 and _int_zero(p.inputs[1])
                                       and p.inputs[0].dtype == p.inputs[1].dtype):
            out = p.inputs[0]
            continue
        q = p.inputs[0].producer() if p.op_type == "Squeeze" else None
        if q is None or q.op_type != "Unsqueeze" or q.domain not in ("", "ai.onnx") or not q.inputs:
            return False
        axes = _axes(p)
        if axes is None or axes != _axes(q) or q.inputs[0] is None:
            return False
        out = q.inputs[0]
    return False


def hoist_loop_invariants(loop: ir.Node, body: ir.Graph, namer: _Namer) -> int:
    """Move the loop-invariant nodes of a Loop that surely iterates in front of it (see the module's
    docstring); their outputs become values of the enclosing scope the body reads."""
    if loop.op_type != "Loop" or loop.domain not in ("", "ai.onnx") or loop.graph is None:
        return 0
    trip = loop.inputs[0] if len(loop.inputs) > 0 else None
    trip_ok = trip is not None and trip.const_value is not None and not trip.is_graph_input() and \
        np.asarray(trip.const_value.numpy()).size == 1 and int(np.asarray(trip.const_value.numpy()).reshape(-1)[0]) > 0
    if not trip_ok or not _const_truth(loop.inputs[1] if len(loop.inputs) > 1 else None, True):
        return 0
    outer = loop.graph
    fixed: dict[ir.Value, ir.Value] = {}     # body value -> the enclosing value it always equals
    for j in range(len(loop.inputs) - 2):
        if 2 + j < len(body.inputs) and 1 + j < len(body.outputs) and loop.inputs[2 + j] is not None \
                and _same_value(body.outputs[1 + j], body.inputs[2 + j]):
            fixed[body.inputs[2 + j]] = loop.inputs[2 + j]
    copies: dict[ir.Value, ir.Value] = {}
    moved = 0
    for node in list(body):
        if (node.domain not in ("", "ai.onnx") or node.op_type in _NONDETERMINISTIC or not node.outputs
                or any(a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for a in node.attributes.values())
                or any(o.is_graph_output() for o in node.outputs)):
            continue
        if not all(v is None or v in fixed or v.graph is not body or (v.is_initializer() and v.const_value is not None)
                   for v in node.inputs):
            continue
        for i, v in enumerate(node.inputs):
            if v is None:
                continue
            if v in fixed:
                node.replace_input_with(i, fixed[v])
            elif v.graph is body:      # a body initializer: the enclosing graph gets its own
                if v not in copies:
                    copies[v] = ir.Value(name=namer(v.name or "const"), type=v.type, shape=v.shape,
                                         const_value=v.const_value)
                    outer.register_initializer(copies[v])
                node.replace_input_with(i, copies[v])
        body.remove(node)
        outer.insert_before(loop, node)
        moved += 1
    return moved


def optimize_bodies(model: ir.Model, graph: ir.Graph, level1: Callable[[ir.Graph], None],
                    namer: _Namer | None = None) -> int:
    """Run ``level1(body)`` on every body nested in ``graph``, outer to inner, after making the
    constants it reads its own. Returns the number of bodies visited."""
    namer = namer or _Namer(model)
    n = 0
    for node, body in nested_graphs(graph):
        loop_invariant_constants(node, body, namer)
        inline_outer_constants(body, namer)
        level1(body)
        hoist_loop_invariants(node, body, namer)
        n += 1 + optimize_bodies(model, body, level1, namer)
    return n


def all_bodies(graph: ir.Graph) -> Iterator[ir.Graph]:
    """Every body nested in ``graph``, at any depth, outer to inner."""
    for _, body in nested_graphs(graph):
        yield body
        yield from all_bodies(body)
