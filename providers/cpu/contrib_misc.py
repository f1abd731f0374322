"""The remaining com.microsoft CPU contrib kernels a converted model can contain: the contrib versions of
ops that were later standardized (Trilu, Range, GatherND, Pad, GridSample, Unique), ExpandDims,
Inverse, CDist, MurmurHash3, CropAndResize, UnfoldTensor, ScaledSiLU, NGramRepeatBlock,
ConvTransposeWithDynamicPads, the quantized QAttention / QEmbedLayerNormalization and the
GatherBlockQuantized of LLM exports' quantized embedding tables."""
from __future__ import annotations

import numpy as np

from engineroom.providers.cpu._contrib import const, delegate, dequantize, host_kernel, scalar
from engineroom.providers.cpu.contrib_transformer import attend, attention_options
from engineroom.providers.cpu.norm import _normalize

MS = "com.microsoft"
_F32 = np.dtype(np.float32)
_F64 = np.dtype(np.float64)


# ---------------------------------------------------------------------------------------------
# contrib versions of standard ops


@host_kernel("Trilu", MS, since=1, host_inputs=(1,))
def trilu_ms(info):
    return delegate(info, "Trilu", 14)


@host_kernel("Range", MS, since=1, host_inputs=(0, 1, 2))
def range_ms(start, limit, delta=None):
    """Range with an optional delta (default 1)."""
    d = np.asarray(1, start.dtype) if delta is None else delta
    n = max(int(np.ceil((float(limit) - float(start)) / float(d))), 0)
    return (start.reshape(()) + np.arange(n, dtype=start.dtype) * d.reshape(())).astype(start.dtype)


@host_kernel("GatherND", MS, since=1)
def gather_nd_ms(info):
    return delegate(info, "GatherND", 11)


@host_kernel("Pad", MS, since=1, host_inputs=(1, 2))
def pad_ms(info):
    """Pad with pads (and the constant value) as inputs, ``mode`` constant / reflect / edge."""
    return delegate(info, "Pad", 11)


@host_kernel("GridSample", MS, since=1)
def grid_sample_ms(info):
    return delegate(info, "GridSample", 16)


