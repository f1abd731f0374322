"""Reductions (ReduceSum/Mean/Max/Min/Prod/SumSquare/L1/L2/LogSum/LogSumExp, ArgMax/ArgMin) and the
Softmax family, over one (outer, R, inner) row layout.

A contiguous block of reduced axes is read in place: one work-item per (outer, inner) output walks
its R elements at stride ``inner``. Reduced axes that are not one contiguous block are first moved
last by a strided copy. The reduction itself is a compile-time choice (one program per kind).
"""
from __future__ import annotations

import numpy as np

from engineroom.plugin_sdk.geometry import softmax_blocks
from engineroom.plugin_sdk.host_values import host_ints
from engineroom.providers.opencl.common import CTYPES, FLOATS, I64, all_of, inputs_in, norm_axis, rt_of
from engineroom.providers.opencl.registry import kernel
from engineroom.providers.opencl.strided import Strided, contiguous_strides

# kind: (init, combine, finish); v is the element, acc the accumulator, R the count
_KINDS = {
    "sum": ("0", "acc += v", "acc"),
    "mean": ("0", "acc += v", "acc / (T)R"),
    "max": ("-INFINITY", "acc = (v > acc || isnan(v)) ? v : acc", "acc"),
    "min": ("INFINITY", "acc = (v < acc || isnan(v)) ? v : acc", "acc"),
    "prod": ("1", "acc *= v", "acc"),
    "sumsquare": ("0", "acc += v * v", "acc"),
    "l1": ("0", "acc += fabs(v)", "acc"),
    "l2": ("0", "acc += v * v", "sqrt(acc)"),
    "logsum": ("0", "acc += v", "log(acc)"),
}

_ROW = """
{pragma}
#define T {T}
__kernel void rowreduce(__global const T* restrict x, __global T* restrict y, int outer, int R, int inner) {{
  const int i = get_global_id(0), o = get_global_id(1);
  if (i >= inner || o >= outer) return;
  __global const T* p = x + (long)o * R * inner + i;
  T acc = {init};
  for (int r = 0; r < R; ++r) {{ const T v = p[(long)r * inner]; {combine}; }}
  y[(long)o * inner + i] = {finish};
}}
__kernel void rowlse(__global const T* restrict x, __global T* restrict y, int outer, int R, int inner) {{
  const int i = get_global_id(0), o = get_global_id(1);
  if (i >= inner || o >= outer) return;
  __global const T* p = x + (long)o * R * inner + i;
  T m = -INFINITY;
  for (int r = 0; r < R; ++r) m = fmax(m, p[(long)r * inner]);
  T s = 0;
  if (isinf(m)) {{ y[(long)o * inner + i] = m; return; }}
  for (int r = 0; r < R; ++r) s += exp(p[(long)r * inner] - m);
  y[(long)o * inner + i] = m + log(s);
}}
__kernel void rowarg(__global const T* restrict x, __global long* restrict y, int outer, int R, int inner,
                     int want_max, int last) {{
  const int i = get_global_id(0), o = get_global_id(1);
  if (i >= inner || o >= outer) return;
  __global const T* p = x + (long)o * R * inner + i;
  T best = p[0];
  int bi = 0;
  for (int r = 1; r < R; ++r) {{
    const T v = p[(long)r * inner];
    const int better = want_max ? (last ? v >= best : v > best) : (last ? v <= best : v < best);
    if (better) {{ best = v; bi = r; }}
  }}
  y[(long)o * inner + i] = bi;
}}
__kernel void softmax(__global const T* restrict x, __global T* restrict y, int outer, int R, int inner,
                      int mode) {{
  const int i = get_global_id(0), o = get_global_id(1);
  if (i >= inner || o >= outer) return;
  const long base = (long)o * R * inner + i;
  __global const T* p = x + base;
  __global T* q = y + base;
  T m = -INFINITY;
  int am = 0;
  for (int r = 0; r < R; ++r) {{ const T v = p[(long)r * inner]; if (v > m) {{ m = v; am = r; }} }}
  if (mode == 2) {{ for (int r = 0; r < R; ++r) q[(long)r * inner] = r == am ? (T)1 : (T)0; return; }}
  T s = 0;
  for (int r = 0; r < R; ++r) s += exp(p[(long)r * inner] - m);
  if (mode == 1) {{
    const T ls = m + log(s);
    for (int r = 0; r < R; ++r) q[(long)r * inner] = p[(long)r * inner] - ls;
  }} else {{
    const T inv = (T)1 / s;
    for (int r = 0; r < R; ++r) q[(long)r * inner] = exp(p[(long)r * inner] - m) * inv;
  }}
}}
"""


def _src(dt, kind="sum"):
    t = CTYPES[np.dtype(dt)]
    pragma = "#pragma OPENCL EXTENSION cl_khr_fp64 : enable" if t == "double" else ""
    init, combine, finish = _KINDS[kind]
    return _ROW.format(T=t, pragma=pragma, init=init, combine=combine, finish=finish)


class RowReduce:
    """``y[o, i] = reduce_r x[o, r, i]`` for one dtype and reduction kind."""

    def __init__(self, rt, dt, kind):
        self.rt = rt
        name = "rowlse" if kind == "logsumexp" else "rowreduce"
        self.knl = rt.kernel(_src(dt, "sum" if kind == "logsumexp" else kind), name,
                             [None, None, np.int32, np.int32, np.int32])

    def __call__(self, x, y, outer, R, inner):
        from engineroom.providers.opencl.runtime import grid

        if outer * inner == 0:
            return
        g, l_ = grid((inner, outer))
        self.rt.launch(self.knl, g, l_, x if x is not None else y, y, outer, R, inner)


