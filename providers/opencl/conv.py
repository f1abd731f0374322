"""Conv and ConvTranspose (1-D, 2-D, 3-D; groups, pads, auto_pad, strides, dilations).

Conv: one input channel per group (depthwise, channel multipliers) runs a direct kernel, one output
per work-item over its taps; everything else is im2col into a pooled scratch buffer followed by the
tiled GEMM of :mod:`matmul`, batched over (image, group) with the bias added in its epilogue. A 1x1,
stride-1, unpadded Conv skips im2col: the input already is the GEMM's B. The weight needs no
prepacking: OIHW is already the (group, out/group, in/group * taps) matrix the GEMM reads.

ConvTranspose: the GEMM computes columns = W_g^T X_g (W read through transposed strides, no copy),
then a gather-style col2im gives every output its in-range taps (no atomics) and adds the bias.
All geometry is computed once per input shape on the host and handed over as a small int table.
"""
from __future__ import annotations

import numpy as np

from engineroom.plugin_sdk.activations import unsupported_activation
from engineroom.plugin_sdk.geometry import convtranspose_geometry
from engineroom.plugin_sdk.geometry import window_geometry as conv_geometry
from engineroom.plugin_sdk.host_values import ints
from engineroom.providers.opencl.common import CTYPES, all_of, inputs_in, rt_of
from engineroom.providers.opencl.matmul import GEMM_TYPES
from engineroom.providers.opencl.registry import kernel

_HEAD = """
{pragma}
#define T {T}
#define T8 {T}8
{act}/* g: C D H W OD OH OW KD KH KW sd sh sw dd dh dw pd ph pw Cg G OCg */
"""

_IM2COL = """
/* one work-item per (output row, column k of the im2col matrix, image*group): a row of OW outputs */
__kernel void im2col(__global const T* restrict x, __global T* restrict col, __global const int* restrict g,
                     int NG, int Ck) {
  const int C = g[0], D = g[1], H = g[2], W = g[3], OD = g[4], OH = g[5], OW = g[6];
  const int KD = g[7], KH = g[8], KW = g[9], Cg = g[19], G = g[20];
  const int sw = g[12], dw = g[15], pw = g[18];
  const int odh = get_global_id(0), k = get_global_id(1), ng = get_global_id(2);
  if (odh >= OD * OH || k >= Ck || ng >= NG) return;
  const int od = odh / OH, oh = odh - od * OH;
  int t = k;
  const int kw = t % KW; t /= KW;
  const int kh = t % KH; t /= KH;
  const int kd = t % KD; const int ci = t / KD;
  const int n = ng / G, gr = ng - n * G;
  const int c = gr * Cg + ci;
  const int id = od * g[10] - g[16] + kd * g[13];
  const int ih = oh * g[11] - g[17] + kh * g[14];
  __global T* out = col + (((long)ng * Ck + k) * OD * OH + odh) * OW;
  if (id < 0 || id >= D || ih < 0 || ih >= H) {
    for (int ow = 0; ow < OW; ++ow) out[ow] = 0;
    return;
  }
  __global const T* xr = x + (((long)(n * C + c) * D + id) * H + ih) * W;
  const int iw0 = kw * dw - pw;
  for (int ow = 0; ow < OW; ++ow) {
    const int iw = iw0 + ow * sw;
    out[ow] = (iw >= 0 && iw < W) ? xr[iw] : (T)0;
  }
}
"""

