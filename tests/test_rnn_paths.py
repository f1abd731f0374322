"""The recurrent kernels' paths against onnxruntime: com.microsoft DynamicQuantizeLSTM on its compiled
recurrence (``_jit_rnn.dq_lstm_run_vnni`` with the products on the VNNI kernel, ``dq_lstm_run`` making int8
products itself, ``dq_lstm_step`` with BLAS products where R less its zero point does not fit int8) and on
its NumPy path, and the ONNX LSTM / GRU loops that share ``_jit_rnn``. onnxruntime's quantized LSTM
quantizes each step's h per block of batch rows, one block per thread of its pool, so both engines run with
the same intra_op_num_threads."""
from __future__ import annotations

import numpy as np
import pytest
from jit_paths import JIT_PATHS, choose_path
from onnx import TensorProto, helper, numpy_helper

import engineroom
from engineroom.providers.cpu import intgemm

ort = pytest.importorskip("onnxruntime")

F32 = np.float32


@pytest.fixture(params=JIT_PATHS)
def path(request, monkeypatch):
    return choose_path(request, monkeypatch, "rnn")


def _loop():
    """The compiled recurrence int8 weights take: products on the VNNI kernel where it runs."""
    return "dq_lstm_run_vnni" if intgemm.int8_kernels() is not None else "dq_lstm_run"


def _run_both(nodes, inputs, inits, outputs, threads, opset=17):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
                     for n, v in inputs.items()],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
        [numpy_helper.from_array(v, n) for n, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                    helper.make_opsetid("com.microsoft", 1)]).SerializeToString()
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    want = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"]).run(None, inputs)
    eso = engineroom.SessionOptions()
    eso.intra_op_num_threads = threads
    got = engineroom.InferenceSession(model, eso, providers=["CPUExecutionProvider"]).run(None, inputs)
    return want, got


def _close(want, got, names, tol):
    for name, w, g in zip(names, want, got):
        assert g.shape == w.shape and g.dtype == w.dtype, name
        err = float(np.abs(g.astype(np.float64) - w).max(initial=0)) / max(float(np.abs(w).max(initial=0)), 1e-6)
        assert err <= tol, f"{name}: relative error {err:.2e} > {tol:.0e}"


def _dq_lstm(rng, *, direction="bidirectional", S=7, B=6, I=10, H=8, lens=None, peepholes=False, clip=None,
             input_forget=False, weights="int8", per_channel=True, with_y=True, activations=None, threads=1,
             initial=True):
    nd = 2 if direction == "bidirectional" else 1
    sshape = (nd, 4 * H) if per_channel else (nd,)
    if weights == "int8":
        w = rng.integers(-127, 128, (nd, I, 4 * H)).astype(np.int8)
        r = rng.integers(-127, 128, (nd, H, 4 * H)).astype(np.int8)
        wz = rz = np.zeros(sshape, np.int8)
    else:       # uint8 with zero points away from 128: R less its zero point does not fit int8
        w = rng.integers(0, 256, (nd, I, 4 * H)).astype(np.uint8)
        r = rng.integers(0, 256, (nd, H, 4 * H)).astype(np.uint8)
        wz = np.full(sshape, 40, np.uint8)      # onnxruntime wants one zero point for all of a weight
        rz = np.full(sshape, 220, np.uint8)
    inputs = {"x": rng.standard_normal((S, B, I)).astype(F32)}
    if initial:
        inputs.update(h0=rng.standard_normal((nd, B, H)).astype(F32), c0=rng.standard_normal((nd, B, H)).astype(F32))
    if lens is not None:
        inputs["lens"] = np.asarray(lens, np.int32)
    inits = {"w": w, "r": r, "b": rng.standard_normal((nd, 8 * H)).astype(F32),
             "ws": rng.uniform(0.01, 0.03, sshape).astype(F32), "wz": wz,
             "rs": rng.uniform(0.01, 0.03, sshape).astype(F32), "rz": rz}
    if peepholes:
        inits["p"] = rng.standard_normal((nd, 3 * H)).astype(F32)
    attrs = {"hidden_size": H, "direction": direction, "input_forget": int(input_forget)}
    if clip is not None:
        attrs["clip"] = clip
    if activations is not None:
        attrs["activations"] = activations
    outputs = ["Y", "Y_h", "Y_c"] if with_y else ["Y_h", "Y_c"]
    node = helper.make_node("DynamicQuantizeLSTM",
                            ["x", "w", "r", "b", "lens" if lens is not None else "", "h0" if initial else "",
                             "c0" if initial else "",
                             "p" if peepholes else "", "ws", "wz", "rs", "rz"],
                            outputs if with_y else [""] + outputs, domain="com.microsoft", **attrs)
    return _run_both([node], inputs, inits, outputs, threads), outputs


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_dynamic_quantize_lstm_matches_onnxruntime(path, direction, threads):
    # 6 rows: onnxruntime splits them across its threads, each block quantized with its own range
    (want, got), names = _dq_lstm(np.random.default_rng(3), direction=direction, threads=threads)
    _close(want, got, names, 1e-5)
    path.expect(_loop())


