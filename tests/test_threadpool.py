"""The CPU provider's worker pool (providers/cpu/_threadpool.py): chunked GEMMs give what one BLAS call
gives, errors reach the caller, concurrent callers do not mix their chunks, and the process's BLAS
thread count is back where it was after every call; in the steady mode (sleeping workers, large splits)
and the quick mode (spinning workers, small splits) alike."""
from __future__ import annotations

import contextlib
import threading
import time

import numpy as np
import pytest

from engineroom.providers.cpu import _threadpool as tp

threadpoolctl = pytest.importorskip("threadpoolctl", reason="threadpoolctl is needed to read BLAS's thread count")


@contextlib.contextmanager
def steady():
    """What a run in the steady mode (another process keeps a core busy) is inside: BLAS held at one
    thread, the pool splitting large work (the CPU provider's run_scope)."""
    tp.hold_blas()
    try:
        yield
    finally:
        tp.release_blas()


def quick():
    from conftest import quick_mode

    return quick_mode()


@contextlib.contextmanager
def one_thread():
    """What a run at intra_op_num_threads = 1 is inside: BLAS at one thread, nothing held or split."""
    with threadpoolctl.threadpool_limits(1, user_api="blas"):
        tp._begin(False)
        try:
            yield
        finally:
            tp._end()


MODES = [pytest.param(steady, id="steady"), pytest.param(quick, id="quick")]


def _blas_threads() -> list[int]:
    """Thread counts of the BLAS libraries that have threads (oneMKL on its sequential layer, as the provider
    loads it, has none to hold)."""
    return [i["num_threads"] for i in threadpoolctl.threadpool_info()
            if i["user_api"] == "blas" and i.get("threading_layer") != "sequential"]


SHAPES = [
    ((64, 576), (576, 3136)),          # a wide conv: split along the columns
    ((3136, 64), (64, 96)),            # a tall one: split along the rows
    ((16, 64, 96), (16, 96, 200)),     # a batch of equal GEMMs (Winograd): split along the batch
    ((16, 64, 96), (96, 300)),         # a batch times one 2-D weight
    ((2, 1, 600, 160), (3, 160, 180)),  # broadcast batch: split along the rows
    ((1, 7), (7, 5)),                  # tiny: one BLAS call
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("sa,sb", SHAPES)
@pytest.mark.parametrize("with_out", [False, True])
def test_chunked_matmul_matches_one_blas_call(sa, sb, with_out, mode):
    rng = np.random.default_rng(0)
    a = rng.standard_normal(sa).astype(np.float32)
    b = rng.standard_normal(sb).astype(np.float32)
    want = np.matmul(a.astype(np.float64), b.astype(np.float64))
    before = _blas_threads()
    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        out = np.empty(want.shape, np.float32) if with_out else None
        with mode():
            got = tp.matmul(a, b, out)
            assert _blas_threads() == [1] * len(before)
        assert _blas_threads() == [2] * len(before)
        np.testing.assert_array_equal(tp.matmul(a, b), np.matmul(a, b))   # outside: NumPy's own call
    if with_out:
        assert got is out
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-4 * np.sqrt(sa[-1]))
    assert _blas_threads() == before


@pytest.mark.parametrize("mode", MODES)
def test_strided_output_slices(mode):
    """Column chunks write into a row-strided slice of a bigger buffer."""
    rng = np.random.default_rng(1)
    a = rng.standard_normal((96, 512)).astype(np.float32)
    b = rng.standard_normal((512, 900)).astype(np.float32)
    big = np.zeros((96, 1000), np.float32)
    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        with mode():
            tp.matmul(a, b, big[:, 50:950])
    np.testing.assert_allclose(big[:, 50:950], a.astype(np.float64) @ b, rtol=2e-5, atol=1e-2)
    assert not big[:, :50].any() and not big[:, 950:].any()


def test_error_in_a_chunk_reaches_the_caller_and_the_pool_keeps_working():
    pool = tp.WorkerPool(2)
    seen = []

    def fn(i):
        if i == 5:
            raise ValueError("chunk 5")
        seen.append(i)

    with pytest.raises(ValueError, match="chunk 5"):
        pool.run(fn, [(i,) for i in range(8)])
    assert sorted(seen) == [0, 1, 2, 3, 4, 6, 7]
    seen.clear()
    pool.run(fn, [(i,) for i in range(5)])
    assert sorted(seen) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("mode", MODES)
def test_concurrent_callers(mode):
    """Four threads' GEMMs at once: one posts to the workers at a time, the others run theirs alone."""
    if mode is quick:
        with threadpoolctl.threadpool_limits(2, user_api="blas"), quick():
            pass                    # skips here where the quick mode is unavailable
    rng = np.random.default_rng(2)
    pairs = [(rng.standard_normal((200, 300)).astype(np.float32), rng.standard_normal((300, 400)).astype(np.float32))
             for _ in range(4)]
    want = [a.astype(np.float64) @ b for a, b in pairs]
    errors = []

    def work(i):
        try:
            for _ in range(10):
                with mode():        # each caller holds, as overlapping runs do
                    np.testing.assert_allclose(tp.matmul(*pairs[i]), want[i], rtol=2e-5, atol=1e-2)
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    before = _blas_threads()
    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        ts = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert _blas_threads() == [2] * len(before)
    assert not errors, errors[0]
    assert _blas_threads() == before


