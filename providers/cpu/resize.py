"""Resampling kernels: Resize (every mode, coordinate transform, antialias, keep_aspect_ratio, axes), Upsample,
GridSample, AffineGrid and Col2Im.

Resize is separable: per resized axis a small plan is computed once per input shape (nearest: source
indices; linear/cubic: a few taps with weights), then applied axis by axis with ``take``. Linear and cubic
with antialias widen the filter by 1/scale when downscaling; taps outside the input replicate the edge
unless ``exclude_outside`` drops them (weights renormalized).
"""
from __future__ import annotations

import math

import numpy as np

from engineroom.plugin_sdk.geometry import nearest_index, resize_coordinates
from engineroom.plugin_sdk.host_values import host_array as _host
from engineroom.plugin_sdk.limits import check_tensor_size
from engineroom.providers.cpu.array_module import arrays
from engineroom.providers.cpu.registry import array_kernel

_F32 = np.dtype(np.float32)


def _compute_dtype(dtype):
    """Interpolate in float32 (float64 for double inputs); other float types and ints are cast back."""
    return np.float64 if np.dtype(dtype) == np.float64 else np.float32


# --- Resize plan

def _cubic_kernel(t, a):
    t = np.abs(t)
    t2, t3 = t * t, t * t * t
    near = (a + 2) * t3 - (a + 3) * t2 + 1
    far = a * t3 - 5 * a * t2 + 8 * a * t - 4 * a
    return np.where(t <= 1, near, np.where(t < 2, far, 0.0))


def _linear_kernel(t):
    return np.clip(1.0 - np.abs(t), 0.0, 1.0)


class _Axis:
    """How one axis is resampled: ``idx`` (out,) for nearest, or ``idx``/``w`` (out, taps); ``outside`` mask
    of output positions that take the extrapolation value (tf_crop_and_resize)."""

    __slots__ = ("axis", "idx", "w", "outside")

    def __init__(self, axis, idx, w, outside):
        self.axis, self.idx, self.w, self.outside = axis, idx, w, outside


def _axis_plan(axis, in_len, out_len, scale, cfg, roi_start, roi_end):
    ctm = cfg["ctm"]
    xo = resize_coordinates(ctm, out_len, in_len, scale, roi_start, roi_end).astype(np.float64)
    outside = None
    if ctm == "tf_crop_and_resize":
        out_mask = (xo < 0) | (xo > in_len - 1)
        if out_mask.any():
            outside = out_mask
    mode = cfg["mode"]
    if mode == "nearest":
        idx = nearest_index(xo, cfg["nearest_mode"], scale)
        idx = np.clip(idx, 0, in_len - 1).astype(np.intp)
        return _Axis(axis, idx, None, outside)
    s = min(scale, 1.0) if cfg["antialias"] else 1.0
    radius = (1.0 if mode == "linear" else 2.0) / s
    lo = math.floor(-radius) + 1
    hi = math.ceil(radius)
    offsets = np.arange(lo, hi + 1, dtype=np.float64)
    base = np.floor(xo)
    r = xo - base
    t = (offsets[None, :] - r[:, None]) * s
    w = _linear_kernel(t) if mode == "linear" else _cubic_kernel(t, cfg["cubic_coeff_a"])
    taps = base[:, None] + offsets[None, :]
    inside = (taps >= 0) & (taps <= in_len - 1)
    if cfg["exclude_outside"]:
        w = np.where(inside, w, 0.0)
    tot = w.sum(axis=1, keepdims=True)
    w = w / np.where(tot == 0, 1.0, tot)
    # Drop taps whose weight is zero for every output position (the widened support's empty ends).
    keep = np.any(w != 0, axis=0)
    if keep.any():
        w, taps = w[:, keep], taps[:, keep]
    idx = np.clip(taps, 0, in_len - 1).astype(np.intp)
    return _Axis(axis, idx, w, outside)


