"""Level-3 (ORT_ENABLE_ALL) fusion: a Conv, or a FusedConv without an activation (a conv with its
residual Add), whose only reader is a HardSwish becomes one ``com.engineroom::FusedConv`` with
``activation="HardSwish"``, applied in the conv's last pass (PP-LCNet has 28 Conv -> HardSwish pairs).
HardSwish spelled out as ``Mul(y, HardSigmoid(y, alpha=1/6, beta=1/2))`` (Paddle's export: 28 in
PP-OCRv5's recognizer), with y read by those two nodes only, fuses the same way, and so does
``Mul(y, Div(Clip(Add(y, 3), 0, 6), 6))`` or ``Div(Mul(y, Clip(...)), 6)`` (x * relu6(x + 3) / 6: 94 in
picodet_layout, 73 in slanet_table's backbone; onnxruntime runs its four ops, this computes
y * clip(y / 6 + 1/2, 0, 1): within a few ulps).

onnxruntime's FusedConv (com.microsoft) has no HardSwish activation, so this is not done at level 2:
a model saved from levels 1-2 stays one onnxruntime runs; at level 3, as with the
DepthwiseSeparableBlock, the saved model holds an op only this engine runs.
"""
from __future__ import annotations

import onnx_ir as ir

from engineroom.optimizer.rewrite import only_use, other_input, producer, scalar
from engineroom.plugin_sdk.activations import activation_name

ER = "com.engineroom"
MS = "com.microsoft"


def _fusable_conv(node: ir.Node | None) -> bool:
    if node is None or node.graph is None:
        return False
    if node.op_type == "Conv" and node.domain in ("", "ai.onnx"):
        return True
    return node.op_type == "FusedConv" and node.domain == MS and \
        activation_name({k: a.value for k, a in node.attributes.items()}) == "Identity"


def _spelled_out(hsig: ir.Node):
    """(conv, Mul) where ``hsig`` is the HardSigmoid(1/6, 1/2) of a conv's output y whose only other
    reader is Mul(y, hsig); else None."""
    alpha, beta = hsig.attributes.get("alpha"), hsig.attributes.get("beta")
    if alpha is None or abs(alpha.value - 1 / 6) > 1e-7 or beta is None or beta.value != 0.5:
        return None
    y = hsig.inputs[0]
    conv = y.producer() if y is not None else None
    uses = hsig.outputs[0].uses()
    if not _fusable_conv(conv) or y.is_graph_output() or len(y.uses()) != 2 or len(uses) != 1 \
            or hsig.outputs[0].is_graph_output():
        return None
    mul = uses[0].node
    if mul.op_type != "Mul" or mul.domain not in ("", "ai.onnx") or len(mul.inputs) != 2 \
            or {id(v) for v in mul.inputs} != {id(y), id(hsig.outputs[0])}:
        return None
    return conv, mul


def _relu6_form(clip: ir.Node):
    """(conv, the pattern's nodes, its last node) where ``clip`` is the Clip(y + 3, 0, 6) of a conv's output y,
    then divided by 6 and multiplied by y in either order, y read by the Add and the Mul only and each step
    read by the next only; else None."""
    if len(clip.inputs) == 3:
        lo, hi = scalar(clip.inputs[1]), scalar(clip.inputs[2])
    else:
        lo, hi = clip.attributes.get("min"), clip.attributes.get("max")
        lo, hi = (None if lo is None else lo.value), (None if hi is None else hi.value)
    add = producer(clip.inputs[0], "Add")
    if lo != 0 or hi != 6 or add is None or only_use(add.outputs[0]) is not clip:
        return None
    y = next((v for v in add.inputs if v is not None and scalar(other_input(add, v)) == 3), None)
    conv = y.producer() if y is not None else None
    if not _fusable_conv(conv) or y.is_graph_output() or len(y.uses()) != 2:
        return None

    def by_six(node, v):        # node is Div(v, 6)
        return node is not None and node.op_type == "Div" and node.domain in ("", "ai.onnx") \
            and node.inputs[0] is v and scalar(node.inputs[1]) == 6

    def times_y(node, v):       # node is Mul(v, y) or Mul(y, v)
        return node is not None and node.op_type == "Mul" and node.domain in ("", "ai.onnx") \
            and len(node.inputs) == 2 and other_input(node, v) is y and v is not y

    first = only_use(clip.outputs[0])
    second = only_use(first.outputs[0]) if first is not None and len(first.outputs) == 1 else None
    if (by_six(first, clip.outputs[0]) and times_y(second, first.outputs[0])) or \
            (times_y(first, clip.outputs[0]) and by_six(second, first.outputs[0])):
        return conv, [add, clip, first], second
    return None


def fuse_conv_hardswish(f) -> int:
    """Rewrite every Conv -> HardSwish (or its spelled-out form) in ``f.graph`` (``f`` a fusion.Fuser)
    the owning provider takes; the number rewritten."""
    n = 0
    for act in list(f.graph):
        if act.domain not in ("", "ai.onnx") or act.graph is None:
            continue
        if act.op_type == "HardSwish":
            conv = act.inputs[0].producer() if act.inputs[0] is not None else None
            if not _fusable_conv(conv) or only_use(conv.outputs[0]) is not act:
                continue
            nodes, out = [conv, act], act.outputs[0]
        elif act.op_type == "HardSigmoid":
            got = _spelled_out(act)
            if got is None:
                continue
            conv, mul = got
            nodes, out = [conv, act, mul], mul.outputs[0]
        elif act.op_type == "Clip":
            got = _relu6_form(act)
            if got is None:
                continue
            conv, steps, last = got
            nodes, out = [conv, *steps, last], last.outputs[0]
        else:
            continue
        attrs = [a for a in conv.attributes.values() if a.name not in ("activation", "activation_params")]
        attrs.append(ir.AttrString("activation", "HardSwish"))
        fused = ir.Node(ER, "FusedConv", list(conv.inputs), attrs, num_outputs=1,
                        name=(conv.name or "") + "_hardswish")
        if f._commit(nodes, fused, [(out, fused.outputs[0])]):
            n += 1
    return n
