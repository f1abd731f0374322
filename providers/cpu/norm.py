"""Normalization kernels: BatchNormalization, InstanceNormalization, LayerNormalization, GroupNormalization,
RMSNormalization, LpNormalization, MeanVarianceNormalization, LRN.

Statistics are taken in float32 (float64 for float64 input): ``stash_type`` asks for float32 and that
is also what keeps float16/bfloat16 inputs accurate. Inference BatchNormalization with constant
parameters folds them once in the factory into one per-channel scale and shift, so a run is
``x * a + b``.
"""
from __future__ import annotations

import math

import numpy as np

from engineroom.providers.cpu.array_module import arrays
from engineroom.providers.cpu.registry import array_kernel

_F32 = np.dtype(np.float32)


def _cdt(dt) -> np.dtype:
    dt = np.dtype(dt)
    return dt if dt in (np.dtype(np.float32), np.dtype(np.float64)) else np.dtype(np.float32)


def _stash_dt(x_dt, stash_type) -> np.dtype:
    """Statistics type: float64 stays float64, everything narrower is computed in float32 (stash_type 1)."""
    return np.dtype(np.float64) if np.dtype(x_dt) == np.dtype(np.float64) else np.dtype(np.float32)


def _channel_shape(p, x_ndim, C):
    """Shape that broadcasts a per-channel (or, for spatial=0, per-channel-and-position) parameter."""
    if p.ndim == 1 and p.shape[0] == C:
        return (C,) + (1,) * (x_ndim - 2)
    return (1,) + tuple(p.shape) if p.ndim == x_ndim - 1 else p.shape


# ---------------------------------------------------------------------------------------------
# BatchNormalization


def _bn_fold(xp, scale, bias, mean, var, eps, cdt):
    s = scale.astype(cdt, copy=False)
    a = s / xp.sqrt(var.astype(cdt, copy=False) + np.dtype(cdt).type(eps))
    b = bias.astype(cdt, copy=False) - mean.astype(cdt, copy=False) * a
    return a, b


@array_kernel("BatchNormalization", since=1)
def batch_normalization(info):
    xp = info.xp
    a = info.attrs
    eps = float(a.get("epsilon", 1e-5))
    momentum = float(a.get("momentum", 0.9))
    training = info.opset >= 14 and int(a.get("training_mode", 0)) == 1
    consts = tuple(info.const_inputs) + (None,) * 5
    folded = None
    if not training and all(c is not None for c in consts[1:5]):
        xdt = info.input_dtypes[0] if info.input_dtypes and info.input_dtypes[0] is not None else np.float32
        cdt = _cdt(xdt)
        folded = _bn_fold(np, *(np.asarray(c) for c in consts[1:5]), eps, cdt)
        folded = (xp.asarray(folded[0]), xp.asarray(folded[1]))
    n_out = len(info.output_names)

    def run(x, scale, bias, mean, var):
        dt = x.dtype
        cdt = _cdt(dt)
        xc = x.astype(cdt, copy=False)
        C = x.shape[1] if x.ndim > 1 else 1
        if training:
            axes = (0,) + tuple(range(2, x.ndim))
            m = xp.mean(xc, axis=axes)
            v = xp.var(xc, axis=axes)
            sc, sh = _bn_fold(xp, scale, bias, m, v, eps, cdt)
            shape = (C,) + (1,) * (x.ndim - 2)
            y = xc * sc.reshape(shape) + sh.reshape(shape)
            rm = mean.astype(cdt, copy=False) * momentum + m * (1 - momentum)
            rv = var.astype(cdt, copy=False) * momentum + v * (1 - momentum)
            return (y.astype(dt, copy=False), rm.astype(mean.dtype, copy=False), rv.astype(var.dtype, copy=False))
        sc, sh = folded if folded is not None else _bn_fold(xp, scale, bias, mean, var, eps, cdt)
        shape = _channel_shape(sc, x.ndim, C)
        y = xc * sc.reshape(shape)
        y += sh.reshape(shape)
        y = y.astype(dt, copy=False)
        if n_out == 1:
            return (y,)
        if info.opset >= 14:   # running mean/var exist in training mode only: absent, as onnxruntime returns them
            return (y,) + (None,) * (n_out - 1)
        return (y, mean, var, mean, var)

    return run


