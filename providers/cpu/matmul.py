"""Matrix kernels: MatMul, Gemm, MatMulInteger, QLinearMatMul, Einsum, Dropout, Attention, RotaryEmbedding.

Everything that multiplies matrices runs through BLAS: float32/float64 as they are, narrower floats
(float16, bfloat16, float8) in float32 and cast back, and the integer/quantized ops exactly on float BLAS
(``intgemm``: float32 where the sum fits its 24-bit significand, in chunks of K where it does not, with
the constant weight prepared once). Gemm folds a constant
``alpha * op(B)`` into one contiguous matrix, and ``beta * C`` likewise, once in the factory.
"""
from __future__ import annotations

import numpy as np

from engineroom.providers.cpu import intgemm
from engineroom.providers.cpu.array_module import arrays
from engineroom.providers.cpu.registry import array_kernel, kernel
from engineroom.providers.cpu.softmax import softmax_array, storage_rounder


def _fdt(dt) -> np.dtype:
    """Float type the arithmetic for dtype ``dt`` runs in."""
    dt = np.dtype(dt)
    return dt if dt in (np.dtype(np.float32), np.dtype(np.float64)) else np.dtype(np.float32)


def is_float(dt) -> bool:
    """True for NumPy floats and the ml_dtypes ones (bfloat16, float8..., whose kind is 'V')."""
    dt = np.dtype(dt)
    return dt.kind == "f" or (dt.kind == "V" and "float" in dt.name)


def _blas_ok(dt) -> bool:
    return np.dtype(dt) in (np.dtype(np.float32), np.dtype(np.float64))


# ---------------------------------------------------------------------------------------------
# MatMul / Gemm


def _matmul_2d_b(xp, a, b):
    """a @ b; an N-D a times a 2-D b runs as one 2-D GEMM (NumPy would loop over a's batch)."""
    if b.ndim == 2 and a.ndim > 2 and a.flags.c_contiguous:
        return xp.matmul(a.reshape(-1, a.shape[-1]), b).reshape(a.shape[:-1] + (b.shape[1],))
    return xp.matmul(a, b)


def matmul_any(xp, a, b):
    """a @ b with ONNX (NumPy) semantics for any dtype; narrow floats go through float32."""
    dt = a.dtype
    if _blas_ok(dt) or dt.kind in "iub":
        return _matmul_2d_b(xp, a, b)
    return _matmul_2d_b(xp, a.astype(np.float32), b.astype(np.float32)).astype(dt)


@array_kernel("MatMul", since=1)
def matmul(info):
    xp = info.xp
    bc = info.const_inputs[1] if len(info.const_inputs) > 1 else None
    if bc is not None and is_float(bc.dtype) and not _blas_ok(bc.dtype):
        # narrow float constant weight: widen once, not per run
        bw = xp.asarray(np.asarray(bc).astype(np.float32))
        dt = bc.dtype

        def run_narrow(a, _b):
            return (_matmul_2d_b(xp, a.astype(np.float32), bw).astype(dt),)
        return run_narrow

    def run(a, b):
        return (matmul_any(xp, a, b),)

    if bc is not None and bc.ndim == 2 and np.dtype(bc.dtype) == np.float32 and arrays(xp).host:
        return _matmul_few_rows(bc, run)
    return run


def _matmul_few_rows(b, run):
    """MatMul by a constant float32 weight: 2-8 rows of A (batched token-by-token decoding) go through a
    compiled loop over the weight transposed (``_jit_llm.gemm_few_rows``), made on the first such call so
    that models never run with a few rows keep one copy (GPT-2 batch-4 decode step 2.85 -> 2.14 ms CPU
    time; OpenBLAS packs the whole weight on every call). One row stays with BLAS's GEMV, as fast."""
    from engineroom.providers.cpu.array_module import NUMPY

    jit = NUMPY.compiled("llm")
    if jit is None:
        return run
    wt: list = []

    def run_few(a, b_):
        rows = a.size // a.shape[-1] if a.ndim >= 2 and a.shape[-1] else 0
        if not (2 <= rows <= 8 and b_ is b and a.dtype == np.float32 and a.flags.c_contiguous):
            return run(a, b_)
        if not wt:
            wt.append(np.ascontiguousarray(b.T))
        y = np.empty(a.shape[:-1] + (b.shape[1],), np.float32)
        jit.gemm_few_rows(a.reshape(rows, a.shape[-1]), wt[0], y.reshape(rows, b.shape[1]))
        return (y,)

    return run_few