def _ranges(mode, threads: int, n: int, work: int) -> list[tuple[int, int]]:
    """The ranges ``parallel_ranges`` called its function with, at ``threads`` BLAS threads inside ``mode``,
    after checking that they covered every index once."""
    seen = np.zeros(n, np.int64)
    calls = []

    def fn(lo, hi):
        calls.append((lo, hi))
        seen[lo:hi] += 1

    with threadpoolctl.threadpool_limits(threads, user_api="blas"), mode():
        tp.parallel_ranges(fn, n, work)
    assert (seen == 1).all()
    return calls


@pytest.mark.parametrize("n,work", [(1000, 1 << 20), (3, 1 << 20), (1000, 100), (1, 1 << 20)])
def test_quick_parallel_ranges_cover_every_index_once(n, work):
    calls = _ranges(quick, 2, n, work)
    assert len(calls) == (1 if work < tp.QUICK_MIN_WORK or n == 1 else min(n, 2))


def test_spinning_worker_takes_parts_and_wakes_after_sleeping():
    """In the quick mode the worker picks up a part while the caller works on its own; after it slept
    (longer than its spin), the next task wakes it."""
    names = []

    def fn(i):
        names.append(threading.current_thread().name)
        time.sleep(0.02)            # releases the GIL, as the compiled loops and BLAS do

    with threadpoolctl.threadpool_limits(2, user_api="blas"), quick():
        pool = tp._pool(2)
        for pause in (0.0, 0.05):
            time.sleep(pause)       # 0.05 s: past SPIN_QUIET_S, the worker sleeps on the condition
            names.clear()
            pool.run(fn, [(0,), (1,)])
            assert len(set(names)) == 2, names      # the caller took one part, the worker the other


@pytest.mark.parametrize("n,work", [(1000, 1 << 22), (3, 1 << 22), (1000, 100), (1, 1 << 22)])
def test_parallel_ranges_cover_every_index_once(n, work, monkeypatch):
    # a stall seen by an earlier test (a loaded machine) must not make the pool stand aside here
    monkeypatch.setattr(tp._calm, "until", 0.0)
    monkeypatch.setattr(tp._calm, "span", 0.0)
    calls = _ranges(steady, 2, n, work)
    assert len(calls) == (1 if work < tp.MIN_PARALLEL_WORK or n == 1 else min(n, 2 * tp.CHUNKS_PER_THREAD))
    assert _ranges(steady, 1, n, work) == [(0, n)]


@pytest.fixture(params=["openblas", "mkl"])
def gemm_blas(request, monkeypatch):
    """The compiled GEMM calls pointed at one BLAS for the test: NumPy's OpenBLAS (on pthreads) or oneMKL
    on its sequential layer (the `mkl` extra); skips where that one is not there."""
    if tp._par_kernels() is None:
        pytest.skip("the compiled GEMM calls need numba (jit extra)")
    tp._blas.outside()                          # the process's own lookup first: the test's choice stays
    if request.param == "mkl":
        fns, _, why = tp._load_mkl()
    else:
        fns = tp._gemm_pointers(threadpoolctl.ThreadpoolController().select(user_api="blas").lib_controllers)
        why = "this NumPy's BLAS is not OpenBLAS on pthreads"
    if fns is None:
        pytest.skip(f"{request.param}: {why}")
    monkeypatch.setattr(tp._blas, "_find", lambda: None)
    monkeypatch.setattr(tp._blas, "gemm", fns)
    monkeypatch.setattr(tp._blas, "mkl", request.param == "mkl")
    return request.param


def _compiled_split_pool():
    """The 2-thread pool with its worker in the compiled wait that serves GEMM parts (skips where the
    compiled split or a BLAS to call is missing)."""
    if tp._par_kernels() is None:
        pytest.skip("the compiled GEMM split needs numba (jit extra)")
    tp._blas.outside()
    if tp._blas.gemm is None:
        pytest.skip("the compiled GEMM split calls OpenBLAS on pthreads or oneMKL; neither is loaded")
    pool = tp._pool(2)
    pool.spin_for(False)                        # a quiet machine's spin (an earlier test may have set another)
    pool.run(lambda i: None, [(0,), (1,)])      # the worker started
    pool.wake()
    # until the worker takes a part: OpenBLAS's own threads spin ~0.1 s after a multi-threaded GEMM (an
    # earlier test's), and meanwhile the scheduler puts the worker on the caller's core, where the caller
    # finishes first and takes the worker's part back
    a, b, out = np.ones((1, 64, 64), np.float32), np.ones((1, 64, 64), np.float32), np.empty((1, 64, 64), np.float32)
    deadline = time.perf_counter() + 5
    while time.perf_counter() < deadline:
        pool.wake()
        gen = pool._nstate[0]
        pool.gemm(a, b, out)
        if pool._nstate[0] == gen + 1 and pool._nstate[9] == (gen + 1) * 4:
            break
        time.sleep(1e-3)
    return pool