def _plan(in_shape, cfg, roi, scales, sizes):
    """Output shape and per-axis plans for one input shape. ``scales``/``sizes``/``roi`` are host lists
    over ``cfg['axes']`` (or None)."""
    rank = len(in_shape)
    axes = cfg["axes"]
    axes = list(range(rank)) if axes is None else [a + rank if a < 0 else a for a in axes]
    if scales is not None and len(scales) == rank and len(axes) != rank:
        scales = [scales[a] for a in axes]
    if sizes is not None and len(sizes) == rank and len(axes) != rank:
        sizes = [sizes[a] for a in axes]
    n = len(axes)
    if roi is not None and len(roi) == 2 * rank and n != rank:
        roi = [roi[a] for a in axes] + [roi[rank + a] for a in axes]
    if roi is None or len(roi) != 2 * n:
        roi = [0.0] * n + [1.0] * n
    out_shape = list(in_shape)
    axis_scale = {}
    if sizes is not None:
        sizes = [int(s) for s in sizes]
        policy = cfg["keep_aspect_ratio_policy"]
        if policy in ("not_larger", "not_smaller"):
            ratios = [sizes[i] / in_shape[a] for i, a in enumerate(axes)]
            sc = min(ratios) if policy == "not_larger" else max(ratios)
            for a in axes:
                out_shape[a] = int(math.floor(sc * in_shape[a] + 0.5))
                axis_scale[a] = sc
        else:
            for i, a in enumerate(axes):
                out_shape[a] = sizes[i]
                axis_scale[a] = sizes[i] / in_shape[a] if in_shape[a] else 1.0
    else:
        if scales is None:
            raise ValueError("Resize: one of 'scales' and 'sizes' must be given")
        for i, a in enumerate(axes):
            sc = float(scales[i])
            if sc <= 0:
                raise ValueError(f"Resize: scale {sc} must be greater than 0")
            # float32 arithmetic, as onnxruntime: 10 * 0.7f is 7, not 6.9999... The roi does not enter
            # (onnxruntime and the ONNX test data agree on that, whatever the formula in the spec says).
            length = np.float32(in_shape[a]) * np.float32(sc)
            out_shape[a] = int(math.floor(float(length)))
            axis_scale[a] = sc
    plans = []
    for i, a in enumerate(axes):
        in_len, out_len, sc = in_shape[a], out_shape[a], axis_scale[a]
        if in_len == out_len and sc == 1.0 and cfg["ctm"] != "tf_crop_and_resize":
            continue
        if out_len == 0 or in_len == 0:
            continue
        plans.append(_axis_plan(a, in_len, out_len, sc, cfg, float(roi[i]), float(roi[n + i])))
    return tuple(out_shape), plans


