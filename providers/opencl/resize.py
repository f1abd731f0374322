"""Resize (opset 11+; nearest, linear, cubic, antialias) as separable passes, one per resized axis.

For every resized axis the host computes, once per input shape, which input positions (taps) and
weights make each output position — in float32 coordinate arithmetic, as onnxruntime does (a
coordinate that lands on an integer must stay one) — and the device runs one gather-with-weights
pass ``y[b, o, i] = sum_t w[o, t] * x[b, idx[o, t], i]`` per axis. ``tf_crop_and_resize`` (which
needs extrapolation) and ``axes`` subsets are left to the CPU provider.
"""
from __future__ import annotations

import math

import numpy as np

from engineroom.plugin_sdk.geometry import nearest_index, resize_coordinates
from engineroom.plugin_sdk.host_values import host_ints
from engineroom.providers.opencl.common import F32, all_of, inputs_in, rt_of
from engineroom.providers.opencl.registry import kernel

_SRC = """
__kernel void resample(__global const float* restrict x, __global float* restrict y,
                       __global const int* restrict idx, __global const float* restrict w, int taps,
                       int outer, int in_len, int out_len, int inner) {
  const int i = get_global_id(0), o = get_global_id(1), b = get_global_id(2);
  if (i >= inner || o >= out_len || b >= outer) return;
  __global const float* xb = x + (long)b * in_len * inner + i;
  float acc = 0;
  for (int t = 0; t < taps; ++t) acc += w[o * taps + t] * xb[(long)idx[o * taps + t] * inner];
  y[((long)b * out_len + o) * inner + i] = acc;
}
__kernel void nearest(__global const float* restrict x, __global float* restrict y,
                      __global const int* restrict idx, int outer, int in_len, int out_len, int inner) {
  const int i = get_global_id(0), o = get_global_id(1), b = get_global_id(2);
  if (i >= inner || o >= out_len || b >= outer) return;
  y[((long)b * out_len + o) * inner + i] = x[((long)b * in_len + idx[o]) * inner + i];
}
"""


def _kernel_weights(t, mode, a):
    t = np.abs(t)
    if mode == "linear":
        return np.clip(1.0 - t, 0.0, 1.0)
    return np.where(t <= 1, ((a + 2) * t - (a + 3)) * t * t + 1,
                    np.where(t < 2, ((a * t - 5 * a) * t + 8 * a) * t - 4 * a, 0.0))


def axis_taps(in_len, out_len, scale, cfg):
    """(idx (out, taps) int32, weights (out, taps) float32 or None for nearest) of one axis."""
    xo = resize_coordinates(cfg["ctm"], out_len, in_len, scale).astype(np.float64)
    if cfg["mode"] == "nearest":
        idx = np.clip(nearest_index(xo, cfg["nearest_mode"], scale), 0, in_len - 1)
        return idx.astype(np.int32).reshape(-1, 1), None
    s = min(scale, 1.0) if cfg["antialias"] else 1.0
    radius = (1.0 if cfg["mode"] == "linear" else 2.0) / s
    offsets = np.arange(math.floor(-radius) + 1, math.ceil(radius) + 1, dtype=np.float64)
    base = np.floor(xo)
    w = _kernel_weights((offsets[None, :] - (xo - base)[:, None]) * s, cfg["mode"], cfg["cubic_coeff_a"])
    taps = base[:, None] + offsets[None, :]
    if cfg["exclude_outside"]:
        w = np.where((taps >= 0) & (taps <= in_len - 1), w, 0.0)
    tot = w.sum(axis=1, keepdims=True)
    w = w / np.where(tot == 0, 1.0, tot)
    keep = np.any(w != 0, axis=0)
    if keep.any():
        w, taps = w[:, keep], taps[:, keep]
    return np.clip(taps, 0, in_len - 1).astype(np.int32), w.astype(np.float32)


