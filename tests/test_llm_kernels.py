"""The decoder kernels of ``contrib_llm`` -- GroupQueryAttention, RotaryEmbedding (com.microsoft),
MatMulNBits, SimplifiedLayerNormalization, SkipSimplifiedLayerNormalization -- against onnxruntime on
one-node models, on the compiled and the NumPy path; and a MatMul model quantized by onnxruntime's own
MatMulNBitsQuantizer."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import make_model
from conftest import run_both as _run_both
from conftest import tensor_info as _vi
from jit_paths import JIT_PATHS, choose_path
from onnx import TensorProto, helper, numpy_helper

import engineroom as er

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is the oracle of these tests")
MS = "com.microsoft"
F = TensorProto.FLOAT
_rng = np.random.default_rng(11)


@pytest.fixture(params=JIT_PATHS)
def path(request, monkeypatch):
    """The compiled loops of ``_jit_llm`` (True) or ``_jit.load`` answering None (the NumPy paths)."""
    p = choose_path(request, monkeypatch, "llm")
    yield p


def _model(node, inputs, outputs, inits=(), opset=21):
    return make_model([node], inputs, outputs, inits, opset, opsets=[(MS, 1)], ir_version=10).SerializeToString()


def _close(got, ref, rtol=1e-5, what=""):
    got, ref = np.asarray(got), np.asarray(ref)
    assert got.shape == ref.shape, f"{what}: shape {got.shape} != onnxruntime's {ref.shape}"
    scale = max(float(np.max(np.abs(ref))), 1e-6) if ref.size else 1.0
    err = float(np.max(np.abs(got - ref))) / scale if ref.size else 0.0
    assert err <= rtol, f"{what}: max error {err:.3g} of the largest value (limit {rtol})"


def _f32(*shape, scale=1.0):
    return (_rng.standard_normal(shape) * scale).astype(np.float32)


# -- RMS normalizations ------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(2, 5, 64), (3, 48)])
def test_simplified_layer_norm(path, shape):
    h = shape[-1]
    node = helper.make_node("SimplifiedLayerNormalization", ["x", "g"], ["y", "inv"], axis=-1, epsilon=1e-5)
    g = numpy_helper.from_array(_f32(h), "g")
    model = _model(node, [_vi("x", F, list(shape))], [_vi("y", F, None), _vi("inv", F, None)], [g])
    ref, got = _run_both(model, {"x": _f32(*shape)})
    _close(got[0], ref[0], what="Y")
    _close(got[1], ref[1], what="inv_std_var")
    path.expect("rms_norm")


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("outputs", [("y", "", "", "s"), ("y",), ("y", "", "inv", "s")])
def test_skip_simplified_layer_norm(path, with_bias, outputs):
    B, S, h = 2, 3, 64
    ins = ["x", "skip", "g"] + (["b"] if with_bias else [])
    node = helper.make_node("SkipSimplifiedLayerNormalization", ins, list(outputs), domain=MS, epsilon=1e-6)
    inits = [numpy_helper.from_array(_f32(h), "g")] + ([numpy_helper.from_array(_f32(h), "b")] if with_bias else [])
    outs = [_vi(o, F, None) for o in outputs if o]
    model = _model(node, [_vi("x", F, [B, S, h]), _vi("skip", F, [B, S, h])], outs, inits)
    ref, got = _run_both(model, {"x": _f32(B, S, h), "skip": _f32(B, S, h)})
    for r, o, nm in zip(ref, got, [o for o in outputs if o]):
        _close(o, r, what=nm)
    path.expect("rms_norm")


# -- RotaryEmbedding ------------------------------------------------------------------------------------
@pytest.mark.parametrize("interleaved", [0, 1])
@pytest.mark.parametrize("layout", ["bsh", "bnsh", "offset", "partial"])
def test_rotary_embedding(path, interleaved, layout):
    B, S, N, H, M = 2, 5, 3, 32, 40
    attrs = {"interleaved": interleaved}
    half = H // 2
    if layout == "partial":
        attrs.update(num_heads=N, rotary_embedding_dim=16)
        half = 8
    cos = np.cos(_rng.random((M, half)) * 3).astype(np.float32)
    sin = np.sin(_rng.random((M, half)) * 3).astype(np.float32)
    x = _f32(B, N, S, H) if layout == "bnsh" else _f32(B, S, N * H)
    pos = np.array([7], np.int64) if layout == "offset" else _rng.integers(0, M, (B, S)).astype(np.int64)
    node = helper.make_node("RotaryEmbedding", ["x", "pos", "cos", "sin"], ["y"], domain=MS, **attrs)
    model = _model(node, [_vi("x", F, list(x.shape)), _vi("pos", TensorProto.INT64, list(pos.shape))],
                   [_vi("y", F, None)], [numpy_helper.from_array(cos, "cos"), numpy_helper.from_array(sin, "sin")])
    ref, got = _run_both(model, {"x": x, "pos": pos})
    _close(got[0], ref[0], what="rotary")
    path.expect("rope_rows", taken=layout != "bnsh")       # the compiled loop takes the 3-D layout


# -- GroupQueryAttention ---------------------------------------------------------------------------------
def _gqa_model(B, S, Hq, Hkv, D, P, attrs, packed=False, rotary=False, M=64):
    ins = ["q"] + (["", ""] if packed else ["k", "v"]) + ["pk", "pv", "seqlens_k", "total"]
    inits = []
    if rotary:
        ins += ["cos", "sin"]
        ang = np.arange(M)[:, None] / (10000 ** (np.arange(0, D, 2) / D))[None]
        inits = [numpy_helper.from_array(np.cos(ang).astype(np.float32), "cos"),
                 numpy_helper.from_array(np.sin(ang).astype(np.float32), "sin")]
    node = helper.make_node("GroupQueryAttention", ins, ["o", "present_k", "present_v"], domain=MS,
                            num_heads=Hq, kv_num_heads=Hkv, do_rotary=int(rotary), **attrs)
    qw = (Hq + 2 * Hkv) * D if packed else Hq * D
    vis = [_vi("q", F, [B, S, qw])]
    if not packed:
        vis += [_vi("k", F, [B, S, Hkv * D]), _vi("v", F, [B, S, Hkv * D])]
    vis += [_vi("pk", F, [B, Hkv, P, D]), _vi("pv", F, [B, Hkv, P, D]), _vi("seqlens_k", TensorProto.INT32, [B]),
            _vi("total", TensorProto.INT32, [])]
    return _model(node, vis, [_vi("o", F, None), _vi("present_k", F, None), _vi("present_v", F, None)], inits)


def _gqa_feed(B, S, Hq, Hkv, D, P, lens, total, packed=False):
    feed = {"q": _f32(B, S, (Hq + 2 * Hkv) * D if packed else Hq * D)}
    if not packed:
        feed.update(k=_f32(B, S, Hkv * D), v=_f32(B, S, Hkv * D))
    pk, pv = _f32(B, Hkv, P, D), _f32(B, Hkv, P, D)
    feed.update(pk=pk, pv=pv, seqlens_k=np.asarray(lens, np.int32) - 1, total=np.array(total, np.int32))
    return feed


GQA_CASES = {
    # name: (B, S, Hq, Hkv, D, past buffer length, tokens in the cache after the step per entry, total, attrs)
    "prompt": (2, 6, 4, 2, 16, 0, [6, 6], 6, {}),
    "decode": (2, 1, 4, 2, 16, 9, [10, 10], 10, {}),
    "decode_mqa": (3, 1, 6, 1, 32, 5, [6, 6, 6], 6, {}),
    "decode_shared_buffer_lengths_differ": (3, 1, 4, 2, 16, 12, [5, 9, 12], 12, {}),
    "prompt_window": (1, 9, 4, 2, 16, 0, [9], 9, {"local_window_size": 3}),
    "decode_window": (2, 1, 4, 2, 16, 11, [12, 12], 12, {"local_window_size": 4}),
    "subsequent_prompt": (1, 4, 4, 4, 16, 5, [9], 9, {}),
    "softcap_scale": (2, 1, 4, 2, 16, 7, [8, 8], 8, {"softcap": 2.5, "scale": 0.3}),
    "prompt_padded": (3, 7, 4, 2, 16, 0, [7, 4, 1], 7, {}),
    "prompt_softcap_window": (2, 8, 6, 3, 32, 0, [8, 8], 8, {"softcap": 1.5, "local_window_size": 5}),
    "prompt_head_size_24": (2, 5, 4, 2, 24, 0, [5, 5], 5, {}),         # 16 dims in a register, 8 past them
}


def _gqa_loop(S, lens):
    """The compiled loop GroupQueryAttention runs: one token with equal lengths, else the prompt loop."""
    return "gqa_decode" if S == 1 and len(set(lens)) == 1 else "gqa_prefill"


@pytest.mark.parametrize("case", list(GQA_CASES))
@pytest.mark.parametrize("packed", [False, True])
def test_group_query_attention(path, case, packed):
    B, S, Hq, Hkv, D, P, lens, total, attrs = GQA_CASES[case]
    model = _gqa_model(B, S, Hq, Hkv, D, P, attrs, packed)
    ref, got = _run_both(model, _gqa_feed(B, S, Hq, Hkv, D, P, lens, total, packed))
    for r, o, nm in zip(ref, got, ("output", "present_key", "present_value")):
        _close(o, r, what=nm)
    path.expect(_gqa_loop(S, lens))


@pytest.mark.parametrize("interleaved", [0, 1])
@pytest.mark.parametrize("case", ["prompt", "decode", "decode_shared_buffer_lengths_differ", "subsequent_prompt"])
def test_group_query_attention_rotary(path, case, interleaved):
    B, S, Hq, Hkv, D, P, lens, total, attrs = GQA_CASES[case]
    model = _gqa_model(B, S, Hq, Hkv, D, P, {"rotary_interleaved": interleaved}, rotary=True)
    ref, got = _run_both(model, _gqa_feed(B, S, Hq, Hkv, D, P, lens, total))
    for r, o, nm in zip(ref, got, ("output", "present_key", "present_value")):
        _close(o, r, what=nm)
    path.expect(_gqa_loop(S, lens))


def test_group_query_attention_cache_shared_through_iobinding():
    """past and present bound to one buffer: the new token's keys are written into it (nothing copied)
    and the results are onnxruntime's, which does the same."""
    B, S, Hq, Hkv, D, P = 2, 1, 4, 2, 16, 12
    model = _gqa_model(B, S, Hq, Hkv, D, P, {})
    feed = _gqa_feed(B, S, Hq, Hkv, D, P, [7, 7], 7)
    results = {}
    for name, mod in (("ort", ort), ("er", er)):
        s = mod.InferenceSession(model, providers=["CPUExecutionProvider"])
        io = s.io_binding()
        arrays = {n: feed[n].copy() for n in ("pk", "pv")}   # onnxruntime's OrtValue borrows them: kept alive
        bufs = {n: mod.OrtValue.ortvalue_from_numpy(arrays[n]) for n in ("pk", "pv")}
        for n in ("q", "k", "v", "seqlens_k", "total"):
            io.bind_cpu_input(n, feed[n])
        io.bind_ortvalue_input("pk", bufs["pk"])
        io.bind_ortvalue_input("pv", bufs["pv"])
        io.bind_output("o")
        io.bind_ortvalue_output("present_k", bufs["pk"])
        io.bind_ortvalue_output("present_v", bufs["pv"])
        s.run_with_iobinding(io)
        outs = io.get_outputs()
        results[name] = [outs[0].numpy().copy(), arrays["pk"].copy(), arrays["pv"].copy()]
        assert outs[1].data_ptr() == bufs["pk"].data_ptr()
    for r, o, nm in zip(results["ort"], results["er"], ("output", "present_key", "present_value")):
        _close(o, r, what=nm)
    # rows before the new token are the past, untouched; row 6 is the new key
    np.testing.assert_array_equal(results["er"][1][:, :, :6], feed["pk"][:, :, :6])
    assert not np.array_equal(results["er"][1][:, :, 6], feed["pk"][:, :, 6])


