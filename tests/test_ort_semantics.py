"""onnxruntime's semantics where engineroom used to differ, each checked against onnxruntime itself:
RunOptions.terminate during a run, list / scalar / None feeds, OrtValue.element_type, unset model version,
unnamed dims, a directory as the model, provider options, add_initializer, denotation overrides, set_seed,
run_async, set_providers, the launcher and the environment switch."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import onnx
import pytest
from conftest import make_model
from onnx import TensorProto, helper, numpy_helper

import engineroom as ort

onnxruntime = pytest.importorskip("onnxruntime", reason="onnxruntime (the oracle) is not installed")


def _model(nodes, inputs, outputs, inits=(), opset=17, **kw):
    return make_model(nodes, inputs, outputs, inits, opset, **kw).SerializeToString()


def _both(model, **kw):
    return (ort.InferenceSession(model, providers=["CPUExecutionProvider"], **kw),
            onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"], **kw))


# -- RunOptions.terminate ---------------------------------------------------------------------------------------
def _matmul_chain(n=200, size=384):
    nodes = [helper.make_node("MatMul", [f"x{i}", "w"], [f"x{i + 1}"]) for i in range(n)]
    w = numpy_helper.from_array(np.eye(size, dtype=np.float32) * 0.5, "w")
    return _model(nodes, [helper.make_tensor_value_info("x0", TensorProto.FLOAT, [size, size])],
                  [helper.make_tensor_value_info(f"x{n}", TensorProto.FLOAT, None)], [w])


def _terminate_after(session, feed, seconds):
    ro = type(session).__module__.startswith("engineroom") and ort.RunOptions() or onnxruntime.RunOptions()
    timer = threading.Timer(seconds, lambda: setattr(ro, "terminate", True))
    t0 = time.perf_counter()
    timer.start()
    try:
        with pytest.raises(Exception) as info:
            session.run(None, feed, ro)
    finally:
        timer.cancel()
    return info.value, time.perf_counter() - t0


def test_terminate_stops_a_running_chain_between_steps():
    ours, theirs = _both(_matmul_chain())
    x = np.ones((384, 384), np.float32)
    t0 = time.perf_counter()
    full = ours.run(None, {"x0": x})[0]
    whole = time.perf_counter() - t0
    err, took = _terminate_after(ours, {"x0": x}, whole / 10)
    ref_err, _ = _terminate_after(theirs, {"x0": x}, 0.005)
    assert "Exiting due to terminate flag being set to true." in str(ref_err)
    assert isinstance(err, ort.Fail) and type(ref_err).__name__ == "Fail"
    assert "Exiting due to terminate flag being set to true." in str(err)
    assert took < whole * 0.6, f"terminate took {took:.3f}s of a {whole:.3f}s run"
    np.testing.assert_array_equal(ours.run(None, {"x0": x})[0], full)   # the session still runs


def test_terminate_stops_a_loop_between_iterations():
    body = helper.make_graph(
        [helper.make_node("MatMul", ["v", "w"], ["v2"]), helper.make_node("Identity", ["c"], ["c2"])], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("c", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("c2", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v2", TensorProto.FLOAT, None)])
    w = numpy_helper.from_array(np.eye(64, dtype=np.float32), "w")
    model = _model([helper.make_node("Loop", ["M", "", "x"], ["y"], body=body)],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64, 64]),
                    helper.make_tensor_value_info("M", TensorProto.INT64, [])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    ours, theirs = _both(model)
    feed = {"x": np.ones((64, 64), np.float32), "M": np.array(10**8, np.int64)}   # hours if not stopped
    ref_err, _ = _terminate_after(theirs, feed, 0.05)
    err, took = _terminate_after(ours, feed, 0.3)
    assert "Exiting due to terminate flag being set to true." in str(ref_err)
    assert isinstance(err, ort.Fail) and "Exiting due to terminate flag being set to true." in str(err)
    assert took < 30
    small = {"x": feed["x"], "M": np.array(3, np.int64)}
    np.testing.assert_array_equal(ours.run(None, small)[0], theirs.run(None, small)[0])


def test_terminate_set_before_run():
    ours, _ = _both(_matmul_chain(2, 4))
    ro = ort.RunOptions()
    ro.terminate = True
    with pytest.raises(ort.Fail, match="terminate flag"):
        ours.run(None, {"x0": np.ones((4, 4), np.float32)}, ro)


# -- feeds ------------------------------------------------------------------------------------------------------
def _identity(elem, shape):
    return _model([helper.make_node("Identity", ["x"], ["y"])], [helper.make_tensor_value_info("x", elem, shape)],
                  [helper.make_tensor_value_info("y", elem, None)])


@pytest.mark.parametrize("elem,shape,value", [
    (TensorProto.FLOAT, ["n", 3], [[1, 2, 3]]),
    (TensorProto.FLOAT, [None], [1.5, 2, 3]),
    (TensorProto.INT64, [None], [1, 2]),
    (TensorProto.INT64, [None], [1.5, 2.0]),
    (TensorProto.BOOL, [None], [1, 0]),
    (TensorProto.STRING, [None], ["a", "bc"]),
    (TensorProto.DOUBLE, [2, 2], [[1, 2], [3, 4]]),
])
def test_list_feeds_become_arrays_of_the_inputs_type(elem, shape, value):
    ours, theirs = _both(_identity(elem, shape))
    got, ref = ours.run(None, {"x": value})[0], theirs.run(None, {"x": value})[0]
    assert got.dtype == ref.dtype and got.shape == ref.shape
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("value", [3.0, 3, True, np.float32(3), np.int64(3), "a", (1.0, 2.0)])
def test_scalar_and_other_feeds_are_refused_as_onnxruntime_does(value):
    ours, theirs = _both(_identity(TensorProto.FLOAT, None))
    with pytest.raises(RuntimeError) as ref:
        theirs.run(None, {"x": value})
    with pytest.raises(RuntimeError) as got:
        ours.run(None, {"x": value})
    assert "'x'" in str(got.value)
    scalar = "Unable to handle object of type"
    assert (scalar in str(ref.value)) == (scalar in str(got.value))


def test_none_feed_is_a_missing_input_not_a_string_tensor():
    ours, theirs = _both(_identity(TensorProto.FLOAT, None))
    with pytest.raises(Exception) as ref:
        theirs.run(None, {"x": None})
    with pytest.raises(ort.Fail, match="Missing Input: x") as got:
        ours.run(None, {"x": None})
    assert type(ref.value).__name__ == "Fail"   # onnxruntime fails in the first kernel that reads it
    assert "tensor(string)" not in str(got.value)


# -- what the API reports ---------------------------------------------------------------------------------------
def test_element_type_version_and_unnamed_dims_as_onnxruntime():
    for dt in (np.float32, np.float16, np.int64, np.uint8, np.bool_, np.float64):
        a = np.zeros((2, 3), dt)
        ref = onnxruntime.OrtValue.ortvalue_from_numpy(a)
        v = ort.OrtValue.ortvalue_from_numpy(a)
        assert v.element_type() == ref.element_type() and v.tensor_size_in_bytes() == ref.tensor_size_in_bytes()
    v.update_inplace(np.ones((2, 3), np.float64))
    assert v.numpy().sum() == 6
    model = _model([helper.make_node("Add", ["x", "y"], ["z"]), helper.make_node("Shape", ["z"], ["s"])],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3]),
                    helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
                   [helper.make_tensor_value_info("z", TensorProto.FLOAT, None),
                    helper.make_tensor_value_info("s", TensorProto.INT64, None)])
    ours, theirs = _both(model)
    assert [(o.name, o.type, o.shape) for o in ours.get_outputs()] == \
        [(o.name, o.type, o.shape) for o in theirs.get_outputs()]
    assert ours.get_modelmeta().version == theirs.get_modelmeta().version == 2**63 - 1
    versioned = _model([helper.make_node("Identity", ["x"], ["y"])],
                       [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], model_version=0)
    assert ort.InferenceSession(versioned).get_modelmeta().version == \
        onnxruntime.InferenceSession(versioned).get_modelmeta().version


def test_directory_as_model_is_not_called_missing(tmp_path):
    with pytest.raises(Exception) as ref:
        onnxruntime.InferenceSession(str(tmp_path))
    with pytest.raises(ort.InvalidProtobuf, match="directory") as got:
        ort.InferenceSession(str(tmp_path))
    assert type(ref.value).__name__ == type(got.value).__name__ == "InvalidProtobuf"
    assert "doesn't exist" not in str(got.value)


# -- provider options -------------------------------------------------------------------------------------------
def test_cuda_options_from_onnxruntimes_docs_are_accepted(caplog):
    from engineroom.compat.provider_options import without_ignored

    declared = {"device_id": "0", "gpu_mem_limit": "1", "arena_extend_strategy": "kNextPowerOfTwo",
                "enable_cuda_graph": "0", "cudnn_conv_algo_search": "EXHAUSTIVE"}
    opts = {"device_id": "0", "do_copy_in_default_stream": "1", "cudnn_conv_use_max_workspace": "1",
            "arena_extend_strategy": "kSameAsRequested", "no_such_option": "1"}
    with caplog.at_level(logging.INFO, logger="engineroom"):
        kept = without_ignored("CUDAExecutionProvider", declared, opts, logging.INFO)
    # declared ones reach the provider; onnxruntime's others are dropped and named; unknown ones reach the
    # provider, which rejects them as onnxruntime's CUDA provider does
    assert kept == {"device_id": "0", "arena_extend_strategy": "kSameAsRequested", "no_such_option": "1"}
    lines = [r.getMessage() for r in caplog.records if "no effect" in r.getMessage()]
    assert len(lines) == 1 and "do_copy_in_default_stream=1" in lines[0] and "cudnn_conv_use_max_workspace" in lines[0]


# -- session options that change the model ----------------------------------------------------------------------
def test_add_initializer_and_denotation_override():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    x.type.tensor_type.shape.dim[0].denotation = "DATA_BATCH"
    w = numpy_helper.from_array(np.arange(4, dtype=np.float32), "w")
    model = _model([helper.make_node("Mul", ["x", "w"], ["y"])], [x],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    new_w = np.full(4, 3.0, np.float32)
    results, keep = [], []   # onnxruntime uses the OrtValue in place: it must outlive the session
    for lib in (ort, onnxruntime):
        so = lib.SessionOptions()
        keep.append(lib.OrtValue.ortvalue_from_numpy(new_w))
        so.add_initializer("w", keep[-1])
        so.add_free_dimension_override_by_denotation("DATA_BATCH", 2)
        s = lib.InferenceSession(model, so, providers=["CPUExecutionProvider"])
        results.append((s.get_inputs()[0].shape, s.run(None, {"x": np.ones((2, 4), np.float32)})[0]))
        with pytest.raises(Exception, match="dimensions"):   # the overridden dim is fixed now
            s.run(None, {"x": np.ones((3, 4), np.float32)})
    assert results[0][0] == results[1][0] == [2, 4]
    np.testing.assert_array_equal(results[0][1], results[1][1])


def test_set_seed_makes_unseeded_random_ops_reproducible():
    model = _model([helper.make_node("RandomNormal", [], ["y"], shape=[3, 4])], [],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 4])])
    draws = []
    for _ in range(2):
        ort.set_seed(1234)
        draws.append(ort.InferenceSession(model).run(None, {})[0])
    np.testing.assert_array_equal(draws[0], draws[1])
    ort.set_seed(99)
    assert not np.array_equal(ort.InferenceSession(model).run(None, {})[0], draws[0])


def test_run_async_set_providers_and_fallback_switches():
    s, ref = _both(_identity(TensorProto.FLOAT, [None]))
    done = threading.Event()
    got = {}

    def callback(outputs, user_data, err):
        got.update(outputs=outputs, user_data=user_data, err=err)
        done.set()

    s.run_async(None, {"x": np.arange(3, dtype=np.float32)}, callback, "data")
    assert done.wait(60)
    assert got["err"] == "" and got["user_data"] == "data"
    np.testing.assert_array_equal(got["outputs"][0], ref.run(None, {"x": np.arange(3, dtype=np.float32)})[0])
    s.disable_fallback()
    s.enable_fallback()
    s.set_providers(["CPUExecutionProvider"])
    assert s.get_providers() == ["CPUExecutionProvider"]
    np.testing.assert_array_equal(s.run(None, {"x": [1.0, 2.0]})[0], np.array([1, 2], np.float32))


# -- launcher and environment switch ----------------------------------------------------------------------------
_PROBE = """
import sys, onnxruntime
print("MODULE", onnxruntime.__name__, onnxruntime.__version__, sys.argv[1:])
"""


def _python(args, env_extra=None, cwd=None):
    env = {k: v for k, v in os.environ.items() if k != "ENGINEROOM_AS_ONNXRUNTIME"}
    env.update(env_extra or {})
    p = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300, env=env, cwd=cwd)
    assert p.returncode == 0, p.stderr[-4000:]
    return next(ln for ln in p.stdout.splitlines() if ln.startswith("MODULE"))


def test_launcher_runs_scripts_and_modules_on_engineroom(tmp_path):
    (tmp_path / "probe.py").write_text(_PROBE)
    (tmp_path / "probepkg").mkdir()
    (tmp_path / "probepkg" / "__init__.py").write_text("")
    (tmp_path / "probepkg" / "__main__.py").write_text(_PROBE)
    assert _python([str(tmp_path / "probe.py"), "a"]).startswith("MODULE onnxruntime ")   # untouched without it
    out = _python(["-m", "engineroom.compat", str(tmp_path / "probe.py"), "a", "--b"])
    assert out == "MODULE engineroom.compat.onnxruntime 1.32.0 ['a', '--b']"
    out = _python(["-m", "engineroom.compat", "-m", "probepkg", "x"], cwd=str(tmp_path))
    assert out == "MODULE engineroom.compat.onnxruntime 1.32.0 ['x']"


def test_environment_switch_through_the_startup_hook(tmp_path):
    from engineroom.compat import HOOK_FILE, HOOK_LINE

    site_dir = tmp_path / "site"
    site_dir.mkdir()
    (site_dir / HOOK_FILE).write_text(HOOK_LINE)   # what --install-hook writes into site-packages
    code = textwrap.dedent(f"""
        import site
        site.addsitedir({str(site_dir)!r})
        exec({_PROBE!r})
    """)
    assert _python(["-c", code]).startswith("MODULE onnxruntime ")
    assert _python(["-c", code], {"ENGINEROOM_AS_ONNXRUNTIME": "0"}).startswith("MODULE onnxruntime ")
    assert _python(["-c", code], {"ENGINEROOM_AS_ONNXRUNTIME": "1"}).startswith("MODULE engineroom.compat.onnxruntime")


def test_logger_severity_and_unknown_session_option_logging(caplog):
    ort.set_default_logger_severity(3)
    try:
        with caplog.at_level(logging.DEBUG, logger="engineroom"):
            caplog.clear()
            ort.InferenceSession(_identity(TensorProto.FLOAT, None))
        assert not [r for r in caplog.records if r.levelno < logging.ERROR]
    finally:
        ort.set_default_logger_severity(2)
    so = ort.SessionOptions()
    so.log_severity_level = 1
    so.execution_mode = ort.ExecutionMode.ORT_PARALLEL
    so.inter_op_num_threads = 4
    with caplog.at_level(logging.INFO, logger="engineroom"):
        caplog.clear()
        ort.InferenceSession(_identity(TensorProto.FLOAT, None), so)
    lines = [r.getMessage() for r in caplog.records if "accepted with no effect" in r.getMessage()]
    assert len(lines) == 1 and "execution_mode" in lines[0] and "inter_op_num_threads=4" in lines[0]
    assert onnx  # the module is used to build models above


def test_provider_failure_in_a_run_falls_back_to_cpu_unless_disabled(test_plugins, caplog, monkeypatch):
    from fake_providers import LostDeviceExecutionProvider  # tests/plugins: its Add raises EPFail when lost

    model = _model([helper.make_node("Add", ["x", "x"], ["y"])],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    x = np.arange(3, dtype=np.float32)
    s = ort.InferenceSession(model, providers=["LostDeviceExecutionProvider", "CPUExecutionProvider"])
    assert s.get_providers()[0] == "LostDeviceExecutionProvider"
    np.testing.assert_array_equal(s.run(None, {"x": x})[0], x + x)
    s.disable_fallback()
    monkeypatch.setattr(LostDeviceExecutionProvider, "lost", True)   # the device is lost mid-session
    with pytest.raises(ort.RuntimeException, match="the device was lost"):
        s.run(None, {"x": x})
    s.enable_fallback()
    with caplog.at_level(logging.WARNING, logger="engineroom"):
        np.testing.assert_array_equal(s.run(None, {"x": x})[0], x + x)
    assert s.get_providers() == ["CPUExecutionProvider"] and "falling back to CPUExecutionProvider" in caplog.text