# ---------------------------------------------------------------------------------------------
# Instance / Layer / Group / RMS normalization


def _normalize(xp, xc, axes, eps):
    """(x - mean) / sqrt(var + eps) over the trailing ``axes``, plus mean and 1/std (keepdims).

    Works on a (rows, n) view with the ufuncs' own reductions (pairwise sums; the two-pass variance
    stays accurate when the mean is large against the spread) and reuses its buffers in place.
    """
    shape = xc.shape
    k = len(axes)
    lead = shape[:len(shape) - k]
    n = math.prod(shape[len(shape) - k:])
    x2 = xc.reshape(-1, n)
    rn = xc.dtype.type(1.0 / n) if n else xc.dtype.type(0)
    mean = x2.sum(axis=1, keepdims=True)
    mean *= rn
    d = xp.subtract(x2, mean)
    sq = xp.multiply(d, d)
    var = sq.sum(axis=1, keepdims=True)
    var *= rn
    var += xc.dtype.type(eps)
    inv = xp.sqrt(var, out=var)
    xp.divide(1, inv, out=inv)
    d *= inv
    kd = lead + (1,) * k
    return d.reshape(shape), mean.reshape(kd), inv.reshape(kd)


@array_kernel("InstanceNormalization", since=1)
def instance_normalization(info):
    xp = info.xp
    eps = float(info.attrs.get("epsilon", 1e-5))
    jit = arrays(xp).compiled("vision")
    eps32 = np.float32(eps)

    def run_compiled(x, scale, bias):
        """One compiled pass per (n, c) row (``_jit_vision``) for float32 NumPy arrays; None where that
        does not apply."""
        C = x.shape[1]
        if (x.dtype != _F32 or x.__class__ is not np.ndarray or not x.size or scale.dtype != _F32
                or bias.dtype != _F32 or scale.__class__ is not np.ndarray or bias.__class__ is not np.ndarray
                or scale.shape != (C,) or bias.shape != (C,)):
            return None
        x = np.ascontiguousarray(x)
        y = np.empty(x.shape, _F32)
        R = x.shape[0] * C
        jit.instance_norm(x.reshape(R, -1), np.ascontiguousarray(scale), np.ascontiguousarray(bias), eps32,
                          y.reshape(R, -1))
        return y

    def run(x, scale, bias):
        if jit is not None and x.ndim >= 3:
            y = run_compiled(x, scale, bias)
            if y is not None:
                return (y,)
        dt = x.dtype
        cdt = _cdt(dt)
        N, C = x.shape[:2]
        xc = x.astype(cdt, copy=False)
        x2 = xc.reshape(N * C, -1)
        n = x2.shape[1]
        rn = cdt.type(1.0 / n) if n else cdt.type(0)
        # corrected two-pass (as the compiled loop): d = x - m0 with the rounded mean m0, c = mean(d);
        # y = d a + (bias - c a), a = scale / std, so scale and the correction cost no pass of their own
        m0 = x2.sum(axis=1, keepdims=True)
        m0 *= rn
        d = xp.subtract(x2, m0)
        c = d.sum(axis=1, keepdims=True)
        c *= rn
        sq = xp.multiply(d, d)
        var = sq.sum(axis=1, keepdims=True)
        var *= rn
        var -= c * c
        xp.maximum(var, 0, out=var)
        var += cdt.type(eps)
        a = xp.sqrt(var, out=var).reshape(N, C, 1)
        xp.divide(scale.astype(cdt, copy=False).reshape(C, 1), a, out=a)
        c = c.reshape(N, C, 1)
        c *= -a
        c += bias.astype(cdt, copy=False).reshape(C, 1)
        d = d.reshape(N, C, -1)
        d *= a
        d += c
        return (d.reshape(x.shape).astype(dt, copy=False),)

    return run