_DIRECT = """
__kernel void conv_direct(__global const T* restrict x, __global const T* restrict w,
                          __global const T* restrict bias, int has_bias, __global T* restrict y,
                          __global const int* restrict g, int NOC, int OC,
                          __global const T* restrict Z, int has_z, int act, T p0, T p1) {
  const int C = g[0], D = g[1], H = g[2], W = g[3], OD = g[4], OH = g[5], OW = g[6];
  const int KD = g[7], KH = g[8], KW = g[9], Cg = g[19], OCg = g[21];
  const int ow = get_global_id(0), odh = get_global_id(1), r = get_global_id(2);
  if (ow >= OW || odh >= OD * OH || r >= NOC) return;
  const int od = odh / OH, oh = odh - od * OH;
  const int n = r / OC, oc = r - n * OC, gr = oc / OCg;
  T acc = has_bias ? bias[oc] : (T)0;
  const int id0 = od * g[10] - g[16], ih0 = oh * g[11] - g[17], iw0 = ow * g[12] - g[18];
  for (int ci = 0; ci < Cg; ++ci) {
    __global const T* xc = x + (long)(n * C + gr * Cg + ci) * D * H * W;
    __global const T* wc = w + (long)(oc * Cg + ci) * KD * KH * KW;
    for (int kd = 0; kd < KD; ++kd) {
      const int id = id0 + kd * g[13];
      if (id < 0 || id >= D) continue;
      for (int kh = 0; kh < KH; ++kh) {
        const int ih = ih0 + kh * g[14];
        if (ih < 0 || ih >= H) continue;
        __global const T* xr = xc + ((long)id * H + ih) * W;
        __global const T* wr = wc + (kd * KH + kh) * KW;
        for (int kw = 0; kw < KW; ++kw) {
          const int iw = iw0 + kw * g[15];
          if (iw >= 0 && iw < W) acc += wr[kw] * xr[iw];
        }
      }
    }
  }
  const long o = ((long)r * OD * OH + odh) * OW + ow;
  if (has_z) acc += Z[o];
  y[o] = act ? act1(acc, act, p0, p1) : acc;
}
"""

# ConvTranspose: g is the *output* geometry seen from the input: C=OC, (D,H,W)=input spatial,
# (OD,OH,OW)=output spatial, pads are the begin pads, Cg=OCg, G=groups
_COL2IM = """
__kernel void col2im(__global const T* restrict col, __global const T* restrict bias, int has_bias,
                     __global T* restrict y, __global const int* restrict g, int NOC) {
  const int OC = g[0], D = g[1], H = g[2], W = g[3], OD = g[4], OH = g[5], OW = g[6];
  const int KD = g[7], KH = g[8], KW = g[9], OCg = g[19];
  const int sd = g[10], sh = g[11], sw = g[12], dd = g[13], dh = g[14], dw = g[15];
  const int ow = get_global_id(0), odh = get_global_id(1), r = get_global_id(2);
  if (ow >= OW || odh >= OD * OH || r >= NOC) return;
  const int od = odh / OH, oh = odh - od * OH;
  const int n = r / OC, oc = r - n * OC, gr = oc / OCg, m = oc - gr * OCg;
  const int G = OC / OCg, KK = KD * KH * KW, P = D * H * W;
  __global const T* cb = col + ((long)(n * G + gr) * OCg + m) * KK * P;
  T acc = has_bias ? bias[oc] : (T)0;
  for (int kd = 0; kd < KD; ++kd) {
    const int td = od + g[16] - kd * dd;
    if (td < 0 || td % sd) continue;
    const int id = td / sd;
    if (id >= D) continue;
    for (int kh = 0; kh < KH; ++kh) {
      const int th = oh + g[17] - kh * dh;
      if (th < 0 || th % sh) continue;
      const int ih = th / sh;
      if (ih >= H) continue;
      for (int kw = 0; kw < KW; ++kw) {
        const int tw = ow + g[18] - kw * dw;
        if (tw < 0 || tw % sw) continue;
        const int iw = tw / sw;
        if (iw >= W) continue;
        acc += cb[(long)((kd * KH + kh) * KW + kw) * P + (id * H + ih) * W + iw];
      }
    }
  }
  y[((long)r * OD * OH + odh) * OW + ow] = acc;
}
"""


def _src(dt, body):
    from engineroom.providers.opencl.matmul import ACT_FUNCS

    t = CTYPES[np.dtype(dt)]
    pragma = "#pragma OPENCL EXTENSION cl_khr_fp64 : enable" if t == "double" else ""
    return _HEAD.format(T=t, pragma=pragma, act=ACT_FUNCS) + body


def _window_attrs(a, n: int, wshape) -> tuple:
    """(kernel_shape, else the weight's; strides; dilations; pads) of an n-D Conv or ConvTranspose. The defaults
    stay: FusedConv (com.microsoft, no ONNX schema) reaches here with only the attributes it was given."""
    kshape = tuple(ints(a.get("kernel_shape"), n, 1)) if a.get("kernel_shape") else tuple(wshape[2:])
    return kshape, ints(a.get("strides"), n, 1), ints(a.get("dilations"), n, 1), ints(a.get("pads"), 2 * n, 0)


def _pad3(v, fill):
    v = list(v)
    return [fill] * (3 - len(v)) + v


