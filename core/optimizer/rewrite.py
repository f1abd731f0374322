"""Small helpers shared by the optimizer passes: constant lookup and node replacement on ``onnx_ir``."""
from __future__ import annotations

import numpy as np
import onnx_ir as ir


def const(v: ir.Value | None) -> np.ndarray | None:
    """The value of ``v`` if it is a constant (an initializer that is not also a graph input)."""
    if v is None or v.const_value is None or v.is_graph_input():
        return None
    return v.const_value.numpy()


def scalar(v: ir.Value | None) -> float | None:
    c = const(v)
    if c is None or c.size != 1 or c.dtype.kind not in "fiu":
        return None
    return float(c.reshape(()))


def only_use(v: ir.Value) -> ir.Node | None:
    """The single consumer of ``v`` when it has exactly one and is not a graph output."""
    uses = v.uses()
    if len(uses) != 1 or v.is_graph_output():
        return None
    return uses[0].node


def producer(v: ir.Value | None, op_type: str) -> ir.Node | None:
    if v is None:
        return None
    p = v.producer()
    if p is not None and p.op_type == op_type and p.domain in ("", "ai.onnx"):
        return p
    return None


def other_input(node: ir.Node, v: ir.Value) -> ir.Value | None:
    """For a two-input node, the input that is not ``v``."""
    a, b = node.inputs[0], node.inputs[1]
    if a is v:
        return b
    if b is v:
        return a
    return None


def replace(graph: ir.Graph, old: list[ir.Node], new: ir.Node, outputs: list[tuple[ir.Value, ir.Value]]) -> None:
    """Put ``new`` where the last of ``old`` was, make consumers of each old output read the new one
    (keeping names, graph outputs included), and drop ``old``."""
    graph.insert_after(old[-1], new)
    for old_v, new_v in outputs:
        name = old_v.name
        if new_v.type is None:  # the fused value is the old one: keep its type and shape for providers
            new_v.type = old_v.type
        if new_v.shape is None:
            new_v.shape = old_v.shape
        old_v.replace_all_uses_with(new_v, replace_graph_outputs=True)
        old_v.name = None
        new_v.name = name
    graph.remove(old, safe=True)


def new_constant(graph: ir.Graph, name_hint: str, array: np.ndarray) -> ir.Value:
    """Register ``array`` as a new initializer with a fresh name."""
    name = name_hint
    k = 0
    while name in graph.initializers:
        k += 1
        name = f"{name_hint}_{k}"
    v = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
                 const_value=ir.Tensor(array, name=name))
    graph.register_initializer(v)
    return v
