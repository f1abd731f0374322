"""MaxPool (with its optional Indices output), AveragePool, and the Global pools.

One work-item per output element walks its window (1-D/2-D/3-D, as 3-D with unit leading axes);
pads, dilations, ceil_mode and count_include_pad are handled in the window bounds, with geometry
computed once per input shape on the host. Global pools are row reductions (:mod:`reduce`).
"""
from __future__ import annotations

import numpy as np

from engineroom.plugin_sdk.geometry import window_geometry as pool_geometry
from engineroom.plugin_sdk.host_values import ints
from engineroom.providers.opencl.common import CTYPES, FLOATS, I64, all_of, inputs_in, rt_of
from engineroom.providers.opencl.conv import _pad3
from engineroom.providers.opencl.registry import kernel

_POOL = """
{pragma}
#define T {T}
/* g: D H W OD OH OW KD KH KW sd sh sw dd dh dw pd ph pw ed eh ew (ed..: padded end bound) */
__kernel void pool(__global const T* restrict x, __global T* restrict y, __global long* restrict ind,
                   __global const int* restrict g, int NC, int mode, int order) {{
  const int D = g[0], H = g[1], W = g[2], OD = g[3], OH = g[4], OW = g[5];
  const int KD = g[6], KH = g[7], KW = g[8];
  const int ow = get_global_id(0), odh = get_global_id(1), r = get_global_id(2);
  if (ow >= OW || odh >= OD * OH || r >= NC) return;
  const int od = odh / OH, oh = odh - od * OH;
  const int d0 = od * g[9] - g[15], h0 = oh * g[10] - g[16], w0 = ow * g[11] - g[17];
  __global const T* xc = x + (long)r * D * H * W;
  T best = -INFINITY, sum = 0;
  long bi = -1;
  int cnt = 0, cntp = 0;
  for (int kd = 0; kd < KD; ++kd) {{
    const int id = d0 + kd * g[12];
    const int din = id >= 0 && id < D, dpad = id < g[18];
    for (int kh = 0; kh < KH; ++kh) {{
      const int ih = h0 + kh * g[13];
      const int hin = ih >= 0 && ih < H, hpad = ih < g[19];
      for (int kw = 0; kw < KW; ++kw) {{
        const int iw = w0 + kw * g[14];
        const int win = iw >= 0 && iw < W, wpad = iw < g[20];
        if (dpad && hpad && wpad) cntp++;
        if (!(din && hin && win)) continue;
        const long off = ((long)id * H + ih) * W + iw;
        const T v = xc[off];
        if (mode == 0) {{
          if (v > best || bi < 0) {{
            best = v;
            bi = order ? ((long)iw * H + ih) * D + id : off;
          }}
        }} else {{ sum += v; cnt++; }}
      }}
    }}
  }}
  const long o = ((long)r * OD * OH + odh) * OW + ow;
  if (mode == 0) {{
    y[o] = best;
    if (order >= 0) ind[o] = (long)r * D * H * W + (bi < 0 ? 0 : bi);
  }} else {{
    y[o] = sum / (T)(mode == 1 ? cntp : (cnt ? cnt : 1));
  }}
}}
"""


def _pool_ok(view):
    s = view.input_shapes[0] if view.input_shapes else None
    if s is None or not 3 <= len(s) <= 5:
        return "only 1-D, 2-D and 3-D pools of known rank"
    if view.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"):
        return "auto_pad"
    return None


def _pool_factory(info, mode):
    from engineroom.providers.opencl.runtime import grid

    rt = rt_of(info)
    dt = np.dtype(info.input_dtypes[0])
    t = CTYPES[dt]
    pragma = "#pragma OPENCL EXTENSION cl_khr_fp64 : enable" if t == "double" else ""
    knl = rt.kernel(_POOL.format(T=t, pragma=pragma), "pool", [None, None, None, None, np.int32, np.int32, np.int32])
    a = info.attrs
    kshape = [int(k) for k in a["kernel_shape"]]
    n = len(kshape)
    strides = ints(a.get("strides"), n, 1)
    dilations = ints(a.get("dilations"), n, 1)
    pads = ints(a.get("pads"), 2 * n, 0)
    auto_pad = a.get("auto_pad", "NOTSET")
    ceil = int(a.get("ceil_mode", 0))
    want_idx = len(info.output_names) > 1 and info.output_names[1] != ""
    order = int(a["storage_order"]) if want_idx else -1
    if mode != 0:
        mode = 1 if int(a["count_include_pad"]) else 2
    plans: dict = {}

    def plan(xshape):
        spatial = tuple(xshape[2:])
        if len(spatial) != n:
            raise ValueError(f"pool over {len(spatial)} spatial dims with a {n}-D kernel")
        pb, pe, out = pool_geometry(spatial, kshape, strides, dilations, pads, auto_pad, ceil)
        end = [s + e for s, e in zip(spatial, pe)]
        s3 = _pad3(spatial, 1)
        o3 = _pad3(out, 1)
        geo = (s3 + o3 + _pad3(kshape, 1) + _pad3(strides, 1) + _pad3(dilations, 1) + _pad3(pb, 0)
               + _pad3(end, 1))
        NC = xshape[0] * xshape[1]
        g_, l_ = grid((o3[2], o3[0] * o3[1], NC))
        return (xshape[0], xshape[1]) + tuple(out), rt.const_ints(geo), NC, g_, l_

    def run(x):
        p = plans.get(x.shape)
        if p is None:
            p = plans[x.shape] = plan(tuple(x.shape))
        yshape, geo, NC, g_, l_ = p
        y = rt.empty(yshape, dt)
        ind = rt.empty(yshape, I64) if want_idx else None
        if y.size:
            rt.launch(knl, g_, l_, x.base_data, y.base_data, (ind if ind is not None else y).base_data, geo, NC,
                      mode, order)
        return (y, ind) if want_idx else (y,)

    return run


def _no_dilated_avg(view):
    d = view.attrs.get("dilations")
    if d is not None and any(int(v) != 1 for v in d) and view.opset < 19:
        return "dilations before opset 19"
    return None


@kernel("MaxPool", since=8, types=FLOATS, supports=all_of(inputs_in(FLOATS), _pool_ok))
def max_pool(info):
    return _pool_factory(info, 0)


@kernel("AveragePool", since=7, types=FLOATS, supports=all_of(inputs_in(FLOATS), _pool_ok, _no_dilated_avg))
def average_pool(info):
    return _pool_factory(info, 1)


@kernel(["GlobalAveragePool", "GlobalMaxPool"], since=1, types=FLOATS)
def global_pool(info):
    from engineroom.providers.opencl.reduce import RowReduce

    rt = rt_of(info)
    dt = np.dtype(info.input_dtypes[0])
    red = RowReduce(rt, dt, "mean" if info.op_type == "GlobalAveragePool" else "max")

    def run(x):
        outer = x.shape[0] * x.shape[1]
        R = int(np.prod(x.shape[2:]))
        y = rt.empty(tuple(x.shape[:2]) + (1,) * (x.ndim - 2), dt)
        red(x.base_data, y.base_data, outer, R, 1)
        return (y,)

    return run
