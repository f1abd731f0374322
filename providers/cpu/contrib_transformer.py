"""Transformer and matrix-product contrib kernels (com.microsoft) that onnxruntime's optimizer and its
transformer tools write into saved models: FusedMatMul (and its older name TransposeMatMul), FusedGemm,
Gelu, EmbedLayerNormalization, Attention, plus LayerNormalization at the opsets before 17, where
onnxruntime registers it as a contrib op of the default domain.

BiasGelu, FastGelu, SkipLayerNormalization and MultiHeadAttention live in ``fused_transformer``.
"""
from __future__ import annotations

import numpy as np

from engineroom.providers.cpu._contrib import const, delegate, host_kernel
from engineroom.providers.cpu.array_module import arrays
from engineroom.providers.cpu.norm import _normalize
from engineroom.providers.cpu.registry import array_kernel, registry
from engineroom.providers.cpu.softmax import softmax_array

MS = "com.microsoft"
_FLOATS = (np.float32, np.float64, np.float16)


# ---------------------------------------------------------------------------------------------
# matrix products


def _batch_first_to_rows(x):
    """transBatch: the first axis moves behind the batch axes, before the row axis ([d0, d1.., dk, n] ->
    [d1.., d0, dk, n] viewed as batches of (d0·?) rows), as onnxruntime's FusedMatMul reads it."""
    n = x.ndim
    return np.transpose(x, tuple(range(1, n - 1)) + (0, n - 1))


def _fused_matmul(info):
    a = info.attrs
    alpha = float(a.get("alpha", 1.0))
    trans_a, trans_b = int(a.get("transA", 0)), int(a.get("transB", 0))
    batch_a, batch_b = int(a.get("transBatchA", 0)), int(a.get("transBatchB", 0))
    cb = const(info, 1)
    pre_b = None
    if cb is not None and not batch_b:
        b = np.asarray(cb)
        b = np.swapaxes(b, -1, -2) if trans_b and b.ndim >= 2 else b
        if alpha != 1.0 and b.dtype.kind == "f":
            b = b * b.dtype.type(alpha)       # alpha folded into the weight once
        pre_b = np.ascontiguousarray(b)

    def operand(x, trans, batch):
        if x.ndim < 2:
            return x
        if batch and x.ndim > 2:
            x = _batch_first_to_rows(x)
        return np.swapaxes(x, -1, -2) if trans else x

    def run(A, B):
        Am = operand(A, trans_a, batch_a)
        if pre_b is not None and B.dtype == pre_b.dtype:
            return (arrays(np).matmul(Am, pre_b),)
        y = arrays(np).matmul(Am, operand(B, trans_b, batch_b))
        if alpha != 1.0:
            y = y * y.dtype.type(alpha)
        return (y,)

    return run


@host_kernel("FusedMatMul", MS, since=1, types=_FLOATS)
def fused_matmul(info):
    """alpha · op(A) @ op(B): op transposes the last two axes (transA/transB) and, with transBatchA/B,
    first moves the leading axis behind the batch axes."""
    return _fused_matmul(info)


@host_kernel("TransposeMatMul", MS, since=1, types=_FLOATS)
def transpose_matmul(info):
    return _fused_matmul(info)


def _activation(name: str, alpha: float, beta: float, gamma: float):
    """The elementwise activations onnxruntime's FusedGemm accepts, with its attribute defaults."""
    def where_neg(f):
        return lambda y: np.where(y >= 0, y, f(y))
    acts = {
        "": None, "Identity": None,
        "Relu": lambda y: np.maximum(y, 0, out=y),
        "Tanh": lambda y: np.tanh(y, out=y),
        "Sigmoid": lambda y: 1 / (1 + np.exp(-y)),
        "LeakyRelu": where_neg(lambda y: y * y.dtype.type(alpha)),
        "Elu": where_neg(lambda y: alpha * (np.exp(np.minimum(y, 0)) - 1)),
        "Selu": lambda y: gamma * np.where(y > 0, y, alpha * (np.exp(np.minimum(y, 0)) - 1)),
        "HardSigmoid": lambda y: np.clip(alpha * y + beta, 0, 1),
        "ThresholdedRelu": lambda y: np.where(y > alpha, y, 0),
        "Softplus": lambda y: np.logaddexp(y, 0),
        "ScaledTanh": lambda y: alpha * np.tanh(beta * y),
        "ParametricSoftplus": lambda y: alpha * np.logaddexp(beta * y, 0),
    }
    if name not in acts:
        raise NotImplementedError(f"FusedGemm: activation '{name}' is not supported")
    return acts[name]


