"""Level-1 rewrite: a Gather from a table computed out of constants gathers the constant rows first.

Models that ship int8 weights dequantized in the graph (``Mul(Cast(int8 table), scale)``, or
``DequantizeLinear(table, scale, zero_point)``) compute the float embedding table on every run when
constant folding leaves it alone, which it does for tensors past its size limit (a 30522 x 384
vocabulary: 11.7 M floats, computed per run, for the 96 rows a batch reads). Gather commutes with
elementwise ops, so ``Gather(f(W, c...), idx)`` becomes ``f(Gather(W, idx), c'...)``: the int8 rows are
read first and only those are converted. Each constant operand ``c`` follows the table's axes:
gathered with the same indices where it varies along the gathered axis (a per-row scale), reshaped to
the gathered shape where it does not. The numbers are the same ones, elementwise, in the same dtypes.

It runs after constant folding, so it only meets the chains folding declined (too big to keep), and
drops the chain where the Gather was its only reader.
"""
from __future__ import annotations

import numpy as np
import onnx_ir as ir

from engineroom.optimizer.rewrite import const, new_constant

_BINARY = frozenset({"Mul", "Add", "Sub", "Div"})


def gather_before_elementwise(graph: ir.Graph) -> int:
    """Rewrite each Gather whose data is an elementwise chain over one constant table (see module)."""
    n = 0
    for g in list(graph):
        if g.op_type != "Gather" or g.domain not in ("", "ai.onnx") or len(g.inputs) != 2:
            continue
        data, idx = g.inputs
        if data is None or idx is None or const(data) is not None:
            continue
        chain = _chain(data)
        if chain is None:
            continue
        c0 = chain[0]
        table = c0.inputs[0] if c0.op_type in ("Cast", "DequantizeLinear") else c0.inputs[_table_side(c0, _rank(data))]
        if _rewrite(graph, g, chain, table, idx):
            n += 1
    return n


def _rank(v: ir.Value) -> int | None:
    return len(v.shape) if v.shape is not None else None


def _chain(v: ir.Value) -> list[ir.Node] | None:
    """The nodes from the constant table to ``v``, first to last; None if ``v`` is not such a chain."""
    nodes: list[ir.Node] = []
    r = _rank(v)
    while True:
        p = v.producer()
        if p is None or p.domain not in ("", "ai.onnx") or r is None:
            return None
        if p.op_type == "Cast" and len(p.inputs) == 1:
            nodes.append(p)
            src = p.inputs[0]
        elif p.op_type == "DequantizeLinear":
            bs = p.attributes.get("block_size")
            if bs is not None and bs.value or const(p.inputs[0]) is None \
                    or any(x is not None and const(x) is None for x in p.inputs[1:]):
                return None
            nodes.append(p)
            return nodes[::-1]
        elif p.op_type in _BINARY and len(p.inputs) == 2:
            ca, cb = const(p.inputs[0]), const(p.inputs[1])
            nodes.append(p)
            if ca is not None and cb is not None:      # the table and a constant operand
                return nodes[::-1] if _table_side(p, r) is not None else None
            if ca is None and cb is None:
                return None
            k = 0 if ca is None else 1                 # the chain's side
            src = p.inputs[k]
            shape = src.shape.numpy() if src.shape is not None and src.shape.is_static() else None
            c = cb if k == 0 else ca
            if shape is None or c.ndim > r or np.broadcast_shapes(c.shape, shape) != tuple(shape):
                return None                            # the constant would widen the chain's value
        else:
            return None
        if const(src) is not None:
            return nodes[::-1] if p.op_type == "Cast" else None
        if _rank(src) != r:
            return None
        v = src


def _table_side(p: ir.Node, r: int) -> int | None:
    """Which input of a binary op over two constants is the table (the one of the output's rank; the
    other must broadcast into it)."""
    a, b = const(p.inputs[0]), const(p.inputs[1])
    if a.ndim == r and np.broadcast_shapes(a.shape, b.shape) == a.shape:
        return 0
    if b.ndim == r and np.broadcast_shapes(a.shape, b.shape) == b.shape:
        return 1
    return None


