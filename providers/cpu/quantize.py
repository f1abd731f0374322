"""Linear quantization: QuantizeLinear, DequantizeLinear (per-tensor, per-axis, blocked), DynamicQuantizeLinear.

Versions: 10 per-tensor int8/uint8; 13 adds ``axis`` (per-axis); 19 float8 outputs and ``saturate``;
21 blocked quantization (``block_size``), ``output_dtype``, 16- and 4-bit ints; 23 float4e2m1 and
``precision``; 24 float8e8m0 scales; 25 2-bit ints; 28 float6. One implementation serves them all:
newer attributes simply default to the older behaviour.

Integer targets round half to even and clip to the type's range; float8/float4 targets are cast
by ml_dtypes (round to nearest even), clipped first to +-max when ``saturate`` asks for it.
DynamicQuantizeLinear runs compiled with the ``jit`` extra: one call below the pool's split size (range, scale,
zero point and quantization: ``_jit_quant.dynamic_quantize_u8``), else two passes split over the provider's
pool (the range in ``_jit_elementwise``, the quantization in ``_jit_quant``).
"""
from __future__ import annotations

import math

import ml_dtypes
import numpy as np

from engineroom.plugin_sdk import np_dtype
from engineroom.providers.cpu._threadpool import MIN_PARALLEL_WORK, parallel_ranges
from engineroom.providers.cpu.array_module import arrays
from engineroom.providers.cpu.registry import array_kernel


def _is_int(dtype: np.dtype) -> bool:
    try:
        ml_dtypes.iinfo(dtype)
        return True
    except (ValueError, TypeError):
        return False


def _int_range(dtype: np.dtype) -> tuple[int, int]:
    info = ml_dtypes.iinfo(dtype)
    return int(info.min), int(info.max)


def _float_max(dtype: np.dtype) -> float:
    return float(ml_dtypes.finfo(dtype).max)


def _broadcast_param(p, x_shape: tuple[int, ...], axis: int, block_size: int, xp):
    """Shape a scale / zero point so it broadcasts against x: scalar, per-axis (1-D) or blocked."""
    if p.ndim == 0 or p.size == 1 and p.ndim <= 1:
        return p.reshape(())
    ndim = len(x_shape)
    ax = axis + ndim if axis < 0 else axis
    if block_size > 0:
        # Blocked: one value per block of `block_size` along `axis`; expand and trim the last block.
        return xp.repeat(p, block_size, axis=ax)[(slice(None),) * ax + (slice(0, x_shape[ax]),)]
    if p.ndim == 1:
        shape = [1] * ndim
        shape[ax] = p.shape[0]
        return p.reshape(shape)
    return p


class _ParamCache:
    """Broadcast-ready scale / zero point: computed once when they are constants, per x shape."""

    def __init__(self, const, axis: int, block_size: int, dtype, xp):
        self.const = None if const is None else xp.asarray(const).astype(dtype, copy=False)
        self.axis, self.block_size, self.dtype, self.xp = axis, block_size, dtype, xp
        self._memo: dict = {}

    def get(self, value, x_shape):
        if self.const is None:
            if value is None:
                return None
            return _broadcast_param(value.astype(self.dtype, copy=False), x_shape, self.axis, self.block_size, self.xp)
        key = x_shape
        got = self._memo.get(key)
        if got is None:
            got = _broadcast_param(self.const, x_shape, self.axis, self.block_size, self.xp)
            if len(self._memo) < 16:
                self._memo[key] = got
        return got


def _const(info, i):
    return info.const_inputs[i] if len(info.const_inputs) > i else None


def _dtype_of(info, i):
    if len(info.input_dtypes) > i and info.input_dtypes[i] is not None:
        return np.dtype(info.input_dtypes[i])
    c = _const(info, i)
    return None if c is None else c.dtype


