"""The training-preview ``Gradient`` op: expanded at load time into backward nodes by reverse-mode
differentiation over the forward graph it names (``xs`` → ``y``), so providers only ever see
ordinary ONNX ops. Supported forward ops are listed in ``_RULES``; others are a clear error."""
from __future__ import annotations

import numpy as np
import onnx_ir as ir

from engineroom import errors  # errors.NotImplemented: a bare NotImplemented reads as the builtin

TRAINING = "ai.onnx.preview.training"


class _Builder:
    def __init__(self, graph: ir.Graph, anchor: ir.Node):
        self.graph = graph
        self.anchor = anchor
        self.n = 0

    def op(self, op_type: str, inputs, **attrs) -> ir.Value:
        self.n += 1
        node = ir.Node("", op_type, inputs, [ir.convenience.convert_attribute(k, v) for k, v in attrs.items()],
                       num_outputs=1, name=f"{self.anchor.name or 'Gradient'}/grad_{self.n}")
        self.graph.insert_before(self.anchor, node)
        out = node.outputs[0]
        out.name = f"{node.name}_out"
        return out

    def const(self, value, like: ir.Value) -> ir.Value:
        dt = like.dtype.numpy() if like.dtype is not None else np.float32
        arr = np.asarray(value, dtype=dt)
        self.n += 1
        name = f"{self.anchor.name or 'Gradient'}/const_{self.n}"
        v = ir.Value(name=name, shape=ir.Shape(arr.shape), type=ir.TensorType(ir.DataType.from_numpy(arr.dtype)),
                     const_value=ir.tensor(arr, name=name))
        self.graph.register_initializer(v)
        return v

    def unbroadcast(self, g: ir.Value, target: ir.Value, out: ir.Value) -> ir.Value:
        """Sum ``g`` (shaped like ``out``) down to ``target``'s shape where broadcasting widened it."""
        ts, os_ = target.shape, out.shape
        if ts is not None and os_ is not None and list(ts) == list(os_):
            return g
        if ts is None or os_ is None or not all(isinstance(d, int) for d in (*ts, *os_)):
            raise errors.NotImplemented(f"Gradient: cannot undo broadcasting from {os_} to {ts} without static shapes")
        lead = len(os_) - len(ts)
        axes = list(range(lead)) + [lead + i for i, d in enumerate(ts) if d == 1 and os_[lead + i] != 1]
        if axes:
            g = self.op("ReduceSum", [g, self.const(np.array(axes, np.int64), g)], keepdims=1)
        return self.op("Reshape", [g, self.const(np.array(list(ts), np.int64), g)]) if lead or axes else g


def _rule_add(b, node, g):
    a, c = node.inputs
    out = node.outputs[0]
    sign = -1 if node.op_type == "Sub" else 1
    gb = b.unbroadcast(g, c, out)
    return [b.unbroadcast(g, a, out), gb if sign > 0 else b.op("Neg", [gb])]


def _rule_mul(b, node, g):
    a, c = node.inputs
    out = node.outputs[0]
    return [b.unbroadcast(b.op("Mul", [g, c]), a, out), b.unbroadcast(b.op("Mul", [g, a]), c, out)]


def _rule_div(b, node, g):
    a, c = node.inputs
    out = node.outputs[0]
    ga = b.op("Div", [g, c])
    gc = b.op("Neg", [b.op("Div", [b.op("Mul", [g, out]), c])])
    return [b.unbroadcast(ga, a, out), b.unbroadcast(gc, c, out)]


