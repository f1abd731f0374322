"""The onnxruntime-compatible surface: NodeArg, metadata, options, OrtValue, provider lists, CLI."""
from __future__ import annotations

import logging
import subprocess
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper

import engineroom as ort


def _model():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    b = helper.make_tensor_value_info("bias", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    g = helper.make_graph([helper.make_node("Add", ["x", "bias"], ["s"]), helper.make_node("Identity", ["s"], ["y"])],
                          "graph_name", [x, b], [y],
                          [onnx.numpy_helper.from_array(np.arange(4, dtype=np.float32), "bias")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], producer_name="tests", model_version=7)
    helper.set_model_props(m, {"author": "me"})
    return m


def test_node_args_and_metadata():
    s = ort.InferenceSession(_model())
    (i,) = s.get_inputs()
    assert (i.name, i.type, i.shape) == ("x", "tensor(float)", ["batch", 4])
    assert [(o.name, o.type, o.shape) for o in s.get_outputs()] == [("y", "tensor(float)", ["batch", 4])]
    assert [o.name for o in s.get_overridable_initializers()] == ["bias"]
    meta = s.get_modelmeta()
    assert (meta.producer_name, meta.graph_name, meta.version, meta.custom_metadata_map) == (
        "tests", "graph_name", 7, {"author": "me"})


def test_overridable_initializer_default_and_override():
    s = ort.InferenceSession(_model())
    x = np.ones((2, 4), np.float32)
    np.testing.assert_array_equal(s.run(None, {"x": x})[0], x + np.arange(4))
    np.testing.assert_array_equal(s.run(["y"], {"x": x, "bias": np.zeros(4, np.float32)})[0], x)


def test_ort_values_and_options(tmp_path):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.add_session_config_entry("session.some_key", "1")
    assert so.get_session_config_entry("session.some_key") == "1"
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    s = ort.InferenceSession(_model().SerializeToString(), so, providers=["CPUExecutionProvider"])
    v = ort.OrtValue.ortvalue_from_numpy(np.ones((1, 4), np.float32))
    (out,) = s.run_with_ort_values(None, {"x": v}, ort.RunOptions())
    assert isinstance(out, ort.OrtValue) and out.data_type() == "tensor(float)" and out.shape() == [1, 4]
    np.testing.assert_array_equal(out.numpy(), 1 + np.arange(4, dtype=np.float32)[None])
    opt = onnx.load(so.optimized_model_filepath)
    assert "Identity" not in [n.op_type for n in opt.graph.node]  # level 1 removed it
    assert s.get_providers() == ["CPUExecutionProvider"]
    assert s.get_provider_options() == {"CPUExecutionProvider": {}}


def test_provider_lists():
    assert "CPUExecutionProvider" in ort.get_all_providers()
    assert ort.get_available_providers()[-1] == "CPUExecutionProvider"
    assert ort.get_device() in ("CPU", "GPU")


def test_unknown_provider_is_reported_and_cpu_used(caplog):
    with caplog.at_level("WARNING", logger="engineroom"):
        s = ort.InferenceSession(_model(), providers=["NoSuchExecutionProvider"])
    assert "NoSuchExecutionProvider" in caplog.text
    assert s.get_providers() == ["CPUExecutionProvider"]


def test_provider_options_for_cpu_are_taken_as_onnxruntime_takes_them(caplog):
    """onnxruntime's CPU provider accepts any option (code passes arena settings to it): so does engineroom,
    with one INFO line naming what it ignores and why."""
    import onnxruntime

    opts = {"nonsense": "1", "arena_extend_strategy": "kSameAsRequested"}
    onnxruntime.InferenceSession(_model().SerializeToString(), providers=[("CPUExecutionProvider", opts)])
    with caplog.at_level(logging.INFO, logger="engineroom"):
        so = ort.SessionOptions()
        so.log_severity_level = 1
        s = ort.InferenceSession(_model(), so, providers=[("CPUExecutionProvider", opts)])
    lines = [r.getMessage() for r in caplog.records if "with no effect" in r.getMessage()]
    assert len(lines) == 1 and "nonsense=1" in lines[0] and "arena_extend_strategy=kSameAsRequested" in lines[0]
    x = np.ones((2, 4), np.float32)
    np.testing.assert_array_equal(s.run(None, {s.get_inputs()[0].name: x})[0],
                                  ort.InferenceSession(_model()).run(None, {s.get_inputs()[0].name: x})[0])


def test_cli_run_and_inspect(tmp_path):
    p = tmp_path / "m.onnx"
    p.write_bytes(_model().SerializeToString())
    r = subprocess.run([sys.executable, "-m", "engineroom", "run", str(p), "--dim", "batch=3"],
                       capture_output=True, text=True, check=True)
    assert "output y: shape (3, 4), dtype float32" in r.stdout and "latency" in r.stdout
    r = subprocess.run([sys.executable, "-m", "engineroom", "inspect", str(p)], capture_output=True, text=True,
                       check=True)
    assert "input  x: tensor(float) ['batch', 4]" in r.stdout and "CPUExecutionProvider" in r.stdout
    r = subprocess.run([sys.executable, "-m", "engineroom", "run", str(tmp_path / "missing.onnx")],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "doesn't exist" in r.stderr


def test_intra_op_num_threads_caps_blas_during_run(test_plugins, monkeypatch):
    from fake_providers import ProbeExecutionProvider  # tests/plugins: its MatMul kernel reads the BLAS pools
    from threadpoolctl import threadpool_info

    monkeypatch.setattr(ProbeExecutionProvider, "seen", [])
    monkeypatch.setattr(ProbeExecutionProvider, "probe", staticmethod(
        lambda: [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 4])
    g = helper.make_graph([helper.make_node("MatMul", ["x", "x"], ["y"])], "g", [x],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 4])])
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    s = ort.InferenceSession(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), so,
                             providers=["ProbeExecutionProvider", "CPUExecutionProvider"])
    a = np.eye(4, dtype=np.float32)
    np.testing.assert_array_equal(s.run(None, {"x": a})[0], a)
    (pools,) = ProbeExecutionProvider.seen    # the MatMul ran once, inside the run
    assert pools and all(n == 1 for n in pools)