@pytest.mark.parametrize("batch", [1, 3])
def test_dynamic_quantize_lstm_one_row_no_initial_state(path, batch):
    # odd batches (the products pad rows), zero initial states, lengths that all reach the end
    (want, got), names = _dq_lstm(np.random.default_rng(11), B=batch, lens=[7] * batch, initial=False,
                                  direction="reverse")
    _close(want, got, names, 1e-5)
    path.expect(_loop())


def test_dynamic_quantize_lstm_past_float32_exact_sums(path):
    # 528 x 127 x 255 > 2**24: float32 sums could round, so only the VNNI loop (int32) or float64 NumPy serve
    (want, got), names = _dq_lstm(np.random.default_rng(12), direction="forward", S=3, B=2, I=8, H=528)
    _close(want, got, names, 1e-5)
    path.expect("dq_lstm_run_vnni", taken=intgemm.int8_kernels() is not None)


def test_dynamic_quantize_lstm_without_vnni(path, monkeypatch):
    # where the VNNI kernel does not run, the compiled recurrence makes its int8 products itself
    monkeypatch.setattr(intgemm, "int8_kernels", lambda: None)
    (want, got), names = _dq_lstm(np.random.default_rng(10), B=5, lens=[7, 3, 5, 7, 2], threads=2)
    _close(want, got, names, 1e-5)
    path.expect("dq_lstm_run")


def _spy_on_splits(monkeypatch, module, gate: str) -> list:
    """The (n, work) of each ``parallel_ranges`` call ``module`` makes, its gate ``gate`` made new (so its
    first layer splits)."""
    from engineroom.providers.cpu import _threadpool

    splits = []

    def spy(fn, n, work):
        splits.append((n, work))
        return _threadpool.parallel_ranges(fn, n, work)

    monkeypatch.setattr(module, "parallel_ranges", spy)
    monkeypatch.setattr(module, gate, _threadpool.SplitGate())
    return splits


@pytest.mark.parametrize("lens", [None, [16, 9, 16, 3]])
def test_dynamic_quantize_lstm_directions_on_two_threads(path, monkeypatch, lens):
    """A bidirectional layer large enough that its two directions run on the provider's pool at once (each
    one compiled call): the same numbers as onnxruntime at two threads."""
    from engineroom.providers.cpu import _threadpool, contrib_quant

    splits = _spy_on_splits(monkeypatch, contrib_quant, "_dq_lstm_gate")
    (want, got), names = _dq_lstm(np.random.default_rng(21), S=16, B=4, I=24, H=128, lens=lens, threads=2)
    _close(want, got, names, 1e-5)
    if path.jit:
        assert splits and splits[0][0] == 2 and splits[0][1] >= _threadpool.MIN_QUIET_WORK, splits
    path.expect(_loop())


@pytest.mark.parametrize("threads", [1, 2])
def test_dynamic_quantize_lstm_ragged_lengths(path, threads):
    # a sequence of length 0, the longest shorter than the input (the steps past it are not run)
    (want, got), names = _dq_lstm(np.random.default_rng(4), lens=[5, 0, 3, 5, 1, 4], threads=threads)
    _close(want, got, names, 1e-5)
    assert not got[0][5:].any()
    path.expect(_loop())


def test_dynamic_quantize_lstm_without_y_keeps_finished_rows(path):
    # without Y, onnxruntime's product reads a finished sequence's last h (not zeros) at the later steps
    (want, got), names = _dq_lstm(np.random.default_rng(5), lens=[7, 2, 4, 7, 3, 6], with_y=False)
    _close(want, got, names, 1e-5)


@pytest.mark.parametrize("peepholes,clip,input_forget", [(True, None, False), (False, 0.6, False),
                                                         (True, 0.8, True), (False, None, True)])