def _broadcasts_into(small: tuple, big: tuple) -> bool:
    """Whether shape ``small`` broadcasts to ``big`` without growing it (np.broadcast_shapes: ~5 us a call,
    as much as a small Gemm itself)."""
    return len(small) <= len(big) and all(s == 1 or s == b for s, b in zip(reversed(small), reversed(big)))


@array_kernel("Gemm", since=1)
def gemm(info):
    xp = info.xp
    a = info.attrs
    alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
    trans_a, trans_b = int(a.get("transA", 0)), int(a.get("transB", 0))
    consts = tuple(info.const_inputs) + (None,) * 3
    bconst, cconst = consts[1], consts[2]
    dt = np.dtype(info.input_dtypes[0]) if info.input_dtypes and info.input_dtypes[0] is not None else None
    fold_alpha = (dt is None or is_float(dt)) and alpha != 1.0
    bpack = cpack = None
    if bconst is not None:
        b = np.asarray(bconst)
        cdt = _fdt(b.dtype) if is_float(b.dtype) else b.dtype
        b = b.T if trans_b else b
        b = b.astype(cdt) * np.asarray(alpha, cdt) if fold_alpha else b.astype(cdt)
        bpack = xp.asarray(np.ascontiguousarray(b))
    if cconst is not None:
        c = np.asarray(cconst)
        c = c.astype(_fdt(c.dtype)) if is_float(c.dtype) else c
        cpack = xp.asarray(c * np.asarray(beta, c.dtype if is_float(c.dtype) else np.float64) if beta != 1.0 else c)

    def run(A, B=None, C=None):
        odt = A.dtype
        isf = is_float(odt)
        cdt = _fdt(odt) if isf else odt
        Am = A.T if trans_a else A
        if bpack is not None:
            y = xp.matmul(Am.astype(cdt, copy=False), bpack)
            scaled = fold_alpha
        else:
            Bm = B.T if trans_b else B
            y = xp.matmul(Am.astype(cdt, copy=False), Bm.astype(cdt, copy=False))
            scaled = False
        if alpha != 1.0 and not scaled:
            y = y * alpha if not isf else xp.multiply(y, cdt.type(alpha), out=y)
        if C is not None and beta != 0.0:
            if cpack is not None:
                cv = cpack
            else:
                cv = C.astype(cdt, copy=False)
                if beta != 1.0:
                    cv = cv * (cdt.type(beta) if isf else beta)
            if isf and cv.dtype == y.dtype and _broadcasts_into(cv.shape, y.shape):
                xp.add(y, cv, out=y)
            else:
                y = y + cv
        return (y.astype(odt, copy=False),)

    return run


# ---------------------------------------------------------------------------------------------
# integer / quantized matmul


def _a_centered(xp, A, a_zp, dtype):
    """A - a_zp as integer-valued floats; a_zp per tensor or per row of A ((M,) or (..., M, 1))."""
    af = A.astype(dtype)
    if a_zp is not None:
        z = xp.asarray(a_zp).astype(dtype)
        af -= z.reshape(()) if z.size == 1 else (z.reshape(-1, 1) if z.ndim == 1 else z)
    return af


def _int_product(info, b_idx, bzp_idx):
    """fn(A, a_zp, B, b_zp) -> (A - a_zp) @ (B - b_zp), exact and integer-valued (float32 or float64; see
    ``intgemm``); a constant B (and zero point) is prepared once."""
    xp = info.xp
    consts = tuple(info.const_inputs) + (None,) * 9
    has_bzp = info.has_input(bzp_idx)
    prepared = None
    if arrays(xp).host and consts[b_idx] is not None and (not has_bzp or consts[bzp_idx] is not None) \
            and np.dtype(consts[b_idx].dtype).kind in "iu":
        prepared = intgemm.IntMatrix(consts[b_idx], consts[bzp_idx] if has_bzp else None)

    def product(A, a_zp, B, b_zp):
        if not arrays(xp).host or A.dtype.kind not in "iu" or B.dtype.kind not in "iu":
            # other array modules, float8 operands (QLinearMatMul-21): float64, as the values are
            return xp.matmul(_a_centered(xp, A, a_zp, np.float64), _b_centered(xp, B, b_zp))
        amax = intgemm.int_bound(A.dtype, a_zp)
        bm = prepared
        if bm is None or amax > 255:        # a run-time B: bounded by its dtype, not measured
            bm = intgemm.IntMatrix(B, b_zp, amax, intgemm.int_bound(B.dtype, b_zp))
        return bm.matmul(_a_centered(xp, A, a_zp, bm.f.dtype), amax)

    return product