@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("sa,sb,ta,tb", [
    ((300, 70), (70, 40), False, False),        # tall: rows split
    ((40, 70), (70, 300), False, False),        # wide: columns split
    ((300, 70), (70, 40), True, False),         # a stored transposed (a conv's columns^T)
    ((40, 70), (70, 300), False, True),
    ((6, 50, 30), (6, 30, 20), False, False),   # a batch: batches split
    ((6, 50, 30), (30, 20), False, True),       # a batch times one shared matrix
    ((1, 33, 17), (3, 17, 65), True, True),     # one shared matrix times a batch
])
def test_compiled_gemm_split_matches_numpy(dt, sa, sb, ta, tb, gemm_blas):
    """``WorkerPool.gemm``: the caller and the worker each run part of the product inside one compiled call,
    BLAS (OpenBLAS or oneMKL) called through its C entry point; every layout it takes gives NumPy's product,
    and the worker took parts (its part word done at a new generation)."""
    rng = np.random.default_rng(0)

    def operand(shape, t):
        x = rng.standard_normal(shape[:-2] + shape[-2:][::-1] if t else shape).astype(dt)
        return x.swapaxes(-1, -2) if t else x

    a, b = operand(sa, ta), operand(sb, tb)
    want = np.matmul(a.astype(np.float64), b.astype(np.float64))
    with threadpoolctl.threadpool_limits(2, user_api="blas"), quick():
        pool = _compiled_split_pool()
        by_worker, i, deadline = 0, 0, time.perf_counter() + 5
        # every result checked: 20 products at least, then until the worker took a part (on a machine whose
        # other core is busy the worker may wait for a time slice: woken again, with a pause between tries)
        while i < 20 or (not by_worker and time.perf_counter() < deadline):
            out = np.full(want.shape, np.nan, dt)
            gen = pool._nstate[0]
            assert pool.gemm(a, b, out)
            np.testing.assert_allclose(out, want, rtol=1e-5 if dt == np.float32 else 1e-12,
                                       atol=1e-4 if dt == np.float32 else 1e-10)
            word = pool._nstate[9]
            by_worker += int(pool._nstate[0] == gen + 1 and word >> 2 == gen + 1 and word & 3 == 0)
            i += 1
            if i >= 20 and not by_worker:
                pool.wake()
                time.sleep(1e-3)
        assert by_worker > 0


def test_compiled_gemm_split_declines_what_it_does_not_take():
    with threadpoolctl.threadpool_limits(2, user_api="blas"), quick():
        pool = _compiled_split_pool()
        a = np.ones((40, 80), np.float32)
        b = np.ones((40, 30), np.float32)
        out = np.zeros((40, 30), np.float32)
        assert not pool.gemm(a[:, ::2], b, out)                 # strided in both axes
        assert not pool.gemm(a[:, :40].astype(np.int32), b.astype(np.int32), out.astype(np.int32))
        assert not pool.gemm(a[:, :40], b.astype(np.float64), out)      # mixed dtypes
        assert not pool.gemm(np.ones((2, 3, 40, 40), np.float32), np.ones((3, 1, 40, 30), np.float32),
                             np.zeros((2, 3, 40, 30), np.float32))  # a batch broadcast other than one matrix
        assert not pool.gemm(a[:, :41], b, out)                      # sizes that do not chain
        assert not pool.gemm(a[:, :40], b, np.zeros((40, 31), np.float32))
        assert not out.any()
        buf = np.ones(1600, np.float32)         # an output over an input
        assert not pool.gemm(buf.reshape(40, 40), b, buf[:1200].reshape(40, 30))
        assert (buf == 1).all()


def test_compiled_gemm_split_takes_back_a_part_no_worker_took(gemm_blas):
    """A worker counted as waiting that never takes its part (its core taken, or gone): the caller runs
    that part itself after its own, and marks it taken back."""
    par_gemm = tp._par_kernels()[1][np.dtype(np.float32)]
    state = np.zeros(24, np.int64)
    state[8] = 1                        # worker 1 "in its wait", but no thread is there
    desc = np.zeros(tp._PAR_DESC * 2, np.int64)
    rng = np.random.default_rng(3)
    a = rng.standard_normal((1, 200, 50)).astype(np.float32)
    b = rng.standard_normal((1, 50, 60)).astype(np.float32)
    out = np.full((1, 200, 60), np.nan, np.float32)
    with threadpoolctl.threadpool_limits(1, user_api="blas"):
        par_gemm(state, desc, tp._blas.gemm, a, b, out, 0, 0, 2, 16)
    np.testing.assert_allclose(out, a.astype(np.float64) @ b, rtol=1e-5, atol=1e-4)
    assert state[9] == 1 * 4 + 3 and state[1] == 0      # generation 1, taken back; the caller lock free


def _spy_gemm_calls(monkeypatch) -> list:
    calls: list = []
    real = tp._gemm_call

    def spy(a, b, out):
        calls.append(a.shape)
        return real(a, b, out)
    monkeypatch.setattr(tp, "_gemm_call", spy)
    return calls


def test_every_mode_sends_a_product_to_the_same_blas(gemm_blas, monkeypatch):
    """Where oneMKL is loaded, the provider's products from MKL_MIN_MACS go to it in every mode (a run on
    one thread, quick, steady, OpenBLAS's threads), split or not, and each is bitwise the same in every
    mode: a session's results depend neither on its mode nor on the machine's load (K = 1024: OpenBLAS's
    last bits differ there). With OpenBLAS's pointers only the quick mode's splits take the compiled call.
    Every product is NumPy's to rounding."""
    calls = _spy_gemm_calls(monkeypatch)
    rng = np.random.default_rng(2)
    shapes = [((96, 1024), (1024, 130)), ((3, 40, 700), (700, 50)), ((64, 1024), (1024, 768)), ((8, 8), (8, 8))]
    f = lambda shape: rng.standard_normal(shape).astype(np.float32)     # noqa: E731
    ops = [(f(sa), f(sb)) for sa, sb in shapes]
    results = {}
    with one_thread():
        results["one thread"] = [tp.matmul(a, b) for a, b in ops]
    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        with quick():
            results["quick"] = [tp.matmul(a, b) for a, b in ops]
        with steady():
            results["steady"] = [tp.matmul(a, b) for a, b in ops]
        results["OpenBLAS's threads"] = [tp.matmul(a, b) for a, b in ops]      # no run scope: allow_spinning "1"
    for mode, got in results.items():
        for (a, b), g in zip(ops, got):
            np.testing.assert_allclose(g, a.astype(np.float64) @ b, rtol=1e-4, atol=1e-3, err_msg=mode)
    if gemm_blas == "mkl":
        assert len(calls) == 3 * len(results)           # all but the 512-MAC product, in every mode
        for mode, got in results.items():
            assert all(np.array_equal(g, f) for g, f in zip(got, results["one thread"])), mode
    else:
        assert len(calls) == 3                          # the quick mode's three splits


