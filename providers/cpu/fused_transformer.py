"""Fused transformer kernels the level-2 optimizer may use (onnxruntime's contrib names, domain
com.microsoft): BiasGelu = Gelu(x + bias), FastGelu = Gelu-tanh(x + bias) as onnxruntime computes it,
SkipLayerNormalization = LayerNormalization(x + bias + skip) and MultiHeadAttention.

For float32 on NumPy with numba installed each runs as one compiled pass (``_jit_transformer``): the
adds and the Gelu or the normalization in the same loop. Otherwise BiasGelu adds the bias into a fresh buffer that the
Gelu kernel reuses, and FastGelu runs its NumPy formula.
"""
from __future__ import annotations

import numpy as np

from engineroom.providers.cpu import _threadpool
from engineroom.providers.cpu.activation import gelu_compiled
from engineroom.providers.cpu.array_module import arrays
from engineroom.providers.cpu.contrib_quant import mlas_tanh
from engineroom.providers.cpu.norm import _normalize
from engineroom.providers.cpu.registry import array_kernel, kernel, registry
from engineroom.providers.cpu.softmax import _softmax_compiled, softmax_array

MS = "com.microsoft"
ER = "com.engineroom"
_F32 = np.dtype(np.float32)


@array_kernel("BiasGelu", domain=MS, since=1, types=(np.float32, np.float64))
def bias_gelu(info):
    gelu_info = info.with_(op_type="Gelu", domain="", opset=20, attrs={"approximate": "none"},
                           input_names=info.input_names[:1], input_dtypes=info.input_dtypes[:1],
                           input_shapes=info.input_shapes[:1], const_inputs=(None,),
                           input_types=info.input_types[:1])
    gelu = registry.lookup("", "Gelu", 20).factory(gelu_info)
    xp = info.xp

    def run(x, bias):
        return gelu(xp.add(x, bias))

    if not arrays(xp).host:
        return run

    def run_compiled(x, bias):
        y = gelu_compiled(x, bias)
        return (y,) if y is not None else run(x, bias)

    return run_compiled


def _fast_gelu_numpy(info):
    """FastGelu in NumPy passes (any xp) as onnxruntime's kernel computes it, which defines this
    contrib op: u = x (C x x + B) with float32 constants, then 0.5 x (1 + tanh u), MLAS's tanh on NumPy
    float32 (bit-exact; see _jit_transformer's note on why int8 models need that). The standard Gelu op
    (approximate="tanh") keeps the answer without the negative tail's cancellation."""
    xp = info.xp
    tanh = mlas_tanh if arrays(xp).host else xp.tanh

    def run(x, bias=None):
        if bias is not None:
            x = x + bias
        dt = x.dtype
        xf = x.astype(np.float32) if dt == np.float16 else x
        c, b = (_F32.type(0.035677408136300125), _F32.type(0.7978845608028654)) if xf.dtype == _F32 else \
            (0.044715 * np.sqrt(2 / np.pi), np.sqrt(2 / np.pi))
        t = xf * c
        t *= xf
        t += b
        t *= xf
        t = tanh(t) if xf.dtype == _F32 else xp.tanh(t)
        t += 1
        t *= xf * 0.5
        return (t.astype(dt, copy=False),)

    return run


@array_kernel("FastGelu", domain=MS, since=1, types=(np.float32, np.float64, np.float16))
def fast_gelu(info):
    run = _fast_gelu_numpy(info)
    if not arrays(info.xp).host:
        return run

    def run_compiled(x, bias=None):
        y = gelu_compiled(x, bias, ort=True)
        return (y,) if y is not None else run(x, bias)

    return run_compiled


