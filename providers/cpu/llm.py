"""Kernels for LLM building blocks: the KV-cache update (TensorScatter) and the stateful causal
depthwise 1-D convolution of Mamba-style models (CausalConvWithState)."""
from __future__ import annotations

import numpy as np

from engineroom.providers.cpu.registry import array_kernel


@array_kernel("TensorScatter", since=24)
def tensor_scatter(info):
    axis = int(info.attrs.get("axis", -2))
    circular = info.attrs.get("mode", "linear") == "circular"
    xp = info.xp

    def run(past, update, write_indices=None):
        ax = axis % past.ndim
        out = past.copy()
        max_len, seq_len = past.shape[ax], update.shape[ax]
        batch = past.shape[0]
        starts = xp.zeros(batch, dtype=np.int64) if write_indices is None else write_indices.astype(np.int64)
        pos = starts[:, None] + xp.arange(seq_len)[None, :]              # (batch, seq_len)
        if circular:
            pos = pos % max_len
        # move the sequence axis next to the batch axis so one fancy index writes every sample
        o = xp.moveaxis(out, ax, 1)
        u = xp.moveaxis(update, ax, 1)
        o[xp.arange(batch)[:, None], pos] = u
        return (out,)

    return run


@array_kernel("CausalConvWithState", since=27)
def causal_conv_with_state(info):
    act = info.attrs.get("activation", "none")
    if act not in ("none", "silu", "swish"):
        raise ValueError(f"CausalConvWithState: unknown activation '{act}'")
    xp = info.xp

    def run(x, w, bias=None, past=None):
        b, c, n = x.shape
        k = w.shape[-1]
        if past is None:
            past = xp.zeros((b, c, k - 1), dtype=x.dtype)
        full = xp.concatenate([past, x], axis=2)                        # (b, c, k-1+n)
        acc = xp.zeros((b, c, n), dtype=np.float32 if x.dtype == np.float16 else x.dtype)
        wk = w.reshape(c, k).astype(acc.dtype)
        for t in range(k):  # k is the (small) kernel width: one vectorized multiply-add per tap
            acc += full[:, :, t:t + n] * wk[None, :, t, None]
        if bias is not None:
            acc += bias.astype(acc.dtype)[None, :, None]
        if act != "none":
            acc = acc / (1 + xp.exp(-acc))
        present = full[:, :, full.shape[2] - (k - 1):] if k > 1 else xp.zeros((b, c, 0), dtype=x.dtype)
        return acc.astype(x.dtype), xp.ascontiguousarray(present)

    return run
