"""Window arithmetic every provider needs the same way: padding and output sizes of convolutions,
pools and transposed convolutions (auto_pad, dilations, ceil_mode), and Resize's coordinate mapping,
as ONNX and onnxruntime define them. Host-side arithmetic on shape tuples and coordinate vectors:
call it in a kernel factory or per new input shape, never per element."""
from __future__ import annotations

import numpy as np


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
    if len(kshape) < n or len(strides) < n or len(dilations) < n or (auto_pad not in ("SAME_UPPER", "SAME_LOWER",
                                                                                      "VALID") and len(pads) < 2 * n):
        raise ValueError(f"kernel_shape {list(kshape)}, strides {list(strides)}, dilations {list(dilations)} or "
                         f"pads {list(pads)} do not cover the {n} spatial axes")
    # checked here because compiled loops index memory with these numbers (a negative pad wrote out of bounds)
    bad = [f"{name} {list(v)}" for name, v, lo in (("kernel_shape", kshape, 1), ("strides", strides, 1),
                                                    ("dilations", dilations, 1), ("pads", pads, 0))
           if any(int(x) < lo for x in v)]
    if bad:
        raise ValueError(f"{', '.join(bad)}: kernel sizes, strides and dilations must be >= 1, pads >= 0")
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


def resize_coordinates(mode: str, out_len: int, in_len: int, scale: float, roi_start: float = 0.0,
                       roi_end: float = 1.0):
    """Resize: for each output position on one axis, the input coordinate it maps to
    (coordinate_transformation_mode), as a float32 array."""
    # float32 arithmetic, as onnxruntime: coordinates that land on an integer must not become 2.0000000003
    # (ceil/round of nearest depends on it).
    f = np.float32
    x = np.arange(out_len, dtype=f)
    in_len, scale, roi_start, roi_end = f(in_len), f(scale), f(roi_start), f(roi_end)
    # The resized length in the formulas is the real-valued in_len * scale (what the ONNX test data uses);
    # out_len is its integer floor and only sets how many positions there are.
    length = in_len * scale
    if mode == "half_pixel":
        return (x + 0.5) / scale - 0.5
    if mode == "half_pixel_symmetric":
        adjustment = f(out_len) / (scale * in_len)
        center = in_len / f(2)
        offset = center * (1 - adjustment)
        return offset + (x + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return (x + 0.5) / scale - 0.5 if length > 1 else np.zeros_like(x)
    if mode == "align_corners":
        return x * (in_len - 1) / (length - 1) if length != 1 else np.zeros_like(x)
    if mode == "asymmetric":
        return x / scale
    if mode == "tf_half_pixel_for_nn":
        return (x + 0.5) / scale
    if mode == "tf_crop_and_resize":
        if length > 1:
            return roi_start * (in_len - 1) + x * (roi_end - roi_start) * (in_len - 1) / (length - 1)
        return np.full_like(x, f(0.5) * (roi_start + roi_end) * (in_len - 1))
    raise ValueError(f"Resize: unknown coordinate_transformation_mode '{mode}'")


def nearest_index(xo, nearest_mode: str, scale: float):
    """Resize mode nearest: the input index each mapped coordinate rounds to (nearest_mode)."""
    if nearest_mode == "round_prefer_floor":
        return np.ceil(xo - 0.5)
    if nearest_mode == "round_prefer_ceil":
        return np.floor(xo + 0.5)
    if nearest_mode == "floor":
        return np.floor(xo)
    if nearest_mode == "ceil":
        return np.ceil(xo)
    if nearest_mode == "simple":  # Resize-10 / Upsample: truncate when upsampling, ceil when downsampling
        return np.ceil(xo) if scale < 1 else np.floor(xo)
    raise ValueError(f"Resize: unknown nearest_mode '{nearest_mode}'")


def softmax_blocks(shape, axis: int, opset: int) -> tuple[int, int, int]:
    """(outer, reduced, inner) element counts of Softmax, LogSoftmax or Hardmax over ``axis`` of ``shape``:
    before opset 13 the input is coerced to 2-D at ``axis`` and normalized over the whole trailing block
    (inner 1); from 13 on, along the single axis."""
    ax = axis + len(shape) if axis < 0 else axis
    outer = int(np.prod(shape[:ax], dtype=np.int64))
    if opset < 13:
        return outer, int(np.prod(shape[ax:], dtype=np.int64)), 1
    return outer, int(shape[ax]), int(np.prod(shape[ax + 1:], dtype=np.int64))
