"""Text generation with both KV-cache decoders of ``engineroom.models.decoders`` (GPT-2 with standard ops,
a Llama-style onnxruntime-genai model with GroupQueryAttention / RotaryEmbedding / MatMulNBits):
engineroom beside onnxruntime step by step, logits within 1e-4 (relative to the largest) at the prefill
and at every decode step, and the same greedy ids -- with IOBinding keeping the cache in place and with
plain runs. 16 new tokens here; ``bench/generate.py`` runs 128."""
from __future__ import annotations

import numpy as np
import pytest

import engineroom as er
from engineroom.models.decoders import ensure
from engineroom.models.generate import GreedyDecoder, uses_shared_cache

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is the oracle of these tests")
NEW_TOKENS = 16
PROMPT = 12


@pytest.fixture(scope="module")
def models():
    return ensure()


def _decoder(engine, path, iob):
    so = engine.SessionOptions()
    so.intra_op_num_threads = 1
    s = engine.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    return GreedyDecoder(s, engine, uses_shared_cache(path), use_iobinding=iob)


def _rel(got, ref):
    return float(np.max(np.abs(got - ref))) / float(np.max(np.abs(ref)))


@pytest.mark.parametrize("batch", [1, 3])
# genai's shared cache is bound through IOBinding; its plain runs: test_llama_plain_runs_and_prefill_logits
@pytest.mark.parametrize("name,iob", [("gpt2_kv", True), ("gpt2_kv", False), ("llama_kv", True)],
                         ids=["gpt2_kv-iobinding", "gpt2_kv-run", "llama_kv-iobinding"])
def test_generation_matches_onnxruntime(models, name, iob, batch):
    path = models[name]
    prompt = np.random.default_rng(batch).integers(0, 8192, (batch, PROMPT))
    ours, theirs = _decoder(er, path, iob), _decoder(ort, path, iob)
    ids_ours, ids_theirs = [], []
    for step, ((lo, io_), (lt, it)) in enumerate(zip(ours.steps(prompt, NEW_TOKENS), theirs.steps(prompt, NEW_TOKENS))):
        assert lo.shape == lt.shape == (batch, 8192)
        err = _rel(lo, lt)
        assert err <= 1e-4, f"{name} step {step}: logits differ from onnxruntime's by {err:.3g} of the largest"
        ids_ours.append(io_)
        ids_theirs.append(it)
    assert len(ids_ours) == NEW_TOKENS
    np.testing.assert_array_equal(np.stack(ids_ours, 1), np.stack(ids_theirs, 1))


def test_llama_plain_runs_and_prefill_logits(models):
    """The genai model without a shared buffer (past grows by copy, as onnxruntime does then): every
    output -- all prefill positions' logits and the present caches -- at each step."""
    path = models["llama_kv"]
    sessions = []
    for engine in (er, ort):
        so = engine.SessionOptions()
        so.intra_op_num_threads = 1
        sessions.append(engine.InferenceSession(path, so, providers=["CPUExecutionProvider"]))
    names = [o.name for o in sessions[1].get_outputs()]
    B, S = 2, PROMPT
    feed = {"input_ids": np.random.default_rng(5).integers(0, 8192, (B, S)),
            "attention_mask": np.ones((B, S), np.int64), "position_ids": np.tile(np.arange(S), (B, 1))}
    past_names = [i.name for i in sessions[1].get_inputs() if i.name.startswith("past")]
    for n in past_names:
        feed[n] = np.zeros((B, 2, 0, 64), np.float32)
    feeds = [feed, dict(feed)]
    for step in range(6):
        res = [dict(zip(names, s.run(None, f))) for s, f in zip(sessions, feeds)]
        for n in names:
            err = _rel(res[0][n], res[1][n])
            assert err <= 1e-4, f"step {step}: {n} differs from onnxruntime's by {err:.3g}"
        nxt = [r["logits"][:, -1].argmax(-1) for r in res]
        np.testing.assert_array_equal(nxt[0], nxt[1])
        T = S + step + 1
        for k in range(2):
            feeds[k] = {"input_ids": nxt[k][:, None], "attention_mask": np.ones((B, T), np.int64),
                        "position_ids": np.full((B, 1), T - 1, np.int64),
                        **{n: res[k][n.replace("past_key_values.", "present.")] for n in past_names}}


def test_shared_cache_is_written_in_place(models):
    """With past and present bound to one buffer, engineroom's outputs are those buffers (no copy)."""
    path = models["llama_kv"]
    dec = _decoder(er, path, True)
    prompt = np.random.default_rng(0).integers(0, 8192, (2, 5))
    steps = dec.steps(prompt, 3)
    next(steps)
    before = [b.copy() for b in dec._buffers]
    next(steps)
    for b, old in zip(dec._buffers, before):
        assert not np.array_equal(b[:, :, 5], old[:, :, 5])      # the new token's row was written ...
        np.testing.assert_array_equal(b[:, :, :5], old[:, :, :5])  # ... into the buffer holding the prompt's


def test_models_are_deterministic_and_small(models, tmp_path):
    import os

    from engineroom.models import decoders

    for name, path in models.items():
        assert os.path.getsize(path) <= 40e6, name
    decoders.main([str(tmp_path)])
    for name, path in models.items():
        assert (tmp_path / f"{name}.onnx").read_bytes() == open(path, "rb").read(), f"{name} differs between builds"