@array_kernel("QuantizeLinear", since=10)
def quantize_linear(info):
    xp = info.xp
    axis = int(info.attrs.get("axis", 1))
    block_size = int(info.attrs.get("block_size", 0))
    saturate = bool(info.attrs.get("saturate", 1))
    # Target type: output_dtype attribute, else the zero point's type, else uint8.
    out = None
    if info.attrs.get("output_dtype", 0):
        out = np_dtype(int(info.attrs["output_dtype"]))
    elif _dtype_of(info, 2) is not None and info.has_input(2):
        out = _dtype_of(info, 2)
    elif info.output_dtypes and info.output_dtypes[0] is not None:
        out = np.dtype(info.output_dtypes[0])
    # Division precision: `precision` attribute, else the scale's type; half types compute in
    # float32 (exact products of half values, one final rounding), int32 inputs in float64.
    prec = info.attrs.get("precision", 0)
    x_dt = _dtype_of(info, 0)
    calc = np.dtype(np.float64) if (x_dt is not None and x_dt.kind in "iu") else np.dtype(np.float32)
    if prec:
        p = np_dtype(int(prec))
        calc = np.dtype(np.float64) if p == np.float64 else calc
    scales = _ParamCache(_const(info, 1), axis, block_size, calc, xp)
    zps = _ParamCache(_const(info, 2), axis, block_size, calc, xp)

    def run(x, y_scale, y_zero_point=None):
        target = out
        if target is None:
            target = y_zero_point.dtype if y_zero_point is not None else np.dtype(np.uint8)
        s = scales.get(y_scale, x.shape)
        v = x.astype(calc, copy=False) / s
        if _is_int(target):
            v = xp.rint(v)
            zp = zps.get(y_zero_point, x.shape)
            if zp is not None:
                v += zp
            lo, hi = _int_range(target)
            v = xp.clip(v, lo, hi)
            return (v.astype(target),)
        zp = zps.get(y_zero_point, x.shape)
        if zp is not None:
            v = v + zp
        if saturate:
            m = _float_max(target)
            v = xp.clip(v, -m, m)  # clip keeps NaN; +-inf become +-max
        return (v.astype(target),)

    return run


@array_kernel("DequantizeLinear", since=10)
def dequantize_linear(info):
    xp = info.xp
    axis = int(info.attrs.get("axis", 1))
    block_size = int(info.attrs.get("block_size", 0))
    out = None
    if info.attrs.get("output_dtype", 0):
        out = np_dtype(int(info.attrs["output_dtype"]))
    elif info.output_dtypes and info.output_dtypes[0] is not None:
        out = np.dtype(info.output_dtypes[0])
    x_dt = _dtype_of(info, 0)
    # int32 inputs (e.g. accumulators) need float64 to keep every integer exact before scaling.
    calc = np.dtype(np.float64) if x_dt is not None and x_dt == np.int32 else np.dtype(np.float32)
    scales = _ParamCache(_const(info, 1), axis, block_size, calc, xp)
    zps = _ParamCache(_const(info, 2), axis, block_size, calc, xp)

    def run(x, x_scale, x_zero_point=None):
        target = out
        if target is None:
            target = x_scale.dtype if x_scale.dtype != ml_dtypes.float8_e8m0fnu else np.dtype(np.float32)
        v = x.astype(calc)
        zp = zps.get(x_zero_point, x.shape)
        if zp is not None:
            v -= zp
        v *= scales.get(x_scale, x.shape)
        return (v.astype(target, copy=False),)

    return run


@array_kernel("DynamicQuantizeLinear", since=11)
def dynamic_quantize_linear(info):
    xp = info.xp
    jit = arrays(xp).compiled("quant")

    def run(x):
        y, scale, zp = quantize_dynamic_u8(x, xp, jit)
        return y, xp.asarray(scale, dtype=np.float32), xp.asarray(zp, dtype=np.uint8)

    return run


_RANGE_MIN = 1 << 16


def _range_compiled(flat, xp):
    """(min, max) of the float32 ``flat`` in one compiled call (``_jit_elementwise.min_max``), split over the
    provider's pool where it is large; None where that loop is missing or the input holds a NaN or an
    infinity (the NumPy path below handles those as onnxruntime does)."""
    ew = arrays(xp).compiled("elementwise")
    if ew is None:
        return None
    parts = []

    def part(i, j):
        r = np.empty(3, np.float32)
        ew.min_max(flat[i:j], r)
        parts.append(r)         # list.append is atomic: the pool's threads may run parts at once

    parallel_ranges(part, flat.size, flat.size)
    r = np.array(parts)
    lo, hi = float(r[:, 0].min()), float(r[:, 1].max())
    if r[:, 2].any() or not (math.isfinite(lo) and math.isfinite(hi)):
        return None
    return lo, hi


