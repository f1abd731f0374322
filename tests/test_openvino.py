"""OpenVINOExecutionProvider: groups, fallback around ops OpenVINO rejects, copies, options, the zoo."""
from __future__ import annotations

import importlib.util
import threading

import numpy as np
import pytest
from conftest import ZOO_MODELS, assert_matches_pytorch, assignment, copies, profiled_node_events, run_zoo
from onnx import TensorProto, helper, numpy_helper

import engineroom as ort

# find_spec, not importorskip: the provider imports openvino itself, with its telemetry off (provider.py)
if importlib.util.find_spec("openvino") is None:
    pytest.skip("the openvino package is not installed (pip install engineroom[openvino])", allow_module_level=True)

OV = "OpenVINOExecutionProvider"
CPU = "CPUExecutionProvider"
RNG = np.random.default_rng(7)


def _model(nodes, inits=(), shape=("N", 8), opsets=(("", 17),)):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(a, n) for n, a in inits])
    return helper.make_model(g, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])


W1 = RNG.standard_normal((8, 8)).astype(np.float32) * 0.3
W2 = RNG.standard_normal((8, 8)).astype(np.float32) * 0.3
W3 = RNG.standard_normal((2, 8)).astype(np.float32) * 0.3
B = RNG.standard_normal(8).astype(np.float32)
SHAPE = np.array([-1, 2, 2, 2], np.int64)
INITS = [("w1", W1), ("w2", W2), ("w3", W3), ("b", B), ("shape", SHAPE)]


def _sandwich(*middle, w2="w2"):
    """x -> MatMul -> Sigmoid -> Add  -> middle ->  MatMul -> Tanh -> Add(., x) -> y"""
    return [helper.make_node("MatMul", ["x", "w1"], ["h1"], name="mm1"),
            helper.make_node("Sigmoid", ["h1"], ["h2"], name="sigmoid"),
            helper.make_node("Add", ["h2", "b"], ["h3"], name="add1"),
            *middle,
            helper.make_node("MatMul", ["m", w2], ["h4"], name="mm2"),
            helper.make_node("Tanh", ["h4"], ["h5"], name="tanh"),
            helper.make_node("Add", ["h5", "x"], ["y"], name="add2")]


def _sigmoid(a):
    return 1 / (1 + np.exp(-a))


def _expected(mid, x=None, w2=W2):
    x = X if x is None else x
    return np.tanh(mid(_sigmoid(x @ W1) + B) @ w2) + x


X = RNG.standard_normal((5, 8)).astype(np.float32)


def test_op_openvino_rejects_runs_on_cpu_between_two_openvino_groups():
    # Det: OpenVINO's ONNX frontend has no conversion rule for it; the CPU provider has a kernel
    m = _model(_sandwich(helper.make_node("Reshape", ["h3", "shape"], ["r"], name="reshape"),
                         helper.make_node("Det", ["r"], ["m"], name="det"), w2="w3"), INITS)
    s = ort.InferenceSession(m.SerializeToString(), providers=[OV, CPU])
    assert assignment(s) == [(OV, ["mm1", "sigmoid", "add1", "reshape"]), (CPU, ["det"]),
                              (OV, ["mm2", "tanh", "add2"])]
    assert copies(s) == 0   # OpenVINO works in host memory: nothing to copy to or from the CPU provider
    # each group compiled once, and run as one node (the profiler names each compiled group a node)
    events = profiled_node_events(lambda so: ort.InferenceSession(m.SerializeToString(), so, providers=[OV, CPU]),
                                  {"x": X})
    assert [e["args"]["provider"] for e in events].count(OV) == 2
    assert "cannot run Det (no OpenVINO conversion rule)" in s.placement
    np.testing.assert_allclose(s.run(None, {"x": X})[0],
                               _expected(lambda h: np.linalg.det(h.reshape(-1, 2, 2, 2)), w2=W3), rtol=1e-4, atol=1e-5)


def test_values_of_unknown_type_stay_with_the_cpu_provider():
    # ai.onnx.ml Scaler has no ONNX shape inference: what reads its output has no static type or rank,
    # which OpenVINO cannot compile for, so only the first group goes to OpenVINO
    scaler = helper.make_node("Scaler", ["h3"], ["m"], name="scaler", domain="ai.onnx.ml", offset=[0.5], scale=[2.0])
    m = _model(_sandwich(scaler), INITS, opsets=(("", 17), ("ai.onnx.ml", 3)))
    s = ort.InferenceSession(m.SerializeToString(), providers=[OV, CPU])
    assert assignment(s) == [(OV, ["mm1", "sigmoid", "add1"]), (CPU, ["scaler", "mm2", "tanh", "add2"])]
    assert "no OpenVINO conversion rule" in s.placement and "input of unknown type or rank" in s.placement
    np.testing.assert_allclose(s.run(None, {"x": X})[0], _expected(lambda h: (h - 0.5) * 2.0), rtol=1e-5, atol=1e-5)


def test_node_on_a_device_provider_between_openvino_groups_gets_real_copies(test_plugins):
    # NegExecutionProvider (tests/plugins/fake_providers.py) keeps its values on a fake device, so every
    # edge between it and OpenVINO's host memory needs a copy, or its kernel fails.
    neg = helper.make_node("Neg", ["h3"], ["m"], name="neg")
    m = _model(_sandwich(neg), INITS)
    s = ort.InferenceSession(m, providers=["NegExecutionProvider", OV, CPU])
    assert assignment(s) == [(OV, ["mm1", "sigmoid", "add1"]), ("NegExecutionProvider", ["neg"]),
                              (OV, ["mm2", "tanh", "add2"])]
    assert copies(s) == 2   # h3 host -> fake2, m fake2 -> host
    np.testing.assert_allclose(s.run(None, {"x": X})[0], _expected(np.negative), rtol=1e-5, atol=1e-5)


