"""Level-3 (ORT_ENABLE_ALL) fusion, a layout change: a conv whose only reader is a depthwise conv whose
only reader is a 1x1 conv (MobileNet's expand / depthwise / project, each with its Relu/Clip, the last
with its residual) becomes one ``com.engineroom::DepthwiseSeparableBlock``, whose kernel keeps the two
intermediate images channels-last (see ``providers/cpu/depthwise_block.py``).

As onnxruntime's layout transforms at this level, the optimized model saved with
``optimized_model_filepath`` then holds an op only this engine runs; levels 1 and 2 stay standard.

Formed only where channels-last depthwise wins, which the owning provider measured and states in its
``fusion_limits["DepthwiseSeparableBlock.max_stride1_pixels"]`` (the CPU provider: 28x28): a strided
depthwise conv, or a stride-1 one whose static output has at most that many pixels. A provider that
states no limit gets the block wherever the pattern matches.
"""
from __future__ import annotations

import math

import onnx_ir as ir

from engineroom.optimizer.rewrite import const, only_use

ER = "com.engineroom"
MS = "com.microsoft"
_INF = float("inf")


def _ints(node: ir.Node, name: str, default):
    a = node.attributes.get(name)
    return default if a is None else [int(v) for v in a.value]


def _conv(node: ir.Node | None):
    """(weight, bias value, strides, pads, (lo, hi), residual value, group) of a 2-D Conv or FusedConv
    with a constant weight, explicit pads, no dilation and a clipping activation (or none); else None."""
    if node is None or node.graph is None:
        return None
    if node.op_type == "Conv" and node.domain in ("", "ai.onnx"):
        lohi, z = (-_INF, _INF), None
    elif node.op_type == "FusedConv" and node.domain == MS:
        act = node.attributes.get("activation")
        act = "Identity" if act is None else act.value
        params = node.attributes.get("activation_params")
        params = [] if params is None else list(params.value)
        if act == "Identity":
            lohi = (-_INF, _INF)
        elif act == "Relu":
            lohi = (0.0, _INF)
        elif act == "Clip" and len(params) == 2:
            lohi = (float(params[0]), float(params[1]))
        else:
            return None
        z = node.inputs[3] if len(node.inputs) > 3 else None
    else:
        return None
    w = const(node.inputs[1]) if len(node.inputs) > 1 else None
    auto_pad = node.attributes.get("auto_pad")
    if w is None or w.ndim != 4 or (auto_pad is not None and auto_pad.value not in ("NOTSET", "")):
        return None
    if any(d != 1 for d in _ints(node, "dilations", [1, 1])):
        return None
    ks = _ints(node, "kernel_shape", list(w.shape[2:]))
    if list(ks) != list(w.shape[2:]):
        return None
    b = node.inputs[2] if len(node.inputs) > 2 else None
    if b is not None and const(b) is None:
        return None
    strides, pads = _ints(node, "strides", [1, 1]), _ints(node, "pads", [0, 0, 0, 0])
    if len(strides) != 2 or len(pads) != 4:
        return None
    group = node.attributes.get("group")
    return w, b, strides, pads, lohi, z, 1 if group is None else int(group.value)


def _static_pixels(v: ir.Value) -> int | None:
    shape = v.shape
    if shape is None or len(shape) != 4 or not all(isinstance(d, int) for d in shape.dims[2:]):
        return None
    return math.prod(shape.dims[2:])


def _stride1_limit(provider) -> int | None:
    """The owning provider's measured limit on a stride-1 block's depthwise output pixels (None: none)."""
    limits = getattr(provider, "fusion_limits", None) or {}
    return limits.get("DepthwiseSeparableBlock.max_stride1_pixels")


def fuse_depthwise_blocks(f) -> int:
    """Rewrite every match in ``f.graph`` (``f`` a fusion.Fuser); the number rewritten."""
    n = 0
    for dw in list(f.graph):
        d = _conv(dw)
        if d is None:
            continue
        wd, bd, ds, dp, lohi2, zd, g = d
        if zd is not None or g < 2 or wd.shape[0] != g or wd.shape[1] != 1:
            continue                         # not a depthwise conv (multiplier 1), or one with a residual
        limit = _stride1_limit(f.owner(dw))
        pixels = _static_pixels(dw.outputs[0])
        if limit is not None and (pixels is None or (ds == [1, 1] and pixels > limit)):
            continue
        first = dw.inputs[0].producer() if dw.inputs[0] is not None else None
        c1 = _conv(first)
        if c1 is None or only_use(first.outputs[0]) is not dw:
            continue
        w1, b1, cs, cp, lohi1, z1, g1 = c1
        if z1 is not None or g1 != 1 or w1.shape[0] != g:
            continue
        last = only_use(dw.outputs[0])
        c2 = _conv(last)
        if c2 is None:
            continue
        w2, b2, ps, pp, lohi3, z2, g2 = c2
        if g2 != 1 or w2.shape[1] != g or w2.shape[2:] != (1, 1) or ps != [1, 1] or any(pp):
            continue
        ins = [first.inputs[0], first.inputs[1], b1, dw.inputs[1], bd, last.inputs[1], b2]
        if z2 is not None:
            ins.append(z2)
        attrs = [ir.AttrInt64s("conv_strides", cs), ir.AttrInt64s("conv_pads", cp),
                 ir.AttrInt64s("depthwise_strides", ds), ir.AttrInt64s("depthwise_pads", dp),
                 ir.AttrFloat32s("clips", [*lohi1, *lohi2, *lohi3])]
        block = ir.Node(ER, "DepthwiseSeparableBlock", ins, attrs, num_outputs=1,
                        name=(dw.name or "") + "_block")
        if f._commit([first, dw, last], block, [(last.outputs[0], block.outputs[0])]):
            n += 1
    return n
