"""Kernels of the decoder path that onnxruntime-genai's model builder writes (onnxruntime's contrib ops):
``GroupQueryAttention``, ``RotaryEmbedding``, ``MatMulNBits`` and ``SkipSimplifiedLayerNormalization``
(domain com.microsoft), and ``SimplifiedLayerNormalization`` (onnxruntime registers it in the ONNX domain).

Token-by-token generation runs these hundreds of times on one new token, so:

- GroupQueryAttention attends the new token over the cache (no recomputation over the prefix) and, when
  the caller bound one buffer to ``past_key`` and ``present_key`` (onnxruntime-genai's shared KV cache:
  IOBinding, ``plugin_sdk.binding``), appends the new keys and values into it in place: nothing of the
  past is copied. Otherwise ``present`` is a fresh buffer with the past copied in, as onnxruntime does.
- MatMulNBits keeps the 4-bit weights packed; each block is dequantized inside the GEMM loop (compiled,
  ``_jit_llm``) for one or two rows, and for more (prefill, batched decoding) one 64-column tile at a
  time is dequantized into a small scratch that a register-blocked compiled GEMM multiplies (where the
  CPU lacks AVX-512: a row-by-row loop, and BLAS on tiles of weight rows). A full float copy of the
  weights is never made.
"""
from __future__ import annotations

import numpy as np

from engineroom.plugin_sdk.binding import bound_output
from engineroom.providers.cpu._threadpool import parallel_ranges
from engineroom.providers.cpu.array_module import arrays
from engineroom.providers.cpu.registry import array_kernel

MS = "com.microsoft"
_F32 = np.dtype(np.float32)
_EMPTY1 = np.empty(0, np.float32)
_EMPTY2 = np.empty((0, 0), np.float32)


# -- RMS normalizations ------------------------------------------------------------------------------
def _rms_numpy(xp, v, axes, eps):
    """(v / sqrt(mean(v²) + eps), 1 / sqrt(...)) in float32 (float64 for float64 input)."""
    cdt = np.float64 if v.dtype == np.float64 else np.float32
    vc = v.astype(cdt, copy=False)
    inv = 1.0 / xp.sqrt(xp.mean(vc * vc, axis=axes, keepdims=True) + cdt(eps))
    return vc * inv, inv


@array_kernel("SimplifiedLayerNormalization", since=1, types=(np.float32, np.float64, np.float16))
def simplified_layer_normalization(info):
    """RMSNorm: x / sqrt(mean(x²) + epsilon) * scale over axes ``axis``..; outputs Y and inv_std_var."""
    xp = info.xp
    axis = int(info.attrs.get("axis", -1))
    eps = float(info.attrs.get("epsilon", 1e-5))
    n_out = max(1, len(info.output_names))
    jit = arrays(xp).compiled("llm")

    def run(x, scale):
        ax = axis + x.ndim if axis < 0 else axis
        if (jit is not None and ax == x.ndim - 1 and x.dtype == _F32 and scale.dtype == _F32 and x.size
                and scale.shape == (x.shape[-1],)):
            h = x.shape[-1]
            R = x.size // h
            y = np.empty(x.shape, _F32)
            inv = np.empty(x.shape[:-1] + (1,), _F32)
            jit.rms_norm(np.ascontiguousarray(x).reshape(R, h), _EMPTY2, _EMPTY1, scale, np.float32(eps),
                         y.reshape(R, h), inv.reshape(R), _EMPTY2)
            return (y, inv)[:n_out]
        yc, inv = _rms_numpy(xp, x, tuple(range(ax, x.ndim)), eps)
        yc = yc * scale.astype(yc.dtype, copy=False)
        return (yc.astype(x.dtype, copy=False), inv.astype(np.float32, copy=False))[:n_out]

    return run


