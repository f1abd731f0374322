"""DepthwiseSeparableBlock (domain com.engineroom), the kernel of the level-3 block fusion: a conv, a
depthwise conv and a 1x1 conv (MobileNet's expand / depthwise / project) in one kernel whose two
intermediate images are channels-last (NHWC).

Why: channels-first depthwise convs are slow on small or strided images (see ``_jit_nhwc``), and the
layout change costs nothing at the block's edges, because both are GEMMs: the first conv computes
``cols^T @ W1^T`` (rows = pixels, channels last) from its channels-first input, and the last conv's
GEMM rows go back to channels-first in the pass that adds its bias anyway.

Inputs: X, W (first conv), B, W_depthwise, B_depthwise, W_pointwise, B_pointwise, [Z residual of the
output]; absent biases are empty. Attributes: ``conv_strides``, ``conv_pads``, ``depthwise_strides``,
``depthwise_pads`` (2-D, dilations 1, explicit pads) and ``clips`` — (lo, hi) per conv, six floats,
±inf where a conv has no Relu/Clip. Without the compiled loops (or on another array module) the three
convs run one after the other through the ordinary Conv paths.
"""
from __future__ import annotations

import numpy as np

from engineroom.providers.cpu._threadpool import matmul, native_ranges, parallel_ranges
from engineroom.providers.cpu.array_module import arrays
from engineroom.providers.cpu.conv import _DW_SPLIT_MIN_MACS, _ConvPlan, compute_dtype
from engineroom.providers.cpu.registry import kernel

ER = "com.engineroom"


def _supports(view) -> str | None:
    if view.input_dtypes and view.input_dtypes[0] not in (np.dtype(np.float32), np.dtype(np.float64)):
        return "DepthwiseSeparableBlock is float32/float64 only"
    return None


def _ranges(fn, n: int, work: int) -> None:
    """``fn`` over ``range(n)``: split over the CPU provider's pool only from ``_DW_SPLIT_MIN_MACS`` of work.
    Measured at 2 threads (mobilenet_v2, one process, alternating): the block's passes and GEMMs split over
    the pool ran a 14.1 ms median against 9.1 on the caller's thread (1 thread: 9.1); the sleeping
    workers wake too late to take their share of passes this size."""
    if work >= _DW_SPLIT_MIN_MACS:
        parallel_ranges(fn, n, work)
    else:
        fn(0, n)


def _ints(attrs, name, n):
    v = attrs.get(name)
    if v is None or len(v) != n:
        raise ValueError(f"DepthwiseSeparableBlock: attribute {name} must have {n} values, got {v}")
    return tuple(int(a) for a in v)


