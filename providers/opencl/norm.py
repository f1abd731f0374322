"""Normalizations: LayerNormalization (with its optional Mean / InvStdDev outputs),
InstanceNormalization, and BatchNormalization in inference mode.

Layer and instance norm share one row kernel: one work-item per row computes the mean, then the
variance around it (two passes, as accurate as the CPU provider's), then writes the normalized row
with its scale and bias (indexed per element for LayerNormalization, per channel for instance norm).
BatchNormalization folds its four statistics into one scale and shift per channel on the host
(once, in the factory, when they are constant) and is then one broadcast multiply-add.
"""
from __future__ import annotations

import numpy as np

from engineroom.providers.opencl.common import CTYPES, F32, FLOATS, all_of, inputs_in, n_outputs, norm_axis, rt_of
from engineroom.providers.opencl.registry import kernel
from engineroom.providers.opencl.strided import Strided, broadcast_strides, contiguous_strides

_ROWNORM = """
{pragma}
#define T {T}
/* per_channel: scale/bias index = row % C (instance norm); else element index r % S (layer norm) */
__kernel void rownorm(__global const T* restrict x, __global const T* restrict scale, int S,
                      __global const T* restrict bias, int B, __global T* restrict y,
                      __global float* restrict mean_out, __global float* restrict inv_out, int stats,
                      int outer, int R, int per_channel, int C, float eps) {{
  const int o = get_global_id(0);
  if (o >= outer) return;
  __global const T* p = x + (long)o * R;
  __global T* q = y + (long)o * R;
  T s = 0;
  for (int r = 0; r < R; ++r) s += p[r];
  const T mean = s / (T)R;
  T v = 0;
  for (int r = 0; r < R; ++r) {{ const T d = p[r] - mean; v += d * d; }}
  const T inv = (T)1 / sqrt(v / (T)R + (T)eps);
  if (stats) {{ mean_out[o] = mean; inv_out[o] = inv; }}
  if (per_channel) {{
    const int c = o % C;
    const T sc = scale[c] * inv, b = bias[c];
    for (int r = 0; r < R; ++r) q[r] = (p[r] - mean) * sc + b;
  }} else {{
    for (int r = 0; r < R; ++r) {{
      const T b = B ? bias[r % B] : (T)0;
      q[r] = (p[r] - mean) * inv * scale[r % S] + b;
    }}
  }}
}}
"""


def _knl(rt, dt):
    t = CTYPES[np.dtype(dt)]
    pragma = "#pragma OPENCL EXTENSION cl_khr_fp64 : enable" if t == "double" else ""
    return rt.kernel(_ROWNORM.format(T=t, pragma=pragma), "rownorm",
                     [None, None, np.int32, None, np.int32, None, None, None, np.int32, np.int32, np.int32,
                      np.int32, np.int32, np.float32])


def _ln_ok(view):
    if int(view.attrs["stash_type"]) != 1:
        return "stash_type other than float"
    dts = [view.output_dtypes[i] for i in (1, 2) if i < len(view.output_names) and view.output_names[i]]
    if any(d is not None and np.dtype(d) != F32 for d in dts):
        return "Mean/InvStdDev outputs other than float"
    return None