def test_conv_bands_and_attention_give_the_same_bits_in_every_mode(gemm_blas, monkeypatch):
    """Kernels that run their GEMMs inside a compiled loop where they split (a banded im2col conv, the
    attention heads) give the same bits in every mode: split in a quick run, over the Python pool in a steady
    one, on one thread (with oneMKL, their other paths call it too)."""
    import onnx
    from onnx import TensorProto, helper

    import engineroom as ort
    from engineroom.providers.cpu.conv import _ConvPlan

    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, 48, 91, 85)).astype(np.float32)         # two bands of 24 output rows
    w = (rng.standard_normal((40, 48, 3, 3)) * 0.1).astype(np.float32)
    plan = _ConvPlan(np, {"strides": (2, 2), "pads": (1, 1, 1, 1)}, w)
    heads, S, D = 2, 1100, 16                                            # PV's K: 1100 keys
    g = helper.make_graph(
        [helper.make_node("MultiHeadAttention", ["q", "k", "v"], ["y"], domain="com.microsoft", num_heads=heads)],
        "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, S, heads * D]) for n in "qkv"],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model = onnx.shape_inference.infer_shapes(model).SerializeToString()
    feed = {n: rng.standard_normal((1, S, heads * D)).astype(np.float32) for n in "qkv"}
    so = ort.SessionOptions()
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")        # held: quick or steady below
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    got = {}
    with one_thread():
        got["one thread"] = plan(x)
    with threadpoolctl.threadpool_limits(1, user_api="blas"):
        got["one thread", "attention"] = sess.run(None, feed)[0]
    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        with quick():
            got["quick"] = plan(x)
        with steady():
            got["steady"] = plan(x)
        for busy in (False, True):
            monkeypatch.setattr(tp._Load, "contended", lambda self, busy=busy: busy)
            got["steady" if busy else "quick", "attention"] = sess.run(None, feed)[0]
    for mode in ("quick", "steady"):
        np.testing.assert_array_equal(got[mode], got["one thread"], err_msg=mode)
        np.testing.assert_array_equal(got[mode, "attention"], got["one thread", "attention"], err_msg=mode)


def test_a_short_run_that_splits_keeps_its_mode(monkeypatch):
    """A session whose runs take under AutoMode.TINY_S only because the quick mode split its GEMM does not
    end the learning as "tiny" (which would drop the split: a 4x4 ConvTranspose 80 against 130 us)."""
    from onnx import TensorProto, helper

    import engineroom as ort

    g = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["y"])], "g",
                          [helper.make_tensor_value_info("a", TensorProto.FLOAT, [256, 256]),
                           helper.make_tensor_value_info("b", TensorProto.FLOAT, [256, 128])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [256, 128])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    rng = np.random.default_rng(6)
    feed = {"a": rng.standard_normal((256, 256)).astype(np.float32),
            "b": rng.standard_normal((256, 128)).astype(np.float32)}
    monkeypatch.setattr(tp._Load, "contended", lambda self: False)
    monkeypatch.setattr(tp.AutoMode, "TINY_S", 1.0)       # every run "short": only the split can keep the mode
    with threadpoolctl.threadpool_limits(2, user_api="blas"), quick():     # (skips without the compiled waits)
        s = ort.InferenceSession(m, providers=["CPUExecutionProvider"])
        for _ in range(5):
            np.testing.assert_allclose(s.run(None, feed)[0], feed["a"].astype(np.float64) @ feed["b"], rtol=1e-4,
                                       atol=1e-3)
        gate = s._plan.run_scopes[-1][0].__self__
        assert not gate.tiny and gate.runs == 5


def test_blas_choice_from_the_environment(monkeypatch):
    """``ENGINEROOM_BLAS``: "openblas" keeps oneMKL out, "mkl" warns (naming why) where it cannot be loaded,
    anything else is an error naming the variable, raised by every run until it is fixed."""
    monkeypatch.setattr(tp, "_mkl", [])
    monkeypatch.setenv("ENGINEROOM_BLAS", "openblas")
    assert tp._mkl_gemm_pointers() is None
    monkeypatch.setattr(tp, "_mkl", [])
    monkeypatch.setattr(tp, "_load_mkl", lambda: (None, None, "libmkl_rt.so.3 not found"))
    monkeypatch.setenv("ENGINEROOM_BLAS", "MKL")
    with pytest.warns(RuntimeWarning, match="ENGINEROOM_BLAS=mkl: libmkl_rt.so.3 not found"):
        assert tp._mkl_gemm_pointers() is None
    monkeypatch.setattr(tp, "_mkl", [])
    monkeypatch.setenv("ENGINEROOM_BLAS", "atlas")
    blas = tp._Blas()
    for _ in range(2):
        with pytest.raises(ValueError, match="ENGINEROOM_BLAS='atlas': expected auto, mkl or openblas"):
            blas.outside()
    monkeypatch.setenv("ENGINEROOM_BLAS", "auto")
    assert blas.outside() >= 1