def quantize_dynamic_u8(x, xp=np, jit=None):
    """DynamicQuantizeLinear's numbers (also the com.microsoft DynamicQuantize* ops'): x quantized to uint8,
    its scale (np.float32) and zero point (np.uint8). ``jit``: the compiled ``quant`` module, or None."""
    # uint8 only (the spec's only target): range widened to include 0, then asymmetric quantization.
    xf = x.astype(np.float32, copy=False)
    flat = xf.reshape(-1) if jit is not None and xf.size and xf.flags.c_contiguous else None
    if flat is not None and flat.size < MIN_PARALLEL_WORK:
        # below the pool's split size: range, scale, zero point and quantization in one compiled call
        y = np.empty(x.shape, np.uint8)
        params = np.empty(3, np.float32)
        jit.dynamic_quantize_u8(flat, y.reshape(-1), params)
        if params[2]:
            return y, params[0], np.uint8(params[1])
    # small inputs: NumPy's min and max (SIMD too) cost less than the pool's bookkeeping
    rng = _range_compiled(flat, xp) if flat is not None and flat.size >= _RANGE_MIN else None
    if rng is not None:
        rmin, rmax = min(rng[0], 0.0), max(rng[1], 0.0)
    elif xf.size:
        lo, hi = float(xf.min()), float(xf.max())
        if lo != lo or hi != hi:    # NaNs: NumPy's casts below, as before the compiled pass
            flat = None
            # the range skips them, as MLAS's min/max pass in onnxruntime does (a NaN quantizes to 0)
            lo, hi = float(xp.fmin.reduce(xf, axis=None)), float(xp.fmax.reduce(xf, axis=None))
        rmin, rmax = min(lo, 0.0), max(hi, 0.0)
    else:
        rmin = rmax = 0.0
    # float32 arithmetic, as onnxruntime's (a float64 difference rounded once to float32 can be an ulp
    # off, and a range past float32's overflows to an infinite scale there)
    with np.errstate(over="ignore"):
        scale = (np.float32(rmax) - np.float32(rmin)) / np.float32(255.0)
    if scale == 0 or not np.isfinite(scale):
        if scale == 0:              # an all-zero input: scale 1 (not 0, which divides by zero), as onnxruntime
            scale = np.float32(1.0)
        zp = np.uint8(0)
        y = xp.zeros(x.shape, dtype=np.uint8)
        if np.isinf(scale):         # an infinite range: onnxruntime's arithmetic, clamps that let NaN through
            with np.errstate(invalid="ignore"):
                z = np.float32(0.0) - np.float32(rmin) / scale  # NaN when rmin is -inf
                zp = np.uint8(255 if z != z else np.clip(np.rint(z), 0, 255))
                v = xp.rint(xf / scale) + np.float32(zp)          # finite x: zp; +-inf x: NaN -> 0
                y = xp.where(v != v, 0, xp.clip(v, 0, 255)).astype(np.uint8)
    else:
        # finite here: Python's min/max clamp (np.clip on a scalar costs microseconds per call)
        zp = np.uint8(min(max(float(np.rint(np.float32(0.0) - np.float32(rmin) / scale)), 0.0), 255.0))
        if flat is not None:        # one compiled pass, the same numbers as the NumPy passes below
            y = np.empty(x.shape, np.uint8)
            yf, z32 = y.reshape(-1), np.float32(zp)
            parallel_ranges(lambda i, j: jit.quantize_u8(flat[i:j], yf[i:j], scale, z32), flat.size, flat.size)
        else:
            y = xp.clip(xp.rint(xf / scale) + np.float32(zp), 0, 255).astype(np.uint8)
    return y, scale, zp