def output_plan(in_shape, scales, sizes):
    """(out shape, per-axis scale) as onnxruntime computes them (float32 ``in * scale``, floored)."""
    out, axis_scale = list(in_shape), []
    if sizes is not None:
        for a, s in enumerate(sizes):
            out[a] = int(s)
            axis_scale.append(int(s) / in_shape[a] if in_shape[a] else 1.0)
    else:
        for a, sc in enumerate(scales):
            if sc <= 0:
                raise ValueError(f"Resize: scale {sc} must be greater than 0")
            out[a] = int(math.floor(float(np.float32(in_shape[a]) * np.float32(sc))))
            axis_scale.append(float(sc))
    return tuple(out), axis_scale


_MODES = {"nearest", "linear", "cubic"}
_CTMS = {"half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners", "asymmetric",
         "tf_half_pixel_for_nn"}


def _resize_ok(view):
    a = view.attrs
    if a.get("mode", "nearest") not in _MODES:
        return f"mode {a.get('mode')!r}"
    if a.get("coordinate_transformation_mode", "half_pixel") not in _CTMS:
        return f"coordinate_transformation_mode {a.get('coordinate_transformation_mode')!r}"
    if a.get("nearest_mode", "round_prefer_floor") not in ("round_prefer_floor", "round_prefer_ceil", "floor",
                                                           "ceil"):
        return f"nearest_mode {a.get('nearest_mode')!r}"
    if a.get("axes") is not None or a.get("keep_aspect_ratio_policy", "stretch") != "stretch":
        return "axes / keep_aspect_ratio_policy"
    return None


@kernel("Resize", since=11, types=(F32,), host_inputs=(1, 2, 3),
        supports=all_of(inputs_in((F32,), which=(0,)), _resize_ok))
def resize(info):
    from engineroom.providers.opencl.runtime import grid

    rt = rt_of(info)
    a = info.attrs
    cfg = {"mode": a["mode"], "ctm": a["coordinate_transformation_mode"], "nearest_mode": a["nearest_mode"],
           "antialias": int(a.get("antialias", 0)),     # absent before opset 18
           "exclude_outside": int(a["exclude_outside"]), "cubic_coeff_a": float(a["cubic_coeff_a"])}
    k_lin = rt.kernel(_SRC, "resample", [None, None, None, None] + [np.int32] * 5)
    k_near = rt.kernel(_SRC, "nearest", [None, None, None] + [np.int32] * 4)
    plans: dict = {}

    def plan(shape, scales, sizes):
        out, axis_scale = output_plan(shape, scales, sizes)
        passes = []
        cur = list(shape)
        for ax in range(len(shape)):
            if cur[ax] == out[ax] and axis_scale[ax] == 1.0:
                continue
            idx, w = axis_taps(cur[ax], out[ax], axis_scale[ax], cfg)
            outer = int(np.prod(cur[:ax]))
            inner = int(np.prod(cur[ax + 1:]))
            cur[ax] = out[ax]
            g, l_ = grid((inner, out[ax], outer))
            passes.append((tuple(cur), rt.const_ints(idx.reshape(-1).tolist()),
                           None if w is None else rt.to_device(w), idx.shape[1], outer, inner, g, l_))
        return out, passes

    def run(x, roi=None, scales=None, sizes=None):
        sc = None if scales is None or np.asarray(scales).size == 0 else [float(v) for v in np.asarray(scales)]
        sz = None if sizes is None or np.asarray(sizes).size == 0 else host_ints(sizes)
        key = (x.shape, None if sc is None else tuple(sc), None if sz is None else tuple(sz))
        p = plans.get(key)
        if p is None:
            p = plans[key] = plan(tuple(x.shape), sc, sz)
        out, passes = p
        y = x
        for shape, idx, w, taps, outer, inner, g, l_ in passes:
            src = y
            y = rt.empty(shape, np.float32)
            if y.size == 0 or src.size == 0:
                continue
            in_len = src.size // (outer * inner)
            ax_out = y.size // (outer * inner)
            if w is None:
                rt.launch(k_near, g, l_, src.base_data, y.base_data, idx, outer, in_len, ax_out, inner)
            else:
                rt.launch(k_lin, g, l_, src.base_data, y.base_data, idx, w.base_data, taps, outer, in_len,
                          ax_out, inner)
        if not passes:
            y = x if tuple(x.shape) == tuple(out) else rt.empty(out, np.float32)
        return (y,)

    return run