def _b_centered(xp, B, b_zp):
    bf = B.astype(np.float64)
    if b_zp is not None:
        z = xp.asarray(b_zp).astype(np.float64)
        bf -= z.reshape(()) if z.size == 1 else z.reshape(-1)     # per column: (N,) on the last axis
    return bf


@array_kernel("MatMulInteger", since=10)
def matmul_integer(info):
    product = _int_product(info, 1, 3)

    def run(A, B, a_zp=None, b_zp=None):
        return (product(A, a_zp, B, b_zp).astype(np.int32),)

    return run


def _quant_out(xp, y, zp, out_dt):
    """Round-half-even, add the zero point, saturate to the output type."""
    out_dt = np.dtype(out_dt)
    if out_dt.kind in "iu":
        y = xp.rint(y)
        if zp is not None:
            y += xp.asarray(zp).astype(np.float64).reshape(() if np.size(zp) == 1 else np.shape(zp))
        lim = np.iinfo(out_dt)
        return xp.clip(y, lim.min, lim.max).astype(out_dt)
    # float8 outputs (QLinearMatMul-21): saturating conversion
    if zp is not None:
        y = y + xp.asarray(zp).astype(np.float64)
    fi = _finfo_max(out_dt)
    if fi is not None:
        y = xp.clip(y, -fi, fi)
    return y.astype(np.float32).astype(out_dt)


def _finfo_max(dt):
    try:
        import ml_dtypes

        return float(ml_dtypes.finfo(dt).max)
    except Exception:  # noqa: BLE001 - not an ml_dtypes float: no saturation bound
        return None


@array_kernel("QLinearMatMul", since=10)
def qlinear_matmul(info):
    xp = info.xp
    product = _int_product(info, 3, 5)

    def run(a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp):
        acc = product(a, a_zp, b, b_zp)
        sa = xp.asarray(a_scale).astype(np.float64)
        sb = xp.asarray(b_scale).astype(np.float64)
        sa = sa.reshape(()) if sa.size == 1 else sa.reshape(-1, 1)
        sb = sb.reshape(()) if sb.size == 1 else sb.reshape(-1)
        sy = xp.asarray(y_scale).astype(np.float64).reshape(())
        y = acc * (sa * sb / sy)        # float64 (acc is exact, the scale float64): as before the fast path
        out_dt = y_zp.dtype if y_zp is not None else a.dtype
        return (_quant_out(xp, y, y_zp, out_dt),)

    return run


# ---------------------------------------------------------------------------------------------
# Einsum / Dropout


@array_kernel("Einsum", since=12)
def einsum(info):
    xp = info.xp
    eq = info.attrs["equation"].replace(" ", "")
    n_in = len(info.input_names)

    def run(*ops):
        dt = ops[0].dtype
        if is_float(dt) and not _blas_ok(dt):
            ops = [o.astype(np.float32) for o in ops]
        # optimize=True routes two-operand contractions through BLAS (tensordot)
        y = xp.einsum(eq, *ops, optimize=n_in > 1)
        return (xp.asarray(y).astype(dt, copy=False),)

    return run


@kernel("Dropout", since=1)
def dropout_old(info):
    """Dropout before opset 12: ratio is an attribute; in inference (the engine's case) an identity.

    The mask is of the input's type before opset 10 and boolean from 10 on.
    """
    xp = info.xp
    bool_mask = info.opset >= 10

    def run(x):
        return x, xp.ones(x.shape, dtype=bool if bool_mask else x.dtype)

    return run


@kernel("Dropout", since=12, host_inputs=(1, 2))
def dropout(info):
    """Identity unless training_mode is true; then the mask keeps each element with probability 1 - ratio.

    With a ``seed`` attribute the mask is reproducible: every run draws from NumPy's legacy generator
    seeded with it (the same stream ``np.random.seed(seed); np.random.uniform`` gives).
    """
    xp = info.xp
    seed = info.attrs.get("seed")
    rng = np.random.default_rng() if seed is None else None

    def run(x, ratio=None, training_mode=None):
        training = training_mode is not None and bool(np.asarray(training_mode).reshape(-1)[0])
        r = 0.5 if ratio is None else float(np.asarray(ratio).reshape(-1)[0])
        if not training or r == 0.0:
            return x, xp.ones(x.shape, dtype=bool)
        u = np.random.RandomState(int(seed)).uniform(0.0, 1.0, x.shape) if seed is not None else \
            rng.uniform(0.0, 1.0, x.shape)
        mask = xp.asarray(u >= r)
        scale = 1.0 / (1.0 - r)
        cdt = _fdt(x.dtype)
        y = (x.astype(cdt) * mask * cdt.type(scale)).astype(x.dtype)
        return y, mask

    return run