def _rule_unary(b, node, g):
    x, y = node.inputs[0], node.outputs[0]
    op = node.op_type
    if op == "Neg":
        return [b.op("Neg", [g])]
    if op == "Identity":
        return [g]
    if op == "Exp":
        return [b.op("Mul", [g, y])]
    if op == "Tanh":
        return [b.op("Mul", [g, b.op("Sub", [b.const(1, y), b.op("Mul", [y, y])])])]
    if op == "Sigmoid":
        return [b.op("Mul", [g, b.op("Mul", [y, b.op("Sub", [b.const(1, y), y])])])]
    if op == "Relu":
        mask = b.op("Cast", [b.op("Greater", [x, b.const(0, x)])], to=int(x.dtype))
        return [b.op("Mul", [g, mask])]
    raise AssertionError(op)


def _rule_matmul(b, node, g):
    a, c = node.inputs
    if a.shape is None or c.shape is None or len(a.shape) != 2 or len(c.shape) != 2:
        raise errors.NotImplemented("Gradient of MatMul is supported for 2-D operands only")
    return [b.op("MatMul", [g, b.op("Transpose", [c], perm=[1, 0])]),
            b.op("MatMul", [b.op("Transpose", [a], perm=[1, 0]), g])]


_RULES = {"Add": _rule_add, "Sub": _rule_add, "Mul": _rule_mul, "Div": _rule_div, "MatMul": _rule_matmul,
          **{op: _rule_unary for op in ("Neg", "Identity", "Exp", "Tanh", "Sigmoid", "Relu")}}


def expand_gradients(model: ir.Model) -> int:
    graph = model.graph
    grads = [n for n in graph if n.op_type == "Gradient" and n.domain == TRAINING]
    for node in grads:
        _expand(graph, node)
    if grads and not any(n.domain == TRAINING for n in graph):
        model.opset_imports.pop(TRAINING, None)
    return len(grads)


def _expand(graph: ir.Graph, node: ir.Node) -> None:
    attrs = node.attributes
    xs = list(attrs["xs"].value)
    y_name = attrs["y"].value
    if "zs" in attrs and list(attrs["zs"].value):
        raise errors.NotImplemented("Gradient with 'zs' is not supported")
    values = {v.name: v for v in graph.inputs}
    values.update(graph.initializers)
    for n in graph:
        for o in n.outputs:
            values[o.name] = o
    if y_name not in values or any(x not in values for x in xs):
        raise errors.NotImplemented(f"Gradient node '{node.name}': y or xs not found in the graph")
    b = _Builder(graph, node)
    y = values[y_name]
    # forward nodes between xs and y, in topological order
    forward: list[ir.Node] = []
    needed = {y_name}
    for n in reversed([n for n in graph if n is not node]):
        if any(o.name in needed for o in n.outputs):
            forward.append(n)
            needed.update(v.name for v in n.inputs if v is not None)
    grad: dict[str, ir.Value] = {y_name: b.op("ConstantOfShape", [b.op("Shape", [y])],
                                               value=ir.tensor(np.ones(1, y.dtype.numpy())))}
    for n in forward:  # reverse topological order
        g = grad.get(n.outputs[0].name)
        if g is None:
            continue
        rule = _RULES.get(n.op_type)
        if rule is None or n.domain not in ("", "ai.onnx"):
            raise errors.NotImplemented(f"Gradient through {n.op_type} (node '{n.name}') is not supported; "
                                 f"supported: {', '.join(sorted(_RULES))}")
        for inp, gi in zip(n.inputs, rule(b, n, g)):
            if inp is None:
                continue
            prev = grad.get(inp.name)
            grad[inp.name] = gi if prev is None else b.op("Add", [prev, gi])
    for k, (x, out) in enumerate(zip(xs, node.outputs)):
        gx = grad.get(x)
        if gx is None:
            gx = b.op("Mul", [values[x], b.const(0, values[x])])
        ident = ir.Node("", "Identity", [gx], num_outputs=1, name=f"{node.name or 'Gradient'}/out_{k}")
        graph.insert_before(node, ident)
        name = out.name
        out.replace_all_uses_with(ident.outputs[0], replace_graph_outputs=True)
        out.name = None
        ident.outputs[0].name = name
    graph.remove(node, safe=True)
