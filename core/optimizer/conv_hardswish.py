"""Level-3 (ORT_ENABLE_ALL) fusion: a Conv, or a FusedConv without an activation (a conv with its
residual Add), whose only reader is a HardSwish becomes one ``com.engineroom::FusedConv`` with
``activation="HardSwish"``, applied in the conv's last pass (PP-LCNet has 28 Conv -> HardSwish pairs).

onnxruntime's FusedConv (com.microsoft) has no HardSwish activation, so this is not done at level 2:
a model saved from levels 1-2 stays one onnxruntime runs; at level 3, as with the
DepthwiseSeparableBlock, the saved model holds an op only this engine runs.
"""
from __future__ import annotations

import onnx_ir as ir

from engineroom.optimizer.rewrite import only_use
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


def fuse_conv_hardswish(f) -> int:
    """Rewrite every Conv -> HardSwish in ``f.graph`` (``f`` a fusion.Fuser) the owning provider takes;
    the number rewritten."""
    n = 0
    for hs in list(f.graph):
        if hs.op_type != "HardSwish" or hs.domain not in ("", "ai.onnx") or hs.graph is None:
            continue
        conv = hs.inputs[0].producer() if hs.inputs[0] is not None else None
        if not _fusable_conv(conv) or only_use(conv.outputs[0]) is not hs:
            continue
        attrs = [a for a in conv.attributes.values() if a.name not in ("activation", "activation_params")]
        attrs.append(ir.AttrString("activation", "HardSwish"))
        fused = ir.Node(ER, "FusedConv", list(conv.inputs), attrs, num_outputs=1,
                        name=(conv.name or "") + "_hardswish")
        if f._commit([conv, hs], fused, [(hs.outputs[0], fused.outputs[0])]):
            n += 1
    return n