def geo_table(C, spatial, out, kshape, strides, dilations, pb, Cg, G, OCg):
    return ([C] + _pad3(spatial, 1) + _pad3(out, 1) + _pad3(kshape, 1) + _pad3(strides, 1)
            + _pad3(dilations, 1) + _pad3(pb, 0) + [Cg, G, OCg])


def _conv_ok(view):
    s = view.input_shapes[0] if view.input_shapes else None
    if s is not None and not 3 <= len(s) <= 5:
        return "only 1-D, 2-D and 3-D convolutions"
    w = view.input_shapes[1] if len(view.input_shapes) > 1 else None
    if s is None and w is None:
        return "unknown rank"
    if w is not None and not 3 <= len(w) <= 5:
        return "only 1-D, 2-D and 3-D convolutions"
    return None


def _geo_ok(view):
    if view.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"):
        return f"auto_pad {view.attrs.get('auto_pad')!r}"
    return None


@kernel("Conv", since=1, types=GEMM_TYPES, supports=all_of(inputs_in(GEMM_TYPES), _conv_ok, _geo_ok))
def conv(info):
    return _conv_factory(info, (0, 0.0, 0.0))


@kernel("FusedConv", domain="com.microsoft", since=1, types=GEMM_TYPES,
        supports=all_of(inputs_in(GEMM_TYPES), _conv_ok, _geo_ok, unsupported_activation))
def fused_conv(info):
    """onnxruntime's contrib FusedConv: activation(Conv(X, W, B) + Z), all in the conv's epilogue."""
    from engineroom.providers.opencl.matmul import activation

    return _conv_factory(info, activation(info.attrs))


def _conv_factory(info, act):
    from engineroom.providers.opencl.matmul import Gemm
    from engineroom.providers.opencl.runtime import grid

    rt = rt_of(info)
    dt = np.dtype(info.input_dtypes[0])
    gemm = Gemm(rt, dt)
    k_im2col = rt.kernel(_src(dt, _IM2COL), "im2col", [None, None, None, np.int32, np.int32])
    ft = dt.type
    k_direct = rt.kernel(_src(dt, _DIRECT), "conv_direct", [None, None, None, np.int32, None, None, np.int32,
                                                            np.int32, None, np.int32, np.int32, ft, ft])
    a = info.attrs
    group = int(a.get("group", 1))
    auto_pad = a.get("auto_pad", "NOTSET")
    plans: dict = {}

    def plan(xshape, wshape):
        N, C = xshape[0], xshape[1]
        spatial = tuple(xshape[2:])
        n = len(spatial)
        OC, Cg = wshape[0], wshape[1]
        if C != Cg * group or OC % group:
            raise ValueError(f"Conv: input {tuple(xshape)} / weight {tuple(wshape)} do not match group={group}")
        kshape, strides, dilations, pads = _window_attrs(a, n, wshape)
        pb, pe, out = conv_geometry(spatial, kshape, strides, dilations, pads, auto_pad)
        OCg = OC // group
        geo = rt.const_ints(geo_table(C, spatial, out, kshape, strides, dilations, pb, Cg, group, OCg))
        KK = int(np.prod(kshape))
        P = int(np.prod(out))
        Pin = int(np.prod(spatial))
        Ck = Cg * KK
        yshape = (N, OC) + tuple(out)
        o3 = _pad3(out, 1)
        if Cg == 1:
            g_, l_ = grid((o3[2], o3[0] * o3[1], N * OC))
            return ("direct", yshape, geo, g_, l_, None)
        pointwise = KK == 1 and all(s == 1 for s in strides) and not any(pb) and not any(pe)
        offs = []
        for i in range(N):
            for gr in range(group):
                b_off = (i * C + gr * Cg) * Pin if pointwise else (i * group + gr) * Ck * P
                offs += [gr * OCg * Ck, b_off, (i * OC + gr * OCg) * P, gr * OCg]
        boffs = rt.const_ints(offs) if N * group > 1 else None
        im = None
        if not pointwise:
            im = grid((o3[0] * o3[1], Ck, N * group))
        return ("gemm", yshape, geo, im, (OCg, P, Ck, N * group, boffs), pointwise)

    def run(x, w, b=None, z=None):
        key = (x.shape, w.shape)
        p = plans.get(key)
        if p is None:
            p = plans[key] = plan(tuple(x.shape), tuple(w.shape))
        y = rt.empty(p[1], dt)
        if y.size == 0:
            return (y,)
        if z is not None and tuple(z.shape) != tuple(y.shape):
            raise ValueError(f"FusedConv: Z of shape {tuple(z.shape)} for an output of shape {tuple(y.shape)}")
        bias = b.base_data if b is not None else None
        if p[0] == "direct":
            _, yshape, geo, g_, l_, _ = p
            rt.launch(k_direct, g_, l_, x.base_data, w.base_data, bias if bias is not None else y.base_data,
                      int(bias is not None), y.base_data, geo, yshape[0] * yshape[1], yshape[1],
                      (z if z is not None else y).base_data, int(z is not None), *act)
            return (y,)
        _, yshape, geo, im, (M, P, Ck, nb, boffs), pointwise = p
        if pointwise:
            src, ldb = x.base_data, P
        else:
            col = rt.empty((nb * Ck * P,), dt)
            rt.launch(k_im2col, im[0], im[1], x.base_data, col.base_data, geo, nb, Ck)
            src, ldb = col.base_data, P
        gemm(M, P, Ck, w.base_data, Ck, 1, src, ldb, y.base_data, P, bias, 1, 0, 1.0, 1.0, boffs, nb,
             z.base_data if z is not None else None, act)
        return (y,)

    return run


