"""Window arithmetic every provider needs the same way: padding and output sizes of convolutions,
pools and transposed convolutions (auto_pad, dilations, ceil_mode), as ONNX and onnxruntime define
them. Pure Python on shape tuples: call it in a kernel factory or per new input shape, never per element."""
from __future__ import annotations


def same_pads(in_sz: int, out_sz: int, k: int, s: int, d: int, upper: bool) -> tuple[int, int]:
    """(begin, end) padding of one axis for auto_pad SAME_UPPER (``upper``) or SAME_LOWER."""
    total = max(0, (out_sz - 1) * s + (k - 1) * d + 1 - in_sz)
    small = total // 2
    return (small, total - small) if upper else (total - small, small)


def window_geometry(spatial, kshape, strides, dilations, pads, auto_pad: str = "NOTSET",
                    ceil_mode: bool = False) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """Per axis (pads_begin, pads_end, out) of a sliding window (Conv, MaxPool, AveragePool, ...).

    ``pads`` is ONNX's [begin..., end...]; ``ceil_mode`` rounds the output size up, but a window
    may not start inside the end padding (onnxruntime's rule)."""
    n = len(spatial)
    pb, pe, out = [], [], []
    for i in range(n):
        in_sz, k, s, d = spatial[i], kshape[i], strides[i], dilations[i]
        dk = (k - 1) * d + 1
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            o = -(-in_sz // s)
            b, e = same_pads(in_sz, o, k, s, d, auto_pad == "SAME_UPPER")
        elif auto_pad == "VALID":
            b = e = 0
            o = (in_sz - dk) // s + 1
        else:
            b, e = pads[i], pads[i + n]
            span = in_sz + b + e - dk
            if ceil_mode:
                o = -(-span // s) + 1
                if (o - 1) * s >= in_sz + b:
                    o -= 1
            else:
                o = span // s + 1
        pb.append(b)
        pe.append(e)
        out.append(max(o, 0))
    return tuple(pb), tuple(pe), tuple(out)


def convtranspose_geometry(spatial, kshape, strides, dilations, pads, out_pad, output_shape,
                           auto_pad: str = "NOTSET") -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """Per axis (pads_begin, pads_end, out) of ConvTranspose: from explicit pads, or from
    ``output_shape`` / auto_pad SAME (the total padding split as ONNX specifies)."""
    n = len(spatial)
    pb, pe, out = [], [], []
    output_shape = list(output_shape)[-n:] if output_shape is not None and len(output_shape) else None
    for i in range(n):
        in_sz, k, s, d, op = spatial[i], kshape[i], strides[i], dilations[i], out_pad[i]
        full = s * (in_sz - 1) + op + (k - 1) * d + 1
        if output_shape or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            o = int(output_shape[i]) if output_shape else in_sz * s
            total = full - o
            b, e = (total // 2, total - total // 2) if auto_pad == "SAME_UPPER" else (total - total // 2, total // 2)
        elif auto_pad == "VALID":
            b = e = 0
            o = full
        else:
            b, e = pads[i], pads[i + n]
            o = full - b - e
        pb.append(b)
        pe.append(e)
        out.append(o)
    return tuple(pb), tuple(pe), tuple(out)
