#!/usr/bin/env python3
"""Builds the two decoder models with a KV cache that text generation is measured on, deterministically
(random weights from a fixed seed, ``onnx.helper``; torch is not needed):

- ``gpt2_kv.onnx``: the GPT-2 architecture with the inputs and outputs Hugging Face's exporters write
  (``input_ids``, ``attention_mask``, ``position_ids``, ``past_key_values.{i}.key/.value`` ->
  ``logits``, ``present.{i}.key/.value``), standard ONNX ops only (opset 17): the cache grows by a
  Concat per layer, the causal mask is sliced from a lower-triangular constant, GELU is the tanh form.
- ``llama_kv.onnx``: a Llama-style decoder as onnxruntime-genai's model builder writes it:
  ``SimplifiedLayerNormalization`` / ``com.microsoft`` ``SkipSimplifiedLayerNormalization``,
  ``RotaryEmbedding`` on Q and K, ``GroupQueryAttention`` (8 query heads over 2 key/value heads, with
  ``seqlens_k`` and ``total_sequence_length`` derived from ``attention_mask``) and ``MatMulNBits``
  4-bit block-quantized weights (block 32, packed zero points) for every projection and the LM head.

usage: python -m engineroom.models.decoders [OUT_DIR]   (default: ``engineroom.models.cache_folder()``,
~/.cache/engineroom/models)

Both are under 40 MB; they are written outside the repository (``ensure()`` builds what is missing).
"""
from __future__ import annotations

import os
import sys

import numpy as np
from onnx import TensorProto, helper, numpy_helper, save

SEED = 20261206

GPT2 = dict(layers=4, hidden=256, heads=4, vocab=8192, positions=512)
LLAMA = dict(layers=4, hidden=512, heads=8, kv_heads=2, intermediate=1376, vocab=8192, positions=512,
             block_size=32, rope_theta=10000.0, eps=1e-5)
MODELS = {"gpt2_kv": GPT2, "llama_kv": LLAMA}


class _Graph:
    """A little builder over onnx.helper: nodes, initializers and fresh value names."""

    def __init__(self):
        self.nodes, self.inits, self._n = [], [], 0

    def init(self, name, arr):
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def op(self, op_type, inputs, n_out=1, domain="", name=None, **attrs):
        self._n += 1
        base = name or f"{op_type.lower()}_{self._n}"
        outs = [f"{base}_out{i}" if n_out > 1 else base for i in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=f"{op_type}_{self._n}",
                                           domain=domain, **attrs))
        return outs if n_out > 1 else outs[0]

    def const(self, arr, name=None):
        self._n += 1
        return self.init(name or f"const_{self._n}", np.asarray(arr))


