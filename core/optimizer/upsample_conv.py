"""Level-2 rewrite: a 2x nearest-neighbour upsample followed by a 3x3 convolution (stride 1, pads 1)
becomes one ConvTranspose (4x4 kernel, stride 2, pads 1) over the small image.

The decoder block of VAEs and U-Nets. Output row 2a + p of the conv over the upsampled image reads
upsampled rows 2a + p - 1 .. 2a + p + 1, which are small-image rows a - 1 and a (p = 0) or a and
a + 1 (p = 1), each with a sum of the 3x3 kernel's rows: that is a transposed convolution whose 1-D
kernel taps are (w₂, w₁ + w₂, w₀ + w₁, w₀) (ConvTranspose's tap k serves output 2i - 1 + k from
input i), in both directions. The product is a standard ONNX op, so an optimized model saved with
``optimized_model_filepath`` still reads everywhere; it does 16 multiply-adds per small-image pixel
instead of 36 and never stores the upsampled image (vae_decoder's conv: 0.28 -> 0.19 ms).

Nearest upsampling by exactly 2 picks input ``floor(x / 2)``: coordinate modes ``asymmetric`` with
``floor`` or ``round_prefer_floor`` rounding, and ``half_pixel`` / ``pytorch_half_pixel`` with either
``round_prefer_*``, are that map; other combinations are left alone.
"""
from __future__ import annotations

import numpy as np
import onnx_ir as ir

from engineroom.optimizer.rewrite import const, new_constant, only_use

# rows: the transposed kernel's taps 0..3; columns: the 3x3 kernel's taps they sum
_TAPS = np.array([[0, 0, 1], [0, 1, 1], [1, 1, 0], [1, 0, 0]], np.float64)
_FLOOR_MAPS = {("asymmetric", "floor"), ("asymmetric", "round_prefer_floor"),
               ("half_pixel", "round_prefer_floor"), ("half_pixel", "round_prefer_ceil"),
               ("pytorch_half_pixel", "round_prefer_floor"), ("pytorch_half_pixel", "round_prefer_ceil")}


def fuse_upsample_conv(f) -> int:
    """Rewrite every match in ``f.graph`` (``f`` a fusion.Fuser); the number rewritten."""
    n = 0
    for rs in list(f.graph):
        if rs.op_type != "Resize" or rs.domain not in ("", "ai.onnx") or rs.graph is None or not _doubles(rs):
            continue
        conv = only_use(rs.outputs[0])
        w = _conv3x3_weight(conv, rs.outputs[0])
        if w is None:
            continue
        bias = [conv.inputs[2]] if len(conv.inputs) > 2 and conv.inputs[2] is not None else []
        attrs = [ir.AttrInt64s("kernel_shape", [4, 4]), ir.AttrInt64s("strides", [2, 2]),
                 ir.AttrInt64s("pads", [1, 1, 1, 1])]
        ct = ir.Node("", "ConvTranspose", [rs.inputs[0], conv.inputs[1]] + bias, attrs, num_outputs=1,
                     name=(conv.name or "") + "_upsampled")
        if not f._accepts([rs, conv], ct):         # asked before the new weight is made
            continue
        wt = np.einsum("ak,bl,mckl->cmab", _TAPS, _TAPS, w.astype(np.float64)).astype(w.dtype)
        ct.replace_input_with(1, new_constant(f.graph, (conv.inputs[1].name or "W") + "_upsampled_transposed", wt))
        if f._commit([rs, conv], ct, [(conv.outputs[0], ct.outputs[0])]):
            n += 1
    return n


def _attr(node: ir.Node, name: str, default):
    a = node.attributes.get(name)
    return default if a is None else a.value


def _doubles(rs: ir.Node) -> bool:
    """Resize is a nearest-neighbour 2x upsample of the two spatial axes of an NCHW tensor."""
    x = rs.inputs[0]
    if x is None or x.shape is None or len(x.shape) != 4 or len(rs.inputs) < 3:
        return False
    if _attr(rs, "mode", "nearest") != "nearest" or _attr(rs, "antialias", 0) or _attr(rs, "axes", None):
        return False
    ctm = _attr(rs, "coordinate_transformation_mode", "half_pixel")
    if (ctm, _attr(rs, "nearest_mode", "round_prefer_floor")) not in _FLOOR_MAPS:
        return False
    scales = const(rs.inputs[2]) if rs.inputs[2] is not None else None
    if scales is not None and scales.size:
        return scales.shape == (4,) and list(scales.astype(np.float64)) == [1.0, 1.0, 2.0, 2.0]
    sizes = const(rs.inputs[3]) if len(rs.inputs) > 3 and rs.inputs[3] is not None else None
    dims = list(x.shape)
    return sizes is not None and sizes.shape == (4,) and all(isinstance(d, int) for d in dims) and \
        list(sizes) == [dims[0], dims[1], 2 * dims[2], 2 * dims[3]]


def _conv3x3_weight(conv: ir.Node | None, u: ir.Value):
    """The (M, C, 3, 3) float weight of a Conv reading ``u`` with stride 1, pads 1, no dilation, one group."""
    if conv is None or conv.op_type != "Conv" or conv.domain not in ("", "ai.onnx") or conv.inputs[0] is not u:
        return None
    w = const(conv.inputs[1]) if len(conv.inputs) > 1 else None
    if w is None or w.dtype.kind != "f" or w.ndim != 4 or w.shape[2:] != (3, 3):
        return None
    if (_attr(conv, "group", 1) != 1 or _attr(conv, "auto_pad", "NOTSET") != "NOTSET"
            or list(_attr(conv, "strides", [1, 1])) != [1, 1] or list(_attr(conv, "dilations", [1, 1])) != [1, 1]
            or list(_attr(conv, "pads", [0, 0, 0, 0])) != [1, 1, 1, 1]
            or list(_attr(conv, "kernel_shape", [3, 3])) != [3, 3]):
        return None
    return w