# ---------------------------------------------------------------------------------------------
# Attention (opset 23/24/25) and RotaryEmbedding


def _onnx_float_dtype(code) -> np.dtype:
    from engineroom.plugin_sdk import np_dtype

    return np.dtype(np_dtype(int(code)))


def _to_heads(xp, x, heads):
    """(B, S, H*D) -> (B, H, S, D); 4-D input passes through."""
    if x.ndim == 4:
        return x
    B, S, HD = x.shape
    return x.reshape(B, S, heads, HD // heads).transpose(0, 2, 1, 3)


def _mm(xp, a, b, dt):
    """Matmul producing dtype ``dt``: BLAS for float32/float64, float32 accumulation rounded for narrow floats."""
    if _blas_ok(dt):
        return xp.matmul(a, b)
    return xp.matmul(a.astype(np.float32), b.astype(np.float32)).astype(dt)


@array_kernel("Attention", since=23)
def attention(info):
    """Scaled dot-product attention: MHA/GQA/MQA, 3-D or 4-D layout, KV cache, masks, causal/window, softcap.

    GQA is a reshape, not a repeat: queries are grouped as (B, kv_heads, group, S, D) so each key head
    broadcasts against its group. All masking is composed into one additive bias of shape
    (B|1, H|1, S, T) before one masked softmax.
    """
    xp = info.xp
    a = info.attrs
    is_causal = int(a.get("is_causal", 0))
    q_heads = int(a.get("q_num_heads", 0) or 0)
    kv_heads = int(a.get("kv_num_heads", 0) or 0)
    scale_attr = a.get("scale")
    softcap = float(a.get("softcap", 0.0) or 0.0)
    mode = int(a.get("qk_matmul_output_mode", 0))
    sp = a.get("softmax_precision")
    sm_dt = _onnx_float_dtype(sp) if sp else None
    left = int(a.get("left_window_size", -1))
    right = int(a.get("right_window_size", -1))
    want_qk = len(info.output_names) > 3 and info.output_names[3] != ""

    def run(Q, K, V, attn_mask=None, past_key=None, past_value=None, nonpad_kv_seqlen=None):
        # Every step is done in Q's type with NumPy's own promotion rules (the op's definition);
        # only the two matmuls leave it: BLAS for float32/float64, float32 accumulation otherwise.
        t1 = Q.dtype
        q3 = Q.ndim == 3
        q = _to_heads(xp, Q, q_heads)
        k = _to_heads(xp, K, kv_heads)
        v = _to_heads(xp, V, kv_heads)
        if past_key is not None:
            k = xp.concatenate([past_key, k], axis=2)
            v = xp.concatenate([past_value, v], axis=2)
        present_k, present_v = k, v
        B, Hq, S, D = q.shape
        Hkv, T = k.shape[1], k.shape[2]
        g = Hq // Hkv
        scale = float(scale_attr) if scale_attr is not None else 1.0 / np.sqrt(D)
        sq = t1.type(np.sqrt(scale))
        qs = q * sq
        ks = k * sq
        # (B, Hkv, g, S, D) @ (B, Hkv, 1, D, T) -> (B, Hq, S, T): GQA without repeating K
        scores = _mm(xp, qs.reshape(B, Hkv, g, S, D), ks[:, :, None].swapaxes(-1, -2), t1).reshape(B, Hq, S, T)
        qk_out = scores if (want_qk and mode == 0) else None
        if softcap > 0.0:
            scores = xp.tanh(scores / softcap) * softcap
        if want_qk and mode == 1:
            qk_out = scores
        bias = _attention_bias(xp, attn_mask, B, S, T, t1, is_causal, past_key, nonpad_kv_seqlen, left, right)
        if bias is not None:
            scores = scores + bias
        if want_qk and mode == 2:
            qk_out = scores
        st = np.dtype(sm_dt) if sm_dt is not None else scores.dtype
        rnd = storage_rounder(st)
        if rnd is not None:
            probs = softmax_array(xp, scores.astype(st).astype(np.float32), -1, rnd, zero_dead_rows=True)
        else:
            sc = scores.astype(st, copy=False)
            probs = softmax_array(xp, sc.copy() if sc is qk_out else sc, -1, None, zero_dead_rows=True)
        if bias is not None:
            # a query row with no attendable key (its whole bias is -inf) is zero, decided on the bias
            dead = xp.isneginf(xp.max(bias, axis=-1, keepdims=True))
            if bool(dead.any()):
                probs = xp.where(dead, xp.zeros((), probs.dtype), probs)
        probs = probs.astype(t1, copy=False)
        if want_qk and mode == 3:
            qk_out = probs
        Dv = v.shape[3]
        y = _mm(xp, probs.reshape(B, Hkv, g, S, T), v[:, :, None], t1).reshape(B, Hq, S, Dv)
        if q3:
            y = y.transpose(0, 2, 1, 3).reshape(B, S, Hq * Dv)
        outs = (y, present_k, present_v)
        if want_qk:
            outs += (qk_out.astype(t1, copy=False),)
        return outs

    return run


def _attention_bias(xp, attn_mask, B, S, T, cdt, is_causal, past_key, nonpad, left, right):
    """Additive bias (0 / -inf / float mask) of shape broadcastable to (B, H, S, T), or None."""
    cdt = np.dtype(cdt)
    neg, zero = cdt.type(-np.inf), cdt.type(0)
    bias = None
    if attn_mask is not None:
        m = attn_mask
        if m.shape[-1] < T:          # a short mask is padded with 'not allowed'
            pad_w = T - m.shape[-1]
            fill = False if m.dtype == np.bool_ else -np.inf
            m = xp.concatenate([m, xp.full(m.shape[:-1] + (pad_w,), fill, dtype=m.dtype)], axis=-1)
        if m.dtype == np.bool_:
            bias = xp.where(m, zero, neg)
        else:
            bias = m.astype(cdt)
        while bias.ndim < 4:
            bias = bias[None]
    # structural masks: causal frontier, padding of an external cache, sliding window
    need_offset = is_causal or left >= 0 or right >= 0
    allowed = None
    i = xp.arange(S).reshape(1, 1, S, 1)
    j = xp.arange(T).reshape(1, 1, 1, T)
    if nonpad is not None:
        npd = xp.asarray(nonpad).astype(np.int64).reshape(-1, 1, 1, 1)
        allowed = j < npd
        offset = npd - S
    elif past_key is not None:
        offset = past_key.shape[2]
    else:
        offset = 0
    if need_offset:
        p = i + offset
        conds = []
        if is_causal:
            conds.append(j <= p)
        if left >= 0:
            conds.append(j >= p - left)
        if right >= 0:
            conds.append(j <= p + right)
        for c in conds:
            allowed = c if allowed is None else (allowed & c)
    if allowed is not None:
        sb = xp.where(allowed, zero, neg)
        bias = sb if bias is None else bias + sb
    return bias


@array_kernel("RotaryEmbedding", since=23)
def rotary_embedding(info):
    """RoPE on (B, H, S, D) or (B, S, H*D) input: halves (or even/odd pairs) rotated by the cached angles.

    Computed in the input's own type (the definition's arithmetic); the output is written in place
    into one copy of the input so the unrotated tail costs nothing extra.
    """
    a = info.attrs
    interleaved = int(a.get("interleaved", 0))
    num_heads = int(a.get("num_heads", 0) or 0)
    rot_dim = int(a.get("rotary_embedding_dim", 0) or 0)

    def run(x, cos_cache, sin_cache, position_ids=None):
        if position_ids is not None:
            pid = position_ids.astype(np.int64)
            cos, sin = cos_cache[pid], sin_cache[pid]          # (B, S, rd/2)
        else:
            cos, sin = cos_cache, sin_cache
        if x.ndim == 4:
            xv = x                                             # (B, H, S, D)
            cos, sin = cos[:, None], sin[:, None]
        else:
            B, S, HD = x.shape
            xv = x.reshape(B, S, num_heads, HD // num_heads)   # (B, S, H, D)
            cos, sin = cos[:, :, None], sin[:, :, None]
        D = xv.shape[-1]
        rd = rot_dim or D
        half = rd // 2
        cos = cos.astype(x.dtype, copy=False)
        sin = sin.astype(x.dtype, copy=False)
        if interleaved:
            x1, x2 = xv[..., 0:rd:2], xv[..., 1:rd:2]
        else:
            x1, x2 = xv[..., :half], xv[..., half:rd]
        real = cos * x1 - sin * x2
        imag = sin * x1 + cos * x2
        y = xv.copy()
        if interleaved:
            y[..., 0:rd:2] = real
            y[..., 1:rd:2] = imag
        else:
            y[..., :half] = real
            y[..., half:rd] = imag
        return (y.reshape(x.shape),)

    return run