def _loop_cases():
    """(loop name, its range length, args whose float32 arrays a run writes into, the kernel's own call on the
    whole range) per loop of ``compiled/_jit_par``."""
    from engineroom.providers.cpu.array_module import NUMPY

    rng = np.random.default_rng(5)
    f = lambda *shape: rng.standard_normal(shape).astype(np.float32)     # noqa: E731
    nhwc, conv, wino = NUMPY.compiled("nhwc"), NUMPY.compiled("conv"), NUMPY.compiled("winograd")
    lo, hi = np.float32(-0.5), np.float32(0.7)
    x4, xin = f(1, 24, 20, 20), f(1, 12, 12, 40)
    V = np.zeros((36, 24, 25), np.float32)
    O = f(36, 16, 25)
    cases = [
        ("bias_clip_rows", 3000, (f(3000, 40), f(40), lo, hi), nhwc.bias_clip_rows),
        ("depthwise_nhwc", 6, (xin, f(3, 3, 40), f(40), np.zeros((1, 6, 6, 40), np.float32), 2, 2, 1, 1, lo, hi),
         nhwc.depthwise_nhwc),
        ("bias_clip", 24, (f(1, 24, 50), f(24), lo, hi), conv.bias_clip),
        ("bias_add_clip", 24, (f(1, 24, 50), f(24), f(1, 24, 50), lo, hi), conv.bias_add_clip),
        ("bias_hard_act", 24, (f(1, 24, 50), f(24), f(1, 24, 50), 1, np.float32(0.2), np.float32(0.5), 1),
         conv.bias_hard_act),
        ("input_transform", 24, (x4, V, 4, 1, 1, 5, 5), lambda *a: wino.input_transform(*a, 0, 24)),
        ("output_transform", 16, (O, np.zeros((1, 16, 20, 20), np.float32), f(16), f(1, 16, 20, 20), 1, lo, hi,
                                  4, 5, 5), lambda *a: wino.output_transform(*a, 0, 16)),
        ("im2col2d", 24, (x4, np.zeros((1, 24 * 9, 100), np.float32), 3, 3, 2, 2, 1, 1, 1, 1, 10, 10),
         conv.im2col2d),
        ("rows_to_channels", 40, (f(2, 300, 40), f(40), f(2, 40, 300), 1, lo, hi, np.zeros((2, 40, 300), np.float32)),
         lambda *a: nhwc.rows_to_channels(*a, 0, 40)),
        ("col2im_rows", 12, (f(2, 3, 3, 12, 7, 7), f(1, 12), np.zeros((2, 12, 15, 15), np.float32), 2, 2, 1, 1, 1, 1),
         NUMPY.compiled("conv_transpose").col2im_rows),
        ("depthwise3x3", 12, (f(1, 12, 9, 14), f(24, 3, 3), f(24), np.zeros((1, 24, 9, 14), np.float32), lo, hi),
         lambda x, w, b, y, lo, hi: conv.depthwise2d(x, w, b, y, 1, 1, 1, 1, 1, 1, lo, hi)),    # multiplier 2
    ]
    fns = tp.gemm_pointers()
    if fns is not None:
        w = f(32, 24 * 9)

        def bands(x, wm, y, fns, KH, KW, sh, sw, dh, dw, pt, pl, OH, OW, rb):
            cols = np.zeros((1, 24 * 9, OH * OW), np.float32)
            conv.im2col2d(x, cols, KH, KW, sh, sw, dh, dw, pt, pl, OH, OW)
            np.matmul(wm, cols[0], out=y[0])
        cases.append(("conv_bands", 7, (x4, w, np.zeros((1, 32, 400), np.float32), fns, 3, 3, 1, 1, 1, 1, 1, 1,
                                        20, 20, 3), bands))
        B, Sq, Sk, H, D = 2, 9, 11, 3, 8

        def attention(q, k, v, s, bias, out, heads, scale, fns):      # NumPy's, in float64
            qh = q.reshape(B, Sq, H, D).transpose(0, 2, 1, 3).astype(np.float64)
            kh = k.reshape(B, Sk, H, D).transpose(0, 2, 1, 3).astype(np.float64)
            vh = v.reshape(B, Sk, H, D).transpose(0, 2, 1, 3).astype(np.float64)
            z = qh @ kh.swapaxes(-1, -2) * scale + bias
            p = np.exp(z - z.max(-1, keepdims=True))
            out[...] = ((p / p.sum(-1, keepdims=True)) @ vh).transpose(0, 2, 1, 3).reshape(out.shape)
        cases.append(("attention", B * H, (f(B, Sq, H * D), f(B, Sk, H * D), f(B, Sk, H * D),
                                           np.zeros((B * H, Sq, Sk), np.float32), f(1, H, Sq, Sk),
                                           np.zeros((B, Sq, H * D), np.float32), H, np.float32(0.35), fns), attention))
    return cases


def test_every_native_loop_has_a_case():
    from engineroom.providers.cpu.compiled import _jit_par
    from engineroom.providers.cpu.compiled._jit_conv import _FLAT_MIN_W
    from engineroom.providers.cpu.conv import _DW_FLAT_MIN_W

    if tp.gemm_pointers() is None:
        tp._blas.outside()
    assert sorted(c[0] for c in _loop_cases()) == sorted(name for name, _ in _jit_par._LOOPS)
    assert _DW_FLAT_MIN_W == _FLAT_MIN_W       # conv's test for the case depthwise3x3 takes