@array_kernel("SkipSimplifiedLayerNormalization", domain=MS, since=1, types=(np.float32, np.float64, np.float16))
def skip_simplified_layer_normalization(info):
    """RMSNorm(input + skip + bias) * gamma over the last axis; outputs: output, mean (unused: RMSNorm has
    none, left empty as onnxruntime does), inv_std_var and the sum input + skip + bias."""
    xp = info.xp
    eps = float(info.attrs.get("epsilon", 1e-12))
    outs = tuple(info.output_names) + ("",) * 4
    want_inv, want_sum = bool(outs[2]), bool(outs[3])
    n_out = max(1, len(info.output_names))
    jit = arrays(xp).compiled("llm")
    no_mean = np.empty(0, np.float32)

    def run_numpy(x, skip, gamma, bias=None):
        s = x + skip if bias is None else x + skip + bias
        y, inv = _rms_numpy(xp, s, (s.ndim - 1,), eps)
        y = (y * gamma.astype(y.dtype, copy=False)).astype(x.dtype, copy=False)
        return (y, no_mean, inv.astype(np.float32, copy=False), s)[:n_out]

    def run(x, skip, gamma, bias=None):
        h = x.shape[-1] if x.ndim else 0
        if (jit is None or x.dtype != _F32 or not x.size or skip.shape != x.shape or skip.dtype != _F32
                or gamma.dtype != _F32 or gamma.shape != (h,)
                or (bias is not None and (bias.dtype != _F32 or bias.shape != (h,)))):
            return run_numpy(x, skip, gamma, bias)
        R = x.size // h
        y = np.empty(x.shape, _F32)
        inv = np.empty(x.shape[:-1] + (1,), _F32)
        total = np.empty(x.shape, _F32) if want_sum else None
        jit.rms_norm(np.ascontiguousarray(x).reshape(R, h), np.ascontiguousarray(skip).reshape(R, h),
                     _EMPTY1 if bias is None else bias, gamma, np.float32(eps), y.reshape(R, h), inv.reshape(R),
                     _EMPTY2 if total is None else total.reshape(R, h))
        return (y, no_mean, inv if want_inv else no_mean, total)[:n_out]

    return run


# -- rotary embedding ----------------------------------------------------------------------------------
def _rotate(xp, x, cos, sin, rd, interleaved):
    """RoPE on the last axis of x (..., D) with cos/sin broadcastable to (..., rd/2): a new array, the
    dimensions past ``rd`` copied unchanged."""
    y = xp.empty(x.shape, x.dtype)
    half = rd // 2
    if interleaved:
        x1, x2 = x[..., 0:rd:2], x[..., 1:rd:2]
        y1, y2 = y[..., 0:rd:2], y[..., 1:rd:2]
    else:
        x1, x2 = x[..., :half], x[..., half:rd]
        y1, y2 = y[..., :half], y[..., half:rd]
    xp.multiply(x1, cos, out=y1)
    y1 -= x2 * sin
    xp.multiply(x2, cos, out=y2)
    y2 += x1 * sin
    if rd < x.shape[-1]:
        y[..., rd:] = x[..., rd:]
    return y


def _positions(xp, position_ids, B, S):
    """(B, S) positions from onnxruntime's two forms: one start offset (shape (1) or scalar), or (B, S)."""
    pid = position_ids.astype(np.int64, copy=False)
    if pid.size == 1 and not (pid.ndim == 2 and (B, S) == (1, 1) and pid.shape == (B, S)):
        return xp.broadcast_to(pid.reshape(1, 1) + xp.arange(S, dtype=np.int64)[None, :], (B, S))
    if pid.shape != (B, S):
        raise ValueError(f"position_ids has shape {pid.shape}; expected (1) or (batch_size, sequence_length) = "
                         f"{(B, S)}")
    return pid