_ACT_DEFAULTS = {"LeakyRelu": (0.01, 0.0, 0.0), "Elu": (1.0, 0.0, 0.0),
                 "Selu": (1.67326319217681884765625, 0.0, 1.05070102214813232421875),
                 "HardSigmoid": (0.2, 0.5, 0.0), "ThresholdedRelu": (1.0, 0.0, 0.0),
                 "ScaledTanh": (1.0, 1.0, 0.0), "ParametricSoftplus": (1.0, 1.0, 0.0)}


@host_kernel("FusedGemm", MS, since=1, types=_FLOATS)
def fused_gemm(info):
    """Gemm followed by ``activation`` (with activation_alpha / _beta / _gamma)."""
    a = info.attrs
    gemm = delegate(info, "Gemm", 13, {k: v for k, v in a.items() if k in ("alpha", "beta", "transA", "transB")})
    name = a.get("activation", "")
    da, db, dg = _ACT_DEFAULTS.get(name, (0.0, 0.0, 0.0))
    act = _activation(name, float(a.get("activation_alpha", da)), float(a.get("activation_beta", db)),
                      float(a.get("activation_gamma", dg)))
    if act is None:
        return gemm

    def run(A, B, C=None):
        y = gemm(A, B, C)[0]
        return (act(y).astype(y.dtype, copy=False),)

    return run


# ---------------------------------------------------------------------------------------------
# activations and normalizations


@host_kernel("Gelu", MS, since=1, types=_FLOATS)
def gelu_ms(info):
    """The exact (erf) GELU, as the ONNX Gelu-20 computes it."""
    return delegate(info, "Gelu", 20, {"approximate": "none"})


@array_kernel("LayerNormalization", since=1, types=_FLOATS)
def layer_normalization_contrib(info):
    """LayerNormalization in a model of opset < 17: onnxruntime's contrib registration of the op later
    standardized as LayerNormalization-17 (same inputs, attributes and outputs)."""
    return registry.lookup("", "LayerNormalization", 17).factory(info.with_(opset=17))


@host_kernel("EmbedLayerNormalization", MS, since=1, types=(np.int32,))
def embed_layer_normalization(info):
    """LayerNorm(word[input_ids] + position[position_ids or 0..S-1] + segment[segment_ids]) * gamma + beta.
    Inputs: input_ids, segment_ids, word_embedding, position_embedding, segment_embedding, gamma, beta,
    mask, position_ids. Outputs: the normalized embeddings, mask_index (int32 count of mask's ones per
    row; zeros without a mask) and, when asked, the sum before normalization."""
    eps = float(info.attrs.get("epsilon", 1e-12))

    def run(ids, seg_ids, word, pos, seg, gamma, beta, mask=None, position_ids=None):
        B, S = ids.shape
        emb = word[ids]
        if position_ids is not None:
            emb = emb + pos[np.broadcast_to(position_ids, (B, S))]
        else:
            emb = emb + pos[:S][None]
        if seg_ids is not None and seg is not None:
            emb = emb + seg[seg_ids]
        y, _, _ = _normalize(np, emb.copy(), (2,), eps)
        y *= gamma
        y += beta
        mask_index = (mask.sum(axis=1, dtype=np.int64).astype(np.int32) if mask is not None
                      else np.zeros((B,), np.int32))
        return (y.astype(word.dtype, copy=False), mask_index, emb)

    return run


# ---------------------------------------------------------------------------------------------
# Attention (the fused form with the Q/K/V projection inside)


def _mask_bias(mask, B, S, T, past, dtype, filt):
    """The additive mask (B or 1, 1, S, T) from Attention's mask_index forms: (B, T) or (B, S, T) of 1/0,
    (B,) valid lengths (right padding), (2B,) end and start positions, (B, 1, M, M) a 4-D mask to crop."""
    m = np.asarray(mask)
    if m.ndim == 1:
        cols = np.arange(T)[None, :]
        if m.shape[0] == B:
            keep = cols < m.reshape(B, 1)
        elif m.shape[0] == 2 * B:
            keep = (cols < m[:B].reshape(B, 1)) & (cols >= m[B:].reshape(B, 1))
        else:
            raise ValueError(f"Attention: a 1-D mask_index must have {B} or {2 * B} entries, got {m.shape[0]}")
        keep = keep[:, None, None, :]
    elif m.ndim == 2:
        keep = (m != 0)[:, None, None, :]
    elif m.ndim == 3:
        keep = (m != 0)[:, None, :, :]
    elif m.ndim == 4:
        keep = (m[:, :, past:past + S, :T] != 0)
    else:
        raise ValueError(f"Attention: mask_index of rank {m.ndim} is not supported")
    return np.where(keep, dtype.type(0), dtype.type(filt))