@array_kernel("SkipLayerNormalization", domain=MS, since=1, types=(np.float32, np.float64))
def skip_layer_normalization(info):
    """LayerNorm(input + skip + bias) * gamma + beta over the last axis; outputs: y, then (if asked) mean,
    1/std and the sum input + skip + bias. The sum is (input + bias) + skip, the order of the Adds the
    level-2 fusion replaces, so the fused graph rounds as the unfused one did."""
    xp = info.xp
    eps = float(info.attrs.get("epsilon", 1e-12))
    n_out = max(1, len(info.output_names))
    jit = arrays(xp).compiled("transformer")
    none = np.empty(0, np.float32)
    no_total = np.empty((0, 0), np.float32)

    def run_numpy(x, skip, gamma, beta=None, bias=None):
        s = xp.add(x, bias) if bias is not None else x
        s = xp.add(s, skip)
        y, mean, inv = _normalize(xp, s, (s.ndim - 1,), eps)
        y *= gamma
        if beta is not None:
            y += beta
        return (y, mean, inv, s)[:n_out]

    def run(x, skip, gamma, beta=None, bias=None):
        h = x.shape[-1] if x.ndim else 0
        if (jit is None or x.dtype != _F32 or not x.size or skip.shape != x.shape or skip.dtype != _F32
                or any(v is not None and (v.dtype != _F32 or v.shape != (h,)) for v in (gamma, beta, bias))):
            return run_numpy(x, skip, gamma, beta, bias)
        x = np.ascontiguousarray(x)
        R = x.size // h
        y = np.empty(x.shape, _F32)
        mean = np.empty(x.shape[:-1] + (1,), _F32)
        inv = np.empty(mean.shape, _F32)
        total = np.empty(x.shape, _F32) if n_out > 3 else None       # input + skip + bias, asked for
        jit.skip_layer_norm(x.reshape(R, h), np.ascontiguousarray(skip).reshape(R, h),
                            none if bias is None else np.ascontiguousarray(bias), np.ascontiguousarray(gamma),
                            none if beta is None else np.ascontiguousarray(beta), np.float32(eps),
                            y.reshape(R, h), mean.reshape(R), inv.reshape(R),
                            no_total if total is None else total.reshape(R, h))
        return (y, mean, inv, total)[:n_out]

    return run


@array_kernel("MultiHeadAttention", domain=MS, since=1, types=(np.float32, np.float64))
def multi_head_attention(info):
    """softmax(Q Kᵀ · scale + attention_bias [+ key padding]) V per head, for 3-D query, key and value
    (B, S, heads·D): the heads are strided views, never transposed copies of the activations, and
    the output is written straight into (B, S, heads·Dv). A query row whose logits are all -inf gives
    zeros (as the ONNX Attention op and PyTorch's exported SDPA guard do), not NaN.

    Inputs: query, key, value, bias (the packed Q/K/V projection bias), key_padding_mask ((B, Sk):
    0 masks the key with ``mask_filter_value``) and attention_bias ((B|1, heads|1, Sq, Sk)). The
    key/value cache inputs and ``unidirectional`` are not supported.
    """
    xp = info.xp
    a = info.attrs
    if "num_heads" not in a:
        raise ValueError("MultiHeadAttention: the num_heads attribute is required")
    heads = int(a["num_heads"])
    scale_attr = float(a.get("scale", 0.0) or 0.0)
    mask_filter = float(a.get("mask_filter_value", -10000.0))
    if int(a.get("unidirectional", 0)):
        raise NotImplementedError("MultiHeadAttention: unidirectional=1 is not supported by the CPU provider")
    if any(n for n in info.input_names[6:]) or any(n for n in info.output_names[1:]):
        raise NotImplementedError("MultiHeadAttention: the past/present key-value inputs and outputs are not "
                                  "supported by the CPU provider")
    jit = arrays(xp).compiled("transformer")
    no_bias = np.zeros((0, 0, 0, 0), np.float32)

    def run(q, k, v, bias=None, key_padding_mask=None, attention_bias=None, *_):
        if q.ndim != 3 or k.ndim != 3 or v.ndim != 3:
            raise ValueError(f"MultiHeadAttention: query, key and value must be 3-D (B, S, heads*D), got shapes "
                             f"{q.shape}, {k.shape}, {v.shape} (packed forms are not supported)")
        B, Sq, HD = q.shape
        Sk, HDv = k.shape[1], v.shape[2]
        if k.shape[0] != B or v.shape[0] != B or k.shape[2] != HD or v.shape[1] != Sk or HD % heads or HDv % heads:
            raise ValueError(f"MultiHeadAttention: query {q.shape}, key {k.shape} and value {v.shape} do not fit "
                             f"num_heads={heads}")
        dt = q.dtype
        if bias is not None:
            if bias.shape != (2 * HD + HDv,):
                raise ValueError(f"MultiHeadAttention: bias has shape {bias.shape}, expected ({2 * HD + HDv},)")
            q, k, v = q + bias[:HD], k + bias[HD:2 * HD], v + bias[2 * HD:]
        D, Dv = HD // heads, HDv // heads
        scale = scale_attr or 1.0 / np.sqrt(D)
        add = None
        if attention_bias is not None:
            if attention_bias.ndim != 4 or attention_bias.shape[0] not in (1, B) or \
                    attention_bias.shape[1] not in (1, heads) or attention_bias.shape[2:] != (Sq, Sk):
                raise ValueError(f"MultiHeadAttention: attention_bias has shape {attention_bias.shape}, expected "
                                 f"(1 or {B}, 1 or {heads}, {Sq}, {Sk})")
            add = attention_bias.astype(dt, copy=False)
        if key_padding_mask is not None:
            if key_padding_mask.shape != (B, Sk):
                raise NotImplementedError(f"MultiHeadAttention: key_padding_mask of shape {key_padding_mask.shape}"
                                          f" (only (batch, kv_sequence_length) is supported)")
            pad = xp.where(key_padding_mask == 0, dt.type(mask_filter), dt.type(0)).reshape(B, 1, 1, Sk)
            add = xp.broadcast_to(pad, (B, 1, Sq, Sk)) if add is None else add + pad
        if jit is not None and dt == _F32 and (_threadpool.quick_run() or _threadpool.mkl_gemms()):
            out = _heads_split(q, k, v, add, B, Sq, Sk, HDv, D, Dv, scale)
            if out is not None:
                return (out,)
        # per head, strided views of Q and Kᵀ go to BLAS as they are (copies measured slower)
        s = xp.matmul(q.reshape(B, Sq, heads, D).transpose(0, 2, 1, 3),
                      k.reshape(B, Sk, heads, D).transpose(0, 2, 3, 1))          # (B, H, Sq, Sk)
        if jit is not None and dt == _F32:
            jit.attention_softmax(s.reshape(B * heads, Sq, Sk),
                                  no_bias if add is None else np.ascontiguousarray(add, dtype=_F32),
                                  heads, np.float32(scale))
            p = s
        else:
            s *= dt.type(scale)
            if add is not None:
                s += add
            p = softmax_array(xp, s, -1, None, zero_dead_rows=True)
        vh = v.reshape(B, Sk, heads, Dv).transpose(0, 2, 1, 3)
        if not arrays(xp).host:        # other array modules: no strided out=, one transposing copy instead
            return (xp.ascontiguousarray(xp.matmul(p, vh).transpose(0, 2, 1, 3)).reshape(B, Sq, HDv),)
        out = np.empty((B, Sq, HDv), dtype=dt)
        np.matmul(p, vh, out=out.reshape(B, Sq, heads, Dv).transpose(0, 2, 1, 3))
        return (out,)

    def _heads_split(q, k, v, add, B, Sq, Sk, HDv, D, Dv, scale):
        """In a quick-mode run, the attention split over batch-heads inside one compiled call (each head's
        two GEMMs and softmax on one thread: ``_threadpool.native_ranges``); with oneMKL, that loop whole on the
        calling thread where it does not split (its GEMMs oneMKL's in every mode); or None (``run``'s path)."""
        fns = _threadpool.gemm_pointers()
        if fns is None:
            return None
        add = no_bias if add is None else np.ascontiguousarray(add, dtype=_F32)
        s = np.empty((B * heads, Sq, Sk), dtype=_F32)
        out = np.empty((B, Sq, HDv), dtype=_F32)
        qc, kc, vc = np.ascontiguousarray(q), np.ascontiguousarray(k), np.ascontiguousarray(v)
        if _threadpool.native_ranges("attention", B * heads, B * heads * Sq * Sk * (D + Dv), qc, kc, vc, s, add,
                                     out, heads, np.float32(scale), fns, whole=_threadpool.mkl_gemms()):
            return out
        return None

    return run


