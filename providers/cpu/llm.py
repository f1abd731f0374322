"""Kernels for LLM building blocks: the KV-cache update (TensorScatter), the stateful causal
depthwise 1-D convolution of Mamba-style models (CausalConvWithState), and the growing cache behind
Concat when a decoder's caller feeds its output back (``GrowingConcat``)."""
from __future__ import annotations

import threading
import weakref

import numpy as np

from engineroom.providers.cpu.registry import array_kernel


class GrowingConcat:
    """Concat(past, new) of host arrays along one axis, for a Concat whose output comes back as its first
    input on a later run: a key/value cache in Hugging Face's layout (``past_key_values.*`` ->
    ``present.*``), fed back step after step. Where that happens, the output becomes a view of a buffer
    with room along the axis, and each later step writes only the new positions into it, instead of
    copying the whole past every step (what a plain Concat, and onnxruntime, do).

    Each buffer is tracked with how far it has been handed out (``claimed``): new positions are only
    written past that, so an array returned earlier never changes. A past that is not the buffer's latest
    (the same past fed twice, as beam search does; a cache cut back) takes the copying path into a new
    buffer. The outputs are strided views (as NumPy slices are), not C-contiguous arrays.
    """

    MIN_ROOM = 16       # positions of room at least, when a buffer is (re)allocated; else half its length

    def __init__(self) -> None:
        self._lock = threading.RLock()       # a weakref callback may run while it is held
        self._bufs: dict[int, list] = {}    # id(buffer) -> [weakref to it, positions claimed]

    def __call__(self, past: np.ndarray, new: np.ndarray, a: int) -> np.ndarray:
        out = self._append(past, new, a)
        if out is None:
            out = np.concatenate((past, new), axis=a)
            self._track(out, out.shape[a])          # no room yet: grows when it comes back
        return out

    def _append(self, past, new, a):
        base = past if past.base is None else past.base
        ent = self._bufs.get(id(base))
        if ent is None or ent[0]() is not base or not isinstance(base, np.ndarray) or base.dtype != past.dtype \
                or new.dtype != past.dtype or base.strides != past.strides or new.ndim != past.ndim \
                or base.ctypes.data != past.ctypes.data:
            return None
        shape, cap = past.shape, base.shape[a]
        T, n = shape[a], new.shape[a]
        if any(base.shape[i] != shape[i] or new.shape[i] != shape[i] for i in range(past.ndim) if i != a):
            return None
        head = (slice(None),) * a
        with self._lock:
            latest = ent[1] == T
            fits = latest and T + n <= cap
            if fits:
                ent[1] = T + n                      # claimed before writing: a second caller copies
        if fits:
            base[head + (slice(T, T + n),)] = new
            return base[head + (slice(0, T + n),)]
        if not latest:
            return None
        total = T + n
        grown = list(shape)
        grown[a] = total + max(total // 2, self.MIN_ROOM)
        buf = np.empty(grown, past.dtype)
        buf[head + (slice(0, T),)] = past
        buf[head + (slice(T, total),)] = new
        self._track(buf, total)
        return buf[head + (slice(0, total),)]

    def _track(self, buf: np.ndarray, claimed: int) -> None:
        key = id(buf)

        def forget(ref, key=key):
            with self._lock:
                if self._bufs.get(key, (None,))[0] is ref:
                    del self._bufs[key]

        with self._lock:
            self._bufs[key] = [weakref.ref(buf, forget), claimed]


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