@kernel("LayerNormalization", since=17, types=FLOATS, supports=all_of(inputs_in(FLOATS), _ln_ok))
def layer_norm(info):
    from engineroom.providers.opencl.runtime import grid

    rt = rt_of(info)
    dt = np.dtype(info.input_dtypes[0])
    knl = _knl(rt, dt)
    axis_attr = int(info.attrs["axis"])
    eps = float(info.attrs["epsilon"])
    names = info.output_names
    want = [i < len(names) and bool(names[i]) for i in range(3)]

    def run(x, scale, bias=None):
        axis = norm_axis(axis_attr, x.ndim)
        outer = int(np.prod(x.shape[:axis]))
        R = int(np.prod(x.shape[axis:]))
        nshape = tuple(x.shape[axis:])
        if scale.size not in (1, R):
            scale = _expanded(rt, scale, nshape, dt)
        if bias is not None and bias.size not in (1, R):
            bias = _expanded(rt, bias, nshape, dt)
        y = rt.empty(x.shape, dt)
        sshape = tuple(x.shape[:axis]) + (1,) * (x.ndim - axis)
        mean = rt.empty(sshape, np.float32) if want[1] or want[2] else None
        inv = rt.empty(sshape, np.float32) if want[1] or want[2] else None
        if y.size:
            g, l_ = grid((outer,))
            rt.launch(knl, g, l_, x.base_data, scale.base_data, scale.size,
                      (bias if bias is not None else scale).base_data, 0 if bias is None else bias.size,
                      y.base_data, (mean if mean is not None else y).base_data,
                      (inv if inv is not None else y).base_data, int(mean is not None), outer, R, 0, 1, eps)
        outs = [y]
        if want[1] or want[2]:
            outs += [mean, inv]
        return tuple(outs[: max(i for i in range(3) if want[i]) + 1])

    return run


def _expanded(rt, t, shape, dt):
    y = rt.empty(shape, dt)
    Strided(rt, "x0", [dt], dt)(shape, [(t.base_data, 0, broadcast_strides(t.shape, shape))],
                                (y.base_data, 0, contiguous_strides(shape)))
    return y


@kernel("InstanceNormalization", since=6, types=FLOATS, supports=inputs_in(FLOATS))
def instance_norm(info):
    from engineroom.providers.opencl.runtime import grid

    rt = rt_of(info)
    dt = np.dtype(info.input_dtypes[0])
    knl = _knl(rt, dt)
    eps = float(info.attrs["epsilon"])

    def run(x, scale, bias):
        N, C = x.shape[0], x.shape[1]
        R = int(np.prod(x.shape[2:]))
        y = rt.empty(x.shape, dt)
        if y.size:
            g, l_ = grid((N * C,))
            rt.launch(knl, g, l_, x.base_data, scale.base_data, C, bias.base_data, C, y.base_data,
                      y.base_data, y.base_data, 0, N * C, R, 1, C, eps)
        return (y,)

    return run


def _bn_ok(view):
    if int(view.attrs.get("training_mode", 0)):
        return "training mode"
    if view.opset < 9:
        return "opset < 9 (spatial attribute)"
    s = view.input_shapes[0] if view.input_shapes else None
    if s is not None and len(s) < 2:
        return "rank < 2"
    return None


@kernel("BatchNormalization", since=9, types=FLOATS, host_inputs=(1, 2, 3, 4),
        supports=all_of(inputs_in(FLOATS), n_outputs(1), _bn_ok))
def batch_norm(info):
    rt = rt_of(info)
    dt = np.dtype(info.input_dtypes[0])
    eps = float(info.attrs["epsilon"])
    op = Strided(rt, "x0 * x1 + x2", [dt, dt, dt], dt)

    def fold(scale, b, mean, var):
        s = np.asarray(scale, np.float64) / np.sqrt(np.asarray(var, np.float64) + eps)
        shift = np.asarray(b, np.float64) - np.asarray(mean, np.float64) * s
        return rt.to_device(s.astype(dt)), rt.to_device(shift.astype(dt))

    consts = info.const_inputs[1:5]
    folded = fold(*consts) if len(consts) == 4 and all(c is not None for c in consts) else None

    def run(x, scale, b, mean, var):
        s, sh = folded if folded is not None else fold(scale, b, mean, var)
        y = rt.empty(x.shape, dt)
        if y.size:
            pshape = (1, x.shape[1]) + (1,) * (x.ndim - 2)
            ps = broadcast_strides(pshape, x.shape)
            cs = contiguous_strides(x.shape)
            op(x.shape, [(x.base_data, 0, cs), (s.base_data, 0, ps), (sh.base_data, 0, ps)], (y.base_data, 0, cs))
        return (y,)

    return run
