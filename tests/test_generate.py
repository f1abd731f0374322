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


def _decoder(engine, path, iob, threads=1):
    so = engine.SessionOptions()
    so.intra_op_num_threads = threads
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


def test_llama_two_threads_matches_onnxruntime(models):
    """engineroom on two threads (MatMulNBits' column tiles split over the pool at the 64-token prompt and
    at the LM head) against onnxruntime on one: the same logits and ids."""
    path = models["llama_kv"]
    prompt = np.random.default_rng(7).integers(0, 8192, (2, 64))
    ours, theirs = _decoder(er, path, True, threads=2), _decoder(ort, path, True)
    for step, ((lo, io_), (lt, it)) in enumerate(zip(ours.steps(prompt, 6), theirs.steps(prompt, 6))):
        err = _rel(lo, lt)
        assert err <= 1e-4, f"step {step}: logits differ from onnxruntime's by {err:.3g} of the largest"
        np.testing.assert_array_equal(io_, it)


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


def _ops_after_level2(model, tmp_path):
    import onnx

    so = er.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    s = er.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    return s, onnx.load(so.optimized_model_filepath).graph.node


def test_gpt2_attention_fuses_over_the_cache(models, tmp_path):
    """The cache's Kᵀ (Transpose perm 0,1,3,2 into the scores' MatMul) becomes FusedMatMul transB=1 (no
    transposed copy of the whole cache on every step), then scores, scale, causal Where, padding Add,
    Softmax and the MatMul with V one ScaledDotProductAttention per layer."""
    _, nodes = _ops_after_level2(models["gpt2_kv"], tmp_path)
    ops = [n.op_type for n in nodes]
    assert ops.count("ScaledDotProductAttention") == 4, ops
    assert not {"FusedMatMul", "Softmax", "Where", "Div"} & set(ops), ops
    assert not [n for n in nodes if n.op_type == "Transpose" and list(n.attribute[0].ints) == [0, 1, 3, 2]]


@pytest.mark.parametrize("a_shape,b_shape,ta,tb", [((2, 3, 5, 8), (2, 3, 8, 7), 0, 1), ((5, 8), (8, 6), 1, 0),
                                                   ((2, 5, 8), (2, 8, 6), 1, 1), ((4, 1, 8), (3, 1, 8, 6), 0, 1)])
def test_transposed_matmul_fusion_matches_onnxruntime(tmp_path, a_shape, b_shape, ta, tb):
    """MatMul of operands transposed on their last two axes (transA / transB, batch broadcast): fused
    into FusedMatMul, same numbers as onnxruntime; a Transpose that something else reads stays."""
    from onnx import TensorProto, helper

    def perm(r):
        return list(range(r - 2)) + [r - 1, r - 2]

    def stored(shape, t):       # the operand as fed: the logical (.., rows, cols) swapped where transposed
        return tuple(shape[:-2]) + (shape[-1], shape[-2]) if t else tuple(shape)

    a_in, b_in = stored(a_shape, ta), stored(b_shape, tb)
    nodes, mm_in = [], ["a", "b"]
    if ta:
        nodes.append(helper.make_node("Transpose", ["a"], ["at"], perm=perm(len(a_in))))
        mm_in[0] = "at"
    if tb:
        nodes.append(helper.make_node("Transpose", ["b"], ["bt"], perm=perm(len(b_in))))
        mm_in[1] = "bt"
    nodes.append(helper.make_node("MatMul", mm_in, ["y"]))
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if ta and tb:               # here the transposed B is a graph output too: it stays, A's transpose fuses
        outs.append(helper.make_tensor_value_info("bt", TensorProto.FLOAT, None))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("a", TensorProto.FLOAT, list(a_in)),
                                       helper.make_tensor_value_info("b", TensorProto.FLOAT, list(b_in))], outs)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()
    rng = np.random.default_rng(5)
    feed = {"a": rng.standard_normal(a_in).astype(np.float32), "b": rng.standard_normal(b_in).astype(np.float32)}
    ref = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, feed)
    s, opt = _ops_after_level2(model, tmp_path)
    got = s.run(None, feed)
    for x, r in zip(got, ref):
        np.testing.assert_allclose(x, r, rtol=1e-5, atol=1e-5)
    ops = [n.op_type for n in opt]
    assert "FusedMatMul" in ops and "MatMul" not in ops
    kept = 1 if len(outs) > 1 else 0
    assert ops.count("Transpose") == kept


def _concat_cache_model():
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Concat", ["past", "x"], ["present"], axis=2),
                           helper.make_node("ReduceSum", ["present"], ["total"], keepdims=0)], "g",
                          [helper.make_tensor_value_info("past", TensorProto.FLOAT, [2, 3, "T", 4]),
                           helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, "S", 4])],
                          [helper.make_tensor_value_info("present", TensorProto.FLOAT, None),
                           helper.make_tensor_value_info("total", TensorProto.FLOAT, None)])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8).SerializeToString()