def attention_options(info) -> dict:
    """Attention's / QAttention's attributes, as ``attend`` takes them."""
    a = info.attrs
    for name in ("do_rotary", "past_present_share_buffer"):
        if int(a.get(name, 0)):
            raise NotImplementedError(f"{info.op_type}: {name}=1 is not supported by the CPU provider")
    return {"heads": int(a["num_heads"]), "causal": bool(int(a.get("unidirectional", 0))),
            "filt": float(a.get("mask_filter_value", -10000.0)), "scale_attr": float(a.get("scale", 0.0) or 0.0),
            "sizes": [int(v) for v in (a.get("qkv_hidden_sizes") or [])],
            "want_present": len(info.output_names) > 1 and bool(info.output_names[1])}


def attend(qkv, mask, past, attention_bias, *, sizes, heads, causal, filt, scale_attr, want_present):
    """Attention's heads over the packed projection ``qkv`` (B, S, Hq+Hk+Hv): the outputs (y[, present])."""
    B, S, total = qkv.shape
    hq, hk, hv = sizes if sizes else (total // 3,) * 3
    if hq + hk + hv != total or hq != hk or hq % heads or hv % heads:
        raise ValueError(f"Attention: a projection of width {total} does not split into Q/K/V hidden sizes "
                         f"{hq, hk, hv} for num_heads={heads}")
    D, Dv = hq // heads, hv // heads
    q = qkv[..., :hq].reshape(B, S, heads, D).transpose(0, 2, 1, 3)
    k = qkv[..., hq:hq + hk].reshape(B, S, heads, D).transpose(0, 2, 1, 3)
    v = qkv[..., hq + hk:].reshape(B, S, heads, Dv).transpose(0, 2, 1, 3)
    P = 0
    if past is not None and past.size:
        P = past.shape[3]
        k = np.concatenate([past[0], k], axis=2)
        v = np.concatenate([past[1], v], axis=2)
    T = P + S
    dt = qkv.dtype
    scale = scale_attr or 1.0 / np.sqrt(D)
    s = np.matmul(q, np.swapaxes(k, -1, -2)) * dt.type(scale)          # (B, heads, S, T)
    if mask is not None:
        s = s + _mask_bias(mask, B, S, T, P, dt, filt)
    if causal:        # future keys get the lowest float (as onnxruntime), not mask_filter_value
        future = np.arange(T)[None, :] > (P + np.arange(S))[:, None]
        s = np.where(future, np.finfo(dt).min, s)
    if attention_bias is not None:
        s = s + attention_bias.astype(dt, copy=False)
    p = softmax_array(np, s, -1, None)
    y = np.matmul(p, v).transpose(0, 2, 1, 3).reshape(B, S, hv)
    if not want_present:
        return (y,)
    if hk != hv:
        raise NotImplementedError("Attention: the present output needs equal K and V hidden sizes")
    return (y, np.stack([k, v]))


@host_kernel("Attention", MS, since=1, types=(np.float32, np.float64), host_inputs=(6,))
def attention_ms(info):
    """Multi-head self-attention with the Q/K/V projection: input (B, S, in) @ weights (in, Hq+Hk+Hv)
    + bias, heads of ``num_heads``; optional mask_index, past (2, B, heads, P, D) with the present
    output, attention_bias (B|1, heads|1, S, P+S), ``unidirectional`` (causal) and ``scale``. As in
    onnxruntime, masked logits get ``mask_filter_value`` (default -10000) added and future keys of a
    causal attention are set to the lowest float."""
    opts = attention_options(info)
    cw = const(info, 1)
    w_pre = None if cw is None else np.ascontiguousarray(cw)

    def run(x, w, bias=None, mask=None, past=None, attention_bias=None, past_seq_len=None):
        W = w_pre if w_pre is not None and w_pre.dtype == x.dtype else w
        qkv = arrays(np).matmul(x, W)
        if bias is not None:
            qkv = qkv + bias
        return attend(qkv, mask, past, attention_bias, **opts)

    return run
