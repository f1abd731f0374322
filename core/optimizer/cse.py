"""Level-1 common subexpression elimination: identical deterministic nodes reading the same inputs
with the same attributes are computed once."""
from __future__ import annotations

import onnx_ir as ir

from engineroom.op_facts import RANDOM_OPS

_NONDETERMINISTIC = RANDOM_OPS | {"Dropout"}


def _key(node: ir.Node):
    attrs = []
    for name, a in sorted(node.attributes.items()):
        if a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS):
            return None
        v = a.value
        if a.type == ir.AttributeType.TENSOR:
            v = (v.dtype, tuple(v.shape), v.numpy().tobytes())
        elif isinstance(v, list):
            v = tuple(v)
        attrs.append((name, a.type, v))
    return (node.domain, node.op_type, node.overload, tuple(id(v) for v in node.inputs), len(node.outputs),
            tuple(attrs))


def eliminate_common_subexpressions(graph: ir.Graph) -> int:
    seen: dict = {}
    n = 0
    for node in list(graph):
        if node.op_type in _NONDETERMINISTIC or not node.outputs:
            continue
        try:
            key = _key(node)
            first = seen.get(key) if key is not None else None
        except TypeError:  # unhashable attribute value (a type proto): leave the node alone
            continue
        if key is None:
            continue
        if first is None:
            seen[key] = node
            continue
        if any(o.is_graph_output() for o in node.outputs):
            continue
        for old, new in zip(node.outputs, first.outputs):
            old.replace_all_uses_with(new)
        graph.remove(node, safe=True)
        n += 1
    return n
