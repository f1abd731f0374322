"""Pooling kernels: MaxPool, AveragePool, LpPool, the Global* pools, MaxUnpool, MaxRoiPool, RoiAlign.

Windowed pools pad once and then reduce *separably*, one spatial axis at a time (max and sum both
decompose), so a k1 x k2 window costs k1 + k2 vectorized passes instead of k1 * k2. MaxPool's
Indices output needs the whole window at once and uses a per-tap loop that tracks the winning tap.
Average divisors are per-axis counts of in-range taps multiplied together (an outer product), so
count_include_pad, ceil_mode and dilations cost nothing per run.

2-D float32/float64 MaxPool (without Indices) and AveragePool run compiled loops (``_jit_pool``) where
numba is available: no padded copy, each output row reduced while its input rows are in cache.
"""
from __future__ import annotations

import itertools
import math

import numpy as np

from engineroom.plugin_sdk.geometry import window_geometry
from engineroom.plugin_sdk.host_values import host_array as _host
from engineroom.plugin_sdk.host_values import ints as _ints
from engineroom.providers.cpu.array_module import arrays
from engineroom.providers.cpu.conv import _over_channels, compute_dtype, pad_spatial, tap_slice
from engineroom.providers.cpu.reduce import GEMV_MAX_ROW, row_sums
from engineroom.providers.cpu.registry import array_kernel, kernel


def pool_geometry(spatial, kshape, strides, dilations, pads, auto_pad, ceil_mode):
    """Per axis: (pads_begin, pads_end, extra_end, out); extra_end is the ceil_mode overhang past pads_end."""
    pb, pe, out = window_geometry(spatial, kshape, strides, dilations, pads, auto_pad, bool(ceil_mode))
    extra = tuple(max(0, (o - 1) * s + (k - 1) * d + 1 - (n + b + e))
                  for n, k, s, d, b, e, o in zip(spatial, kshape, strides, dilations, pb, pe, out))
    return pb, pe, extra, out


def _axis_counts(in_sz, k, s, d, b, o, lo, hi):
    """For each output position on one axis, how many of its taps fall in [lo, hi) (input coordinates)."""
    pos = np.arange(o)[:, None] * s - b + np.arange(k)[None, :] * d
    return ((pos >= lo) & (pos < hi)).sum(axis=1)


def _separable(xp, xpad, kshape, strides, dilations, out, reduce):
    """Reduce a padded input over its window one axis at a time; reduce is a binary ufunc (maximum/add)."""
    y = xpad
    n = len(kshape)
    lead = y.ndim - n
    for i in range(n):
        k, s, d, o = kshape[i], strides[i], dilations[i], out[i]
        if k == 1 and s == 1 and y.shape[lead + i] == o:
            continue
        pre = (slice(None),) * (lead + i)
        acc = None
        for j in range(k):
            sl = y[pre + (slice(j * d, j * d + (o - 1) * s + 1, s),)]
            if acc is None:
                acc = sl.copy()
            else:
                reduce(acc, sl, out=acc)
        y = acc
    return y


class _PoolPlan:
    def __init__(self, info):
        a = info.attrs
        self.xp = info.xp
        self.a = a
        self.auto_pad = a.get("auto_pad", "NOTSET")
        self.ceil = int(a.get("ceil_mode", 0))
        self.kshape = tuple(int(k) for k in a["kernel_shape"])
        n = len(self.kshape)
        self.n = n
        self.strides = tuple(_ints(a.get("strides"), n, 1))
        self.dilations = tuple(_ints(a.get("dilations"), n, 1))
        self.pads = tuple(_ints(a.get("pads"), 2 * n, 0))
        self._geo = {}
        self.jit = arrays(self.xp).compiled("pool") if n == 2 else None
        self.taps = math.prod(self.kshape)      # reads per output: the work that decides a split over threads

    def jit_args(self, x, pb, out):
        """The compiled loop's input (C-contiguous), output buffer and integer arguments, or None where it
        does not apply (dtype, or an empty tensor)."""
        if self.jit is None or x.dtype not in _JIT_DTYPES or x.size == 0 or 0 in out:
            return None
        y = np.empty(x.shape[:2] + tuple(out), dtype=x.dtype)
        return (np.ascontiguousarray(x), y, *self.kshape, *self.strides, *self.dilations, pb[0], pb[1])

    def geometry(self, spatial):
        g = self._geo.get(spatial)
        if g is None:
            g = pool_geometry(spatial, self.kshape, self.strides, self.dilations, self.pads, self.auto_pad, self.ceil)
            self._geo[spatial] = g
        return g


_JIT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _min_value(dt):
    dt = np.dtype(dt)
    if dt.kind in "iu":
        return np.iinfo(dt).min
    return -np.inf


