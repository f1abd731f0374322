"""Greedy text generation with a KV-cache decoder, for any engine with onnxruntime's Python API
(``engineroom`` or ``onnxruntime`` itself): the loop the examples, the benchmark and the tests share.

Two cache layouts, told apart by the model's ops:

- Hugging Face's (``past_key_values.{i}.key`` -> ``present.{i}.key``, one token longer): with IOBinding
  each step's present values are bound, as the OrtValues they are, as the next step's past inputs, so the
  cache never passes through NumPy; the graph itself grows it (a Concat per layer; engineroom's Concat
  appends in place to the cache it returned the step before, onnxruntime's copies the past).
- onnxruntime-genai's (``GroupQueryAttention``): one buffer per cache tensor of the final length, bound
  both as ``past`` and as ``present`` (genai's past-present buffer sharing), which the attention kernel
  appends to in place; ``attention_mask`` grows by one column per step.

Without IOBinding every step is a plain ``run`` with NumPy arrays (the cache returned and fed back).
"""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np


def uses_shared_cache(path: str) -> bool:
    """True for a model whose attention is com.microsoft GroupQueryAttention (genai's shared KV buffers)."""
    import onnx

    m = onnx.load(path, load_external_data=False)
    return any(n.op_type == "GroupQueryAttention" for n in m.graph.node)


class GreedyDecoder:
    """Greedy decoding of a batch of equal-length prompts with one session of ``engine`` (a module with
    onnxruntime's API: ``InferenceSession``, ``OrtValue``)."""

    def __init__(self, session: Any, engine: Any, shared_cache: bool, use_iobinding: bool = True):
        self.s, self.engine, self.shared, self.iob = session, engine, shared_cache, use_iobinding
        ins = {i.name: i for i in session.get_inputs()}
        self.past_names = [n for n in ins if n.startswith("past_key_values.")]
        self.present_names = [n.replace("past_key_values.", "present.") for n in self.past_names]
        shape = ins[self.past_names[0]].shape
        self.kv_heads, self.head_size = int(shape[1]), int(shape[3])
        self.has_position_ids = "position_ids" in ins

    def steps(self, prompt: np.ndarray, new_tokens: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yields, for the prompt and then each new token, (logits of the last position (B, vocab), the
        chosen ids (B,)): ``new_tokens`` times in all."""
        B, S = prompt.shape
        max_len = S + new_tokens
        ids = prompt.astype(np.int64)
        past: list[Any]
        if self.shared:
            # genai's layout: the whole length from the start, bound as past and present alike
            self._buffers = [np.zeros((B, self.kv_heads, max_len, self.head_size), np.float32)
                             for _ in self.past_names]
            past = [self.engine.OrtValue.ortvalue_from_numpy(b) for b in self._buffers]
        else:
            past = [np.zeros((B, self.kv_heads, 0, self.head_size), np.float32) for _ in self.past_names]
            if self.iob:
                self._buffers = past          # onnxruntime's OrtValues borrow the arrays: kept alive
                past = [self.engine.OrtValue.ortvalue_from_numpy(p) for p in past]
        pos = 0
        for _ in range(new_tokens):
            n = ids.shape[1]
            feed = {"input_ids": ids, "attention_mask": np.ones((B, pos + n), np.int64)}
            if self.has_position_ids:
                feed["position_ids"] = np.broadcast_to(np.arange(pos, pos + n, dtype=np.int64), (B, n)).copy()
            logits, past = self._step(feed, past)
            last = logits[:, -1]
            nxt = last.argmax(-1)
            yield last, nxt
            pos += n
            ids = nxt[:, None].astype(np.int64)

    def _step(self, feed: dict, past: list) -> tuple[np.ndarray, list]:
        if not self.iob:
            if self.shared:
                raise ValueError("a shared cache needs IOBinding (past and present bound to one buffer)")
            outs = self.s.run(None, {**feed, **dict(zip(self.past_names, past))})
            names = [o.name for o in self.s.get_outputs()]
            res = dict(zip(names, outs))
            return res["logits"], [res[n] for n in self.present_names]
        io = self.s.io_binding()
        for k, v in feed.items():
            io.bind_cpu_input(k, v)
        for name, v in zip(self.past_names, past):
            io.bind_ortvalue_input(name, v)
        io.bind_output("logits", "cpu")
        if self.shared:
            for name, v in zip(self.present_names, past):
                io.bind_ortvalue_output(name, v)
        else:
            for name in self.present_names:
                io.bind_output(name, "cpu")
        self.s.run_with_iobinding(io)
        outs = io.get_outputs()
        return outs[0].numpy(), (past if self.shared else outs[1:])

    def generate(self, prompt: np.ndarray, new_tokens: int) -> np.ndarray:
        """The (B, new_tokens) greedy ids."""
        return np.stack([nxt for _, nxt in self.steps(prompt, new_tokens)], axis=1)
