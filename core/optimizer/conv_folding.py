"""Level-1 folds of per-channel affine ops into a preceding Conv's constant weights and bias:
Conv+BatchNormalization, Conv+Mul(per-channel constant), Conv+Add(per-channel constant)."""
from __future__ import annotations

import numpy as np
import onnx_ir as ir

from engineroom.optimizer.rewrite import const, new_constant, only_use


def _conv_consts(conv: ir.Node):
    if conv.op_type != "Conv" or conv.domain not in ("", "ai.onnx") or len(conv.inputs) < 2:
        return None
    w = const(conv.inputs[1])
    if w is None or w.dtype.kind != "f":
        return None
    b = const(conv.inputs[2]) if len(conv.inputs) > 2 and conv.inputs[2] is not None else np.zeros(w.shape[0], w.dtype)
    if b is None:
        return None
    return w, b


def _per_channel(c: np.ndarray | None, channels: int, rank: int) -> np.ndarray | None:
    """``c`` as a (channels,) vector if it broadcasts per channel over an NC... output of ``rank``."""
    if c is None or c.dtype.kind != "f" or c.ndim > rank:
        return None
    shape = (1,) * (rank - c.ndim) + c.shape
    if shape[0] != 1 or any(d != 1 for d in shape[2:]) or shape[1] not in (1, channels):
        return None
    return np.broadcast_to(c.reshape(-1), (channels,)).astype(np.float64)


def _set_conv(graph: ir.Graph, conv: ir.Node, w: np.ndarray, b: np.ndarray) -> None:
    wv = new_constant(graph, (conv.inputs[1].name or "W") + "_folded", w)
    bv = new_constant(graph, (conv.name or "conv") + "_bias_folded", b)
    conv.replace_input_with(1, wv)
    if len(conv.inputs) > 2:
        conv.replace_input_with(2, bv)
    else:
        conv.resize_inputs(3)
        conv.replace_input_with(2, bv)


def _bypass(graph: ir.Graph, conv: ir.Node, node: ir.Node) -> None:
    out = node.outputs[0]
    y = conv.outputs[0]
    name = out.name
    out.replace_all_uses_with(y, replace_graph_outputs=True)
    graph.remove(node, safe=True)
    out.name = None
    y.name = name


def fold_conv_affine(graph: ir.Graph) -> int:
    n = 0
    for conv in list(graph):
        got = _conv_consts(conv)
        if got is None:
            continue
        while True:
            w, b = got
            nxt = only_use(conv.outputs[0])
            if nxt is None or nxt.domain not in ("", "ai.onnx"):
                break
            rank = w.ndim
            c = w.shape[0]
            if nxt.op_type == "BatchNormalization" and len(nxt.outputs) == 1 and nxt.inputs[0] is conv.outputs[0]:
                ps = [const(v) for v in nxt.inputs[1:5]]
                if any(p is None for p in ps):
                    break
                a = nxt.attributes.get("epsilon")
                eps = a.value if a is not None else 1e-5
                scale, bias, mean, var = (p.astype(np.float64) for p in ps)
                f = scale / np.sqrt(var + eps)
                w2, b2 = w * f.reshape((-1,) + (1,) * (rank - 1)), (b - mean) * f + bias
            elif nxt.op_type in ("Mul", "Add") and len(nxt.inputs) == 2:
                k = 1 if nxt.inputs[0] is conv.outputs[0] else 0
                v = _per_channel(const(nxt.inputs[k]), c, rank)
                if v is None or nxt.inputs[1 - k] is not conv.outputs[0]:
                    break
                if nxt.op_type == "Mul":
                    w2, b2 = w * v.reshape((-1,) + (1,) * (rank - 1)), b * v
                else:
                    w2, b2 = w, b + v
            else:
                break
            got = (w2.astype(w.dtype), np.asarray(b2).astype(w.dtype))   # cast once: the graph's and the next fold's
            _set_conv(graph, conv, *got)
            _bypass(graph, conv, nxt)
            n += 1
    return n
