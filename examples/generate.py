"""Text generation with a KV cache, token by token: greedy decoding with one of the decoders
``engineroom.models.decoders`` builds (random weights, so the "text" is token ids), the cache kept in
place between steps with IOBinding.

usage: python examples/generate.py [gpt2_kv|llama_kv] [--batch 1] [--prompt 64] [--new 128]

The loop, written out (``engineroom.models.generate.GreedyDecoder`` is the same, for any engine):
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import engineroom as ort  # same names as onnxruntime
from engineroom.models.decoders import ensure


def generate(s: ort.InferenceSession, prompt: np.ndarray, new_tokens: int) -> np.ndarray:
    past = [i for i in s.get_inputs() if i.name.startswith("past_key_values.")]
    genai = "total_sequence_length" in s.get_inputs()[1].shape     # onnxruntime-genai's layout (GQA)
    B, S = prompt.shape
    heads, head_size = past[0].shape[1], past[0].shape[3]
    if genai:
        # one buffer per cache tensor, as long as the whole generation, bound as past AND present:
        # GroupQueryAttention appends each new token's keys and values into it, nothing is copied
        buffers = [np.zeros((B, heads, S + new_tokens, head_size), np.float32) for _ in past]
        cache = [ort.OrtValue.ortvalue_from_numpy(b) for b in buffers]
    else:
        # Hugging Face's layout: the graph returns a one-token-longer cache, fed back as OrtValues (the
        # Concat that grows it appends in place to the cache it returned the step before)
        cache = [ort.OrtValue.ortvalue_from_numpy(np.zeros((B, heads, 0, head_size), np.float32)) for _ in past]
    ids, pos, out = prompt, 0, []
    for _ in range(new_tokens):
        n = ids.shape[1]
        io = s.io_binding()
        io.bind_cpu_input("input_ids", ids)
        io.bind_cpu_input("attention_mask", np.ones((B, pos + n), np.int64))
        io.bind_cpu_input("position_ids", np.tile(np.arange(pos, pos + n, dtype=np.int64), (B, 1)))
        for p, v in zip(past, cache):
            io.bind_ortvalue_input(p.name, v)
        io.bind_output("logits", "cpu")
        for p, v in zip(past, cache):
            present = p.name.replace("past_key_values.", "present.")
            if genai:
                io.bind_ortvalue_output(present, v)
            else:
                io.bind_output(present, "cpu")
        s.run_with_iobinding(io)
        results = io.get_outputs()
        if not genai:
            cache = results[1:]
        ids = results[0].numpy()[:, -1].argmax(-1)[:, None]
        out.append(ids[:, 0])
        pos += n
    return np.stack(out, axis=1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", nargs="?", default="llama_kv", choices=["gpt2_kv", "llama_kv"])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--new", type=int, default=128)
    a = ap.parse_args()
    s = ort.InferenceSession(ensure()[a.model], providers=["CPUExecutionProvider"])
    prompt = np.random.default_rng(0).integers(0, 8192, (a.batch, a.prompt))
    t = time.perf_counter()
    ids = generate(s, prompt, a.new)
    dt = time.perf_counter() - t
    print(f"{a.model}: {ids.shape[1]} new tokens for {a.batch} prompt(s) in {dt:.2f} s "
          f"({a.batch * a.new / dt:.0f} tokens/s)")
    for row in ids:
        print(" ".join(map(str, row[:24])), "...")


if __name__ == "__main__":
    main()