# -- GPT-2 --------------------------------------------------------------------------------------------
def build_gpt2(cfg=GPT2, seed=SEED):
    rng = np.random.default_rng(seed)
    L, C, H, V, P = cfg["layers"], cfg["hidden"], cfg["heads"], cfg["vocab"], cfg["positions"]
    D = C // H
    f32 = np.float32

    def w(*shape, std=0.02):
        return (rng.standard_normal(shape) * std).astype(f32)

    g = _Graph()
    wte = w(V, C)
    g.init("transformer.wte.weight", wte)
    g.init("transformer.wpe.weight", w(P, C, std=0.01))
    # an untied head: tied to wte, a random model's greedy choice is its input token, forever
    g.init("lm_head.weight_T", w(C, V, std=0.15))
    tok = g.op("Gather", ["transformer.wte.weight", "input_ids"])
    pos = g.op("Gather", ["transformer.wpe.weight", "position_ids"])
    h = g.op("Add", [tok, pos])
    # the padding mask (B, T) -> additive (B, 1, 1, T), once for every layer
    fmin = np.finfo(f32).min
    m = g.op("Cast", ["attention_mask"], to=TensorProto.FLOAT)
    m = g.op("Sub", [g.const(np.array(1.0, f32)), m])
    m = g.op("Mul", [m, g.const(np.array(fmin, f32))])
    mask_add = g.op("Unsqueeze", [m, g.const(np.array([1, 2], np.int64))])
    causal = g.const(np.tril(np.ones((P, P), bool))[None, None], "causal_bias")
    sqrt_d = g.const(np.array(np.sqrt(D), f32))
    min_val = g.const(np.array(fmin, f32))
    two = g.const(np.array([2], np.int64))
    axes23 = g.const(np.array([2, 3], np.int64))
    shape_heads = g.const(np.array([0, 0, H, D], np.int64))
    shape_merge = g.const(np.array([0, 0, C], np.int64))
    zero1 = g.const(np.array([0], np.int64))
    split3 = g.const(np.array([C, C, C], np.int64))
    c_half, c_044, c_s2p, c_one = (g.const(np.array(v, f32)) for v in (0.5, 0.044715, np.sqrt(2 / np.pi), 1.0))
    c_three = g.const(np.array(3.0, f32))

    def layer_norm(x, pre):
        g.init(f"{pre}.weight", (1.0 + rng.standard_normal(C) * 0.05).astype(f32))
        g.init(f"{pre}.bias", w(C))
        return g.op("LayerNormalization", [x, f"{pre}.weight", f"{pre}.bias"], axis=-1, epsilon=1e-5)

    def linear(x, pre, k, n, std=0.02):
        g.init(f"{pre}.weight", w(k, n, std=std))
        g.init(f"{pre}.bias", w(n))
        return g.op("Add", [g.op("MatMul", [x, f"{pre}.weight"]), f"{pre}.bias"])

    for i in range(L):
        pre = f"transformer.h.{i}"
        x = layer_norm(h, f"{pre}.ln_1")
        qkv = linear(x, f"{pre}.attn.c_attn", C, 3 * C)
        q, k, v = g.op("Split", [qkv, split3], n_out=3, axis=2)
        q, k, v = (g.op("Transpose", [g.op("Reshape", [t, shape_heads])], perm=[0, 2, 1, 3]) for t in (q, k, v))
        k = g.op("Concat", [f"past_key_values.{i}.key", k], axis=2, name=f"present.{i}.key")
        v = g.op("Concat", [f"past_key_values.{i}.value", v], axis=2, name=f"present.{i}.value")
        s = g.op("Div", [g.op("MatMul", [q, g.op("Transpose", [k], perm=[0, 1, 3, 2])]), sqrt_d])
        # causal rows past..T-1 of the lower-triangular constant: bias[:, :, T-S:T, :T]
        T = g.op("Gather", [g.op("Shape", [k]), two])
        S = g.op("Gather", [g.op("Shape", [q]), two])
        start = g.op("Sub", [T, S])
        mask = g.op("Slice", [causal, g.op("Concat", [start, zero1], axis=0), g.op("Concat", [T, T], axis=0), axes23])
        s = g.op("Add", [g.op("Where", [mask, s, min_val]), mask_add])
        p = g.op("Softmax", [s], axis=-1)
        a = g.op("Reshape", [g.op("Transpose", [g.op("MatMul", [p, v])], perm=[0, 2, 1, 3]), shape_merge])
        h = g.op("Add", [h, linear(a, f"{pre}.attn.c_proj", C, C, std=0.02 / np.sqrt(2 * L))])
        x = layer_norm(h, f"{pre}.ln_2")
        u = linear(x, f"{pre}.mlp.c_fc", C, 4 * C)
        # gelu_new: 0.5 u (1 + tanh(sqrt(2/pi) (u + 0.044715 u^3)))
        t = g.op("Mul", [g.op("Add", [u, g.op("Mul", [g.op("Pow", [u, c_three]), c_044])]), c_s2p])
        u = g.op("Mul", [g.op("Mul", [u, c_half]), g.op("Add", [g.op("Tanh", [t]), c_one])])
        h = g.op("Add", [h, linear(u, f"{pre}.mlp.c_proj", 4 * C, C, std=0.02 / np.sqrt(2 * L))])
    x = layer_norm(h, "transformer.ln_f")
    g.op("MatMul", [x, "lm_head.weight_T"], name="logits")

    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
              helper.make_tensor_value_info("attention_mask", TensorProto.INT64,
                                            ["batch_size", "past_sequence_length + sequence_length"]),
              helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch_size", "sequence_length"])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch_size", "sequence_length", V])]
    for i in range(L):
        for kv in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{kv}", TensorProto.FLOAT,
                                                        ["batch_size", H, "past_sequence_length", D]))
            outputs.append(helper.make_tensor_value_info(f"present.{i}.{kv}", TensorProto.FLOAT,
                                                         ["batch_size", H, "past_sequence_length + 1", D]))
    graph = helper.make_graph(g.nodes, "gpt2_kv", inputs, outputs, g.inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="engineroom",
                             ir_version=8)


