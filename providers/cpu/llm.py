"""Kernels for LLM building blocks: the KV-cache update (TensorScatter), the stateful causal
depthwise 1-D convolution of Mamba-style models (CausalConvWithState), and the growing cache behind
Concat when a decoder's caller feeds its output back (``GrowingConcat``)."""
from __future__ import annotations

import weakref

import numpy as np

from engineroom.providers.cpu.registry import array_kernel


class GrowingConcat:
    """Concat(past, new) of host arrays along one axis, for a Concat whose output comes back as its first
    input on a later run: a key/value cache in Hugging Face's layout (``past_key_values.*`` ->
    ``present.*``), fed back step after step. Where that happens, the output becomes a view of a buffer
    with room along the axis, and each later step writes only the new positions into it, instead of
    copying the whole past every step (what a plain Concat, and onnxruntime, do).

    Only the latest output of each buffer is tracked (by identity, weakly): that array, fed back, is the
    one that may grow, and it stops being the latest when it does (one atomic ``dict.pop``, so two
    threads feeding it at once do not both append). New positions go only past it, where nothing handed
    out reaches, so an array returned earlier never changes; any other past (one fed twice, as beam
    search does; an older one; a copy) takes the copying path into a new buffer. The outputs are strided
    views (as NumPy slices are), not C-contiguous arrays.
    """

    MIN_ROOM = 16       # positions of room at least, when a buffer is (re)allocated; else half its length

    def __init__(self, axis: int) -> None:
        self.axis = axis
        self._head = (slice(None),) * axis
        self._latest: dict[int, tuple] = {}     # id(latest output) -> (weakref to it, its buffer)

    def __call__(self, past: np.ndarray, new: np.ndarray) -> np.ndarray:
        a, head = self.axis, self._head
        ent = self._latest.pop(id(past), None)
        if ent is not None and ent[0]() is past and new.dtype == past.dtype and new.ndim == past.ndim \
                and new.shape[:a] == past.shape[:a] and new.shape[a + 1:] == past.shape[a + 1:]:
            buf = ent[1]
            T, n = past.shape[a], new.shape[a]
            if T + n <= buf.shape[a]:
                buf[head + (slice(T, T + n),)] = new
                return self._track(buf[head + (slice(0, T + n),)], buf)
            total = T + n
            grown = list(past.shape)
            grown[a] = total + max(total // 2, self.MIN_ROOM)
            buf = np.empty(grown, past.dtype)
            buf[head + (slice(0, T),)] = past
            buf[head + (slice(T, total),)] = new
            return self._track(buf[head + (slice(0, total),)], buf)
        out = np.concatenate((past, new), axis=a)
        return self._track(out, out)        # no room yet: it grows if it comes back

    def _track(self, out: np.ndarray, buf: np.ndarray) -> np.ndarray:
        latest, key = self._latest, id(out)

        def forget(ref, key=key):
            # runs as ``out`` dies, before its id can be reused: only its own entry goes
            if latest.get(key, (None,))[0] is ref:
                latest.pop(key, None)

        latest[key] = (weakref.ref(out, forget), buf)
        return out


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