@pytest.mark.parametrize("case", range(13))
def test_native_loops_match_their_kernels(case):
    """Each loop split inside one compiled call (``native_ranges``) writes what the kernel's own call on the
    whole range writes, and the worker ran parts of it."""
    with threadpoolctl.threadpool_limits(2, user_api="blas"), quick():
        cases = _loop_cases()
        pool = _compiled_split_pool()
        if case >= len(cases):
            pytest.skip("conv_bands and attention call OpenBLAS on pthreads or oneMKL; neither is loaded")
        name, n, args, kernel = cases[case]
        want = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
        kernel(*want)
        by_worker = 0
        for _ in range(200):        # until the worker took a part (each result checked)
            got = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
            gen = pool._nstate[0]
            assert tp.native_ranges(name, n, 1 << 30, *got)
            for i, (g, w) in enumerate(zip(got, want)):
                if isinstance(g, np.ndarray) and g.dtype == np.float32 and not (name == "attention" and i == 3):
                    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)     # (attention's scores: scratch)
            word = pool._nstate[9]
            by_worker += int(pool._nstate[0] == gen + 1 and word >> 2 == gen + 1 and word & 3 == 0)
            if by_worker:
                break
        assert by_worker > 0
    assert not tp.native_ranges(name, n, 1 << 30, *args)        # outside a quick-mode run: not taken


def test_compiled_loops_release_the_gil():
    """A compiled loop running on one thread lets another Python thread run meanwhile (the pool's
    parallel conv loops depend on it): the other thread's longest stall stays well under the call."""
    from engineroom.providers.cpu.compiled import jit as _jit
    if not _jit.available():
        pytest.skip("numba is not installed (jit extra)")
    from engineroom.providers.cpu.array_module import NUMPY

    loops = NUMPY.compiled("conv")
    # a depthwise conv with a 31x31 kernel: ~250 M multiply-adds over 1 MB of data
    x = np.ones((1, 4, 256, 256), np.float32)
    w = np.full((4, 31, 31), 1e-3, np.float32)
    y = np.empty_like(x)
    b = np.zeros(4, np.float32)
    gap, stop = [0.0], [False]

    def spin():
        import time
        last = time.perf_counter()
        while not stop[0]:
            t = time.perf_counter()
            gap[0] = max(gap[0], t - last)
            last = t

    import time
    t = threading.Thread(target=spin)
    t.start()
    time.sleep(0.02)
    try:
        took = []
        for _ in range(3):
            gap[0] = 0.0
            t0 = time.perf_counter()
            loops.depthwise2d(x, w, b, y, 1, 1, 1, 1, 15, 15, np.float32(-np.inf), np.float32(np.inf))
            took.append(time.perf_counter() - t0)
            if gap[0] < 0.5 * took[-1]:
                break
    finally:
        stop[0] = True
        t.join()
    assert gap[0] < 0.5 * took[-1], (gap[0], took)