# -- Llama (onnxruntime-genai layout) --------------------------------------------------------------------
def quantize_4bit(wt: np.ndarray, block: int = 32):
    """(K, N) float weights -> MatMulNBits' (B (N, K/block, block/2) uint8, scales (N, K/block), packed zero
    points (N, ceil(K/block / 2)) uint8): asymmetric 4-bit per block of ``block`` along K."""
    K, N = wt.shape
    nb = K // block
    wb = wt.T.reshape(N, nb, block).astype(np.float64)
    lo = np.minimum(wb.min(-1), 0.0)
    hi = np.maximum(wb.max(-1), 0.0)
    scale = np.where(hi > lo, (hi - lo) / 15.0, 1.0)
    zp = np.clip(np.round(-lo / scale), 0, 15).astype(np.uint8)
    q = np.clip(np.round(wb / scale[..., None]) + zp[..., None], 0, 15).astype(np.uint8)
    packed = (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)
    zpp = np.zeros((N, (nb + 1) // 2), np.uint8)
    zpp[:, : (nb + 1) // 2] |= zp[:, 0::2]
    zpp[:, : nb // 2] |= zp[:, 1::2] << 4
    return packed, scale.astype(np.float32), zpp


def build_llama(cfg=LLAMA, seed=SEED + 1):
    rng = np.random.default_rng(seed)
    L, C, Hq, Hkv = cfg["layers"], cfg["hidden"], cfg["heads"], cfg["kv_heads"]
    I, V, P, bs, eps = cfg["intermediate"], cfg["vocab"], cfg["positions"], cfg["block_size"], cfg["eps"]
    D = C // Hq
    f32 = np.float32
    g = _Graph()
    ms = "com.microsoft"

    def mm4(x, pre, k, n, std=0.02):
        b, s, z = quantize_4bit((rng.standard_normal((k, n)) * std).astype(f32), bs)
        g.init(f"{pre}.qweight", b)
        g.init(f"{pre}.scales", s)
        g.init(f"{pre}.qzeros", z)
        return g.op("MatMulNBits", [x, f"{pre}.qweight", f"{pre}.scales", f"{pre}.qzeros"], domain=ms,
                    name=f"{pre}.MatMulNBits", K=k, N=n, bits=4, block_size=bs, accuracy_level=0)

    def norm_w(name):
        return g.init(name, (1.0 + rng.standard_normal(C) * 0.05).astype(f32))

    g.init("model.embed_tokens.weight", (rng.standard_normal((V, C)) * 0.5).astype(f32))
    inv = 1.0 / cfg["rope_theta"] ** (np.arange(0, D, 2) / D)
    ang = np.arange(P)[:, None] * inv[None, :]
    g.init("cos_cache", np.cos(ang).astype(f32))
    g.init("sin_cache", np.sin(ang).astype(f32))
    h = g.op("Gather", ["model.embed_tokens.weight", "input_ids"])
    # genai's attention-mask reformatting: seqlens_k = sum(mask) - 1, total_sequence_length = mask's width
    msum = g.op("ReduceSum", ["attention_mask", g.const(np.array([1], np.int64))], keepdims=0)
    seqlens_k = g.op("Cast", [g.op("Sub", [msum, g.const(np.array(1, np.int64))])], to=TensorProto.INT32,
                     name="seqlens_k")
    width = g.op("Gather", [g.op("Shape", ["attention_mask"]), g.const(np.array(1, np.int64))])
    total = g.op("Cast", [width], to=TensorProto.INT32, name="total_seq_len")

    x = g.op("SimplifiedLayerNormalization", [h, norm_w("model.layers.0.input_layernorm.weight")],
             axis=-1, epsilon=eps, stash_type=1)
    resid = h
    for i in range(L):
        pre = f"model.layers.{i}"
        q = mm4(x, f"{pre}.attn.q_proj", C, Hq * D)
        k = mm4(x, f"{pre}.attn.k_proj", C, Hkv * D)
        v = mm4(x, f"{pre}.attn.v_proj", C, Hkv * D)
        q = g.op("RotaryEmbedding", [q, "position_ids", "cos_cache", "sin_cache"], domain=ms, interleaved=0)
        k = g.op("RotaryEmbedding", [k, "position_ids", "cos_cache", "sin_cache"], domain=ms, interleaved=0)
        attn, pk, pv = g.op("GroupQueryAttention",
                            [q, k, v, f"past_key_values.{i}.key", f"past_key_values.{i}.value", seqlens_k, total],
                            n_out=3, domain=ms, name=f"{pre}.attn.GQA", num_heads=Hq, kv_num_heads=Hkv)
        g.nodes[-1].output[1] = f"present.{i}.key"
        g.nodes[-1].output[2] = f"present.{i}.value"
        o = mm4(attn, f"{pre}.attn.o_proj", Hq * D, C, std=0.02 / np.sqrt(2 * L))
        x, _, _, resid = g.op("SkipSimplifiedLayerNormalization",
                              [o, resid, norm_w(f"{pre}.post_attention_layernorm.weight")], n_out=4, domain=ms,
                              epsilon=eps)
        g.nodes[-1].output[1] = ""
        g.nodes[-1].output[2] = ""
        gate = mm4(x, f"{pre}.mlp.gate_proj", C, I)
        up = mm4(x, f"{pre}.mlp.up_proj", C, I)
        act = g.op("Mul", [gate, g.op("Sigmoid", [gate])])
        down = mm4(g.op("Mul", [act, up]), f"{pre}.mlp.down_proj", I, C, std=0.02 / np.sqrt(2 * L))
        nxt = f"model.layers.{i + 1}.input_layernorm.weight" if i + 1 < L else "model.norm.weight"
        x, _, _, resid = g.op("SkipSimplifiedLayerNormalization", [down, resid, norm_w(nxt)], n_out=4, domain=ms,
                              epsilon=eps)
        g.nodes[-1].output[1] = ""
        g.nodes[-1].output[2] = ""
        if i + 1 == L:
            g.nodes[-1].output[3] = ""
    logits = mm4(x, "lm_head", C, V, std=0.1)
    g.nodes[-1].output[0] = "logits"
    del logits

    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
              helper.make_tensor_value_info("attention_mask", TensorProto.INT64,
                                            ["batch_size", "total_sequence_length"]),
              helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch_size", "sequence_length"])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch_size", "sequence_length", V])]
    for i in range(L):
        for kv in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{kv}", TensorProto.FLOAT,
                                                        ["batch_size", Hkv, "past_sequence_length", D]))
            outputs.append(helper.make_tensor_value_info(f"present.{i}.{kv}", TensorProto.FLOAT,
                                                         ["batch_size", Hkv, "total_sequence_length", D]))
    graph = helper.make_graph(g.nodes, "llama_kv", inputs, outputs, g.inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid(ms, 1)],
                             producer_name="engineroom", ir_version=10)


BUILDERS = {"gpt2_kv": build_gpt2, "llama_kv": build_llama}


def ensure(out_dir: str | None = None) -> dict[str, str]:
    """Paths of both models, built into a folder of ``out_dir`` named for this script's source (a changed
    builder never serves an old model), building the ones not there yet."""
    import hashlib

    from engineroom.models import cache_folder

    with open(os.path.abspath(__file__), "rb") as f:
        out_dir = os.path.join(out_dir or cache_folder(), "decoders-" + hashlib.sha256(f.read()).hexdigest()[:12])
    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    for name, build in BUILDERS.items():
        path = os.path.join(out_dir, name + ".onnx")
        if not os.path.exists(path):
            tmp = f"{path}.{os.getpid()}.tmp"
            save(build(), tmp)
            os.replace(tmp, path)       # concurrent builders never expose a half-written model
        paths[name] = path
    return paths


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        from engineroom.models import cache_folder

        args = [str(cache_folder())]
    out = args[0]
    os.makedirs(out, exist_ok=True)
    for name, build in BUILDERS.items():
        path = os.path.join(out, name + ".onnx")
        save(build(), path)
        print(f"{path}: {os.path.getsize(path) / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