def test_tiny_light_groups_are_declined_with_a_note():
    # Relu | Det | Relu: each OpenVINO group would be one light op, dearer than NumPy
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="r1"),
             helper.make_node("Det", ["a"], ["b"], name="det"),
             helper.make_node("Relu", ["b"], ["y"], name="r2")]
    s = ort.InferenceSession(_model(nodes, shape=("N", 3, 3)), providers=[OV, CPU])
    assert {p for p, _ in assignment(s)} == {CPU}
    assert "declined 2 node(s) (Relu)" in s.placement
    x = RNG.standard_normal((4, 3, 3)).astype(np.float32)
    np.testing.assert_allclose(s.run(None, {"x": x})[0], np.maximum(np.linalg.det(np.maximum(x, 0)), 0),
                               rtol=1e-5, atol=1e-6)


def test_dynamic_batch_threads_and_per_shape_compiles():
    neg = helper.make_node("Neg", ["h3"], ["m"], name="neg")
    m = _model(_sandwich(neg), INITS).SerializeToString()
    for opts in ({}, {"disable_dynamic_shapes": "True"}):
        s = ort.InferenceSession(m, providers=[(OV, opts)])
        assert [p for p, _ in assignment(s)] == [OV]
        xs = [RNG.standard_normal((n, 8)).astype(np.float32) for n in (1, 3, 7, 3)]
        for x in xs:
            np.testing.assert_allclose(s.run(None, {"x": x})[0],
                                       _expected(np.negative, x), rtol=1e-5, atol=1e-5)
        step = s._plan.steps[0][0]
        if opts:
            assert sorted(step._cache) == [((1, 8),), ((3, 8),), ((7, 8),)]
        # one session, several threads: each thread gets its own infer request
        errors = []

        def work(s, x, errors):
            try:
                for _ in range(20):
                    np.testing.assert_allclose(s.run(None, {"x": x})[0],
                                               _expected(np.negative, x), rtol=1e-5, atol=1e-5)
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)

        ts = [threading.Thread(target=work, args=(s, x, errors)) for x in xs]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert not errors, errors[0]


def test_options_as_onnxruntime_spells_them():
    neg = helper.make_node("Neg", ["h3"], ["m"], name="neg")
    m = _model(_sandwich(neg), INITS).SerializeToString()
    s = ort.InferenceSession(m, providers=[OV])
    assert s._plan.steps[0][0].compiled.get_property("INFERENCE_PRECISION_HINT").to_string() == "f32"
    assert s.get_provider_options()[OV]["device_type"] == "CPU"
    s = ort.InferenceSession(m, providers=[(OV, {"device_type": "CPU", "precision": "BF16", "num_of_threads": 1})])
    assert s._plan.steps[0][0].compiled.get_property("INFERENCE_PRECISION_HINT").to_string() == "bf16"
    assert s._plan.steps[0][0].compiled.get_property("INFERENCE_NUM_THREADS") == 1
    assert s.get_provider_options()[OV]["precision"] == "BF16"
    np.testing.assert_allclose(s.run(None, {"x": X})[0], _expected(np.negative), rtol=0.05, atol=0.05)
    with pytest.raises(ort.InvalidArgument, match="unknown provider option.*'devicetype'"):
        ort.InferenceSession(m, providers=[(OV, {"devicetype": "CPU"})])
    with pytest.raises(ort.InvalidArgument, match="precision must be one of"):
        ort.InferenceSession(m, providers=[(OV, {"precision": "INT3"})])
    with pytest.raises(ort.InvalidArgument, match="num_of_threads must be an integer"):
        ort.InferenceSession(m, providers=[(OV, {"num_of_threads": "many"})])


def test_missing_device_is_reported_and_cpu_takes_over(caplog):
    neg = helper.make_node("Neg", ["h3"], ["m"], name="neg")
    m = _model(_sandwich(neg), INITS).SerializeToString()
    s = ort.InferenceSession(m, providers=[(OV, {"device_type": "NPU.7"}), CPU])
    assert s.get_providers() == [CPU]
    assert "OpenVINO device 'NPU.7' is not available" in caplog.text


def test_provider_is_registered_and_available():
    assert OV in ort.get_available_providers()


@pytest.mark.parametrize("name", ZOO_MODELS)
def test_zoo_model_matches_pytorch_in_one_openvino_group(name):
    s, outs, refs = run_zoo(name, providers=[OV, CPU])
    assert_matches_pytorch(name, outs, refs, 1e-3)
    assert [p.ep_name for p in s.get_provider_graph_assignment_info()] == [OV], s.placement
    assert copies(s) == 0


def test_rules_decline_some_resize_modes_not_all():
    """(The node tests themselves run on every provider in test_conformance.py, against node_test_differences.txt.)"""
    from engineroom import backend
    from engineroom.plugin_sdk.testing import node_tests

    taken = [any(p.ep_name == OV for p in backend.prepare(t.model, providers=[OV, CPU], log_severity_level=3)
                 .session.get_provider_graph_assignment_info()) for t in node_tests("test_resize_")]
    assert any(taken) and not all(taken), f"OpenVINO took {sum(taken)} of {len(taken)} Resize node tests"