def test_a_run_holds_blas_at_one_thread_and_gives_it_back(test_plugins, monkeypatch):
    """By default and with session.intra_op.allow_spinning = "0": BLAS at one thread during each run (the
    CPU provider's run_scope; its worker pool is the parallelism), the process's count back after it, also
    with runs overlapping on several threads; with an explicit "1" OpenBLAS keeps its own threads.
    ProbeExecutionProvider (tests/plugins) reads the BLAS pools from inside its MatMul kernel."""
    from conftest import make_model
    from fake_providers import ProbeExecutionProvider
    from onnx import TensorProto, helper

    import engineroom as ort

    monkeypatch.setattr(ProbeExecutionProvider, "seen", [])
    monkeypatch.setattr(ProbeExecutionProvider, "probe", staticmethod(_blas_threads))
    m = make_model([helper.make_node("MatMul", ["a", "b"], ["y"]), helper.make_node("Relu", ["y"], ["z"])],
                   [helper.make_tensor_value_info("a", TensorProto.FLOAT, [4, 4]),
                    helper.make_tensor_value_info("b", TensorProto.FLOAT, [4, 4])],
                   [helper.make_tensor_value_info("z", TensorProto.FLOAT, [4, 4])])
    a = np.eye(4, dtype=np.float32)
    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        spinning = ort.SessionOptions()
        spinning.add_session_config_entry("session.intra_op.allow_spinning", "1")
        plain = ort.InferenceSession(m.SerializeToString(), spinning,
                                     providers=["ProbeExecutionProvider", "CPUExecutionProvider"])
        np.testing.assert_array_equal(plain.run(None, {"a": a, "b": a})[0], a)
        assert ProbeExecutionProvider.seen == [[2] * len(_blas_threads())]
        ProbeExecutionProvider.seen.clear()
        so = ort.SessionOptions()
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        s = ort.InferenceSession(m.SerializeToString(), so,
                                 providers=["ProbeExecutionProvider", "CPUExecutionProvider"])
        default = ort.InferenceSession(m.SerializeToString(),
                                       providers=["ProbeExecutionProvider", "CPUExecutionProvider"])
        # the default (unset): held while other processes keep a core busy; when quiet, the session's
        # AutoMode: its first QUICK_RUNS runs in the quick mode (held), SAMPLES with OpenBLAS's threads, then
        # the one whose median run was faster (without the compiled waits: OpenBLAS's threads; with oneMKL
        # loaded no OpenBLAS samples: the quick mode on)
        monkeypatch.setattr(tp._Load, "contended", lambda self: True)
        np.testing.assert_array_equal(default.run(None, {"a": a, "b": a})[0], a)
        assert ProbeExecutionProvider.seen == [[1] * len(_blas_threads())]
        ProbeExecutionProvider.seen.clear()
        monkeypatch.setattr(tp._Load, "contended", lambda self: False)
        monkeypatch.setattr(tp.AutoMode, "TINY_S", 0.0)     # this 4x4 product would end the learning at once
        n, q = tp.AutoMode.SAMPLES, tp.AutoMode.QUICK_RUNS
        quick = tp._pool(2).quick
        for _ in range(q + n):
            np.testing.assert_array_equal(default.run(None, {"a": a, "b": a})[0], a)
            assert _blas_threads() == [2] * len(_blas_threads())
        gate = default._plan.run_scopes[-1][0].__self__
        want = [1] * q + [1 if tp._blas.mkl else 2] * n if quick else [2] * (q + n)
        assert [s_[0] for s_ in ProbeExecutionProvider.seen] == want
        assert quick is False or gate.prefer is not None
        # then the chosen mode
        ProbeExecutionProvider.seen.clear()
        np.testing.assert_array_equal(default.run(None, {"a": a, "b": a})[0], a)
        assert ProbeExecutionProvider.seen == [[1 if quick and gate.prefer else 2] * len(_blas_threads())]
        ProbeExecutionProvider.seen.clear()
        monkeypatch.undo()
        monkeypatch.setattr(ProbeExecutionProvider, "seen", [])
        monkeypatch.setattr(ProbeExecutionProvider, "probe", staticmethod(_blas_threads))
        np.testing.assert_array_equal(s.run(None, {"a": a, "b": a})[0], a)
        assert ProbeExecutionProvider.seen == [[1] * len(_blas_threads())]
        ProbeExecutionProvider.seen.clear()
        errors = []

        def work():
            try:
                for _ in range(20):
                    np.testing.assert_array_equal(s.run(None, {"a": a, "b": a})[0], a)
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        work()
        ts = [threading.Thread(target=work) for _ in range(3)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert not errors, errors[0]
        seen = ProbeExecutionProvider.seen
        assert len(seen) == 80 and all(n == 1 for pools in seen for n in pools), seen[:3]
        assert _blas_threads() == [2] * len(seen[0])


class _LateOnWorkers(np.ndarray):
    """An operand whose products take 20 ms on the caller and, on a pool worker, a second and come out
    wrong: a worker whose core another process holds, with a result that must never reach the output."""

    workers: list[str] = []

    def __array_ufunc__(self, ufunc, method, *inputs, **kw):
        args = [np.asarray(x) for x in inputs]
        if "out" in kw:
            kw["out"] = tuple(np.asarray(o) for o in kw["out"])
        if threading.current_thread().name.startswith("engineroom-cpu"):
            _LateOnWorkers.workers.append(threading.current_thread().name)
            time.sleep(1.0)
            return getattr(ufunc, method)(*args, **kw) + 1000
        time.sleep(0.02)
        return getattr(ufunc, method)(*args, **kw)


def test_a_late_worker_neither_stalls_a_gemm_nor_writes_after_it(monkeypatch):
    """The caller, out of chunks, takes a late worker's chunk back and returns; the worker's result,
    arriving after, is dropped."""
    monkeypatch.setattr(_LateOnWorkers, "workers", [])
    rng = np.random.default_rng(4)
    a = rng.standard_normal((64, 128)).astype(np.float32)
    b = rng.standard_normal((128, 96)).astype(np.float32)
    out = np.zeros((64, 96), np.float32)
    pool = tp.WorkerPool(2)
    t = time.perf_counter()
    pool.run_gemm([(a[i:i + 8].view(_LateOnWorkers), b, out[i:i + 8]) for i in range(0, 64, 8)])
    took = time.perf_counter() - t
    assert _LateOnWorkers.workers, "the worker never took a chunk: nothing was tested"
    assert took < 0.6, took
    want = np.concatenate([a[i:i + 8] @ b for i in range(0, 64, 8)])
    np.testing.assert_array_equal(out, want)
    time.sleep(1.2)                 # the worker's late, wrong chunk comes back meanwhile
    np.testing.assert_array_equal(out, want)
    np.testing.assert_allclose(out, a.astype(np.float64) @ b, rtol=2e-5, atol=1e-3)


def test_after_a_stalled_gemm_the_pool_stands_aside(monkeypatch):
    """A pool GEMM far slower than one core would be (a worker preempted holding the GIL) sends GEMMs
    and loops to the caller's thread alone for a while; GEMMs served in time bring the pool back."""
    calm = tp._Calm()
    monkeypatch.setattr(tp, "_calm", calm)
    monkeypatch.setattr(tp, "CALM_MIN_S", 5.0)         # longer than this test
    monkeypatch.setattr(tp, "CALM_MAX_S", 5.0)
    calm.judge(1.0, 1 << 20)                  # 1M multiply-adds in a second
    assert not calm.pool_ok()
    names = set()

    def fn(i, j):
        names.add(threading.current_thread().name)
        time.sleep(0.005)

    with threadpoolctl.threadpool_limits(2, user_api="blas"), steady():
        tp.parallel_ranges(fn, 64, 1 << 24)
        assert names == {threading.current_thread().name}
        a = np.ones((512, 512), np.float32)
        np.testing.assert_array_equal(tp.matmul(a, a), np.full((512, 512), 512, np.float32))
        assert not calm.pool_ok() and calm.span == tp.CALM_MIN_S
        calm.judge(1e-4, 1 << 20)             # served in time
        assert calm.pool_ok()
        tp.parallel_ranges(fn, 64, 1 << 24)
    assert len(names) == 2


def test_one_thread_starts_no_worker():
    """intra_op_num_threads = 1: runs with large GEMMs and loops start no pool thread."""
    from conftest import python_c

    code = """
import threading, numpy as np, onnx
from onnx import TensorProto, helper
import engineroom as ort
g = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["y"]), helper.make_node("Softmax", ["y"], ["z"])], "g",
    [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1024, 1024]) for n in "ab"],
    [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1024, 1024])])
so = ort.SessionOptions(); so.intra_op_num_threads = 1
s = ort.InferenceSession(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString(), so)
x = np.random.default_rng(0).standard_normal((1024, 1024)).astype(np.float32)
for _ in range(3):
    s.run(None, {"a": x, "b": x})
print(sorted(t.name for t in threading.enumerate() if t.name.startswith("engineroom-cpu")))
"""
    assert python_c(code).strip() == "[]"


def test_load_monitor_counts_other_processes_cpu_with_hysteresis(monkeypatch):
    """The default mode's switch (``_Load``): other processes' CPU time over a window, in cores (the busy
    time of our cores in /proc/stat less this process's own), turns the pool mode on from 0.5 core and
    off below 0.25; a window is read at most every WINDOW_S."""
    load = tp._Load()
    if load.cpus is None:
        pytest.skip("no /proc/stat or CPU affinity here: the default mode is always the pool's")
    now = [100.0]
    samples = iter([(100.0, 10.0, 1.0),      # primed: machine busy seconds, our CPU seconds
                    (101.0, 10.9, 1.5),      # 0.9 s busy, 0.5 of it ours: others 0.4 core -> quiet
                    (102.0, 11.6, 1.6),      # others 0.6 core -> busy
                    (103.0, 12.0, 1.7),      # others 0.3 core -> stays busy (hysteresis)
                    (104.0, 12.2, 1.8)])     # others 0.1 core -> quiet
    monkeypatch.setattr(tp.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(tp._Load, "_sample", lambda self: next(samples))
    load.busy = False
    load.prime()
    assert load.contended() is False            # inside the first window: the state as it was
    answers = []
    for t in (101.0, 102.0, 103.0, 104.0):
        now[0] = t
        answers.append(load.contended())
        now[0] = t + load.WINDOW_S / 2
        assert load.contended() == answers[-1]  # no new read inside a window
    assert answers == [False, True, True, False]


def test_load_monitor_sees_a_busy_process_on_our_cores():
    """A real busy process pinned to one of this process's cores reads as contended."""
    import os
    import subprocess
    import sys

    load = tp._Load()
    if load.cpus is None:
        pytest.skip("no /proc/stat or CPU affinity here: the default mode is always the pool's")
    core = max(os.sched_getaffinity(0))
    p = subprocess.Popen([sys.executable, "-c", f"import os; os.sched_setaffinity(0, {{{core}}})\nwhile 1: pass"])
    try:
        time.sleep(0.5)
        load.prime()
        time.sleep(0.3)
        assert load.contended() is True
    finally:
        p.kill()
        p.wait()


def test_auto_mode_keeps_the_faster_mode_by_median_and_skips_tiny_runs(monkeypatch):
    """AutoMode's protocol on given run times: QUICK_RUNS quick runs (the first not timed), the last SAMPLES
    of them and SAMPLES with OpenBLAS's threads compared, then the mode whose median run was faster; an
    outlier does not decide it; runs under TINY_S skip the mode's cost until one takes ten times that.
    With oneMKL loaded there is nothing to compare: the quick mode from QUICK_RUNS on, untimed."""
    n, q = tp.AutoMode.SAMPLES, tp.AutoMode.QUICK_RUNS
    monkeypatch.setattr(tp._blas, "mkl", True)
    gate = tp.AutoMode()
    assert [gate.choose() for _ in range(q)] == [(True, False)] + [(True, True)] * (q - 1)
    assert gate.choose() == (True, False) and gate.prefer is True
    monkeypatch.setattr(tp._blas, "mkl", False)
    for quick_times, blas_times, want in (([5e-3, 5e-3, 9e-3], [6e-3, 1e-3, 6e-3], True),     # one fast outlier
                                          ([7e-3, 7e-3, 7e-3], [6e-3, 6e-3, 20e-3], False),
                                          ([5.8e-3, 5.8e-3, 5.8e-3], [6e-3, 6e-3, 6e-3], False)):  # within MARGIN
        gate = tp.AutoMode()
        assert gate.choose() == (True, False)           # the first run: quick, not timed
        for _ in range(q - n - 1):                      # quick runs before the samples: timed, not compared
            assert gate.choose() == (True, True)
            gate.record(True, 50e-3)
        for t in quick_times:
            assert gate.choose() == (True, True)
            gate.record(True, t)
        for t in blas_times:
            assert gate.choose() == (False, True)
            gate.record(False, t)
        assert gate.prefer is want and not gate.tiny
        assert gate.choose() == (want, False)
    gate = tp.AutoMode()
    gate.choose()
    assert gate.choose() == (True, True)
    gate.record(True, 8e-5, True)       # under TINY_S, but the pool split its work: the mode matters
    assert not gate.tiny and gate.prefer is None
    assert gate.choose() == (True, True)
    gate.record(True, 2e-5)             # a counted run under TINY_S that split nothing: no mode can matter
    assert gate.tiny and gate.prefer is False
    gate.record(False, 5e-4)            # a longer run, but under 10 x TINY_S: still tiny
    assert gate.tiny
    gate.record(False, 2e-3)            # larger inputs: learning again, from the quick runs
    assert not gate.tiny and gate.prefer is None
    assert gate.choose() == (True, True)