@kernel("ConvTranspose", since=1, types=GEMM_TYPES, supports=all_of(inputs_in(GEMM_TYPES), _conv_ok, _geo_ok))
def conv_transpose(info):
    from engineroom.providers.opencl.matmul import Gemm
    from engineroom.providers.opencl.runtime import grid

    rt = rt_of(info)
    dt = np.dtype(info.input_dtypes[0])
    gemm = Gemm(rt, dt)
    k_col2im = rt.kernel(_src(dt, _COL2IM), "col2im", [None, None, np.int32, None, None, np.int32])
    a = info.attrs
    group = int(a.get("group", 1))
    auto_pad = a.get("auto_pad", "NOTSET")
    plans: dict = {}

    def plan(xshape, wshape):
        N, C = xshape[0], xshape[1]
        spatial = tuple(xshape[2:])
        n = len(spatial)
        if wshape[0] != C or C % group:
            raise ValueError(f"ConvTranspose: input {tuple(xshape)} / weight {tuple(wshape)} do not match")
        OCg = wshape[1]
        OC = OCg * group
        Cg = C // group
        kshape, strides, dilations, pads = _window_attrs(a, n, wshape)
        out_pad = ints(a.get("output_padding"), n, 0)
        pb, pe, out = convtranspose_geometry(spatial, kshape, strides, dilations, pads, out_pad,
                                             a.get("output_shape"), auto_pad)
        KK = int(np.prod(kshape))
        Pin = int(np.prod(spatial))
        geo = rt.const_ints(geo_table(OC, spatial, out, kshape, strides, dilations, pb, OCg, group, OCg))
        M = OCg * KK
        offs = []
        for i in range(N):
            for gr in range(group):
                offs += [gr * Cg * M, (i * C + gr * Cg) * Pin, (i * group + gr) * M * Pin, 0]
        boffs = rt.const_ints(offs) if N * group > 1 else None
        o3 = _pad3(out, 1)
        g_, l_ = grid((o3[2], o3[0] * o3[1], N * OC))
        return (N, OC) + tuple(out), M, Pin, Cg, N * group, boffs, geo, g_, l_

    def run(x, w, b=None):
        key = (x.shape, w.shape)
        p = plans.get(key)
        if p is None:
            p = plans[key] = plan(tuple(x.shape), tuple(w.shape))
        yshape, M, Pin, Cg, nb, boffs, geo, g_, l_ = p
        y = rt.empty(yshape, dt)
        if y.size == 0:
            return (y,)
        col = rt.empty((nb * M * max(Pin, 1),), dt)
        gemm(M, Pin, Cg, w.base_data, 1, M, x.base_data, Pin, col.base_data, Pin, None, 0, 0, 1.0, 1.0, boffs, nb)
        bias = b.base_data if b is not None else None
        rt.launch(k_col2im, g_, l_, col.base_data, bias if bias is not None else y.base_data, int(bias is not None),
                  y.base_data, geo, yshape[0] * yshape[1])
        return (y,)

    return run
