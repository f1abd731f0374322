"""ConvTranspose (N-D, NC... layout): the adjoint of Conv, one matmul to columns and then col2im.

For 2-D transposes on NumPy with numba installed, col2im is one compiled loop (``_jit_conv_transpose``);
otherwise, for 2-D undilated transposes col2im writes into the output's stride phases (one long-row
add per tap), and in general it is a scatter-add of each kernel tap into the strided output positions.
The weight is prepacked in the factory when it is a constant. The compiled path's GEMM is
``_threadpool.matmul``'s: split over the provider's pool only when large, in a pool-mode run.
"""
from __future__ import annotations

import itertools
import math

import numpy as np

from engineroom.plugin_sdk.geometry import convtranspose_geometry
from engineroom.plugin_sdk.host_values import ints as _ints
from engineroom.providers.cpu import _threadpool
from engineroom.providers.cpu.array_module import arrays
from engineroom.providers.cpu.conv import compute_dtype
from engineroom.providers.cpu.registry import kernel

# the channels-last col2im's accumulator, at most (floats): 128 KB, in L2 with the columns it reads
_CL_MAX_ACC = 1 << 15


@kernel("ConvTranspose", since=1)
def conv_transpose(info):
    xp = info.xp
    a = info.attrs
    g = int(a.get("group", 1))
    auto_pad = a.get("auto_pad", "NOTSET")
    geo_cache = {}
    jit = arrays(xp).compiled("conv_transpose")

    def prepack(w):
        """Everything that depends on the weight only; a plain dict never written after it is built."""
        n = w.ndim - 2
        C, Mg = w.shape[0], w.shape[1]
        kshape = tuple(_ints(a.get("kernel_shape"), n, 1)) if a.get("kernel_shape") else tuple(w.shape[2:])
        cdt = compute_dtype(w.dtype)
        # (g, Mg*K, Cg): columns = W_g^T @ X_g
        wt = xp.asarray(w).astype(cdt, copy=False).reshape(g, C // g, Mg * math.prod(kshape)).transpose(0, 2, 1)
        # the compiled col2im reads the columns tap-major: rows (tap, Mg) instead of (Mg, tap)
        wt_taps = None if jit is None or n != 2 else np.ascontiguousarray(
            wt.reshape(g, Mg, math.prod(kshape), C // g).transpose(0, 2, 1, 3).reshape(wt.shape))
        return dict(wt=xp.ascontiguousarray(wt), wt_taps=wt_taps, kshape=kshape, K=math.prod(kshape), Mg=Mg,
                    strides=tuple(_ints(a.get("strides"), n, 1)),
                    dilations=tuple(_ints(a.get("dilations"), n, 1)),
                    pads=tuple(_ints(a.get("pads"), 2 * n, 0)),
                    out_pad=tuple(_ints(a.get("output_padding"), n, 0)),
                    taps=list(itertools.product(*(range(k) for k in kshape))))

    wconst = info.const_inputs[1] if len(info.const_inputs) > 1 else None
    packed = prepack(wconst) if wconst is not None else None

    def run(x, w, b=None):
        st = packed if packed is not None else prepack(w)
        cdt = compute_dtype(x.dtype)
        xc = x.astype(cdt, copy=False)
        N, C = x.shape[0], x.shape[1]
        spatial = tuple(x.shape[2:])
        key = (spatial, st["kshape"])
        geo = geo_cache.get(key)
        if geo is None:
            geo = convtranspose_geometry(spatial, st["kshape"], st["strides"], st["dilations"], st["pads"],
                                          st["out_pad"], a.get("output_shape"), auto_pad)
            # wide enough rows that the pitch padding (A2 - 1 columns) costs the GEMM little
            pitched = len(spatial) == 2 and all(d == 1 for d in st["dilations"]) and min(geo[0]) >= 0 and \
                spatial[1] >= 16 * (-(-st["kshape"][1] // st["strides"][1]) - 1)
            geo = geo + (None if pitched else
                         _scatter_plan(spatial, st["taps"], st["strides"], st["dilations"], geo[0], geo[2]),)
            geo_cache[key] = geo
        pb, pe, out, scatter = geo
        Mg, K = st["Mg"], st["K"]
        if st["wt_taps"] is not None and cdt == st["wt_taps"].dtype and min(pb) >= 0 and min(out) > 0:
            return (_convtranspose_jit(jit, st, xc, b, g, pb, out).astype(x.dtype, copy=False),)
        bias = b.astype(cdt, copy=False).reshape((g * Mg,) + (1,) * len(out)) if b is not None else None
        if scatter is None:
            y = _convtranspose_phases(xp, st["wt"], xc, g, Mg, st["kshape"], st["strides"], pb, out, bias)
            return (y.astype(x.dtype, copy=False),)
        n_in = math.prod(spatial) if spatial else 1
        cols = arrays(xp).matmul(st["wt"], xc.reshape(N, g, C // g, n_in))          # (N, g, Mg*K, n_in)
        cols = cols.reshape((N, g * Mg, K) + spatial)
        y = xp.zeros((N, g * Mg) + out, dtype=cdt)
        for t, dst, src in scatter:                      # col2im: one strided add per kernel tap
            y[dst] += cols[(slice(None), slice(None), t) + src]
        if bias is not None:
            y += bias
        return (y.astype(x.dtype, copy=False),)

    return run


def _convtranspose_jit(jit, st, xc, b, g, pb, out):
    """2-D ConvTranspose on NumPy: the column GEMM (tap-major rows), then the compiled col2im."""
    N, C, H, W = xc.shape
    Mg = st["Mg"]
    wt = st["wt_taps"]
    cdt = wt.dtype
    # the provider's GEMM: split over the pool in a pool-mode run (see conv._ConvPlan._conv)
    if N * g == 1:
        cols = _threadpool.matmul(wt[0], xc.reshape(C, H * W))
    else:
        cols = _threadpool.matmul(wt, xc.reshape(N, g, C // g, H * W))
    cols = cols.reshape((N * g,) + st["kshape"] + (Mg, H, W))
    bias = np.zeros((g, Mg), dtype=cdt) if b is None else b.astype(cdt, copy=False).reshape(g, Mg)
    y = np.empty((N, g * Mg) + tuple(out), dtype=cdt)
    # channels-last (inner loop Mg channels per pixel) only for small images with many channels: its
    # (OH*OW, Mg) accumulator must stay in cache (measured: 13 against 46 us at 128 channels of 4x4, but
    # 10.6 against 1.2 ms at 64 channels of 64x64, vit_s_focus's last upconv); else by rows
    (s1, s2), (d1, d2) = st["strides"], st["dilations"]
    y4 = y.reshape((N * g, Mg) + tuple(out))
    if Mg >= 4 * W and math.prod(out) * Mg <= _CL_MAX_ACC:
        jit.col2im_channels_last(cols, bias, y4, s1, s2, d1, d2, pb[0], pb[1])
    elif not _threadpool.native_ranges("col2im_rows", Mg, cols.size, cols, bias, y4, s1, s2, d1, d2, pb[0], pb[1]):
        jit.col2im_rows(cols, bias, y4, s1, s2, d1, d2, pb[0], pb[1])     # (split over channels in the quick mode)
    return y


def _convtranspose_phases(xp, wt, xc, g, Mg, kshape, strides, pb, out, bias):
    """2-D undilated ConvTranspose: the column GEMM, then col2im over the output's stride phases.

    Tap (k1, k2) = (a1*s1 + r1, a2*s2 + r2) of input pixel (i, j) lands on output
    (s1*(i + a1) + r1 - pad1, s2*(j + a2) + r2 - pad2): in phase plane (r1, r2) at block (i + a1, j + a2).
    The input is padded to a row pitch P = W + A2 - 1 (A = ceil(k / s)) with zero columns, so each tap's
    columns and its place in the phase plane are both one contiguous run of H*P values per channel:
    the overlap-add is one long-row add per tap (the zero columns only ever add zeros), and the output
    is then read out of the phase planes, one strided copy (with the bias) per phase.
    """
    N, C, H, W = xc.shape
    M = g * Mg
    (k1, k2), (s1, s2) = kshape, strides
    A1, A2 = -(-k1 // s1), -(-k2 // s2)
    P = W + A2 - 1
    E1 = max(H + A1 - 1, -(-(pb[0] + out[0]) // s1))           # block rows a phase plane needs
    E2 = max(P, -(-(pb[1] + out[1]) // s2))
    if A2 > 1:
        xw = xp.zeros((N, C, H, P), dtype=xc.dtype)
        xw[..., :W] = xc
    else:
        xw = xc
    L = H * P
    cols = arrays(xp).matmul(wt, xw.reshape(N, g, C // g, L)).reshape(N, M, k1, k2, L)
    plane = E1 * E2 if E2 == P else 0
    if plane:                           # phase planes at pitch P: every tap is one flat run
        phases = xp.zeros((s1, s2, N, M, plane + A2), dtype=xc.dtype)
        for t1 in range(k1):
            a1, r1 = divmod(t1, s1)
            for t2 in range(k2):
                a2, r2 = divmod(t2, s2)
                off = a1 * P + a2
                phases[r1, r2, :, :, off:off + L] += cols[:, :, t1, t2]
        pst = (phases.strides[3], P * phases.itemsize, phases.itemsize)
    else:                               # the output reaches past the input's blocks (output_padding)
        phases = xp.zeros((s1, s2, N, M, E1, E2), dtype=xc.dtype)
        cols5 = cols.reshape(N, M, k1, k2, H, P)[..., :W]
        for t1 in range(k1):
            a1, r1 = divmod(t1, s1)
            for t2 in range(k2):
                a2, r2 = divmod(t2, s2)
                phases[r1, r2, :, :, a1:a1 + H, a2:a2 + W] += cols5[:, :, t1, t2]
        pst = (phases.strides[3], phases.strides[4], phases.itemsize)
    y = xp.empty((N, M) + tuple(out), dtype=xc.dtype)
    for r1 in range(s1):
        o1 = (r1 - pb[0]) % s1                  # first output row in full-output phase r1
        n1 = len(range(o1, out[0], s1))
        q1 = (o1 + pb[0]) // s1
        for r2 in range(s2):
            o2 = (r2 - pb[1]) % s2
            n2 = len(range(o2, out[1], s2))
            q2 = (o2 + pb[1]) // s2
            if n1 == 0 or n2 == 0:
                continue
            base = phases[r1, r2].reshape(N, M, -1)[:, :, q1 * (pst[1] // phases.itemsize) + q2:]
            src = xp.lib.stride_tricks.as_strided(base, (N, M, n1, n2), (base.strides[0],) + pst)
            dst = y[:, :, o1::s1, o2::s2]
            if bias is not None:
                xp.add(src, bias, out=dst)
            else:
                dst[...] = src
    return y


def _scatter_plan(spatial, taps, strides, dilations, pb, out):
    """Per kernel tap: (tap index, output slices, input slices) of the in-range positions it writes."""
    plan = []
    for t, js in enumerate(taps):
        dst, src = [slice(None), slice(None)], []
        empty = False
        for i, j in enumerate(js):
            s, d, n_in, n_out = strides[i], dilations[i], spatial[i], out[i]
            start = j * d - pb[i]                      # output position of input index 0
            i0 = max(0, (-start + s - 1) // s)
            i1 = min(n_in, max(0, (n_out - start + s - 1) // s))
            if i1 <= i0:
                empty = True
                break
            dst.append(slice(start + i0 * s, start + (i1 - 1) * s + 1, s))
            src.append(slice(i0, i1))
        if not empty:
            plan.append((t, tuple(dst), tuple(src)))
    return plan
