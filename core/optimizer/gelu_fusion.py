"""Level-2 fusion of the erf form of GELU, as onnxruntime's GeluFusion: x·0.5·(1 + erf(x/√2)) → one
``com.microsoft`` ``Gelu`` (which the BiasGelu fusion then merges with a preceding bias Add).

The erf argument is Div(x, √2) or Mul(x, 1/√2); the product x·0.5·(1 + erf) in any of the three
associations exporters write: (x·(1+erf))·0.5 (Hugging Face ViT), x·(0.5·(1+erf)) (torch.onnx's
dynamo export) or (0.5·x)·(1+erf). Every intermediate value must be read by the pattern alone.
"""
from __future__ import annotations

import math

import onnx_ir as ir

from engineroom.optimizer.rewrite import only_use, other_input, producer, scalar

MS = "com.microsoft"
_TOL = 1e-4


def _near(v: float | None, want: float) -> bool:
    return v is not None and abs(v - want) <= _TOL * abs(want)


def _mul(node: ir.Node | None) -> bool:
    return node is not None and node.op_type == "Mul" and node.domain in ("", "ai.onnx") and len(node.inputs) == 2


def _erf_input(erf: ir.Node) -> tuple[ir.Value, ir.Node] | None:
    """(x, the Div/Mul node) for erf(x/√2)."""
    t = erf.inputs[0]
    d = producer(t, "Div")
    if d is not None and _near(scalar(d.inputs[1]), math.sqrt(2.0)):
        return d.inputs[0], d
    m = producer(t, "Mul")
    if _mul(m):
        for k in (0, 1):
            if _near(scalar(m.inputs[k]), math.sqrt(0.5)):
                return m.inputs[1 - k], m
    return None


def _match(erf: ir.Node):
    """(x, nodes, output) of the GELU around ``erf``, or None."""
    got = _erf_input(erf)
    if got is None or only_use(erf.inputs[0]) is not erf:
        return None
    x, scaled = got
    one = only_use(erf.outputs[0])
    if one is None or one.op_type != "Add" or len(one.inputs) != 2 or scalar(
            other_input(one, erf.outputs[0])) != 1.0:
        return None
    m = only_use(one.outputs[0])
    if not _mul(m):
        return None
    other = other_input(m, one.outputs[0])
    nodes = [scaled, erf, one, m]
    if other is x or _near(scalar(other), 0.5):      # (x·(1+erf))·0.5 or x·(0.5·(1+erf))
        last = only_use(m.outputs[0])
        rest = other_input(last, m.outputs[0]) if _mul(last) else None
        if rest is None or not (_near(scalar(rest), 0.5) if other is x else rest is x):
            return None
        return x, nodes + [last], last.outputs[0]
    half = producer(other, "Mul")                   # (0.5·x)·(1+erf)
    if _mul(half) and only_use(other) is m and any(
            half.inputs[k] is x and _near(scalar(half.inputs[1 - k]), 0.5) for k in (0, 1)):
        return x, [half] + nodes, m.outputs[0]
    return None


def fuse_erf_gelu(f) -> int:
    """Fuse every erf GELU in ``f.graph`` (``f`` a fusion.Fuser); the number fused."""
    n = 0
    for erf in f.each("Erf"):
        got = _match(erf)
        if got is None:
            continue
        x, nodes, y = got
        if x.dtype not in (ir.DataType.FLOAT, ir.DataType.DOUBLE, ir.DataType.FLOAT16):
            continue
        fused = ir.Node(MS, "Gelu", [x], num_outputs=1, name=(erf.name or "") + "_gelu")
        if f.commit_in_order(nodes, fused, [(y, fused.outputs[0])]):
            n += 1
    return n