@array_kernel("MaxPool", since=1)
def max_pool(info):
    xp = info.xp
    plan = _PoolPlan(info)
    storage_order = int(info.attrs.get("storage_order", 0))
    want_indices = len(info.output_names) > 1 and info.output_names[1] != ""

    def run(x):
        spatial = tuple(x.shape[2:])
        pb, pe, extra, out = plan.geometry(spatial)
        if not want_indices:
            args = plan.jit_args(x, pb, out)
            if args is not None:
                xj, y, rest = args[0], args[1], args[2:]
                _over_channels(lambda c0, c1: plan.jit.maxpool2d(xj[:, c0:c1], y[:, c0:c1], *rest),
                               x.shape[0], x.shape[1], y.size * plan.taps)
                return (y,)
        pe2 = tuple(e + x_ for e, x_ in zip(pe, extra))
        xpad = pad_spatial(xp, x, pb, pe2, _min_value(x.dtype))
        if not want_indices:
            # fmax: a NaN loses to any number in the window, as in onnxruntime's MaxPool
            return (_separable(xp, xpad, plan.kshape, plan.strides, plan.dilations, out, xp.fmax),)
        return _max_with_indices(xp, x, xpad, plan, pb, out, storage_order)

    return run


def _max_with_indices(xp, x, xpad, plan, pb, out, storage_order):
    """MaxPool plus the flat index (into the unpadded input) of each window's first maximum.

    A padding cell never wins: where it ties the maximum (the dtype's lowest value), the first real
    cell holding that value does, as onnxruntime reports it."""
    taps = list(itertools.product(*(range(k) for k in plan.kshape)))
    spatial = x.shape[2:]
    n = plan.n
    best = best_real = None
    arg = xp.zeros(x.shape[:2] + out, dtype=np.int64)
    for t, js in enumerate(taps):
        offs = tuple(j * d for j, d in zip(js, plan.dilations))
        sl = xpad[tap_slice(offs, plan.strides, out)]
        real = _tap_inside(xp, js, plan, pb, out, spatial)
        if best is None:
            best = sl.copy()
            best_real = xp.broadcast_to(real, best.shape).copy()
            continue
        better = (sl > best) | ((sl == best) & real & ~best_real)
        xp.copyto(best, sl, where=better)
        xp.copyto(arg, t, where=better)
        xp.copyto(best_real, real, where=better)
    tj = xp.asarray(np.array(taps, dtype=np.int64).reshape(len(taps), plan.n))
    flat = xp.zeros_like(arg)
    if storage_order == 0:
        mults = [math.prod(spatial[i + 1:]) for i in range(n)]
    else:
        mults = [math.prod(spatial[:i]) for i in range(n)]
    for i in range(n):
        base = xp.arange(out[i], dtype=np.int64) * plan.strides[i] - pb[i]
        base = base.reshape((1, 1) + tuple(-1 if a == i else 1 for a in range(n)))
        pos = base + tj[:, i][arg] * plan.dilations[i]
        flat += pos * mults[i]
    S = math.prod(spatial)
    N, C = x.shape[:2]
    nc = xp.arange(N * C, dtype=np.int64).reshape((N, C) + (1,) * n) * S
    return best, flat + nc


def _tap_inside(xp, js, plan, pb, out, spatial):
    """For one kernel tap: which output positions read a real input cell (not padding)."""
    mask = None
    for i in range(plan.n):
        p = np.arange(out[i], dtype=np.int64) * plan.strides[i] - pb[i] + js[i] * plan.dilations[i]
        m = ((p >= 0) & (p < spatial[i])).reshape((1, 1) + tuple(-1 if a == i else 1 for a in range(plan.n)))
        mask = m if mask is None else mask & m
    return xp.asarray(mask)


def _avg_divisor(spatial, plan, pb, pe, out, include_pad):
    """Per output position: how many window taps are averaged (outer product of per-axis counts)."""
    div = np.ones((), dtype=np.float64)
    for i in range(plan.n):
        lo, hi = (-pb[i], spatial[i] + pe[i]) if include_pad else (0, spatial[i])
        c = _axis_counts(spatial[i], plan.kshape[i], plan.strides[i], plan.dilations[i], pb[i], out[i], lo, hi)
        div = np.multiply.outer(div, c)
    return div