# -- MatMulNBits ------------------------------------------------------------------------------------------
def _quantize(w, bits, bs, zp_kind):
    """(K, N) -> MatMulNBits' packed B, scales and zero points (None / packed uint8 / float)."""
    K, N = w.shape
    nb = -(-K // bs)
    levels = (1 << bits) - 1
    wp = np.zeros((nb * bs, N), np.float32)
    wp[:K] = w
    blocks = wp.T.reshape(N, nb, bs)
    if zp_kind == "none":
        scale = np.abs(blocks).max(-1) / (levels // 2) + 1e-8
        zp = np.full((N, nb), (levels + 1) // 2, np.int64)
    else:
        lo, hi = np.minimum(blocks.min(-1), 0), np.maximum(blocks.max(-1), 0)
        scale = (hi - lo) / levels + 1e-8
        zp = np.clip(np.round(-lo / scale), 0, levels).astype(np.int64)
    q = np.clip(np.round(blocks / scale[..., None]) + zp[..., None], 0, levels).astype(np.uint8)
    per = 8 // bits
    packed = np.zeros((N, nb, bs // per), np.uint8)
    for i in range(per):
        packed |= q[..., i::per] << (bits * i)
    if zp_kind == "packed":
        cols = -(-nb * bits // 8)
        zpad = np.zeros((N, cols * per), np.uint8)
        zpad[:, :nb] = zp
        zps = np.zeros((N, cols), np.uint8)
        for i in range(per):
            zps |= zpad[:, i::per] << (bits * i)
    elif zp_kind == "float":
        zps = zp.astype(np.float32)
    else:
        zps = None
    return packed, scale.astype(np.float32), zps


@pytest.mark.parametrize("M", [1, 2, 3, 8, 33])
@pytest.mark.parametrize("bs,K,N", [(32, 128, 96), (16, 64, 40), (64, 256, 72), (128, 256, 24), (32, 72, 48)])
@pytest.mark.parametrize("zp_kind", ["packed", "none"])
def test_matmul_nbits(path, M, bs, K, N, zp_kind):
    packed, scales, zps = _quantize(_f32(K, N, scale=0.1), 4, bs, zp_kind)
    inits = [numpy_helper.from_array(packed, "B"), numpy_helper.from_array(scales, "scales")]
    ins = ["A", "B", "scales"]
    if zps is not None:
        inits.append(numpy_helper.from_array(zps, "zp"))
        ins.append("zp")
    node = helper.make_node("MatMulNBits", ins, ["Y"], domain=MS, K=K, N=N, bits=4, block_size=bs)
    A = _f32(2, M, K) if M == 3 else _f32(M, K)
    model = _model(node, [_vi("A", F, list(A.shape))], [_vi("Y", F, None)], inits)
    ref, got = _run_both(model, {"A": A})
    _close(got[0], ref[0], what="Y")
    if K % bs == 0:
        path.expect(_nbits_loop(A.size // K))


def _nbits_loop(rows):
    """The compiled loop MatMulNBits (4 bits, K a multiple of the block) runs for ``rows`` rows of A."""
    from engineroom.providers.cpu import contrib_llm

    if contrib_llm._wide == [True]:           # built for AVX-512: the 16-lane kernels
        return "matmul_nbits_gemv" if rows <= 2 else "matmul_nbits_tiles"
    if rows <= 2:
        return "matmul_nbits_kmajor"
    return "matmul_nbits_rows" if rows <= 8 else "dequant_nbits"


@pytest.fixture(params=["wide", "narrow"])
def registers(request, monkeypatch):
    """The tile kernel where the compiled module has 512-bit registers ("wide"), or the paths of a CPU
    without them ("narrow": the row-by-row loop, BLAS on tiles of weight rows), forced here."""
    from engineroom.providers.cpu import contrib_llm

    if request.param == "narrow":
        monkeypatch.setattr(contrib_llm, "_wide", [False])
    return request.param


@pytest.mark.parametrize("M", [1, 2, 16, 64, 200])
@pytest.mark.parametrize("bs,K,N,zp_kind", [(16, 48, 131, "packed"), (32, 512, 200, "float"),
                                            (128, 256, 67, "none"), (32, 96, 129, "packed"), (64, 1024, 64, "packed")])
@pytest.mark.parametrize("threads", [1, 2])
def test_matmul_nbits_many_rows(path, registers, monkeypatch, M, bs, K, N, zp_kind, threads):
    """Prefill-sized products (the tile kernel: 6-row blocks, then pairs and a last odd row) and one or
    two rows (the GEMV), a last partial 64-column tile where N is not a multiple of 64, odd N, with a
    bias, zero points packed, float or absent, block sizes 16 to 128, on one and two threads (tile
    ranges split over the pool)."""
    from engineroom.providers.cpu import contrib_llm

    parts = []
    real = contrib_llm.parallel_ranges

    def counted(fn, n, work):                 # the ranges the pool ran
        real(lambda i, j: (parts.append((i, j)), fn(i, j)), n, work)
    monkeypatch.setattr(contrib_llm, "parallel_ranges", counted)
    A = _f32(M // 4, 4, K) if M == 64 else _f32(M, K)
    model = _nbits_with_bias(K, N, 4, bs, zp_kind, list(A.shape))
    so = er.SessionOptions()
    so.intra_op_num_threads = threads
    ref, got = _run_both(model, {"A": A}, sess_options=so)
    _close(got[0], ref[0], what="Y")
    path.expect(_nbits_loop(M))
    if path.jit and registers == "wide":
        tiles = -(-N // 64)
        assert sorted(parts)[0][0] == 0 and sorted(parts)[-1][1] == tiles
        if threads == 1:
            assert len(parts) == 1, f"1 thread: ranges {parts}"
        elif M * N * K >= (1 << 22) and tiles > 1:          # _threadpool.MIN_QUIET_WORK: split in any mode
            assert len(parts) > 1, f"2 threads, {M}x{K}x{N}: one range {parts}"


def test_matmul_nbits_tile_ranges(path):
    """The tile kernel over arbitrary ranges of its column tiles (as the pool's threads take them) writes
    exactly those columns: the whole product agrees with onnxruntime however it is cut."""
    if not path.jit:
        pytest.skip("the tile ranges are the compiled kernel's")
    from engineroom.providers.cpu import contrib_llm

    K, N, bs = 128, 300, 32
    packed, scales, zps = _quantize(_f32(K, N, scale=0.1), 4, bs, "packed")
    inits = [numpy_helper.from_array(packed, "B"), numpy_helper.from_array(scales, "scales"),
             numpy_helper.from_array(zps, "zp")]
    node = helper.make_node("MatMulNBits", ["A", "B", "scales", "zp"], ["Y"], domain=MS, K=K, N=N, bits=4,
                            block_size=bs)
    model = _model(node, [_vi("A", F, ["M", K])], [_vi("Y", F, None)], inits)
    cuts = [0, 1, 3, 4, 5]                    # 5 tiles of 64 columns, the last partial

    def ranges(fn, n, work):
        assert n == 5
        for i, j in zip(cuts, cuts[1:]):
            fn(i, j)
    old = contrib_llm.parallel_ranges
    contrib_llm.parallel_ranges = ranges
    try:
        for M in (13, 1):                     # the tile kernel, the GEMV
            ref, got = _run_both(model, {"A": _f32(M, K)})
            _close(got[0], ref[0], what=f"Y ({M} rows)")
            path.expect(_nbits_loop(M))
    finally:
        contrib_llm.parallel_ranges = old


def _nbits_with_bias(K, N, bits, bs, zp_kind, a_shape):
    """A one-node MatMulNBits model with random weights quantized to ``bits`` and a bias input."""
    packed, scales, zps = _quantize(_f32(K, N, scale=0.1), bits, bs, zp_kind)
    inits = [numpy_helper.from_array(packed, "B"), numpy_helper.from_array(scales, "scales"),
             numpy_helper.from_array(_f32(N), "bias")]
    zp_name = ""
    if zps is not None:
        inits.append(numpy_helper.from_array(zps, "zp"))
        zp_name = "zp"
    node = helper.make_node("MatMulNBits", ["A", "B", "scales", zp_name, "", "bias"], ["Y"], domain=MS, K=K, N=N,
                            bits=bits, block_size=bs)
    return _model(node, [_vi("A", F, a_shape)], [_vi("Y", F, None)], inits)


@pytest.mark.parametrize("bits", [8, 2])
@pytest.mark.parametrize("zp_kind", ["packed", "float", "none"])
def test_matmul_nbits_other_widths_and_bias(bits, zp_kind):
    K, N, bs = 64, 40, 32
    model = _nbits_with_bias(K, N, bits, bs, zp_kind, [5, K])
    feed = {"A": _f32(5, K)}
    try:
        so = ort.SessionOptions()
        ref = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"]).run(None, feed)
    except Exception as e:  # noqa: BLE001 - onnxruntime's CPU kernel does not take every form
        pytest.skip(f"onnxruntime cannot run this form to compare with: {str(e)[:120]}")
    got = er.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, feed)
    _close(got[0], ref[0], what="Y")


@pytest.mark.parametrize("symmetric", [True, False])
def test_matmul_quantized_by_onnxruntimes_quantizer(path, symmetric):
    """A MatMul model quantized by onnxruntime.quantization's MatMulNBitsQuantizer (4 bits): engineroom
    runs the MatMulNBits it writes as onnxruntime does."""
    quant = pytest.importorskip("onnxruntime.quantization.matmul_nbits_quantizer",
                                reason="onnxruntime.quantization is not installed")
    K, N = 256, 96
    w = numpy_helper.from_array(_f32(K, N, scale=0.05), "W")
    g = helper.make_graph([helper.make_node("MatMul", ["A", "W"], ["Y"])], "mm", [_vi("A", F, ["b", K])],
                          [_vi("Y", F, ["b", N])], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    q = quant.MatMulNBitsQuantizer(m, block_size=32, is_symmetric=symmetric, bits=4)
    q.process()
    qm = q.model.model
    assert [n.op_type for n in qm.graph.node] == ["MatMulNBits"]
    for rows in (20, 4, 1):
        ref, got = _run_both(qm.SerializeToString(), {"A": _f32(rows, K)})
        _close(got[0], ref[0], what=f"Y ({rows} rows)")
    path.expect(_nbits_loop(1))


# -- MatMul by a constant weight, a few rows (batched decoding) --------------------------------------------
@pytest.mark.parametrize("shape,n", [((1, 64), 40), ((2, 64), 40), ((4, 1, 64), 40), ((8, 64), 40), ((9, 64), 40),
                                     ((3, 2, 64), 40), ((3, 67), 43), ((5, 1, 67), 42), ((7, 67), 41)])
def test_matmul_few_rows(path, shape, n):
    """Blocks of 4 rows of a and of 4 weight columns, then the 2- and 1-row and the column remainders."""
    w = numpy_helper.from_array(_f32(shape[-1], n), "W")
    node = helper.make_node("MatMul", ["A", "W"], ["Y"])
    model = _model(node, [_vi("A", F, list(shape))], [_vi("Y", F, None)], [w])
    ref, got = _run_both(model, {"A": _f32(*shape)})
    _close(got[0], ref[0], what="Y")
    rows = int(np.prod(shape[:-1]))
    path.expect("gemm_few_rows", taken=2 <= rows <= 8)


# -- errors -----------------------------------------------------------------------------------------------
def test_group_query_attention_unsupported_input_is_named():
    node = helper.make_node("GroupQueryAttention", ["q", "k", "v", "", "", "sl", "t", "", "", "", "bias"], ["o"],
                            domain=MS, num_heads=2, kv_num_heads=2)
    model = _model(node, [_vi("q", F, [1, 1, 32]), _vi("k", F, [1, 1, 32]), _vi("v", F, [1, 1, 32]),
                          _vi("sl", TensorProto.INT32, [1]), _vi("t", TensorProto.INT32, []),
                          _vi("bias", F, [1, 2, 1, 1])], [_vi("o", F, None)])
    with pytest.raises(Exception, match="attention_bias"):
        er.InferenceSession(model, providers=["CPUExecutionProvider"])


def test_rotary_embedding_position_past_the_caches_is_named():
    cos = numpy_helper.from_array(np.ones((4, 8), np.float32), "cos")
    sin = numpy_helper.from_array(np.zeros((4, 8), np.float32), "sin")
    node = helper.make_node("RotaryEmbedding", ["x", "pos", "cos", "sin"], ["y"], domain=MS)
    model = _model(node, [_vi("x", F, [1, 2, 16]), _vi("pos", TensorProto.INT64, [1, 2])], [_vi("y", F, None)],
                   [cos, sin])
    s = er.InferenceSession(model, providers=["CPUExecutionProvider"])
    with pytest.raises(Exception, match="outside the caches"):
        s.run(None, {"x": _f32(1, 2, 16), "pos": np.array([[3, 4]], np.int64)})
    assert s.run(None, {"x": _f32(1, 2, 16), "pos": np.array([[2, 3]], np.int64)})[0].shape == (1, 2, 16)



# -- attention over heads with a cache (the fusion of a Hugging Face GPT-2 decoder's attention) ------------
@pytest.mark.parametrize("S", [1, 3])
@pytest.mark.parametrize("scale_op", ["Div", "Mul"])
@pytest.mark.parametrize("mask_shape,with_bias", [(None, False), ((1, 1, "S", "T"), True), (("B", 1, "S", "T"), False),
                                                  (None, True)])
def test_heads_attention_fused_matches_onnxruntime(path, tmp_path, S, scale_op, mask_shape, with_bias):
    """Transpose(K) -> MatMul -> Div|Mul -> [Where(mask, ., float32 min)] -> [Add bias] -> Softmax -> MatMul
    V fuses into ScaledDotProductAttention, one query per head (a decoding step) or several. The
    bias reaches float32 min at some keys, so min + min overflows to -inf there, as unfused. Both paths:
    the Softmax step's compiled pass, and NumPy."""
    import onnx

    B, H, T, D, Dv = 2, 3, 9, 8, 5
    fmin = np.finfo(np.float32).min
    dims = {"B": B, "S": S, "T": T}
    inits = [numpy_helper.from_array(np.array(np.sqrt(D) if scale_op == "Div" else 0.3, np.float32), "c"),
             numpy_helper.from_array(np.array(fmin, np.float32), "fill")]
    nodes = [helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
             helper.make_node("MatMul", ["q", "kt"], ["s0"]),
             helper.make_node(scale_op, ["s0", "c"], ["s1"])]
    ins = [_vi("q", F, [B, H, S, D]), _vi("k", F, [B, H, T, D]), _vi("v", F, [B, H, T, Dv])]
    rng = np.random.default_rng(S)
    feed = {"q": _f32(B, H, S, D), "k": _f32(B, H, T, D), "v": _f32(B, H, T, Dv)}
    last = "s1"
    if mask_shape is not None:
        shape = [dims.get(d, d) for d in mask_shape]
        nodes.append(helper.make_node("Where", ["mask", last, "fill"], ["s2"]))
        ins.append(_vi("mask", TensorProto.BOOL, shape))
        m = rng.random(shape) > 0.3
        m[..., 0] = True                         # every row keeps a key
        feed["mask"] = m
        last = "s2"
    if with_bias:
        nodes.append(helper.make_node("Add", [last, "bias"], ["s3"]))
        ins.append(_vi("bias", F, [B, 1, 1, T]))
        bias = np.zeros((B, 1, 1, T), np.float32)
        bias[..., -2:] = fmin                    # padded keys
        feed["bias"] = bias
        last = "s3"
    nodes += [helper.make_node("Softmax", [last], ["p"], axis=-1), helper.make_node("MatMul", ["p", "v"], ["y"])]
    g = helper.make_graph(nodes, "g", ins, [_vi("y", F, None)], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()
    ref = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, feed)
    so = er.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    got = er.InferenceSession(model, so, providers=["CPUExecutionProvider"]).run(None, feed)
    assert [n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node] == ["ScaledDotProductAttention"]
    _close(got[0], ref[0], rtol=1e-5, what="Y")


def test_heads_attention_not_fused_where_the_scores_are_read_elsewhere(tmp_path):
    """The scores are also a graph output: nothing fuses past the scale, and both outputs are right."""
    import onnx

    nodes = [helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
             helper.make_node("MatMul", ["q", "kt"], ["s"]),
             helper.make_node("Softmax", ["s"], ["p"], axis=-1), helper.make_node("MatMul", ["p", "v"], ["y"])]
    g = helper.make_graph(nodes, "g", [_vi("q", F, [1, 2, 1, 4]), _vi("k", F, [1, 2, 5, 4]), _vi("v", F, [1, 2, 5, 4])],
                          [_vi("y", F, None), _vi("s", F, None)])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()
    feed = {"q": _f32(1, 2, 1, 4), "k": _f32(1, 2, 5, 4), "v": _f32(1, 2, 5, 4)}
    ref = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, feed)
    so = er.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    got = er.InferenceSession(model, so, providers=["CPUExecutionProvider"]).run(None, feed)
    assert "ScaledDotProductAttention" not in [n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node]
    for g_, r in zip(got, ref):
        _close(g_, r, rtol=1e-5)