@host_kernel("Unique", MS, since=1)
def unique_ms(x):
    """Of a 1-D tensor: the unique values in order of first occurrence, each element's index into them,
    and their counts."""
    flat = x.reshape(-1)
    _, first, inverse, counts = np.unique(flat, return_index=True, return_inverse=True, return_counts=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return flat[first[order]], rank[inverse.reshape(-1)].astype(np.int64), counts[order].astype(np.int64)


@host_kernel("ExpandDims", MS, since=1, host_inputs=(1,))
def expand_dims(x, axis):
    a = int(np.asarray(axis).reshape(()))
    if not -x.ndim - 1 <= a <= x.ndim:
        raise ValueError(f"ExpandDims: axis {a} is out of range for a tensor of rank {x.ndim}")
    return np.expand_dims(x, a)


# ---------------------------------------------------------------------------------------------
# math


@host_kernel("Inverse", MS, since=1, types=(np.float32, np.float64, np.float16))
def inverse(x):
    """The inverse of each matrix of the last two axes (float16 inverted in float32)."""
    work = x.astype(_F32) if x.dtype == np.float16 else x
    return np.linalg.inv(work).astype(x.dtype, copy=False)


@host_kernel("CDist", MS, since=1, types=(np.float32, np.float64))
def cdist(info):
    """Pairwise distances of the rows of A (N, D) and B (M, D): ``metric`` sqeuclidean or euclidean."""
    metric = info.attrs.get("metric", "sqeuclidean")
    metric = metric.decode() if isinstance(metric, bytes) else metric
    if metric not in ("sqeuclidean", "euclidean"):
        raise NotImplementedError(f"CDist: metric '{metric}' is not supported")

    def run(a, b):
        d = (a * a).sum(axis=1)[:, None] + (b * b).sum(axis=1)[None, :] - 2 * (a @ b.T)
        np.maximum(d, 0, out=d)
        return (np.sqrt(d) if metric == "euclidean" else d,)

    return run


@host_kernel("ScaledSiLU", MS, since=1, types=(np.float32, np.float64, np.float16))
def scaled_silu(info):
    """z = scale · x, y = z · sigmoid(z), each step rounded to the input's type; the scale is the scalar
    input when given, else ``alpha``."""
    alpha = float(info.attrs.get("alpha", 1.0))

    def run(x, scale=None):
        dt = x.dtype
        s = alpha if scale is None else scalar(scale)
        z = (x.astype(_F32) * np.float32(s)).astype(dt)
        sig = (1 / (1 + np.exp(-z.astype(_F32)))).astype(dt)
        return ((z.astype(_F32) * sig.astype(_F32)).astype(dt),)

    return run


def _murmur3_32(blocks, tail, length, seed):
    """MurmurHash3_x86_32 over uint32 words ``blocks`` (n, k) and tail bytes (n, r), vectorized over n."""
    c1, c2 = np.uint32(0xCC9E2D51), np.uint32(0x1B873593)
    h = np.full(blocks.shape[0], seed, np.uint32)
    with np.errstate(over="ignore"):
        for j in range(blocks.shape[1]):
            k = blocks[:, j] * c1
            k = (k << np.uint32(15)) | (k >> np.uint32(17))
            k *= c2
            h ^= k
            h = (h << np.uint32(13)) | (h >> np.uint32(19))
            h = h * np.uint32(5) + np.uint32(0xE6546B64)
        if tail.shape[1]:
            k = np.zeros(h.shape, np.uint32)
            for j in range(tail.shape[1] - 1, -1, -1):
                k ^= tail[:, j].astype(np.uint32) << np.uint32(8 * j)
            k *= c1
            k = (k << np.uint32(15)) | (k >> np.uint32(17))
            k *= c2
            h ^= k
        h ^= np.uint32(length)
        h ^= h >> np.uint32(16)
        h *= np.uint32(0x85EBCA6B)
        h ^= h >> np.uint32(13)
        h *= np.uint32(0xC2B2AE35)
        h ^= h >> np.uint32(16)
    return h


@host_kernel("MurmurHash3", MS, since=1)
def murmur_hash3(info):
    """MurmurHash3 (x86, 32-bit) of each element's bytes (4 or 8 for integers, UTF-8 for strings) with
    ``seed``; uint32 out when ``positive`` is 1, else int32."""
    seed = int(info.attrs.get("seed", 0)) & 0xFFFFFFFF
    positive = int(info.attrs.get("positive", 1))

    def run(x):
        if x.dtype == object:
            out = np.empty(x.size, np.uint32)
            for i, v in enumerate(x.reshape(-1)):
                b = v.encode("utf-8") if isinstance(v, str) else bytes(v)
                n = len(b) // 4
                words = np.frombuffer(b[:4 * n], "<u4").reshape(1, n)
                tail = np.frombuffer(b[4 * n:], np.uint8).reshape(1, -1)
                out[i] = _murmur3_32(words, tail, len(b), seed)[0]
        else:
            if x.dtype.itemsize not in (4, 8) or x.dtype.kind not in "iu":
                raise NotImplementedError(f"MurmurHash3: input type {x.dtype} is not supported")
            flat = np.ascontiguousarray(x.reshape(-1)).astype(x.dtype.newbyteorder("<"))
            words = flat.view("<u4").reshape(x.size, x.dtype.itemsize // 4)
            out = _murmur3_32(words, np.zeros((x.size, 0), np.uint8), x.dtype.itemsize, seed)
        out = out.reshape(x.shape)
        return (out if positive else out.view(np.int32),)

    return run


# ---------------------------------------------------------------------------------------------
# image / sequence helpers


@host_kernel("CropAndResize", MS, since=1, types=(np.float32,))
def crop_and_resize(info):
    """Crops (y1, x1, y2, x2 in normalized coordinates) of X's images, resized to ``crop_size`` with
    ``mode`` bilinear or nearest; samples outside the image get ``extrapolation_value``."""
    mode = info.attrs.get("mode", "bilinear")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    extrapolation = np.float32(info.attrs.get("extrapolation_value", 0.0))

    def coords(lo, hi, size, n):
        # float32 throughout, as onnxruntime: a sample on a half pixel must round the same way
        lo, hi, m = np.float32(lo), np.float32(hi), np.float32(size - 1)
        if n > 1:
            step = (hi - lo) * m / np.float32(n - 1)
            return lo * m + np.arange(n, dtype=np.float32) * step
        return np.array([np.float32(0.5) * (lo + hi) * m], np.float32)

    def run(x, rois, batch_indices, crop_size):
        N, C, H, W = x.shape
        ch, cw = (int(v) for v in np.asarray(crop_size).reshape(-1)[:2])
        out = np.empty((rois.shape[0], C, ch, cw), x.dtype)
        for r, (y1, x1, y2, x2) in enumerate(rois.astype(np.float32)):
            img = x[int(batch_indices[r])]
            ys, xs = coords(y1, y2, H, ch), coords(x1, x2, W, cw)
            yin = (ys >= 0) & (ys <= H - 1)
            xin = (xs >= 0) & (xs <= W - 1)
            if mode == "nearest":
                # roundf: halves away from zero (the in-range coordinates are >= 0)
                yi = np.clip(np.floor(ys + 0.5), 0, H - 1).astype(np.int64)
                xi = np.clip(np.floor(xs + 0.5), 0, W - 1).astype(np.int64)
                crop = img[:, yi][:, :, xi]
            else:
                y0 = np.clip(np.floor(ys), 0, H - 1).astype(np.int64)
                x0 = np.clip(np.floor(xs), 0, W - 1).astype(np.int64)
                y1i, x1i = np.minimum(y0 + 1, H - 1), np.minimum(x0 + 1, W - 1)
                dy = (ys - np.floor(ys)).astype(np.float32)[:, None]
                dx = (xs - np.floor(xs)).astype(np.float32)[None, :]
                top = img[:, y0][:, :, x0] * (1 - dx) + img[:, y0][:, :, x1i] * dx
                bottom = img[:, y1i][:, :, x0] * (1 - dx) + img[:, y1i][:, :, x1i] * dx
                crop = top + (bottom - top) * dy
            out[r] = np.where(yin[:, None] & xin[None, :], crop, extrapolation)
        return (out,)

    return run


@host_kernel("UnfoldTensor", MS, since=1)
def unfold_tensor(info):
    """Windows of ``size`` every ``step`` along ``dim``: that axis becomes the window count and the
    windows' elements a new last axis (torch.Tensor.unfold)."""
    dim = int(info.attrs.get("dim", -1))
    size = int(info.attrs["size"])
    step = int(info.attrs.get("step", 1))

    def run(x):
        d = dim + x.ndim if dim < 0 else dim
        n = (x.shape[d] - size) // step + 1
        if n < 1 or step < 1:
            raise ValueError(f"UnfoldTensor: size {size} and step {step} do not fit axis {d} of length {x.shape[d]}")
        win = np.lib.stride_tricks.sliding_window_view(x, size, axis=d)
        win = win[(slice(None),) * d + (slice(None, None, step),)]
        return (np.ascontiguousarray(win),)

    return run


@host_kernel("NGramRepeatBlock", MS, since=1, types=(np.int64,))
def ngram_repeat_block(info):
    """Scores (B, V) with -inf for every token that would complete an ``ngram_size``-gram already in
    input_ids (B, L)."""
    n = int(info.attrs["ngram_size"])

    def run(ids, scores):
        out = scores.copy()
        L = ids.shape[1]
        if n < 1 or L + 1 < n:
            return (out,)
        for b in range(ids.shape[0]):
            row = ids[b]
            tail = tuple(row[L - n + 1:]) if n > 1 else ()
            for i in range(L - n + 1):
                if tuple(row[i:i + n - 1]) == tail:
                    out[b, row[i + n - 1]] = -np.inf
        return (out,)

    return run


@host_kernel("ConvTransposeWithDynamicPads", MS, since=1, types=(np.float32,))
def conv_transpose_dynamic_pads(info):
    """ConvTranspose whose pads come as an input (X, W, Pads, B): one ConvTranspose kernel per pads seen."""
    kernels = {}

    def run(x, w, pads=None, b=None):
        key = None if pads is None else tuple(int(p) for p in np.asarray(pads).reshape(-1))
        k = kernels.get(key)
        if k is None:
            attrs = dict(info.attrs)
            if key is not None:
                attrs["pads"] = list(key)
                attrs.pop("auto_pad", None)
            k = delegate(info, "ConvTranspose", 11, attrs, inputs=[0, 1, 3])
            if len(kernels) < 8:
                kernels[key] = k
        return k(x, w, b) if b is not None else k(x, w)

    return run


# ---------------------------------------------------------------------------------------------
# quantized transformer ops


@host_kernel("QAttention", MS, since=1, types=(np.uint8,))
def qattention(info):
    """Attention with a quantized projection: (input - zp) @ (weight - zp) · input_scale · weight_scale
    + bias, then Attention's heads (inputs input, weight, bias, input_scale, weight_scale, mask_index,
    input_zero_point, weight_zero_point, past)."""
    opts = attention_options(info)
    cw, cwz = const(info, 1), const(info, 7)
    pre = None
    if cw is not None and (cwz is not None or not info.has_input(7)):
        pre = cw.astype(_F64) - (0.0 if cwz is None else cwz.astype(_F64).reshape(-1 if cwz.size > 1 else ()))

    def run(x, w, bias, sx, sw, mask=None, zx=None, zw=None, past=None):
        wc = pre if pre is not None else w.astype(_F64) - (0.0 if zw is None else zw.astype(_F64).reshape(
            -1 if zw.size > 1 else ()))
        acc = np.matmul(x.astype(_F64) - scalar(zx), wc).astype(_F32)
        sws = np.asarray(sw, _F32)
        qkv = acc * (np.float32(scalar(sx)) * (sws.reshape(-1) if sws.size > 1 else sws.reshape(()))) + bias
        return attend(qkv, mask, past, None, **opts)

    return run


@host_kernel("QEmbedLayerNormalization", MS, since=1, types=(np.int32,))
def qembed_layer_normalization(info):
    """EmbedLayerNormalization over dequantized embeddings, gamma and beta; outputs the normalized
    embeddings and mask_index (the count of mask's ones per row)."""
    eps = float(info.attrs.get("epsilon", 1e-12))

    def run(ids, seg_ids, word_q, pos_q, seg_q, gamma_q, beta_q, mask,
            word_s, pos_s, seg_s, gamma_s, beta_s, word_z, pos_z, seg_z, gamma_z, beta_z):
        B, S = ids.shape
        emb = dequantize(word_q[ids], scalar(word_s), scalar(word_z))
        emb = emb + dequantize(pos_q[:S], scalar(pos_s), scalar(pos_z))[None]
        if seg_ids is not None and seg_q is not None:
            emb = emb + dequantize(seg_q[seg_ids], scalar(seg_s), scalar(seg_z))
        y, _, _ = _normalize(np, emb, (2,), eps)
        y *= dequantize(gamma_q, scalar(gamma_s), scalar(gamma_z))
        y += dequantize(beta_q, scalar(beta_s), scalar(beta_z))
        mask_index = (mask.sum(axis=1, dtype=np.int64).astype(np.int32) if mask is not None
                      else np.zeros((B,), np.int32))
        return (y, mask_index)

    return run


# ---------------------------------------------------------------------------------------------
# GatherBlockQuantized (quantized embedding tables of LLM exports)


def _unpack_bits(packed, bits: int):
    """uint8 values packed along the last axis, low-order bits first, as one integer per element."""
    per = 8 // bits
    shifts = (np.arange(per, dtype=np.uint8) * bits).astype(np.uint8)
    vals = (packed[..., None] >> shifts) & np.uint8((1 << bits) - 1)
    return vals.reshape(packed.shape[:-1] + (packed.shape[-1] * per,))


@host_kernel("GatherBlockQuantized", MS, types=None)
def gather_block_quantized(info):
    """Gather of a block-quantized table: the rows are gathered first, then dequantized
    ((q - zero_point) · scale, a scale per ``block_size`` elements along ``quantize_axis``), so the
    table stays quantized in memory. uint8 data packs ``bits`` (2, 4, 8) per value along the last axis
    (default zero point 2^(bits-1)); int4 / uint4 data default to zero point 0; float8 / float4 data are
    scaled only."""
    a = info.attrs
    bits = int(a.get("bits", 4))
    block = int(a.get("block_size", 128))
    g_axis = int(a.get("gather_axis", 0))
    q_axis = int(a.get("quantize_axis", 1))
    data_dt = np.dtype(info.input_dtypes[0]) if info.input_dtypes and info.input_dtypes[0] is not None else None
    packed = data_dt == np.uint8 and bits < 8
    if data_dt == np.uint8 and bits not in (2, 4, 8):
        raise ValueError(f"GatherBlockQuantized: bits must be 2, 4 or 8, got {bits}")

    def values(x):
        if x.dtype == np.uint8:
            return (_unpack_bits(x, bits) if packed else x).astype(_F32)
        return x.astype(_F32)

    cdata, czp = const(info, 0), const(info, 3)
    table = None if cdata is None else values(np.asarray(cdata))
    zps = None if czp is None else values(np.asarray(czp))

    def run(data, indices, scales, zero_points=None):
        t = table if table is not None else values(data)
        nd = t.ndim
        ga, qa = g_axis % nd, q_axis % nd
        blk = block if block > 0 else t.shape[qa]
        if packed and ga == qa:
            raise ValueError("GatherBlockQuantized: gather_axis and quantize_axis must differ for packed uint8 data")
        idx = np.asarray(indices).astype(np.int64)
        idx = np.where(idx < 0, idx + t.shape[ga], idx)
        if np.any((idx < 0) | (idx >= t.shape[ga])):
            raise IndexError(f"GatherBlockQuantized: an index is out of range for axis {ga} of size {t.shape[ga]}")
        g = np.take(t, idx, axis=ga)

        def spread(p):
            """A per-block parameter gathered and expanded to g's shape."""
            if ga == qa:
                pidx = idx // blk
            else:
                pidx = idx if p.shape[ga] != 1 else np.zeros_like(idx)
            p = np.take(p, pidx, axis=ga)
            if ga != qa:
                pos = qa if qa < ga else qa + idx.ndim - 1
                if p.shape[pos] != 1 or g.shape[pos] == 1:
                    p = np.repeat(p, blk, axis=pos)
                    p = np.take(p, np.arange(g.shape[pos]), axis=pos)
            return p

        s = spread(np.asarray(scales).astype(_F32))
        if zero_points is not None or zps is not None:
            g = g - spread(zps if zps is not None else values(zero_points))
        elif data_dt == np.uint8:
            g = g - np.float32(1 << (bits - 1))
        return ((g * s).astype(scales.dtype),)

    return run


# ---------------------------------------------------------------------------------------------
# MatMulBnb4 (bitsandbytes' 4-bit FP4 / NF4 weights) and DynamicTimeWarping (Whisper's alignment)

# the 16 code values of bitsandbytes' FP4 and NF4 data types (arXiv 2305.14314)
_BNB4_CODES = {
    0: np.array([0.0, 0.005208333333, 0.66666667, 1.0, 0.33333333, 0.5, 0.16666667, 0.25,
                 -0.0, -0.005208333333, -0.66666667, -1.0, -0.33333333, -0.5, -0.16666667, -0.25], _F32),
    1: np.array([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                 -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                 0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                 0.7229568362236023, 1.0], _F32),
}


@host_kernel("MatMulBnb4", MS, types=(np.float32, np.float16))
def matmul_bnb4(info):
    """A @ dequant(B)ᵀ (``transB`` 1, the default) or A @ dequant(B): B (N, K) flattened, two 4-bit codes
    per byte (high nibble first), each code a value of the ``quant_type`` table (0 FP4, 1 NF4) times its
    block's absmax. A constant B is dequantized once, in the factory."""
    a = info.attrs
    N, K, blk = int(a["N"]), int(a["K"]), int(a["block_size"])
    trans_b = int(a.get("transB", 1))
    qt = int(a.get("quant_type", 1))
    if qt not in _BNB4_CODES:
        raise ValueError(f"MatMulBnb4: quant_type must be 0 (FP4) or 1 (NF4), got {qt}")
    codes = _BNB4_CODES[qt]

    def dequant(b, absmax):
        b = np.asarray(b).reshape(-1)
        q = np.stack([b >> 4, b & 0x0F], axis=-1).reshape(-1)[:N * K]
        scale = np.repeat(np.asarray(absmax, _F32).reshape(-1), blk)[:N * K]
        w = (codes[q] * scale).reshape(N, K)
        return np.ascontiguousarray(w.T if trans_b else w)

    cb, cm = const(info, 1), const(info, 2)
    pre = dequant(cb, cm) if cb is not None and cm is not None else None

    def run(x, b, absmax):
        w = pre if pre is not None else dequant(b, absmax)
        return (np.matmul(x.astype(_F32, copy=False), w).astype(x.dtype, copy=False),)

    return run


@host_kernel("DynamicTimeWarping", MS, types=(np.float32,))
def dynamic_time_warping(cost):
    """The lowest-cost monotone path from (0, 0) to (M-1, N-1) through ``cost`` (M, N), moving to (r+1, c),
    (r+1, c+1) or (r, c+1), as a (2, length) int32 tensor of (row, column) indices. Ties prefer the
    diagonal, then the step down (Whisper's alignment rule)."""
    if cost.ndim != 2:
        raise ValueError(f"DynamicTimeWarping: input must be a 2-D cost matrix, got shape {cost.shape}")
    M, N = cost.shape
    acc = np.full((M + 1, N + 1), np.inf, np.float32)
    acc[0, 0] = 0
    trace = np.full((M + 1, N + 1), -1, np.int8)
    for j in range(1, N + 1):
        for i in range(1, M + 1):
            c0, c1, c2 = acc[i - 1, j - 1], acc[i - 1, j], acc[i, j - 1]
            if c0 < c1 and c0 < c2:
                c, t = c0, 0
            elif c1 < c0 and c1 < c2:
                c, t = c1, 1
            else:
                c, t = c2, 2
            acc[i, j] = cost[i - 1, j - 1] + c
            trace[i, j] = t
    trace[0, :] = 2
    trace[:, 0] = 1
    i, j, path = M, N, []
    while i > 0 or j > 0:
        path.append((i - 1, j - 1))
        t = trace[i, j]
        if t == 0:
            i, j = i - 1, j - 1
        elif t == 1:
            i -= 1
        else:
            j -= 1
    return np.array(path[::-1], np.int32).T.copy()
