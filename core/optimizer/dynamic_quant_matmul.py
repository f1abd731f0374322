"""Level-2 fusion of the dynamic quantizer's MatMul pattern into ``com.microsoft::MatMulIntegerToFloat``.

onnxruntime's dynamic quantizer (``quantize_dynamic``) writes each float MatMul as

    xq, xs, xz = DynamicQuantizeLinear(x)
    s = Mul(xs, w_scale)                          # w_scale: a constant, per tensor or per column
    y = Mul(Cast(MatMulInteger(xq, W, xz, w_zp), to=float), s)

(onnxruntime fuses the same pattern). ``MatMulIntegerToFloat(xq, W, xs, w_scale, xz, w_zp)`` then forms
the exact integer product with W prepared once (packed for the VNNI kernel, or on float32 BLAS) and
scales it in float32, where the pattern ran three kernels and an int32 round trip. The numbers are the
pattern's: an exact sum, float32(sum) * float32(xs * w_scale). The DynamicQuantizeLinear stays, run once
for the Q, K and V projections that read it.
"""
from __future__ import annotations

import onnx_ir as ir

from engineroom.optimizer.rewrite import const, only_use, other_input, producer

MS = "com.microsoft"
_FLOAT = 1      # TensorProto.FLOAT


def fuse_dynamic_quant_matmul(f) -> int:
    """Fuse each match (see module) where one provider owns its nodes and has the fused kernel; ``f`` is
    the level-2 ``Fuser``."""
    n = 0
    for mm in f.each("MatMulInteger"):
        got = _match(mm)
        if got is None:
            continue
        xq, w, xs, w_scale, xz, w_zp, nodes, scale_mul, y = got
        ins = [xq, w, xs, w_scale, xz] + ([w_zp] if w_zp is not None else [])
        fused = ir.Node(MS, "MatMulIntegerToFloat", ins, num_outputs=1, name=(mm.name or "") + "_to_float")
        if not f._commit(nodes, fused, [(y, fused.outputs[0])]):
            continue
        n += 1
        if scale_mul.graph is not None and all(not o.uses() and not o.is_graph_output() for o in scale_mul.outputs):
            scale_mul.graph.remove(scale_mul, safe=True)       # nothing reads it any more
    return n


def _match(mm: ir.Node):
    ins = list(mm.inputs) + [None] * (4 - len(mm.inputs))
    a, w, a_zp, w_zp = ins[:4]
    dq = producer(a, "DynamicQuantizeLinear")
    if dq is None or a is not dq.outputs[0] or a_zp is not dq.outputs[2]:
        return None
    wc = const(w)
    if wc is None or wc.ndim != 2 or wc.dtype.kind not in "iu":
        return None
    if w_zp is not None and (const(w_zp) is None or const(w_zp).size not in (1, wc.shape[1])):
        return None
    cast = only_use(mm.outputs[0])
    if cast is None or cast.op_type != "Cast" or cast.domain not in ("", "ai.onnx") \
            or cast.attributes.get("to") is None or cast.attributes["to"].value != _FLOAT:
        return None
    mul = only_use(cast.outputs[0])
    if mul is None or mul.op_type != "Mul" or mul.domain not in ("", "ai.onnx") or len(mul.inputs) != 2:
        return None
    s = other_input(mul, cast.outputs[0])
    scale_mul = producer(s, "Mul")
    if scale_mul is None or len(scale_mul.inputs) != 2:
        return None
    xs = dq.outputs[1]
    w_scale = other_input(scale_mul, xs)
    ws = const(w_scale)
    if w_scale is None or ws is None or ws.dtype.name != "float32" or ws.ndim > 1 or ws.size not in (1, wc.shape[1]):
        return None
    return a, w, xs, w_scale, a_zp, w_zp, [mm, cast, mul], scale_mul, mul.outputs[0]