def _integer_upscale(in_shape, out_shape, plans):
    """(sh, sw) where a nearest plan only enlarges the last two axes by integer factors, output index i
    reading input i // factor (asymmetric + floor, half_pixel + round_prefer_floor at x2, ...); else None.
    That case is a plain replication, one compiled pass (``_jit_vision``) instead of a gather per axis."""
    rank = len(in_shape)
    if rank < 2 or not plans:
        return None
    f = [1, 1]
    for p in plans:
        n_in, n_out = in_shape[p.axis], out_shape[p.axis]
        if p.w is not None or p.outside is not None or p.axis < rank - 2 or n_out % n_in:
            return None
        k = n_out // n_in
        if not np.array_equal(p.idx, np.arange(n_out) // k):
            return None
        f[p.axis - rank + 2] = k
    return tuple(f)


def _upscale_compiled(jit, x, out_shape, factors):
    x = np.ascontiguousarray(x)
    y = np.empty(out_shape, _F32)
    rows = x.size // x.shape[-1]
    jit.resize_nearest(x.reshape(rows, -1), factors[0], factors[1], y.reshape(rows, -1))
    return y


def _apply(xp, x, out_shape, plans, cfg):
    if 0 in out_shape or 0 in x.shape:
        return xp.zeros(out_shape, dtype=x.dtype)
    if cfg["mode"] == "nearest":
        y = x
        for p in plans:
            y = xp.take(y, xp.asarray(p.idx), axis=p.axis)
    else:
        cdt = _compute_dtype(x.dtype)
        y = x.astype(cdt, copy=False)
        for p in plans:
            shp = [1] * y.ndim
            shp[p.axis] = p.idx.shape[0]
            acc = None
            for t in range(p.idx.shape[1]):
                term = xp.take(y, xp.asarray(p.idx[:, t]), axis=p.axis)
                term *= xp.asarray(p.w[:, t].astype(cdt).reshape(shp))
                if acc is None:
                    acc = term
                else:
                    acc += term
            y = acc
    outside = [p for p in plans if p.outside is not None]
    if outside:
        y = y.astype(_compute_dtype(x.dtype)) if y is x else y
        for p in outside:
            shp = [1] * y.ndim
            shp[p.axis] = p.outside.shape[0]
            y = xp.where(xp.asarray(p.outside.reshape(shp)), cfg["extrapolation_value"], y)
    if y.dtype != x.dtype:
        if np.dtype(x.dtype).kind in "iu":
            info = np.iinfo(x.dtype)
            y = xp.clip(xp.rint(y), info.min, info.max)
        y = y.astype(x.dtype)
    elif y is x:
        y = x.copy()
    return y


def _resize_factory(info, cfg, roi_i, scales_i, sizes_i):
    xp = info.xp

    def const(i):
        if i is None or i >= len(info.input_names) or not info.input_names[i]:
            return None, True
        c = info.const_inputs[i]
        return c, c is not None

    (roi_c, roi_k), (sc_c, sc_k), (sz_c, sz_k) = const(roi_i), const(scales_i), const(sizes_i)
    static = roi_k and sc_k and sz_k
    cache: dict = {}

    def lists(roi, scales, sizes):
        roi = None if roi is None or roi.size == 0 else [float(v) for v in _host(roi).reshape(-1)]
        scales = None if scales is None or scales.size == 0 else [float(v) for v in _host(scales).reshape(-1)]
        sizes = None if sizes is None or sizes.size == 0 else [int(v) for v in _host(sizes).reshape(-1)]
        return roi, scales, sizes

    static_lists = lists(roi_c, sc_c, sz_c) if static else None
    jit = arrays(xp).compiled("vision") if cfg["mode"] == "nearest" else None

    def plan(shape, roi, scales, sizes):
        out_shape, plans = _plan(shape, cfg, roi, scales, sizes)
        check_tensor_size(out_shape, info.output_dtypes[0] if info.output_dtypes else np.float32,
                          info.max_tensor_bytes)
        fast = _integer_upscale(shape, out_shape, plans) if jit is not None else None
        return out_shape, plans, fast

    def run(x, *rest):
        def arg(i):
            return rest[i - 1] if i is not None and i - 1 < len(rest) else None
        if static:
            key = x.shape
            hit = cache.get(key)
            if hit is None:
                if len(cache) > 64:
                    cache.clear()
                hit = cache[key] = plan(x.shape, *static_lists)
        else:
            hit = plan(x.shape, *lists(arg(roi_i), arg(scales_i), arg(sizes_i)))
        out_shape, plans, fast = hit
        if fast is not None and x.dtype == _F32 and x.__class__ is np.ndarray and x.size:
            return (_upscale_compiled(jit, x, out_shape, fast),)
        return (_apply(xp, x, out_shape, plans, cfg),)
    return run


def _cfg(attrs, **over):
    cfg = {
        "mode": str(attrs.get("mode", "nearest")),
        "ctm": str(attrs.get("coordinate_transformation_mode", "half_pixel")),
        "nearest_mode": str(attrs.get("nearest_mode", "round_prefer_floor")),
        "cubic_coeff_a": float(attrs.get("cubic_coeff_a", -0.75)),
        "exclude_outside": int(attrs.get("exclude_outside", 0)),
        "extrapolation_value": float(attrs.get("extrapolation_value", 0.0)),
        "antialias": int(attrs.get("antialias", 0)),
        "keep_aspect_ratio_policy": str(attrs.get("keep_aspect_ratio_policy", "stretch")),
        "axes": None if attrs.get("axes") is None else [int(a) for a in attrs["axes"]],
    }
    if cfg["mode"] == "bilinear":
        cfg["mode"] = "linear"
    cfg.update(over)
    if cfg["mode"] not in ("nearest", "linear", "cubic"):
        raise ValueError(f"Resize: unknown mode '{cfg['mode']}'")
    return cfg


@array_kernel("Resize", since=10, host_inputs=(1,))
def resize_v10(info):
    # Resize-10 behaves as Upsample-9: asymmetric coordinates, nearest truncates (ceil when downscaling).
    cfg = _cfg(info.attrs, ctm="asymmetric", nearest_mode="simple")
    return _resize_factory(info, cfg, None, 1, None)


@array_kernel("Resize", since=11, host_inputs=(1, 2, 3))
def resize(info):
    return _resize_factory(info, _cfg(info.attrs), 1, 2, 3)


@array_kernel("Upsample", since=1)
def upsample_v1(info):
    cfg = _cfg(info.attrs, ctm="asymmetric", nearest_mode="simple")
    scales = [1.0, 1.0, float(info.attrs.get("height_scale", 1.0)), float(info.attrs.get("width_scale", 1.0))]
    sc = np.asarray(scales, dtype=np.float32)
    inner = _resize_factory(info.with_(const_inputs=(None, sc), input_names=("x", "scales")), cfg, None, 1, None)

    def run(x):
        return inner(x, sc)
    return run


@array_kernel("Upsample", since=7)
def upsample_v7(info):
    cfg = _cfg(info.attrs, ctm="asymmetric", nearest_mode="simple")
    sc = np.asarray(info.attrs.get("scales", []), dtype=np.float32)
    inner = _resize_factory(info.with_(const_inputs=(None, sc), input_names=("x", "scales")), cfg, None, 1, None)

    def run(x):
        return inner(x, sc)
    return run


@array_kernel("Upsample", since=9, host_inputs=(1,))
def upsample_v9(info):
    cfg = _cfg(info.attrs, ctm="asymmetric", nearest_mode="simple")
    return _resize_factory(info, cfg, None, 1, None)


# --- GridSample

def _reflect(c, lo2, hi2):
    """Reflect coordinates into [lo2/2, hi2/2] (bounds given doubled), folding as many times as needed."""
    if lo2 == hi2:
        return np.zeros_like(c)
    lo = lo2 / 2
    span = (hi2 - lo2) / 2
    c = np.abs(c - lo)
    extra = np.fmod(c, span)
    flips = np.floor(c / span)
    return np.where(np.fmod(flips, 2) == 0, extra + lo, span - extra + lo)


def _pad_coord(c, size, padding_mode, align_corners):
    if padding_mode == "border":
        return np.clip(c, 0, size - 1)
    if padding_mode == "reflection":
        c = _reflect(c, 0, 2 * (size - 1)) if align_corners else _reflect(c, -1, 2 * size - 1)
        return np.clip(c, 0, size - 1)
    return c


def _grid_taps(c, size, mode, padding_mode, align_corners, cubic_a=-0.75):
    """Per spatial dim: list of (index, weight*valid) over the taps, index clipped into range."""
    if mode == "nearest":
        c = _pad_coord(c, size, padding_mode, align_corners)
        i = np.rint(c)  # half to even, as the spec asks
        valid = (i >= 0) & (i <= size - 1)
        return [(np.clip(i, 0, size - 1).astype(np.intp), valid.astype(c.dtype))]
    if mode == "linear":
        c = _pad_coord(c, size, padding_mode, align_corners)
        i0 = np.floor(c)
        f = c - i0
        out = []
        for off, w in ((0, 1 - f), (1, f)):
            i = i0 + off
            valid = (i >= 0) & (i <= size - 1)
            out.append((np.clip(i, 0, size - 1).astype(np.intp), w * valid))
        return out
    # cubic: taps around the unpadded coordinate; each tap index is then padded on its own
    i0 = np.floor(c)
    f = c - i0
    out = []
    for off in (-1, 0, 1, 2):
        w = _cubic_kernel(off - f, cubic_a)
        i = i0 + off
        if padding_mode == "zeros":
            valid = (i >= 0) & (i <= size - 1)
            w = w * valid
        else:
            i = _pad_coord(i, size, padding_mode, align_corners)
        out.append((np.clip(i, 0, size - 1).astype(np.intp), w))
    return out


def _grid_sample(info, mode_map):
    xp = info.xp
    mode = mode_map.get(str(info.attrs.get("mode", "linear")), str(info.attrs.get("mode", "linear")))
    padding_mode = str(info.attrs.get("padding_mode", "zeros"))
    align_corners = int(info.attrs.get("align_corners", 0))

    def run(x, grid):
        xh, gh = _host(x), _host(grid)
        cdt = _compute_dtype(xh.dtype)
        n, c = xh.shape[:2]
        sizes = xh.shape[2:]
        r = len(sizes)
        g = gh.astype(np.float64)
        out_sp = g.shape[1:-1]
        taps = []
        for j, size in enumerate(sizes):
            gj = g[..., r - 1 - j]  # the grid lists coordinates innermost first: (x, y[, z]) = (W, H[, D])
            if align_corners:
                cj = (gj + 1) / 2 * (size - 1)
            else:
                cj = ((gj + 1) * size - 1) / 2
            taps.append(_grid_taps(cj, size, mode, padding_mode, align_corners))
        strides = [int(np.prod(sizes[j + 1:], dtype=np.int64)) for j in range(r)]
        flat_x = xh.reshape(n, c, -1).astype(cdt, copy=False)
        m = int(np.prod(out_sp, dtype=np.int64))
        acc = np.zeros((n, c, m), dtype=cdt)
        # Every combination of one tap per dimension (2^r for linear, 4^r for cubic).
        combos = [[]]
        for tj in taps:
            combos = [cb + [t] for cb in combos for t in tj]
        for cb in combos:
            flat = np.zeros(g.shape[:-1], dtype=np.intp)
            w = np.ones(g.shape[:-1], dtype=np.float64)
            for (i, wj), st in zip(cb, strides):
                flat += i * st
                w = w * wj
            vals = np.take_along_axis(flat_x, flat.reshape(n, 1, m), axis=2)
            acc += vals * w.reshape(n, 1, m).astype(cdt)
        y = acc.reshape((n, c) + out_sp)
        return (xp.asarray(y.astype(xh.dtype, copy=False)),)
    return run


@array_kernel("GridSample", since=16)
def grid_sample_v16(info):
    return _grid_sample(info, {"bilinear": "linear", "bicubic": "cubic"})


@array_kernel("GridSample", since=20)
def grid_sample(info):
    return _grid_sample(info, {})


# --- AffineGrid

def _base_coords(n, align_corners):
    if n <= 1:
        return np.zeros(max(n, 0))
    if align_corners:
        return np.linspace(-1.0, 1.0, n)
    return (np.arange(n, dtype=np.float64) * 2 + 1) / n - 1


@array_kernel("AffineGrid", since=20, host_inputs=(1,))
def affine_grid(info):
    xp = info.xp
    align_corners = int(info.attrs.get("align_corners", 0))

    def run(theta, size):
        th = _host(theta)
        sz = [int(v) for v in _host(size).reshape(-1)]
        n = sz[0]
        spatial = sz[2:]  # (H, W) or (D, H, W)
        axes = [_base_coords(s, align_corners) for s in spatial]
        mesh = np.meshgrid(*axes, indexing="ij")
        # Homogeneous positions ordered (x, y[, z], 1): x runs along the last (width) dimension.
        pos = np.stack([mg.reshape(-1) for mg in reversed(mesh)] + [np.ones(mesh[0].size)], axis=-1)
        out = np.einsum("pk,nik->npi", pos, th.astype(np.float64))
        out = out.reshape([n] + spatial + [len(spatial)])
        return (xp.asarray(out.astype(th.dtype, copy=False)),)
    return run


# --- Col2Im

@array_kernel("Col2Im", since=18, host_inputs=(1, 2))
def col2im(info):
    xp = info.xp
    attrs = info.attrs

    def run(x, image_shape, block_shape):
        img = [int(v) for v in _host(image_shape).reshape(-1)]
        blk = [int(v) for v in _host(block_shape).reshape(-1)]
        r = len(img)
        dil = [int(v) for v in attrs.get("dilations", [1] * r)]
        pads = [int(v) for v in attrs.get("pads", [0] * (2 * r))]
        strides = [int(v) for v in attrs.get("strides", [1] * r)]
        n, ck, L = x.shape
        kprod = int(np.prod(blk, dtype=np.int64))
        c = ck // kprod
        padded = [img[i] + pads[i] + pads[r + i] for i in range(r)]
        counts = [(padded[i] - (dil[i] * (blk[i] - 1) + 1)) // strides[i] + 1 for i in range(r)]
        if int(np.prod(counts, dtype=np.int64)) != L:
            raise ValueError(f"Col2Im: {L} blocks, but the image and block shapes give {counts}")
        cols = x.reshape([n, c] + blk + counts)
        out = xp.zeros([n, c] + padded, dtype=x.dtype)
        # One strided accumulate per kernel offset: vectorized over batch, channels and block positions.
        for k in np.ndindex(*blk):
            dst = tuple(slice(k[i] * dil[i], k[i] * dil[i] + strides[i] * (counts[i] - 1) + 1, strides[i])
                        for i in range(r))
            out[(slice(None), slice(None)) + dst] += cols[(slice(None), slice(None)) + k]
        crop = tuple(slice(pads[i], pads[i] + img[i]) for i in range(r))
        return (xp.ascontiguousarray(out[(slice(None), slice(None)) + crop]),)
    return run