def test_cache_concat_grows_in_place_and_never_changes_what_it_returned():
    """A Concat whose output comes back as its first input (a Hugging Face cache) writes each step's new
    positions into room after the past (the outputs share one buffer) -- the same values as onnxruntime
    at every step; a past fed twice (beam search), the latest or an older one, is copied, and no array
    returned earlier ever changes."""
    model = _concat_cache_model()
    s, ref = er.InferenceSession(model), ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(3)
    past = np.zeros((2, 3, 0, 4), np.float32)
    kept, shared = [], 0
    for step in range(40):
        x = rng.standard_normal((2, 3, 1 if step else 5, 4)).astype(np.float32)
        got, want = s.run(None, {"past": past, "x": x}), ref.run(None, {"past": past, "x": x})
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_allclose(got[1], want[1], rtol=1e-5)
        shared += bool(np.shares_memory(got[0], past))
        kept.append((got[0], got[0].copy()))
        past = got[0]
    assert shared >= 30, f"only {shared} of 39 steps appended in place"
    for old in (past, kept[7][0]):                  # the latest past, then an older one, each fed twice
        a = s.run(None, {"past": old, "x": np.ones((2, 3, 1, 4), np.float32)})[0]
        b = s.run(None, {"past": old, "x": np.full((2, 3, 1, 4), 2, np.float32)})[0]
        np.testing.assert_array_equal(a, np.concatenate([old, np.ones((2, 3, 1, 4), np.float32)], 2))
        np.testing.assert_array_equal(b, np.concatenate([old, np.full((2, 3, 1, 4), 2, np.float32)], 2))
        assert not np.shares_memory(a[:, :, -1], b[:, :, -1])
        kept += [(a, a.copy()), (b, b.copy())]
    for arr, copy in kept:
        np.testing.assert_array_equal(arr, copy)


def test_cache_concat_through_iobinding_keeps_the_cache_in_place():
    """IOBinding with ``present`` bound to the host and fed back as an OrtValue: the cache grows in the
    same buffer, values as onnxruntime's."""
    model = _concat_cache_model()
    s, ref = er.InferenceSession(model), ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(4)
    past = er.OrtValue.ortvalue_from_numpy(np.zeros((2, 3, 0, 4), np.float32))
    want = np.zeros((2, 3, 0, 4), np.float32)
    buffers = set()
    for _ in range(20):
        x = rng.standard_normal((2, 3, 1, 4)).astype(np.float32)
        io = s.io_binding()
        io.bind_ortvalue_input("past", past)
        io.bind_cpu_input("x", x)
        io.bind_output("present", "cpu")
        s.run_with_iobinding(io)
        past = io.get_outputs()[0]
        want = ref.run(["present"], {"past": want, "x": x})[0]
        np.testing.assert_array_equal(past.numpy(), want)
        buffers.add(past.numpy().__array_interface__["data"][0])
    assert len(buffers) <= 3, f"{len(buffers)} buffers for 20 steps: the cache was copied"


def test_cache_concat_writes_a_bound_present_buffer(monkeypatch):
    """``present`` bound by IOBinding to a preallocated host buffer: the Concat writes the cache there
    (the run finds the output already in place, nothing is copied after), values as onnxruntime's; a
    bound buffer of the wrong shape is the error onnxruntime's users know, naming the output."""
    import engineroom.iobinding as iob

    in_place = []
    same = iob._same_memory
    monkeypatch.setattr(iob, "_same_memory", lambda a, b: in_place.append(same(a, b)) or in_place[-1])
    model = _concat_cache_model()
    s, ref = er.InferenceSession(model), ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(6)
    past = rng.standard_normal((2, 3, 7, 4)).astype(np.float32)
    x = rng.standard_normal((2, 3, 1, 4)).astype(np.float32)
    buf = np.full((2, 3, 8, 4), np.nan, np.float32)
    io = s.io_binding()
    io.bind_cpu_input("past", past)
    io.bind_cpu_input("x", x)
    io.bind_ortvalue_output("present", er.OrtValue.ortvalue_from_numpy(buf))
    s.run_with_iobinding(io)
    want = ref.run(["present"], {"past": past, "x": x})[0]
    np.testing.assert_array_equal(buf, want)
    assert in_place == [True] and np.shares_memory(io.get_outputs()[0].numpy(), buf)
    io.bind_ortvalue_output("present", er.OrtValue.ortvalue_from_numpy(np.zeros((2, 3, 9, 4), np.float32)))
    with pytest.raises(Exception, match="present"):
        s.run_with_iobinding(io)