@kernel("DepthwiseSeparableBlock", domain=ER, since=1, supports=_supports)
def depthwise_separable_block(info):
    xp = info.xp
    a = info.attrs
    cs, cp = _ints(a, "conv_strides", 2), _ints(a, "conv_pads", 4)
    ds, dp = _ints(a, "depthwise_strides", 2), _ints(a, "depthwise_pads", 4)
    clips = [float(v) for v in a.get("clips", [-np.inf, np.inf] * 3)]
    if len(clips) != 6:
        raise ValueError(f"DepthwiseSeparableBlock: clips must have 6 values, got {len(clips)}")
    lohi = [(clips[2 * i], clips[2 * i + 1]) for i in range(3)]
    consts = tuple(info.const_inputs) + (None,) * 8
    w1, wd, w2 = consts[1], consts[3], consts[5]
    if w1 is None or wd is None or w2 is None:
        raise NotImplementedError("DepthwiseSeparableBlock: the three weights must be constant initializers")
    M1, M2 = w1.shape[0], w2.shape[0]
    if wd.shape[0] != M1 or wd.shape[1] != 1 or w2.shape[1] != M1 or w2.shape[2:] != (1, 1):
        raise ValueError(f"DepthwiseSeparableBlock: weights {w1.shape}, {wd.shape}, {w2.shape} do not chain")
    plans = (_ConvPlan(xp, {"strides": cs, "pads": cp}, w1),
             _ConvPlan(xp, {"strides": ds, "pads": dp, "group": M1}, wd),
             _ConvPlan(xp, {}, w2))
    clip_args = [None if lo == -np.inf and hi == np.inf else (lo, hi) for lo, hi in lohi]

    def chain(x, b1, bd, b2, z):
        """The three convs one after the other (NCHW): the path without the compiled loops."""
        t = plans[0](x, b1, clip_args[0])
        t = plans[1](t, bd, clip_args[1])
        return plans[2](t, b2, clip_args[2], z)

    conv_jit = arrays(xp).compiled("conv")
    nhwc = arrays(xp).compiled("nhwc") if conv_jit is not None else None
    if nhwc is None:
        def run_chain(x, w1_, b1=None, wd_=None, bd=None, w2_=None, b2=None, z=None):
            return (chain(x, b1, bd, b2, z),)
        return run_chain

    cdt = compute_dtype(w1.dtype)
    KH, KW = w1.shape[2], w1.shape[3]
    pointwise = (KH, KW) == (1, 1) and cs == (1, 1) and not any(cp)
    w1t = np.ascontiguousarray(w1.reshape(M1, -1).T.astype(cdt))          # (C*KH*KW, M1)
    wdt = np.ascontiguousarray(wd[:, 0].transpose(1, 2, 0).astype(cdt))    # (KH, KW, M1)
    w2t = np.ascontiguousarray(w2.reshape(M2, M1).T.astype(cdt))           # (M1, M2)
    zeros = (np.zeros(M1, cdt), np.zeros(M2, cdt))
    (lo1, hi1), (lo2, hi2), (lo3, hi3) = [(cdt.type(lo), cdt.type(hi)) for lo, hi in lohi]
    dkh, dkw = wd.shape[2], wd.shape[3]

    def bias(b, k):
        return zeros[k] if b is None else np.ascontiguousarray(b, dtype=cdt)

    def run(x, w1_, b1=None, wd_=None, bd=None, w2_=None, b2=None, z=None):
        if x.dtype != cdt or x.ndim != 4:
            return (chain(x, b1, bd, b2, z),)
        N, C, H, W = x.shape
        x = np.ascontiguousarray(x)
        H1 = (H + cp[0] + cp[2] - KH) // cs[0] + 1
        W1 = (W + cp[1] + cp[3] - KW) // cs[1] + 1
        H2 = (H1 + dp[0] + dp[2] - dkh) // ds[0] + 1
        W2 = (W1 + dp[1] + dp[3] - dkw) // ds[1] + 1
        if min(H1, W1, H2, W2) <= 0 or C * KH * KW != w1t.shape[0] or (z is not None and (
                z.shape != (N, M2, H2, W2) or z.dtype != cdt)):
            return (chain(x, b1, bd, b2, z),)       # the Conv paths name what is wrong, or broadcast z
        P1, P2 = H1 * W1, H2 * W2
        # every pass below is split over the CPU provider's worker pool where it is large enough (``_ranges``:
        # the compiled loops release the GIL, and so do NumPy's): over channels, pixel rows or output rows;
        # the GEMMs are one BLAS call (held at one thread in a pool-mode run) below matmul's split size
        if pointwise:
            cols = x.reshape(N, C, P1)
        else:
            cols = np.empty((N, C * KH * KW, P1), dtype=cdt)
            kk = KH * KW
            if N > 1 or not native_ranges("im2col2d", C, cols.size, x, cols, KH, KW, cs[0], cs[1], 1, 1, cp[0],
                                          cp[1], H1, W1):
                _ranges(lambda c0, c1: conv_jit.im2col2d(x[:, c0:c1], cols[:, c0 * kk:c1 * kk], KH, KW, cs[0],
                                                         cs[1], 1, 1, cp[0], cp[1], H1, W1),
                        C, cols.size if N == 1 else 0)     # a channel range is contiguous at batch 1
        t1 = np.empty((N, P1, M1), dtype=cdt)
        for n in range(N):                       # rows = pixels: the transposed columns times W1^T
            matmul(cols[n].T, w1t, out=t1[n])
        r1, bb1 = t1.reshape(N * P1, M1), bias(b1, 0)
        if not native_ranges("bias_clip_rows", N * P1, r1.size, r1, bb1, lo1, hi1):
            _ranges(lambda i, j: nhwc.bias_clip_rows(r1[i:j], bb1, lo1, hi1), N * P1, r1.size)
        t2 = np.empty((N, H2, W2, M1), dtype=cdt)
        x1, bbd = t1.reshape(N, H1, W1, M1), bias(bd, 0)
        # output rows i..j: the same loop over y's rows from i on, its leading pad moved up by i strides
        if N > 1 or not native_ranges("depthwise_nhwc", H2, t2.size * dkh * dkw, x1, wdt, bbd, t2, ds[0], ds[1],
                                      dp[0], dp[1], lo2, hi2):
            _ranges(lambda i, j: nhwc.depthwise_nhwc(x1, wdt, bbd, t2[:, i:j], ds[0], ds[1], dp[0] - i * ds[0],
                                                     dp[1], lo2, hi2), H2, t2.size * dkh * dkw if N == 1 else 0)
        t3 = matmul(t2.reshape(N * P2, M1), w2t).reshape(N, P2, M2)      # one GEMM over the batch
        y = np.empty((N, M2, H2, W2), dtype=cdt)
        y3 = y.reshape(N, M2, P2)
        # back to channels-first with the bias, residual and clip: in the quick mode one compiled pass over
        # 64-pixel tiles split inside one compiled call (mobilenet_v2 at 2 threads: 6.51 -> 6.40 ms a run);
        # else NumPy's passes (its transposing add beat an untiled compiled loop, 1.5x: strided reads)
        z3 = y3 if z is None else np.ascontiguousarray(z).reshape(N, M2, P2)   # read only where z is given
        if native_ranges("rows_to_channels", M2, y3.size, t3, bias(b2, 1), z3, int(z is not None), lo3, hi3, y3):
            return (y,)
        bb2 = bias(b2, 1)[:, None]
        _ranges(lambda i, j: np.add(t3[:, :, i:j].transpose(0, 2, 1), bb2[i:j], out=y3[:, i:j]), M2, y3.size)
        if z is not None:
            y3 += z.reshape(N, M2, P2)
        if clip_args[2] is not None:
            np.clip(y3, lo3, hi3, out=y3)
        return (y,)

    return run