def _layout(shape, axes):
    """(perm or None, outer, R, inner) reading the reduced ``axes`` as one block."""
    axes = sorted(set(axes))
    red = [a for a in axes if shape[a] != 1]
    if not red or red == list(range(red[0], red[-1] + 1)) or all(
            shape[a] == 1 for a in range(red[0], red[-1] + 1) if a not in red):
        if not red:
            return None, int(np.prod(shape)), 1, 1
        a0, a1 = red[0], red[-1]
        return None, int(np.prod(shape[:a0])), int(np.prod(shape[a0:a1 + 1])), int(np.prod(shape[a1 + 1:]))
    kept = [a for a in range(len(shape)) if a not in axes]
    perm = kept + axes
    return perm, int(np.prod([shape[a] for a in kept])), int(np.prod([shape[a] for a in axes])), 1


def _moved(rt, x, perm, dt):
    shape = tuple(x.shape[p] for p in perm)
    cs = contiguous_strides(x.shape)
    y = rt.empty(shape, dt)
    Strided(rt, "x0", [dt], dt)(shape, [(x.base_data, 0, tuple(cs[p] for p in perm))],
                                (y.base_data, 0, contiguous_strides(shape)))
    return y


_REDUCE_OPS = {"ReduceSum": "sum", "ReduceMean": "mean", "ReduceMax": "max", "ReduceMin": "min",
               "ReduceProd": "prod", "ReduceSumSquare": "sumsquare", "ReduceL1": "l1", "ReduceL2": "l2",
               "ReduceLogSum": "logsum", "ReduceLogSumExp": "logsumexp"}


def _reduce_factory(info, axes_from_input: bool):
    rt = rt_of(info)
    dt = np.dtype(info.input_dtypes[0])
    red = RowReduce(rt, dt, _REDUCE_OPS[info.op_type])
    keepdims = int(info.attrs["keepdims"])
    noop = int(info.attrs.get("noop_with_empty_axes", 0))    # absent before opset 13/18
    attr_axes = info.attrs.get("axes")
    plans: dict = {}

    def run(x, axes_in=None):
        raw = host_ints(axes_in) if axes_from_input and axes_in is not None else (
            None if axes_from_input else (list(attr_axes) if attr_axes is not None else None))
        key = (x.shape, None if raw is None else tuple(raw))
        p = plans.get(key)
        if p is None:
            if not raw:
                if noop and axes_from_input:
                    plans[key] = p = ("noop",)
                else:
                    raw = list(range(x.ndim))
            if p is None:
                axes = sorted({norm_axis(a, x.ndim) for a in raw})
                out = [1 if i in axes else s for i, s in enumerate(x.shape)]
                if not keepdims:
                    out = [s for i, s in enumerate(x.shape) if i not in axes]
                p = plans[key] = ("reduce", tuple(out)) + _layout(tuple(x.shape), axes)
        if p[0] == "noop":
            return (x,)
        _, out, perm, outer, R, inner = p
        src = _moved(rt, x, perm, dt) if perm is not None and x.size else x
        y = rt.empty(out, dt)
        red(src.base_data, y.base_data, outer, R, inner)
        return (y,)

    return run


def _axes_input_since(op):
    return 13 if op == "ReduceSum" else 18


for _op in _REDUCE_OPS:
    kernel(_op, since=1, types=FLOATS)(lambda info: _reduce_factory(info, False))
    kernel(_op, since=_axes_input_since(_op), types=FLOATS, host_inputs=(1,))(
        lambda info: _reduce_factory(info, True))


@kernel(["ArgMax", "ArgMin"], since=1, types=FLOATS)
def arg_reduce(info):
    from engineroom.providers.opencl.runtime import grid

    rt = rt_of(info)
    dt = np.dtype(info.input_dtypes[0])
    knl = rt.kernel(_src(dt), "rowarg", [None, None, np.int32, np.int32, np.int32, np.int32, np.int32])
    axis_attr = int(info.attrs["axis"])
    keepdims = int(info.attrs["keepdims"])
    last = int(info.attrs.get("select_last_index", 0))
    want_max = int(info.op_type == "ArgMax")

    def run(x):
        axis = norm_axis(axis_attr, x.ndim)
        out = list(x.shape)
        if keepdims:
            out[axis] = 1
        else:
            del out[axis]
        y = rt.empty(out, I64)
        outer = int(np.prod(x.shape[:axis]))
        inner = int(np.prod(x.shape[axis + 1:]))
        if y.size:
            g, l_ = grid((inner, outer))
            rt.launch(knl, g, l_, x.base_data, y.base_data, outer, x.shape[axis], inner, want_max, last)
        return (y,)

    return run


# -- Softmax / LogSoftmax / Hardmax -------------------------------------------------------------------
def _softmax_factory(info):
    from engineroom.providers.opencl.runtime import grid

    rt = rt_of(info)
    dt = np.dtype(info.input_dtypes[0])
    knl = rt.kernel(_src(dt), "softmax", [None, None, np.int32, np.int32, np.int32, np.int32])
    mode = {"Softmax": 0, "LogSoftmax": 1, "Hardmax": 2}[info.op_type]
    axis_attr, opset = int(info.attrs["axis"]), info.opset    # the schema's default: 1 before opset 13, then -1

    def run(x):
        y = rt.empty(x.shape, dt)
        if y.size == 0:
            return (y,)
        outer, R, inner = softmax_blocks(x.shape, norm_axis(axis_attr, x.ndim), opset)
        g, l_ = grid((inner, outer))
        rt.launch(knl, g, l_, x.base_data, y.base_data, outer, R, inner, mode)
        return (y,)

    return run


for _op in ("Softmax", "LogSoftmax", "Hardmax"):
    kernel(_op, since=1, types=FLOATS, supports=all_of(inputs_in(FLOATS)))(_softmax_factory)