@array_kernel("AveragePool", since=1)
def average_pool(info):
    xp = info.xp
    plan = _PoolPlan(info)
    include_pad = int(info.attrs.get("count_include_pad", 0))
    divs = {}

    def run(x):
        cdt = compute_dtype(x.dtype)
        spatial = tuple(x.shape[2:])
        pb, pe, extra, out = plan.geometry(spatial)
        inv = divs.get(spatial)
        if inv is None:
            d = _avg_divisor(spatial, plan, pb, pe, out, include_pad)
            with np.errstate(divide="ignore"):
                inv = xp.asarray((1.0 / d).astype(cdt))
            divs[spatial] = inv
        args = plan.jit_args(x, pb, out)
        if args is not None:
            xj, y, rest = args[0], args[1], args[2:]
            _over_channels(lambda c0, c1: plan.jit.avgpool2d(xj[:, c0:c1], y[:, c0:c1], inv, *rest),
                           x.shape[0], x.shape[1], y.size * plan.taps)
            return (y,)
        pe2 = tuple(e + x_ for e, x_ in zip(pe, extra))
        xpad = pad_spatial(xp, x.astype(cdt, copy=False), pb, pe2)
        y = _separable(xp, xpad, plan.kshape, plan.strides, plan.dilations, out, xp.add)
        y *= inv
        return (y.astype(x.dtype, copy=False),)

    return run


@array_kernel("LpPool", since=1)
def lp_pool(info):
    xp = info.xp
    plan = _PoolPlan(info)
    p = float(info.attrs.get("p", 2))

    def run(x):
        cdt = compute_dtype(x.dtype)
        spatial = tuple(x.shape[2:])
        pb, pe, extra, out = plan.geometry(spatial)
        pe2 = tuple(e + x_ for e, x_ in zip(pe, extra))
        xa = xp.abs(x.astype(cdt, copy=False))
        xpow = xa * xa if p == 2 else xa ** p
        xpad = pad_spatial(xp, xpow, pb, pe2)
        y = _separable(xp, xpad, plan.kshape, plan.strides, plan.dilations, out, xp.add)
        y = xp.sqrt(y) if p == 2 else y ** (1.0 / p)
        return (y.astype(x.dtype, copy=False),)

    return run


@array_kernel("GlobalAveragePool", since=1)
def global_average_pool(x, *, xp):
    """The spatial sums as one matrix-vector product (``reduce.row_sums``), then divided by the pixel count:
    NumPy's mean over two axes cost 9-14 us on 256-512 channels of 7x7 alone and 30-50 us inside a PP-LCNet
    run, this 6-10 us there. Large images keep NumPy's pairwise mean."""
    cdt = compute_dtype(x.dtype)
    n = math.prod(x.shape[2:]) if x.ndim > 2 else 0
    if not n or not x.size or n > GEMV_MAX_ROW:    # (nothing to average: the mean's own answer)
        return xp.mean(x, axis=tuple(range(2, x.ndim)), keepdims=True, dtype=cdt).astype(x.dtype, copy=False)
    y = row_sums(xp, x.astype(cdt, copy=False).reshape(-1, n))
    y /= n
    return y.reshape(x.shape[:2] + (1,) * (x.ndim - 2)).astype(x.dtype, copy=False)


@array_kernel("GlobalMaxPool", since=1)
def global_max_pool(x, *, xp):
    return xp.max(x, axis=tuple(range(2, x.ndim)), keepdims=True)


@array_kernel("GlobalLpPool", since=1)
def global_lp_pool(x, *, xp, p=2):
    p = float(p)
    cdt = compute_dtype(x.dtype)
    xa = xp.abs(x.astype(cdt, copy=False))
    y = xp.sum(xa ** p, axis=tuple(range(2, x.ndim)), keepdims=True) ** (1.0 / p)
    return y.astype(x.dtype, copy=False)


@array_kernel("MaxUnpool", since=9, host_inputs=(2,))
def max_unpool(info):
    xp = info.xp
    a = info.attrs
    kshape = [int(k) for k in a["kernel_shape"]]
    n = len(kshape)
    strides = _ints(a.get("strides"), n, 1)
    pads = _ints(a.get("pads"), 2 * n, 0)

    def run(x, indices, output_shape=None):
        # indices address the default unpooled shape; an explicit output_shape only enlarges the canvas
        shape = tuple(x.shape[:2]) + tuple(
            (x.shape[2 + i] - 1) * strides[i] + kshape[i] - pads[i] - pads[i + n] for i in range(n))
        y = xp.zeros(math.prod(shape), dtype=x.dtype)
        y[indices.reshape(-1)] = x.reshape(-1)
        y = y.reshape(shape)
        if output_shape is not None:
            full = tuple(int(v) for v in np.asarray(output_shape).reshape(-1))
            if full != shape:
                z = xp.zeros(full, dtype=x.dtype)
                z[tuple(slice(0, min(a, b)) for a, b in zip(shape, full))] = \
                    y[tuple(slice(0, min(a, b)) for a, b in zip(shape, full))]
                y = z
        return (y,)

    return run


