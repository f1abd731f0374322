"""Attention (opset 23/24/25: scaled dot-product attention with masks, causal and KV-cache inputs) and
RotaryEmbedding (opset 23). The com.microsoft fused forms are in ``fused_transformer`` and ``contrib_llm``."""
from __future__ import annotations

import numpy as np

from engineroom.providers.cpu.matmul import _blas_ok
from engineroom.providers.cpu.registry import array_kernel
from engineroom.providers.cpu.softmax import softmax_array, storage_rounder


def _onnx_float_dtype(code) -> np.dtype:
    from engineroom.plugin_sdk import np_dtype

    return np.dtype(np_dtype(int(code)))


def _to_heads(xp, x, heads):
    """(B, S, H*D) -> (B, H, S, D); 4-D input passes through."""
    if x.ndim == 4:
        return x
    B, S, HD = x.shape
    return x.reshape(B, S, heads, HD // heads).transpose(0, 2, 1, 3)


def _mm(xp, a, b, dt):
    """Matmul producing dtype ``dt``: BLAS for float32/float64, float32 accumulation rounded for narrow floats."""
    if _blas_ok(dt):
        return xp.matmul(a, b)
    return xp.matmul(a.astype(np.float32), b.astype(np.float32)).astype(dt)


@array_kernel("Attention", since=23)
def attention(info):
    """Scaled dot-product attention: MHA/GQA/MQA, 3-D or 4-D layout, KV cache, masks, causal/window, softcap.

    GQA is a reshape, not a repeat: queries are grouped as (B, kv_heads, group, S, D) so each key head
    broadcasts against its group. All masking is composed into one additive bias of shape
    (B|1, H|1, S, T) before one masked softmax.
    """
    xp = info.xp
    a = info.attrs
    is_causal = int(a.get("is_causal", 0))
    q_heads = int(a.get("q_num_heads", 0) or 0)
    kv_heads = int(a.get("kv_num_heads", 0) or 0)
    scale_attr = a.get("scale")
    softcap = float(a.get("softcap", 0.0) or 0.0)
    mode = int(a.get("qk_matmul_output_mode", 0))
    sp = a.get("softmax_precision")
    sm_dt = _onnx_float_dtype(sp) if sp else None
    left = int(a.get("left_window_size", -1))
    right = int(a.get("right_window_size", -1))
    want_qk = len(info.output_names) > 3 and info.output_names[3] != ""

    def run(Q, K, V, attn_mask=None, past_key=None, past_value=None, nonpad_kv_seqlen=None):
        # Every step is done in Q's type with NumPy's own promotion rules (the op's definition);
        # only the two matmuls leave it: BLAS for float32/float64, float32 accumulation otherwise.
        t1 = Q.dtype
        q3 = Q.ndim == 3
        q = _to_heads(xp, Q, q_heads)
        k = _to_heads(xp, K, kv_heads)
        v = _to_heads(xp, V, kv_heads)
        if past_key is not None:
            k = xp.concatenate([past_key, k], axis=2)
            v = xp.concatenate([past_value, v], axis=2)
        present_k, present_v = k, v
        B, Hq, S, D = q.shape
        Hkv, T = k.shape[1], k.shape[2]
        g = Hq // Hkv
        scale = float(scale_attr) if scale_attr is not None else 1.0 / np.sqrt(D)
        sq = t1.type(np.sqrt(scale))
        qs = q * sq
        ks = k * sq
        # (B, Hkv, g, S, D) @ (B, Hkv, 1, D, T) -> (B, Hq, S, T): GQA without repeating K
        scores = _mm(xp, qs.reshape(B, Hkv, g, S, D), ks[:, :, None].swapaxes(-1, -2), t1).reshape(B, Hq, S, T)
        qk_out = scores if (want_qk and mode == 0) else None
        if softcap > 0.0:
            scores = xp.tanh(scores / softcap) * softcap
        if want_qk and mode == 1:
            qk_out = scores
        bias = _attention_bias(xp, attn_mask, B, S, T, t1, is_causal, past_key, nonpad_kv_seqlen, left, right)
        if bias is not None:
            scores = scores + bias
        if want_qk and mode == 2:
            qk_out = scores
        st = np.dtype(sm_dt) if sm_dt is not None else scores.dtype
        rnd = storage_rounder(st)
        if rnd is not None:
            probs = softmax_array(xp, scores.astype(st).astype(np.float32), -1, rnd, zero_dead_rows=True)
        else:
            sc = scores.astype(st, copy=False)
            probs = softmax_array(xp, sc.copy() if sc is qk_out else sc, -1, None, zero_dead_rows=True)
        if bias is not None:
            # a query row with no attendable key (its whole bias is -inf) is zero, decided on the bias
            dead = xp.isneginf(xp.max(bias, axis=-1, keepdims=True))
            if bool(dead.any()):
                probs = xp.where(dead, xp.zeros((), probs.dtype), probs)
        probs = probs.astype(t1, copy=False)
        if want_qk and mode == 3:
            qk_out = probs
        Dv = v.shape[3]
        y = _mm(xp, probs.reshape(B, Hkv, g, S, T), v[:, :, None], t1).reshape(B, Hq, S, Dv)
        if q3:
            y = y.transpose(0, 2, 1, 3).reshape(B, S, Hq * Dv)
        outs = (y, present_k, present_v)
        if want_qk:
            outs += (qk_out.astype(t1, copy=False),)
        return outs

    return run


def _attention_bias(xp, attn_mask, B, S, T, cdt, is_causal, past_key, nonpad, left, right):
    """Additive bias (0 / -inf / float mask) of shape broadcastable to (B, H, S, T), or None."""
    cdt = np.dtype(cdt)
    neg, zero = cdt.type(-np.inf), cdt.type(0)
    bias = None
    if attn_mask is not None:
        m = attn_mask
        if m.shape[-1] < T:          # a short mask is padded with 'not allowed'
            pad_w = T - m.shape[-1]
            fill = False if m.dtype == np.bool_ else -np.inf
            m = xp.concatenate([m, xp.full(m.shape[:-1] + (pad_w,), fill, dtype=m.dtype)], axis=-1)
        if m.dtype == np.bool_:
            bias = xp.where(m, zero, neg)
        else:
            bias = m.astype(cdt)
        while bias.ndim < 4:
            bias = bias[None]
    # structural masks: causal frontier, padding of an external cache, sliding window
    need_offset = is_causal or left >= 0 or right >= 0
    allowed = None
    i = xp.arange(S).reshape(1, 1, S, 1)
    j = xp.arange(T).reshape(1, 1, 1, T)
    if nonpad is not None:
        npd = xp.asarray(nonpad).astype(np.int64).reshape(-1, 1, 1, 1)
        allowed = j < npd
        offset = npd - S
    elif past_key is not None:
        offset = past_key.shape[2]
    else:
        offset = 0
    if need_offset:
        p = i + offset
        conds = []
        if is_causal:
            conds.append(j <= p)
        if left >= 0:
            conds.append(j >= p - left)
        if right >= 0:
            conds.append(j <= p + right)
        for c in conds:
            allowed = c if allowed is None else (allowed & c)
    if allowed is not None:
        sb = xp.where(allowed, zero, neg)
        bias = sb if bias is None else bias + sb
    return bias


@array_kernel("RotaryEmbedding", since=23)
def rotary_embedding(info):
    """RoPE on (B, H, S, D) or (B, S, H*D) input: halves (or even/odd pairs) rotated by the cached angles.

    Computed in the input's own type (the definition's arithmetic); the output is written in place
    into one copy of the input so the unrotated tail costs nothing extra.
    """
    a = info.attrs
    interleaved = int(a.get("interleaved", 0))
    num_heads = int(a.get("num_heads", 0) or 0)
    rot_dim = int(a.get("rotary_embedding_dim", 0) or 0)

    def run(x, cos_cache, sin_cache, position_ids=None):
        if position_ids is not None:
            pid = position_ids.astype(np.int64)
            cos, sin = cos_cache[pid], sin_cache[pid]          # (B, S, rd/2)
        else:
            cos, sin = cos_cache, sin_cache
        if x.ndim == 4:
            xv = x                                             # (B, H, S, D)
            cos, sin = cos[:, None], sin[:, None]
        else:
            B, S, HD = x.shape
            xv = x.reshape(B, S, num_heads, HD // num_heads)   # (B, S, H, D)
            cos, sin = cos[:, :, None], sin[:, :, None]
        D = xv.shape[-1]
        rd = rot_dim or D
        half = rd // 2
        cos = cos.astype(x.dtype, copy=False)
        sin = sin.astype(x.dtype, copy=False)
        if interleaved:
            x1, x2 = xv[..., 0:rd:2], xv[..., 1:rd:2]
        else:
            x1, x2 = xv[..., :half], xv[..., half:rd]
        real = cos * x1 - sin * x2
        imag = sin * x1 + cos * x2
        y = xv.copy()
        if interleaved:
            y[..., 0:rd:2] = real
            y[..., 1:rd:2] = imag
        else:
            y[..., :half] = real
            y[..., half:rd] = imag
        return (y.reshape(x.shape),)

    return run
