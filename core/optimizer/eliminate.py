"""Level-1 eliminations: nodes that only pass a value through (Identity, inference-mode Dropout), and
initializers nothing reads."""
from __future__ import annotations

import onnx_ir as ir


def _bypass(graph: ir.Graph, node: ir.Node) -> bool:
    """Make the consumers of node's first output read its first input instead, and drop the node."""
    src, dst = node.inputs[0], node.outputs[0]
    if dst in graph.outputs and dst.uses():   # a node reads the graph output too: keep it as it is
        return False
    if src is None or dst in graph.outputs and (src in graph.outputs or src in graph.inputs or src.is_initializer()):
        return False
    if dst in graph.outputs:
        # keep the graph output's name: rename through the producer instead when we can (a body's
        # producer, never a value of an enclosing graph: renaming that would break the outer graph)
        if src.producer() is None or len(src.uses()) != 1 or src.graph is not graph:
            return False
        idx = graph.outputs.index(dst)
        graph.outputs[idx] = src
        graph.remove(node, safe=True)  # safe: also drops the node from its inputs' uses
        name = dst.name
        dst.name = None
        src.name = name
        return True
    ir.convenience.replace_all_uses_with(dst, src)
    graph.remove(node, safe=True)
    return True


def eliminate_identity(graph: ir.Graph) -> int:
    n = 0
    for node in list(graph):
        if node.op_type == "Identity" and node.domain in ("", "ai.onnx") and _is_tensor(node.inputs[0]):
            n += _bypass(graph, node)
    return n


def eliminate_dropout(graph: ir.Graph) -> int:
    """Dropout with no mask consumer, no training_mode input and no subgraph use is an Identity."""
    n = 0
    for node in list(graph):
        if node.op_type != "Dropout" or node.domain not in ("", "ai.onnx"):
            continue
        if len(node.inputs) > 2 and node.inputs[2] is not None:
            continue  # training_mode may be set at run time
        if len(node.outputs) > 1 and (node.outputs[1].uses() or node.outputs[1] in graph.outputs):
            continue
        n += _bypass(graph, node)
    return n


def _is_tensor(v) -> bool:
    return v is not None and (v.type is None or isinstance(v.type, ir.TensorType))


def eliminate_redundant_cast(graph: ir.Graph) -> int:
    """Cast to the type its input already has."""
    n = 0
    for node in list(graph):
        if node.op_type != "Cast" or node.domain not in ("", "ai.onnx") or len(node.inputs) != 1:
            continue   # a malformed Cast is its kernel's to report, naming the node
        src = node.inputs[0]
        to = node.attributes.get("to")
        if src is None or to is None or src.type is None or not isinstance(src.type, ir.TensorType):
            continue
        if int(src.dtype) == int(to.value):
            n += _bypass(graph, node)
    return n


def eliminate_transpose_pairs(graph: ir.Graph) -> int:
    """Transpose(p1) then Transpose(p2) where the first feeds only the second: one Transpose, or none."""
    n = 0
    for node in list(graph):
        if node.op_type != "Transpose" or node.domain not in ("", "ai.onnx") or node.graph is None:
            continue
        src = node.inputs[0]
        first = src.producer() if src is not None else None
        if first is None or first.op_type != "Transpose" or first.domain not in ("", "ai.onnx"):
            continue
        if len(src.uses()) != 1 or src.is_graph_output():
            continue
        p1, p2 = first.attributes.get("perm"), node.attributes.get("perm")
        if p1 is None or p2 is None:
            continue
        p1, p2 = list(p1.value), list(p2.value)
        perm = [p1[i] for i in p2]
        node.replace_input_with(0, first.inputs[0])
        node.attributes["perm"] = ir.AttrInt64s("perm", perm)
        graph.remove(first, safe=True)
        if perm == sorted(perm):
            _bypass(graph, node)
        n += 1
    return n


def eliminate_unused_initializers(graph: ir.Graph) -> int:
    """Drop the initializers of ``graph`` that nothing reads: the folds leave behind the weights they
    replaced (a Conv's before its BatchNormalization was folded in, an int8 weight before its dequantizing
    Cast/Mul was), which the plan would otherwise hold for the session's life beside the folded ones
    (onnxruntime drops unused initializers too). Graph inputs (overridable) and outputs stay; a use from
    a nested body counts, since a body reads the enclosing graph's own value."""
    dead = [name for name, v in graph.initializers.items()
            if not v.uses() and not v.is_graph_output() and not v.is_graph_input()]
    for name in dead:
        del graph.initializers[name]
    return len(dead)