@array_kernel("RotaryEmbedding", domain=MS, since=1, types=(np.float32, np.float16, np.float64))
def rotary_embedding_ms(info):
    """onnxruntime's RotaryEmbedding: input (B, S, N*H) or (B, N, S, H), position_ids (1) (a start offset)
    or (B, S), cos/sin caches (max_positions, rotary_dim/2). Without ``rotary_embedding_dim`` the head
    size is twice the caches' width."""
    xp = info.xp
    a = info.attrs
    interleaved = bool(int(a.get("interleaved", 0)))
    num_heads = int(a.get("num_heads", 0) or 0)
    rot_dim = int(a.get("rotary_embedding_dim", 0) or 0)
    if rot_dim > 0 and num_heads <= 0:
        raise ValueError("RotaryEmbedding: num_heads must be provided if rotary_embedding_dim is specified")
    if int(a.get("is_packed_batching", 0)):
        raise NotImplementedError("RotaryEmbedding: is_packed_batching=1 is not supported by the CPU provider")
    jit = arrays(xp).compiled("llm")

    def run(x, position_ids, cos_cache, sin_cache):
        if x.ndim not in (3, 4):
            raise ValueError(f"RotaryEmbedding: input must be 3-D or 4-D, got shape {x.shape}")
        if cos_cache.ndim != 2 or cos_cache.shape != sin_cache.shape:
            raise ValueError(f"RotaryEmbedding: cos_cache {cos_cache.shape} and sin_cache {sin_cache.shape} must "
                             f"be 2-D of one shape")
        B = x.shape[0]
        S, hidden = (x.shape[2], x.shape[1] * x.shape[3]) if x.ndim == 4 else (x.shape[1], x.shape[2])
        head = cos_cache.shape[1] * 2 if rot_dim == 0 else hidden // num_heads
        rd = rot_dim or head
        if rd > head or hidden % head or cos_cache.shape[1] * 2 != rd:
            raise ValueError(f"RotaryEmbedding: caches of width {cos_cache.shape[1]} do not fit head size {head} "
                             f"(rotary_embedding_dim={rot_dim}) of input {x.shape}")
        pos = _positions(xp, position_ids, B, S)
        if int(pos.max(initial=0)) >= cos_cache.shape[0] or int(pos.min(initial=0)) < 0:
            raise ValueError(f"RotaryEmbedding: a position id is outside the caches' {cos_cache.shape[0]} rows")
        cos = cos_cache[pos].astype(x.dtype, copy=False)               # (B, S, rd/2)
        sin = sin_cache[pos].astype(x.dtype, copy=False)
        if jit is not None and x.ndim == 3 and x.dtype == _F32:
            xv = np.ascontiguousarray(x).reshape(B * S, hidden // head, head)
            y = np.empty(xv.shape, _F32)
            jit.rope_rows(xv, np.ascontiguousarray(cos).reshape(B * S, -1),
                          np.ascontiguousarray(sin).reshape(B * S, -1), int(interleaved), y)
            return (y.reshape(x.shape),)
        if x.ndim == 4:                                                # (B, N, S, H)
            return (_rotate(xp, x, cos[:, None], sin[:, None], rd, interleaved),)
        xv = x.reshape(B, S, hidden // head, head)
        return (_rotate(xp, xv, cos[:, :, None], sin[:, :, None], rd, interleaved).reshape(x.shape),)

    return run


# -- GroupQueryAttention -------------------------------------------------------------------------------
_UNSUPPORTED_GQA_INPUTS = {9: "position_ids", 10: "attention_bias", 11: "head_sink", 12: "k_scale",
                           13: "v_scale", 14: "q_norm_weight", 15: "k_norm_weight", 16: "query_seqlens"}


@array_kernel("GroupQueryAttention", domain=MS, since=1, types=(np.float32,))
def group_query_attention(info):
    """Causal grouped-query attention with a BNSH key/value cache (onnxruntime's semantics).

    Per batch entry b the cache holds ``seqlens_k[b] + 1`` tokens after this step; the first prompt
    (sequence_length == total_sequence_length) starts at 0, a later step appends its S tokens after the
    ``seqlens_k[b] + 1 - S`` already there. ``present`` is (B, kv_heads, max(total, past buffer length), D):
    where past and present are one buffer (IOBinding, see the module docstring) the new rows are written
    into it; else a fresh zeroed buffer gets the past rows and the new ones. Query heads are grouped over
    their key head (a reshape, never a repeat of K/V). Packed QKV, ``do_rotary`` (interleaved or not),
    ``local_window_size``, ``softcap`` and ``scale`` are supported; the inputs after sin_cache, quantized
    caches, ``qk_output``, ``smooth_softmax`` and ``causal=0`` are not.
    """
    xp = info.xp
    a = info.attrs
    if "num_heads" not in a or "kv_num_heads" not in a:
        raise ValueError("GroupQueryAttention: the num_heads and kv_num_heads attributes are required")
    Hq, Hkv = int(a["num_heads"]), int(a["kv_num_heads"])
    if Hq <= 0 or Hkv <= 0 or Hq % Hkv:
        raise ValueError(f"GroupQueryAttention: num_heads ({Hq}) must be a positive multiple of kv_num_heads ({Hkv})")
    G = Hq // Hkv
    scale_attr = float(a.get("scale", 0.0) or 0.0)
    softcap = float(a.get("softcap", 0.0) or 0.0)
    window = int(a.get("local_window_size", -1))
    do_rotary = bool(int(a.get("do_rotary", 0)))
    interleaved = bool(int(a.get("rotary_interleaved", 0)))
    for attr, default in (("smooth_softmax", 0), ("qk_output", 0), ("sliding_window_cache", 0), ("causal", 1),
                          ("kv_cache_bit_width", 0)):
        if int(a.get(attr, default) or 0) != default:
            raise NotImplementedError(f"GroupQueryAttention: {attr}={a[attr]} is not supported by the CPU provider")
    for attr in ("k_quant_type", "v_quant_type"):
        qt = a.get(attr, "NONE")
        qt = qt.decode() if isinstance(qt, bytes) else str(qt)
        if qt.upper() != "NONE":
            raise NotImplementedError(f"GroupQueryAttention: {attr}={qt} (a quantized cache) is not supported by "
                                      f"the CPU provider")
    for idx, nm in _UNSUPPORTED_GQA_INPUTS.items():
        if info.has_input(idx):
            raise NotImplementedError(f"GroupQueryAttention: the {nm} input is not supported by the CPU provider")
    outs = tuple(info.output_names) + ("", "", "")
    if len(info.output_names) > 3 and info.output_names[3]:
        raise NotImplementedError("GroupQueryAttention: the output_qk output is not supported by the CPU provider")
    present_k_name, present_v_name = outs[1], outs[2]
    jit = arrays(xp).compiled("llm")

    def run(query, key=None, value=None, past_key=None, past_value=None, seqlens_k=None, total_seqlen=None,
            cos_cache=None, sin_cache=None, *_):
        if query.ndim != 3:
            raise ValueError(f"GroupQueryAttention: query must be 3-D (B, S, hidden), got shape {query.shape}")
        B, S, hid = query.shape
        if key is None:                                    # packed QKV (B, S, (Hq + 2 Hkv) D)
            if value is not None:
                raise ValueError("GroupQueryAttention: key and value must be both present or both absent")
            D = hid // (Hq + 2 * Hkv)
            if D * (Hq + 2 * Hkv) != hid:
                raise ValueError(f"GroupQueryAttention: packed query width {hid} is not (num_heads + 2 kv_num_heads)"
                                 f" * head_size")
            q = query[:, :, :Hq * D]
            k = query[:, :, Hq * D:(Hq + Hkv) * D]
            v = query[:, :, (Hq + Hkv) * D:]
        else:
            if value is None:
                raise ValueError("GroupQueryAttention: key and value must be both present or both absent")
            D = hid // Hq
            if D * Hq != hid or key.shape != (B, S, Hkv * D) or value.shape != key.shape:
                raise ValueError(f"GroupQueryAttention: query {query.shape}, key {key.shape} and value {value.shape}"
                                 f" do not fit num_heads={Hq}, kv_num_heads={Hkv}")
            q, k, v = query, key, value
        if seqlens_k is None or total_seqlen is None:
            raise ValueError("GroupQueryAttention: seqlens_k and total_sequence_length are required")
        if seqlens_k.shape != (B,):
            raise ValueError(f"GroupQueryAttention: seqlens_k must have shape (batch_size,) = ({B},), got "
                             f"{seqlens_k.shape}")
        if total_seqlen.size != 1:
            raise ValueError("GroupQueryAttention: total_sequence_length tensor must be of one element")
        T = int(total_seqlen.reshape(-1)[0])
        if (past_key is None) != (past_value is None):
            raise ValueError("GroupQueryAttention: past_key and past_value must be both present or both absent")
        P = 0
        if past_key is not None:
            if past_key.ndim != 4 or past_key.shape[0] != B or past_key.shape[1] != Hkv or past_key.shape[3] != D \
                    or past_value.shape != past_key.shape:
                raise ValueError(f"GroupQueryAttention: past_key {past_key.shape} and past_value {past_value.shape} "
                                 f"must be (batch_size, kv_num_heads, past_length, head_size) = "
                                 f"({B}, {Hkv}, *, {D})")
            P = past_key.shape[2]
        first_prompt = S == T
        if S > 1 and not first_prompt and B != 1:
            raise ValueError("GroupQueryAttention: batch_size must be 1 when sequence_length > 1 and past context "
                             "is given")
        if B == 0:
            empty = xp.zeros((0, Hkv, max(T, P), D), query.dtype)
            return xp.zeros((0, S, Hq * D), query.dtype), empty, empty.copy()
        total_b = seqlens_k.astype(np.int64) + 1                       # tokens in the cache after this step
        past_b = xp.zeros(B, np.int64) if first_prompt else total_b - S
        Lp = max(T, P)
        if int(total_b.max()) > Lp or int(past_b.min()) < 0:
            raise ValueError(f"GroupQueryAttention: seqlens_k {seqlens_k.tolist()} does not fit "
                             f"total_sequence_length {T}, sequence_length {S} and a past of length {P}")
        # heads: q (B, Hkv, G, S, D), k/v (B, Hkv, S, D), strided views of the projections
        qh = q.reshape(B, S, Hkv, G, D).transpose(0, 2, 3, 1, 4)
        kh = k.reshape(B, S, Hkv, D).transpose(0, 2, 1, 3)
        vh = v.reshape(B, S, Hkv, D).transpose(0, 2, 1, 3)
        if do_rotary:
            if cos_cache is None or sin_cache is None:
                raise ValueError("GroupQueryAttention: do_rotary=1 needs cos_cache and sin_cache")
            rd = 2 * cos_cache.shape[1]
            if first_prompt:
                pos = xp.broadcast_to(xp.arange(S, dtype=np.int64)[None], (B, S))
            else:
                pos = past_b[:, None] + xp.arange(S, dtype=np.int64)[None]
            if int(pos.max()) >= cos_cache.shape[0]:
                raise ValueError(f"GroupQueryAttention: position {int(pos.max())} is past the rotary caches' "
                                 f"{cos_cache.shape[0]} rows")
            cos = cos_cache[pos][:, None]                               # (B, 1, S, rd/2)
            sin = sin_cache[pos][:, None]
            qh = _rotate(xp, qh, cos[:, :, None], sin[:, :, None], rd, interleaved)
            kh = _rotate(xp, kh, cos, sin, rd, interleaved)
        # the cache: the caller's shared buffer, or a new one holding the past
        pk_buf, pv_buf = bound_output(present_k_name), bound_output(present_v_name)
        shared = (past_key is not None and P == Lp and _same(pk_buf, past_key) and _same(pv_buf, past_value))
        if shared:
            ck, cv = past_key, past_value
        else:
            ck = xp.zeros((B, Hkv, Lp, D), query.dtype)
            cv = xp.zeros((B, Hkv, Lp, D), query.dtype)
        uniform = bool((past_b == past_b[0]).all())
        if uniform:
            p0 = int(past_b[0])
            if not shared and p0:
                ck[:, :, :p0] = past_key[:, :, :p0]
                cv[:, :, :p0] = past_value[:, :, :p0]
            ck[:, :, p0:p0 + S] = kh[:, :, :Lp - p0]
            cv[:, :, p0:p0 + S] = vh[:, :, :Lp - p0]
        else:
            for b in range(B):
                p0 = int(past_b[b])
                if not shared and p0:
                    ck[b, :, :p0] = past_key[b, :, :p0]
                    cv[b, :, :p0] = past_value[b, :, :p0]
                ck[b, :, p0:p0 + S] = kh[b, :, :Lp - p0]
                cv[b, :, p0:p0 + S] = vh[b, :, :Lp - p0]
        # attention over the keys 0 .. max(total_b) - 1
        Lk = int(total_b.max())
        if first_prompt:
            Lk = max(Lk, S)
        Lk = min(Lk, Lp)
        scale = scale_attr or 1.0 / np.sqrt(D)
        if (jit is not None and S == 1 and uniform and Lk == int(total_b[0]) and query.dtype == _F32
                and ck.flags.c_contiguous and cv.flags.c_contiguous):
            # decoding: one compiled pass per query head over its key head's cache
            out = np.empty((B, 1, Hq * D), _F32)
            jit.gqa_decode(np.ascontiguousarray(qh).reshape(B, Hq, D), ck, cv, Lk,
                           max(0, Lk - window) if window > 0 else 0, np.float32(scale), np.float32(softcap),
                           out.reshape(B, Hq, D))
            return out, ck, cv
        if jit is not None and query.dtype == _F32 and ck.flags.c_contiguous and cv.flags.c_contiguous:
            # prompts (and unequal lengths): one compiled pass per query and head over the keys it sees,
            # instead of NumPy's passes over a masked (S, Lk) score matrix per head
            q4 = np.ascontiguousarray(qh.transpose(0, 3, 1, 2, 4)).reshape(B, S, Hq, D)
            out = np.empty((B, S, Hq * D), _F32)
            jit.gqa_prefill(q4, ck, cv, np.ascontiguousarray(past_b, np.int64),
                            np.ascontiguousarray(total_b, np.int64), window if window > 0 else 0,
                            np.float32(scale), np.float32(softcap), out.reshape(B, S, Hq, D))
            return out, ck, cv
        kk = ck[:, :, None, :Lk]                                         # (B, Hkv, 1, Lk, D)
        s = xp.matmul(qh, kk.swapaxes(-1, -2))                           # (B, Hkv, G, S, Lk)
        s *= np.float32(scale)
        if softcap > 0.0:
            s /= np.float32(softcap)
            xp.tanh(s, out=s)
            s *= np.float32(softcap)
        # causal (and window) frontier per batch entry: query row i sits at past_b + i
        if S > 1 or not uniform or window > 0 or Lk != int(total_b.min()):
            qpos = past_b[:, None] + xp.arange(S)[None]                  # (B, S)
            j = xp.arange(Lk)
            allowed = j[None, None, :] <= qpos[:, :, None]               # (B, S, Lk)
            allowed &= j[None, None, :] < total_b[:, None, None]
            if window > 0:       # the window holds local_window_size keys, the query's own included
                allowed &= j[None, None, :] > (qpos - window)[:, :, None]
            s = xp.where(allowed[:, None, None], s, np.float32(-np.inf))
        m = s.max(axis=-1, keepdims=True)
        xp.maximum(m, np.float32(-3e38), out=m)                         # a row with no key stays finite
        s -= m
        xp.exp(s, out=s)
        den = s.sum(axis=-1, keepdims=True)
        s /= xp.maximum(den, np.float32(1e-30))
        o = xp.matmul(s, cv[:, :, None, :Lk])                            # (B, Hkv, G, S, D)
        out = xp.empty((B, S, Hq * D), query.dtype)
        out.reshape(B, S, Hkv, G, D)[...] = o.transpose(0, 3, 1, 2, 4)
        return out, ck, cv

    return run


def _same(buf, arr) -> bool:
    """True when ``buf`` is ``arr``'s very memory (same start, shape, dtype and strides)."""
    if buf is None:
        return False
    if buf is arr:
        return True
    return (isinstance(buf, np.ndarray) and isinstance(arr, np.ndarray) and buf.shape == arr.shape
            and buf.dtype == arr.dtype and buf.strides == arr.strides
            and buf.__array_interface__["data"][0] == arr.__array_interface__["data"][0])


# -- MatMulNBits ---------------------------------------------------------------------------------------
_ROWS_KMAJOR = 2         # up to this many rows of A, the decoding loop (AVX-512: matmul_nbits_gemv, else _kmajor)
_ROWS_FUSED = 8          # up to this many, the row-by-row one (4 rows: equal; 8: 1.4x faster); above, BLAS on tiles
#                          (both only without AVX-512: there the tile kernel takes every count past _ROWS_KMAJOR,
#                          faster from 3 rows on: 512 x 1376 by 3 rows 0.18 -> 0.14 ms, by 8 0.28 -> 0.17)
_TILE_BYTES = 1 << 20    # a dequantized tile of weight rows for BLAS: 1 MB (256 KB tiles: llama_kv prefill +12%)
_TILE_COLS = 64          # output columns per tile of the compiled many-row kernel (_jit_llm.matmul_nbits_tiles)
_wide: list[bool] = []   # the compiled module was built with 512-bit registers (asked once)


def _wide_registers(jit) -> bool:
    """True where ``_jit_llm``'s 16-lane kernels are the fast ones (built for AVX-512)."""
    if not _wide:
        out = np.zeros(1, np.uint8)
        jit.wide_registers(out)
        _wide.append(bool(out[0]))
    return _wide[0]


@array_kernel("MatMulNBits", domain=MS, since=1, types=(np.float32,))
def matmul_nbits(info):
    """Y = A @ dequant(B)ᵀ (+ bias) with B block-quantized along K: (N, K/block, block*bits/8) uint8, per
    block a scale and a zero point (packed uint8, or float; default 2^(bits-1)).

    The weights must be constants (initializers): they are prepared once here — zero points unpacked to
    floats — and stay packed. 4-bit float32 runs compiled over a copy of the packed weights made here (as
    large as B). On AVX-512 CPUs the copy is cut in tiles of 64 output columns, each contiguous: for one
    or two rows of A (decoding) each tile's codes are multiplied in registers and scaled once per block;
    for more, each tile is dequantized into a K x 64 scratch (L2-sized, reused) and multiplied by a
    kernel holding 6 rows x 64 columns in registers; column tiles are split over the session's threads.
    Without AVX-512 the copy is K-major, the codes of each k meeting a long contiguous run of output
    columns, for one or two rows; for up to 8 rows each block is dequantized inside the GEMM loop and
    used by every row; for more rows a 1 MB tile of weight rows at a time is dequantized and
    multiplied by BLAS. Other bit widths (2, 8), K not a multiple of the block, and the NumPy fallback
    dequantize tiles with NumPy. ``accuracy_level`` asks for at least a given precision of A's
    arithmetic; float32 throughout meets every level, so it changes nothing here.
    """
    xp = info.xp
    a = info.attrs
    K, N = int(a["K"]), int(a["N"])
    bits = int(a.get("bits", 4))
    bs = int(a["block_size"])
    if bits not in (2, 4, 8):
        raise NotImplementedError(f"MatMulNBits: bits={bits} is not supported (2, 4 or 8)")
    if bs < 16 or bs & (bs - 1):
        raise ValueError(f"MatMulNBits: block_size must be a power of 2 and >= 16, got {bs}")
    if int(a.get("weight_prepacked", 0) or 0):
        raise NotImplementedError("MatMulNBits: weight_prepacked (a CUDA layout) is not supported by the CPU provider")
    if info.has_input(4):
        raise NotImplementedError("MatMulNBits: the g_idx input (deprecated) is not supported by the CPU provider")
    consts = tuple(info.const_inputs) + (None,) * 6
    b_packed, scales, zps = consts[1], consts[2], consts[3]
    if b_packed is None or scales is None or (info.has_input(3) and zps is None):
        raise NotImplementedError("MatMulNBits: B, scales and zero_points must be initializers for the CPU provider")
    nb = (K + bs - 1) // bs
    blob = bs * bits // 8
    if b_packed.dtype != np.uint8 or b_packed.size != N * nb * blob:
        raise ValueError(f"MatMulNBits: B must be uint8 of shape ({N}, {nb}, {blob}), got {b_packed.dtype} "
                         f"{b_packed.shape}")
    if scales.size != N * nb:
        raise ValueError(f"MatMulNBits: scales must have {N} x {nb} elements, got shape {scales.shape}")
    b3 = np.ascontiguousarray(b_packed).reshape(N, nb, blob)
    sc = np.ascontiguousarray(scales.reshape(N, nb), dtype=np.float32)
    levels = 1 << bits
    if zps is None:
        zp = np.full((N, nb), float(levels // 2), np.float32)
    elif zps.dtype == np.uint8:
        per = 8 // bits
        cols = (nb * bits + 7) // 8
        if zps.size != N * cols:
            raise ValueError(f"MatMulNBits: packed zero_points must have {N} x {cols} elements, got {zps.shape}")
        z = zps.reshape(N, cols)
        parts = [(z >> (bits * i)) & (levels - 1) for i in range(per)]
        zp = np.stack(parts, axis=-1).reshape(N, cols * per)[:, :nb].astype(np.float32)
    else:
        if zps.size != N * nb:
            raise ValueError(f"MatMulNBits: zero_points must have {N} x {nb} elements, got {zps.shape}")
        zp = np.ascontiguousarray(zps.reshape(N, nb), dtype=np.float32)
    jit = arrays(xp).compiled("llm") if bits == 4 else None
    kmajor = tiled = None
    if jit is not None and K == nb * bs:
        n2 = (N + 1) // 2
        n_tiles = -(-N // _TILE_COLS)
        wide = _wide_registers(jit)
        # the weights again (as large as the packed B), columns 2c and 2c+1 in one byte: for AVX-512 in
        # tiles of 64 output columns (_jit_llm.matmul_nbits_tiles / _gemv), else K-major (K, ceil(N/2))
        # for the loop whose long contiguous inner loop runs over N (matmul_nbits_kmajor)
        cols = n_tiles * (_TILE_COLS // 2) if wide else n2
        codes = np.zeros((2 * cols, K), np.uint8)
        codes[:N] = np.stack([b3 & np.uint8(15), b3 >> np.uint8(4)], axis=-1).reshape(N, K)
        packed = codes[0::2] | (codes[1::2] << np.uint8(4))                # (cols, K)
        del codes
        s_pad = np.zeros((2 * cols, nb), np.float32)
        z_pad = np.zeros((2 * cols, nb), np.float32)
        s_pad[:N], z_pad[:N] = sc, zp * sc
        parts = (s_pad[0::2], s_pad[1::2], z_pad[0::2], z_pad[1::2])      # (cols, nb) each
        if wide:
            # bt (tiles, K, 32): a tile's codes contiguous (one stream, not K rows 4 KB apart);
            # st (tiles, nb, 4, 32): per block its 32 even / odd scales and zero point * scale
            tiled = (np.ascontiguousarray(packed.reshape(n_tiles, 32, K).transpose(0, 2, 1)),
                     np.ascontiguousarray(np.stack([p.reshape(n_tiles, 32, nb).transpose(0, 2, 1) for p in parts],
                                                   axis=2)))
        else:
            kmajor = (np.ascontiguousarray(packed.T),) + tuple(np.ascontiguousarray(p.T) for p in parts)
        del packed
    tile_rows = max(1, min(N, _TILE_BYTES // (4 * nb * bs)))
    per_byte = 8 // bits
    shifts = (np.arange(per_byte, dtype=np.uint8) * bits)

    def dequant_numpy(n0, n1):
        """Rows n0..n1 of the weights as float32 (rows, K) with NumPy."""
        codes = (b3[n0:n1, :, :, None] >> shifts) & np.uint8(levels - 1)         # (rows, nb, blob, per)
        w = (codes.reshape(n1 - n0, nb, bs).astype(np.float32) - zp[n0:n1, :, None]) * sc[n0:n1, :, None]
        return w.reshape(n1 - n0, nb * bs)[:, :K]

    def run(A, B=None, scales_=None, zero_points=None, g_idx=None, bias=None):
        if A.shape[-1] != K:
            raise ValueError(f"MatMulNBits: A's last dimension is {A.shape[-1]}, expected K={K}")
        lead = A.shape[:-1]
        M = int(np.prod(lead, dtype=np.int64))
        A2 = np.ascontiguousarray(A.reshape(M, K), dtype=np.float32)
        if tiled is not None and M:
            # one or two rows: the codes scaled in registers; more: tiles dequantized for a blocked GEMM.
            # Ranges of column tiles over the provider's pool (intra_op_num_threads); one range on the
            # calling thread where the product is small or the session has one thread
            y = np.empty((M, N), np.float32)
            fn = jit.matmul_nbits_gemv if M <= _ROWS_KMAJOR else jit.matmul_nbits_tiles
            parallel_ranges(lambda t0, t1: fn(A2, *tiled, t0, t1, y), n_tiles, M * N * K)
            if bias is not None:
                y += bias
            return (y.reshape(*lead, N),)
        if kmajor is not None and 0 < M <= _ROWS_KMAJOR:
            yk = np.empty((M, 2 * kmajor[0].shape[1]), np.float32)
            jit.matmul_nbits_kmajor(A2, *kmajor, yk)
            y = yk[:, :N] if yk.shape[1] != N else yk
            if bias is not None:
                y = y + bias
            return (y.reshape(*lead, N),)
        y = np.empty((M, N), np.float32)
        if jit is not None and K == nb * bs and 0 < M <= _ROWS_FUSED:
            jit.matmul_nbits_rows(A2, b3, sc, zp, y)
        elif jit is not None and K == nb * bs and M:
            # tiles of [even k | odd k] rows (the compiled dequantization's layout): A's columns alike
            Ap = np.concatenate([A2[:, 0::2], A2[:, 1::2]], axis=1)
            tile = np.empty((tile_rows, K), np.float32)
            for n0 in range(0, N, tile_rows):
                n1 = min(N, n0 + tile_rows)
                w = tile[:n1 - n0]
                jit.dequant_nbits(b3, sc, zp, n0, w)
                y[:, n0:n1] = Ap @ w.T
        elif M:
            for n0 in range(0, N, tile_rows):
                n1 = min(N, n0 + tile_rows)
                y[:, n0:n1] = A2 @ dequant_numpy(n0, n1).T
        if bias is not None:
            y += bias
        return (y.reshape(*lead, N),)

    return run