@array_kernel("LayerNormalization", since=17)
def layer_normalization(info):
    xp = info.xp
    a = info.attrs
    axis = int(a.get("axis", -1))
    eps = float(a.get("epsilon", 1e-5))
    stash = int(a.get("stash_type", 1))
    out_dts = tuple(info.output_dtypes) + (None, None, None)
    # the compiled loop writes float32 statistics (mean, 1/std), what the op gives float32 input unless told
    jit = arrays(xp).compiled("transformer") if all(d in (None, _F32) for d in out_dts[1:3]) else None
    no_bias = np.empty(0, np.float32)
    eps32 = np.float32(eps)
    empty, contiguous = np.empty, np.ascontiguousarray
    layouts: dict = {}      # input shape -> (rows R, [R, n] view shape, statistics' shape, scratch), a few a model
    # the mean and inverse std dev outputs, where the node has them; else the loop writes them into scratch
    # arrays of the layout that nothing reads (concurrent runs may both write there)
    stats_out = any(info.output_names[1:3])
    # the last scale and bias seen, each as one (array kept alive, its flat form) pair: one read, so a
    # concurrent run with other (computed) ones never pairs an array with another's flat form
    flat: list = [(None, None), (None, None)]

    def run_compiled(x, scale, bias=None):
        """One compiled pass per row (``_jit_transformer``): float32, scale (and bias) of the normalized
        shape; None where that does not apply. The per-shape layout and the flat scale and bias (a model's
        constants: the same arrays run after run) are kept, not recomputed, and statistics that are no
        outputs are not allocated (one row of 128: 3.4 -> 2.0 us a call)."""
        ax = axis + x.ndim if axis < 0 else axis
        if (x.dtype != _F32 or scale.dtype != _F32 or x.__class__ is not np.ndarray or not x.size
                or scale.shape != x.shape[ax:]
                or (bias is not None and (bias.dtype != _F32 or bias.shape != scale.shape))):
            return None
        x = contiguous(x)
        lay = layouts.get(x.shape)
        if lay is None:
            if len(layouts) > 64:
                layouts.clear()
            lead = x.shape[:ax]
            R = math.prod(lead)
            lay = layouts[x.shape] = (R, (R, x.size // R), lead + (1,) * (x.ndim - ax), empty(R, _F32))
        R, rows, stats, scratch = lay
        sc = flat[0]
        if sc[0] is not scale:
            sc = flat[0] = (scale, contiguous(scale).reshape(-1))
        if bias is None:
            b = no_bias
        else:
            b = flat[1]
            if b[0] is not bias:
                b = flat[1] = (bias, contiguous(bias).reshape(-1))
            b = b[1]
        y = empty(rows, _F32)
        mean, inv = (empty(R, _F32), empty(R, _F32)) if stats_out else (scratch, scratch)
        jit.layer_norm(x if x.shape == rows else x.reshape(rows), sc[1], b, eps32, y, mean, inv)
        y = y if y.shape == x.shape else y.reshape(x.shape)
        return (y, mean.reshape(stats), inv.reshape(stats)) if stats_out else (y,)

    def run(x, scale, bias=None):
        if jit is not None:
            r = run_compiled(x, scale, bias)
            if r is not None:
                return r
        dt = x.dtype
        cdt = _stash_dt(dt, stash)
        ax = axis + x.ndim if axis < 0 else axis
        y, mean, inv = _normalize(xp, x.astype(cdt, copy=False), tuple(range(ax, x.ndim)), eps)
        y *= scale.astype(cdt, copy=False)
        if bias is not None:
            y += bias.astype(cdt, copy=False)
        mdt = out_dts[1] or cdt
        idt = out_dts[2] or cdt
        return y.astype(dt, copy=False), mean.astype(mdt, copy=False), inv.astype(idt, copy=False)

    return run


def _group_norm(info, per_channel):
    xp = info.xp
    a = info.attrs
    G = int(a["num_groups"])
    eps = float(a.get("epsilon", 1e-5))

    def run(x, scale, bias):
        dt = x.dtype
        cdt = _cdt(dt)
        N, C = x.shape[:2]
        xg = x.astype(cdt, copy=False).reshape(N, G, -1)
        y, _, _ = _normalize(xp, xg, (2,), eps)
        y = y.reshape(x.shape)
        s = scale.astype(cdt, copy=False)
        b = bias.astype(cdt, copy=False)
        if not per_channel:            # opset 18: one scale/bias per group
            s = xp.repeat(s, C // G)
            b = xp.repeat(b, C // G)
        shape = (C,) + (1,) * (x.ndim - 2)
        y *= s.reshape(shape)
        y += b.reshape(shape)
        return (y.astype(dt, copy=False),)

    return run


@array_kernel("GroupNormalization", since=18)
def group_normalization_18(info):
    return _group_norm(info, per_channel=False)


@array_kernel("GroupNormalization", since=21)
def group_normalization_21(info):
    return _group_norm(info, per_channel=True)


@array_kernel("RMSNormalization", since=23)
def rms_normalization(info):
    xp = info.xp
    a = info.attrs
    axis = int(a.get("axis", -1))
    eps = float(a.get("epsilon", 1e-5))
    stash = int(a.get("stash_type", 1))

    def run(x, scale):
        dt = x.dtype
        cdt = _stash_dt(dt, stash)
        ax = axis + x.ndim if axis < 0 else axis
        xc = x.astype(cdt, copy=False)
        ms = xp.mean(xc * xc, axis=tuple(range(ax, x.ndim)), keepdims=True)
        y = xc * (1.0 / xp.sqrt(ms + cdt.type(eps)))
        y *= scale.astype(cdt, copy=False)
        return (y.astype(dt, copy=False),)

    return run


# ---------------------------------------------------------------------------------------------
# Lp / MVN / LRN


@array_kernel("LpNormalization", since=1)
def lp_normalization(x, *, xp, axis=-1, p=2):
    dt = x.dtype
    xc = x.astype(_cdt(dt), copy=False)
    if int(p) == 1:
        norm = xp.sum(xp.abs(xc), axis=int(axis), keepdims=True)
    else:
        norm = xp.sqrt(xp.sum(xc * xc, axis=int(axis), keepdims=True))
    zero = norm == 0
    y = xc / xp.where(zero, 1, norm)          # a zero norm gives zero output, not NaN
    return y.astype(dt, copy=False)


@array_kernel("MeanVarianceNormalization", since=1)
def mean_variance_normalization(x, *, xp, axes=(0, 2, 3)):
    dt = x.dtype
    xc = x.astype(_cdt(dt), copy=False)
    ax = tuple(int(a) for a in axes)
    mean = xp.mean(xc, axis=ax, keepdims=True)
    var = xp.mean(xc * xc, axis=ax, keepdims=True) - mean * mean
    y = (xc - mean) / (xp.sqrt(var) + xc.dtype.type(1e-9))
    return y.astype(dt, copy=False)


@array_kernel("LRN", since=1)
def lrn(x, *, xp, size, alpha=1e-4, beta=0.75, bias=1.0):
    dt = x.dtype
    cdt = _cdt(dt)
    xc = x.astype(cdt, copy=False)
    C = x.shape[1]
    size = int(size)
    lo, hi = (size - 1) // 2, size - 1 - (size - 1) // 2
    sq = xc * xc
    pad = xp.zeros((x.shape[0], C + lo + hi) + x.shape[2:], dtype=cdt)
    pad[:, lo:lo + C] = sq
    s = pad[:, 0:C].copy()
    for j in range(1, size):          # the window is a handful of channels: a few shifted adds
        s += pad[:, j:j + C]
    y = xc / (cdt.type(bias) + cdt.type(alpha / size) * s) ** cdt.type(beta)
    return y.astype(dt, copy=False)