@kernel("ScaledDotProductAttention", domain=ER, since=1, types=(np.float32, np.float64))
def scaled_dot_product_attention(info):
    """Attention over 4-D heads as the level-2 fusion finds it in a decoder with a growing cache
    (``attention_fusion.fuse_heads_attention``): Y = softmax(where(mask, Q Kᵀ / scale, mask_fill) + bias)
    V for Q (B, H, S, D), K (B, H, T, D), V (B, H, T, Dv); mask (bool) and bias broadcast to (B, H, S,
    T) and are optional; ``scale_divides`` = 0 multiplies by ``scale`` instead. The unfused graph's
    steps in its order and with its kernels' arithmetic (BLAS with K read transposed where it lies, the
    Softmax kernel's compiled pass), as one node: a GPT-2 batch-4 step's attention ~52 -> ~38 us a
    layer, batch 1 ~35 -> ~23 us (T = 128). A compiled loop per head over the cache measured slower."""
    a = info.attrs
    scale = float(a.get("scale", 1.0))
    divides = int(a.get("scale_divides", 1))
    fill = float(a.get("mask_fill", 0.0))

    def run(q, k, v, mask=None, bias=None):
        dt = q.dtype
        s = np.matmul(q, np.swapaxes(k, -1, -2))
        s = s / dt.type(scale) if divides else s * dt.type(scale)
        if mask is not None:
            s = np.where(mask, s, dt.type(fill))
        if bias is not None:
            with np.errstate(over="ignore"):     # a fill of float32 min plus a bias of it: -inf, as unfused
                s = s + bias
        p = _softmax_compiled(s, s.ndim - 1) if s.ndim else None
        return (np.matmul(softmax_array(np, s, -1) if p is None else p, v),)

    return run