def _rewrite(graph: ir.Graph, g: ir.Node, chain: list[ir.Node], table: ir.Value, idx: ir.Value) -> bool:
    w = const(table)
    r = w.ndim
    ax = g.attributes["axis"].value if "axis" in g.attributes else 0
    if not -r <= ax < r:
        return False                       # the Gather kernel reports it, naming the node
    ax %= r
    q = _rank(idx)
    plan = []                              # (node, the table-side input index, new constant operands)
    for p in chain:
        if p.op_type == "Cast":
            plan.append((p, 0, {}))
        elif p.op_type == "DequantizeLinear":
            s = const(p.inputs[1])
            attrs = {}
            if s.size != 1:                                 # per axis: the axis moves with the index rank
                dq_ax = p.attributes["axis"].value if "axis" in p.attributes else 1
                dq_ax %= r
                if dq_ax == ax or q is None:
                    return False
                attrs["axis"] = dq_ax if dq_ax < ax else dq_ax + q - 1
            plan.append((p, 0, attrs))
        else:
            side = _table_side(p, r) if p is chain[0] else (0 if const(p.inputs[0]) is None else 1)
            if side is None:
                return False
            c = const(p.inputs[1 - side])
            c = c.reshape((1,) * (r - c.ndim) + c.shape)
            if c.shape[ax] == 1:
                if any(d != 1 for d in c.shape[:ax]):
                    if q is None:
                        return False
                    c = c.reshape(c.shape[:ax] + (1,) * q + c.shape[ax + 1:])
                else:
                    c = c.reshape(c.shape[ax + 1:])          # right-aligned: the same for any index rank
                plan.append((p, side, {"const": c}))
            else:
                plan.append((p, side, {"gather": c}))
    name = g.name or "gather"
    new_nodes: list[ir.Node] = []
    first = ir.Node("", "Gather", [table, idx], [ir.AttrInt64("axis", ax)], num_outputs=1,
                    name=f"{name}_rows")
    new_nodes.append(first)
    cur = first.outputs[0]
    for p, side, extra in plan:
        if p.op_type == "Cast":
            node = ir.Node("", "Cast", [cur], list(p.attributes.values()), num_outputs=1, name=f"{name}_{p.name}")
        elif p.op_type == "DequantizeLinear":
            attrs = [a for a in p.attributes.values() if a.name != "axis"]
            if "axis" in extra:
                attrs.append(ir.AttrInt64("axis", extra["axis"]))
            node = ir.Node("", "DequantizeLinear", [cur, *p.inputs[1:]], attrs, num_outputs=1,
                           name=f"{name}_{p.name}")
        else:
            if "const" in extra:
                other = new_constant(graph, f"{p.inputs[1 - side].name}_{name}", extra["const"])
            else:
                orig = p.inputs[1 - side]
                # the operand itself where it has the table's rank (no copy of a large constant)
                full = orig if const(orig).ndim == r else new_constant(graph, f"{orig.name}_{name}", extra["gather"])
                gn = ir.Node("", "Gather", [full, idx], [ir.AttrInt64("axis", ax)], num_outputs=1,
                             name=f"{name}_{p.name}_rows")
                new_nodes.append(gn)
                other = gn.outputs[0]
            ins = [cur, other] if side == 0 else [other, cur]
            node = ir.Node("", p.op_type, ins, list(p.attributes.values()), num_outputs=1, name=f"{name}_{p.name}")
        new_nodes.append(node)
        cur = node.outputs[0]
    graph.insert_before(g, new_nodes)
    out = g.outputs[0]
    cur.type, cur.shape = out.type, out.shape
    out_name = out.name
    out.replace_all_uses_with(cur, replace_graph_outputs=True)
    out.name = None
    cur.name = out_name
    graph.remove(g, safe=True)
    for p in reversed(chain):              # the old chain, where nothing else reads it
        if all(not o.uses() and not o.is_graph_output() for o in p.outputs):
            graph.remove(p, safe=True)
    return True
