"""Level-2 RMS normalization fusions, as onnxruntime's SimplifiedLayerNormFusion and
SkipLayerNormFusion do them.

- x·(1/√(mean(x²) + ε))·γ over the last axis, as exporters write it (T5, Llama):
  x² as Pow(x, 2) or Mul(x, x); ReduceMean over the last axis, kept; Add ε; Sqrt; then Div(1, ·) or
  Reciprocal and Mul(x, ·), or Div(x, ·); Mul γ (a constant of the last axis' length)
  → ``SimplifiedLayerNormalization`` (ONNX domain, where onnxruntime registers it).
  The float16/bfloat16 form (x = Cast(x₀ → float32) ... Cast(→ x₀'s type) before Mul γ of x₀'s type)
  takes x₀ itself: the kernel computes in float32 inside, as the casts did.
- Add(a, b) of the same shape + that node → ``com.microsoft`` ``SkipSimplifiedLayerNormalization``;
  where the sum is read elsewhere too (T5's residual stream), from the fused op's 4th output.

A pattern fuses only where it matches exactly: last axis, keepdims, a scalar ε and 1, and every
intermediate value read by the pattern alone.
"""
from __future__ import annotations

import onnx_ir as ir

from engineroom.optimizer.rewrite import const, only_use, other_input, producer, scalar

MS = "com.microsoft"
_NARROW = (ir.DataType.FLOAT16, ir.DataType.BFLOAT16)


def _op(node: ir.Node | None, op: str) -> bool:
    return node is not None and node.op_type == op and node.domain in ("", "ai.onnx")


def _square(node: ir.Node, x: ir.Value) -> bool:
    if _op(node, "Pow"):
        return node.inputs[0] is x and scalar(node.inputs[1]) == 2.0
    return _op(node, "Mul") and len(node.inputs) == 2 and node.inputs[0] is x and node.inputs[1] is x


def _normalized(sqrt: ir.Node, x: ir.Value):
    """What follows Sqrt(mean(x²) + ε): (the nodes, the value x/√·) for Div(1, s)|Reciprocal(s) then
    Mul(x, ·), or Div(x, s); None otherwise."""
    nxt = only_use(sqrt.outputs[0])
    if _op(nxt, "Div") and nxt.inputs[1] is sqrt.outputs[0] and nxt.inputs[0] is x:
        return [nxt], nxt.outputs[0]
    inv = (_op(nxt, "Div") and nxt.inputs[1] is sqrt.outputs[0] and scalar(nxt.inputs[0]) == 1.0) or _op(
        nxt, "Reciprocal")
    if not inv:
        return None
    mul = only_use(nxt.outputs[0])
    if not _op(mul, "Mul") or len(mul.inputs) != 2 or other_input(mul, nxt.outputs[0]) is not x:
        return None
    return [nxt, mul], mul.outputs[0]


def _match(sq: ir.Node, narrow_only: bool):
    """(input, γ, ε, nodes, output) of the RMS normalization that starts at ``sq`` (the square), or None."""
    x = sq.inputs[0] if sq.inputs else None
    if x is None or x.shape is None or not _square(sq, x):
        return None
    from engineroom.optimizer.fusion import _last_axis_mean     # fusion imports this module
    mean = only_use(sq.outputs[0])
    if not _last_axis_mean(mean, len(x.shape)):
        return None
    add = only_use(mean.outputs[0])
    eps = scalar(other_input(add, mean.outputs[0])) if _op(add, "Add") and len(add.inputs) == 2 else None
    sqrt = only_use(add.outputs[0]) if eps is not None and eps >= 0 else None
    if not _op(sqrt, "Sqrt"):
        return None
    got = _normalized(sqrt, x)
    if got is None:
        return None
    tail, n = got
    nodes = [sq, mean, add, sqrt, *tail]
    inp = x
    cast_in = producer(x, "Cast")
    cast_out = only_use(n)
    if (_op(cast_out, "Cast") and cast_in is not None and x.dtype == ir.DataType.FLOAT
            and cast_in.inputs[0].dtype in _NARROW and cast_out.attributes["to"].value == cast_in.inputs[0].dtype):
        inp, n = cast_in.inputs[0], cast_out.outputs[0]     # the narrow form: the casts go inside the kernel
        nodes.append(cast_out)
    elif narrow_only:
        return None
    scale = only_use(n)
    if not _op(scale, "Mul") or len(scale.inputs) != 2:
        return None
    gamma = other_input(scale, n)
    g = const(gamma)
    h = x.shape[-1]
    if g is None or g.ndim != 1 or gamma.dtype != inp.dtype or (isinstance(h, int) and g.shape[0] != h):
        return None
    if inp is not x and all(u.node in nodes for u in x.uses()) and not x.is_graph_output():
        nodes.insert(0, cast_in)
    return inp, gamma, eps, nodes + [scale], scale.outputs[0]


def fuse_rms_norm(f, narrow_only: bool = False) -> int:
    """Fuse every RMS normalization in ``f.graph`` (``f`` a fusion.Fuser), only the float16/bfloat16 form
    with its casts where ``narrow_only``; the number fused."""
    n = 0
    for sq in f.each("Pow", "Mul"):
        got = _match(sq, narrow_only)
        if got is None:
            continue
        inp, gamma, eps, nodes, y = got
        fused = ir.Node("", "SimplifiedLayerNormalization", [inp, gamma],
                        [ir.AttrInt64("axis", -1), ir.AttrFloat32("epsilon", eps)], num_outputs=1,
                        name=(sq.name or "") + "_rmsnorm")
        if f.commit_in_order(nodes, fused, [(y, fused.outputs[0])]):
            n += 1
    return n


def fuse_skip_rms_norm(f) -> int:
    """Add(a, b) + SimplifiedLayerNormalization over the last axis → SkipSimplifiedLayerNormalization."""
    from engineroom.optimizer.fusion import _same_shape     # fusion imports this module
    n = 0
    for ln in f.each("SimplifiedLayerNormalization"):
        if len(ln.inputs) != 2:
            continue
        if any(o.uses() or o.is_graph_output() for o in ln.outputs[1:]):     # inv std wanted
            continue
        x, gamma = ln.inputs
        axis = ln.attributes.get("axis")
        if x is None or x.shape is None or (axis is not None and axis.value not in (-1, len(x.shape) - 1)):
            continue
        add = producer(x, "Add")
        if add is None or len(add.inputs) != 2 or not _same_shape(add.inputs[0], add.inputs[1]):
            continue
        if const(gamma) is None or x.dtype != ir.DataType.FLOAT:
            continue
        sum_used = x.is_graph_output() or any(u.node is not ln for u in x.uses())
        eps = ln.attributes.get("epsilon")
        fused = ir.Node(MS, "SkipSimplifiedLayerNormalization", [add.inputs[0], add.inputs[1], gamma],
                        [ir.AttrFloat32("epsilon", float(eps.value) if eps is not None else 1e-5)],
                        num_outputs=4 if sum_used else 1, name=(ln.name or "") + "_skip")
        outputs = [(ln.outputs[0], fused.outputs[0])] + ([(x, fused.outputs[3])] if sum_used else [])
        if f._commit([add, ln], fused, outputs):
            n += 1
    return n