def test_dynamic_quantize_lstm_options(path, peepholes, clip, input_forget):
    (want, got), names = _dq_lstm(np.random.default_rng(6), direction="reverse", lens=[7, 5, 6, 2, 7, 1],
                                  peepholes=peepholes, clip=clip, input_forget=input_forget, per_channel=False)
    _close(want, got, names, 1e-5)
    path.expect(_loop())


def test_dynamic_quantize_lstm_uint8_weights_with_zero_points(path):
    # R - zero point spans more than int8: each step's product is a BLAS GEMM, the gates still compiled
    (want, got), names = _dq_lstm(np.random.default_rng(7), weights="uint8", B=3, lens=[7, 4, 6],
                                  per_channel=False)
    _close(want, got, names, 1e-5)
    path.expect("dq_lstm_step")


def test_dynamic_quantize_lstm_named_default_activations(path):
    # Sigmoid / Tanh named explicitly are onnxruntime's same approximations as the defaults
    (want, got), names = _dq_lstm(np.random.default_rng(8), activations=["Sigmoid", "Tanh", "Tanh"] * 2)
    _close(want, got, names, 1e-5)
    path.expect(_loop())


@pytest.mark.parametrize("op", ["LSTM", "GRU"])
def test_onnx_recurrent_ragged_matches_onnxruntime(path, op):
    # the float loops share _jit_rnn's finished-row handling with DynamicQuantizeLSTM
    rng = np.random.default_rng(9)
    S, B, I, H, nd = 6, 4, 5, 7, 2
    g = {"LSTM": 4, "GRU": 3}[op]
    inputs = {"x": rng.standard_normal((S, B, I)).astype(F32), "lens": np.array([6, 3, 1, 5], np.int32)}
    inits = {"w": rng.standard_normal((nd, g * H, I)).astype(F32) * 0.5,
             "r": rng.standard_normal((nd, g * H, H)).astype(F32) * 0.5,
             "b": rng.standard_normal((nd, 2 * g * H)).astype(F32)}
    outputs = ["Y", "Y_h"] + (["Y_c"] if op == "LSTM" else [])
    node = helper.make_node(op, ["x", "w", "r", "b", "lens"], outputs, hidden_size=H, direction="bidirectional")
    want, got = _run_both([node], inputs, inits, outputs, 1)
    _close(want, got, outputs, 1e-5)
    path.expect("lstm_step" if op == "LSTM" else "gru_reset")


@pytest.mark.parametrize("op,lbr", [("LSTM", 0), ("GRU", 0), ("GRU", 1)])
@pytest.mark.parametrize("ragged", [False, True])
def test_onnx_bidirectional_directions_on_two_threads(path, monkeypatch, op, lbr, ragged):
    """A bidirectional layer large enough that its directions run on the provider's pool at once (one a
    thread, each with single-threaded GEMMs): onnxruntime's numbers at two threads."""
    from engineroom.providers.cpu import _threadpool, rnn

    splits = _spy_on_splits(monkeypatch, rnn, "_directions_gate")
    rng = np.random.default_rng(17)
    S, B, I, H, nd = 16, 48, 32, 32, 2
    g = {"LSTM": 4, "GRU": 3}[op]
    inputs = {"x": rng.standard_normal((S, B, I)).astype(F32)}
    if ragged:
        inputs["lens"] = rng.integers(1, S + 1, B).astype(np.int32)
    inits = {"w": rng.standard_normal((nd, g * H, I)).astype(F32) * 0.3,
             "r": rng.standard_normal((nd, g * H, H)).astype(F32) * 0.3,
             "b": rng.standard_normal((nd, 2 * g * H)).astype(F32)}
    outputs = ["Y", "Y_h"] + (["Y_c"] if op == "LSTM" else [])
    attrs = {"linear_before_reset": lbr} if op == "GRU" else {}
    node = helper.make_node(op, ["x", "w", "r", "b", "lens" if ragged else ""], outputs, hidden_size=H,
                            direction="bidirectional", **attrs)
    want, got = _run_both([node], inputs, inits, outputs, 2)
    _close(want, got, outputs, 1e-5)
    if path.jit:
        assert splits and splits[0][0] == 2 and splits[0][1] >= _threadpool.MIN_QUIET_WORK, splits
    path.expect("lstm_step" if op == "LSTM" else ("gru_step_lbr" if lbr else "gru_reset"))