@kernel("MaxRoiPool", since=1)
def max_roi_pool(info):
    """Caffe-style max RoI pooling; loops over RoIs and bins (RoI counts are small), vectorized over channels."""
    xp = info.xp
    ph_, pw_ = (int(v) for v in info.attrs["pooled_shape"])
    scale = float(info.attrs.get("spatial_scale", 1.0))

    def run(x, rois):
        N, C, H, W = x.shape
        R = rois.shape[0]
        y = xp.zeros((R, C, ph_, pw_), dtype=x.dtype)
        r_host = _host(rois).astype(np.float64)
        for r in range(R):
            b = int(r_host[r, 0])
            x1, y1, x2, y2 = (int(np.round(v * scale)) for v in r_host[r, 1:5])
            rh = max(y2 - y1 + 1, 1)
            rw = max(x2 - x1 + 1, 1)
            bh, bw = rh / ph_, rw / pw_
            for i in range(ph_):
                hs = min(max(int(np.floor(i * bh)) + y1, 0), H)
                he = min(max(int(np.ceil((i + 1) * bh)) + y1, 0), H)
                for j in range(pw_):
                    ws = min(max(int(np.floor(j * bw)) + x1, 0), W)
                    we = min(max(int(np.ceil((j + 1) * bw)) + x1, 0), W)
                    if he > hs and we > ws:
                        y[r, :, i, j] = x[b, :, hs:he, ws:we].max(axis=(1, 2))
        return (y,)

    return run


def _roi_align_factory(info, default_mode):
    xp = info.xp
    a = info.attrs
    mode = a.get("mode", "avg")
    oh, ow = int(a.get("output_height", 1)), int(a.get("output_width", 1))
    sr = int(a.get("sampling_ratio", 0))
    scale = float(a.get("spatial_scale", 1.0))
    half_pixel = a.get("coordinate_transformation_mode", default_mode) == "half_pixel"

    def run(x, rois, batch_indices):
        cdt = compute_dtype(x.dtype)
        N, C, H, W = x.shape
        R = rois.shape[0]
        y = xp.zeros((R, C, oh, ow), dtype=cdt)
        r_host = _host(rois).astype(np.float64)
        b_host = _host(batch_indices).astype(np.int64)
        xc = x.astype(cdt, copy=False)
        off = 0.5 if half_pixel else 0.0
        for r in range(R):
            x1, y1, x2, y2 = r_host[r] * scale - np.array([off, off, off, off])
            rw, rh = x2 - x1, y2 - y1
            if not half_pixel:
                rw, rh = max(rw, 1.0), max(rh, 1.0)
            bh, bw = rh / oh, rw / ow
            gh = sr if sr > 0 else int(np.ceil(rh / oh))
            gw = sr if sr > 0 else int(np.ceil(rw / ow))
            count = max(gh * gw, 1)
            # sample coordinates, (oh, gh) and (ow, gw)
            ys = y1 + np.arange(oh)[:, None] * bh + (np.arange(gh)[None, :] + 0.5) * bh / gh
            xs = x1 + np.arange(ow)[:, None] * bw + (np.arange(gw)[None, :] + 0.5) * bw / gw
            wy, iy = _bilinear_1d(ys, H)
            wx, ix = _bilinear_1d(xs, W)
            img = xc[b_host[r]]                                    # (C, H, W)
            # corner values (C, oh, gh, 2, ow, gw, 2) and weights
            v = img[:, xp.asarray(iy[:, :, :, None, None, None]), xp.asarray(ix[None, None, None, :, :, :])]
            w = wy[:, :, :, None, None, None] * wx[None, None, None, :, :, :]
            w = xp.asarray(w.astype(cdt))
            if mode == "max":
                # onnxruntime's definition: max over samples of the largest weighted corner
                y[r] = (v * w).max(axis=(3, 6)).max(axis=(2, 4))
            else:
                y[r] = (v * w).sum(axis=(2, 3, 5, 6)) / count
        return (y.astype(x.dtype, copy=False),)

    return run


def _bilinear_1d(coords, size):
    """Per sample coordinate: weights (..., 2) for its low/high neighbours and their indices; 0 outside."""
    c = coords.astype(np.float64)
    outside = (c < -1.0) | (c > size)
    c = np.maximum(c, 0.0)
    lo = np.floor(c).astype(np.int64)
    clamp = lo >= size - 1
    lo = np.where(clamp, size - 1, lo)
    hi = np.where(clamp, size - 1, lo + 1)
    c = np.where(clamp, lo.astype(np.float64), c)
    frac = c - lo
    w = np.stack([1.0 - frac, frac], axis=-1)
    w[outside] = 0.0
    return w, np.stack([lo, hi], axis=-1)


@kernel("RoiAlign", since=10)
def roi_align_10(info):
    return _roi_align_factory(info, "output_half_pixel")


@kernel("RoiAlign", since=16)
def roi_align_16(info):
    return _roi_align_factory(info, "half_pixel")
