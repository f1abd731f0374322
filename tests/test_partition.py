"""Partitioner: claims, copies on crossing edges, cycle-free grouping, CPU fallback rules."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import assignment, copies
from onnx import TensorProto, helper

import engineroom as ort


def _model(nodes, inputs=("x",), outputs=("y",), shape=(2, 3), inits=()):
    g = helper.make_graph(nodes, "g",
                          [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in inputs],
                          [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs],
                          list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_provider_gets_exactly_the_ops_it_claims(test_plugins):
    # x -> Relu -> Add(.,x) -> Mul(.,x) -> Neg -> y
    m = _model([helper.make_node("Relu", ["x"], ["a"], name="relu"),
                helper.make_node("Add", ["a", "x"], ["b"], name="add"),
                helper.make_node("Mul", ["b", "x"], ["c"], name="mul"),
                helper.make_node("Neg", ["c"], ["y"], name="neg")])
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    cpu = ort.InferenceSession(m.SerializeToString()).run(None, {"x": x})[0]
    s = ort.InferenceSession(m.SerializeToString(), providers=["AddMulExecutionProvider", "CPUExecutionProvider"])
    assert assignment(s) == [("CPUExecutionProvider", ["relu"]), ("AddMulExecutionProvider", ["add", "mul"]),
                              ("CPUExecutionProvider", ["neg"])]
    # crossing edges: a (cpu->fake), x (cpu->fake, once for both Add and Mul), c (fake->cpu)
    assert copies(s) == 3
    np.testing.assert_array_equal(s.run(None, {"x": x})[0], cpu)
    assert s.get_providers() == ["AddMulExecutionProvider", "CPUExecutionProvider"]


def test_copies_between_two_devices_and_the_host(test_plugins):
    # x -> Add(x,x) [fake] -> Neg [fake2] -> Mul(.,x) [fake] -> Relu [fake2] -> y
    m = _model([helper.make_node("Add", ["x", "x"], ["a"], name="add"),
                helper.make_node("Neg", ["a"], ["b"], name="neg"),
                helper.make_node("Mul", ["b", "x"], ["c"], name="mul"),
                helper.make_node("Relu", ["c"], ["y"], name="relu")])
    x = np.arange(6, dtype=np.float32).reshape(2, 3) - 2
    s = ort.InferenceSession(m, providers=["AddMulExecutionProvider", "NegExecutionProvider"])
    assert [p for p, _ in assignment(s)] == ["AddMulExecutionProvider", "NegExecutionProvider",
                                               "AddMulExecutionProvider", "NegExecutionProvider"]
    # x->fake (1), a fake->fake2 (2), b fake2->fake (3), c fake->fake2 (4), y fake2->host (5)
    assert copies(s) == 5
    np.testing.assert_array_equal(s.run(None, {"x": x})[0], np.maximum(-(x + x) * x, 0))


def test_host_inputs_are_not_copied(test_plugins):
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [3, 2])
    m = _model([helper.make_node("Add", ["x", "x"], ["a"], name="add"),
                helper.make_node("Reshape", ["a", "shape"], ["y"], name="reshape")], inits=[shape])
    x = np.ones((2, 3), np.float32)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    s = ort.InferenceSession(m, so, providers=["AddMulExecutionProvider"])
    assert copies(s) == 2  # x in, y out; the shape stays on the host
    np.testing.assert_array_equal(s.run(None, {"x": x})[0], np.full((3, 2), 2, np.float32))


def test_diamond_is_split_into_cycle_free_partitions(test_plugins):
    # add1 -> neg(cpu) -> mul; add1 -> mul. Putting add1 and mul together would make a cycle.
    m = _model([helper.make_node("Add", ["x", "x"], ["a"], name="add1"),
                helper.make_node("Relu", ["a"], ["b"], name="relu"),
                helper.make_node("Mul", ["a", "b"], ["y"], name="mul")])
    x = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
    s = ort.InferenceSession(m, providers=["AddMulExecutionProvider", "CPUExecutionProvider"])
    assert assignment(s) == [("AddMulExecutionProvider", ["add1"]), ("CPUExecutionProvider", ["relu"]),
                              ("AddMulExecutionProvider", ["mul"])]
    np.testing.assert_allclose(s.run(None, {"x": x})[0], (2 * x) * np.maximum(2 * x, 0))


def test_independent_branches_merge_into_one_partition(test_plugins):
    m = _model([helper.make_node("Add", ["x", "x"], ["a"], name="add"),
                helper.make_node("Relu", ["x"], ["r"], name="relu"),
                helper.make_node("Mul", ["x", "x"], ["b"], name="mul"),
                helper.make_node("Add", ["a", "b"], ["y"], name="add2")], outputs=("y", "r"))
    s = ort.InferenceSession(m, providers=["AddMulExecutionProvider", "CPUExecutionProvider"])
    parts = assignment(s)
    assert sorted(n for p, ns in parts if p == "AddMulExecutionProvider" for n in ns) == ["add", "add2", "mul"]
    assert sum(p == "AddMulExecutionProvider" for p, _ in parts) == 1


def test_disable_cpu_fallback_with_unclaimed_node_is_an_ort_style_error(test_plugins):
    m = _model([helper.make_node("Add", ["x", "x"], ["a"], name="add"),
                helper.make_node("Relu", ["a"], ["y"], name="relu")])
    so = ort.SessionOptions()
    so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    with pytest.raises(ort.Fail, match="fallback to CPU EP has been explicitly disabled") as e:
        ort.InferenceSession(m, so, providers=["AddMulExecutionProvider"])
    assert "Relu" in str(e.value) and "AddMulExecutionProvider" in str(e.value)


def test_unclaimed_op_error_names_op_domain_opset_types_and_providers():
    m = _model([helper.make_node("NoSuchOp", ["x"], ["y"], name="n0", domain="my.domain")])
    m.opset_import.append(helper.make_opsetid("my.domain", 3))
    with pytest.raises(ort.NotImplemented) as e:
        ort.InferenceSession(m)
    msg = str(e.value)
    for part in ("NoSuchOp", "my.domain", "opset 3", "tensor(float)", "CPUExecutionProvider", "'n0'"):
        assert part in msg


def test_broken_provider_is_reported_not_silently_replaced(test_plugins, caplog):
    m = _model([helper.make_node("Relu", ["x"], ["y"])])
    with caplog.at_level("WARNING", logger="engineroom"):
        s = ort.InferenceSession(m, providers=["BrokenExecutionProvider", "CPUExecutionProvider"])
    assert "BrokenExecutionProvider" in caplog.text and "driver not found" in caplog.text
    assert s.get_providers() == ["CPUExecutionProvider"]
    so = ort.SessionOptions()
    so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    with pytest.raises(ort.EPFail, match="BrokenExecutionProvider.*driver not found"):
        ort.InferenceSession(m, so, providers=["BrokenExecutionProvider"])


def test_incompatible_sdk_and_missing_module_are_refused_with_reason(test_plugins, caplog):
    m = _model([helper.make_node("Relu", ["x"], ["y"])])
    with caplog.at_level("WARNING", logger="engineroom"):
        ort.InferenceSession(m, providers=["OldSdkExecutionProvider", "MissingExecutionProvider"])
    assert "OldSdkExecutionProvider" in caplog.text and "incompatible" in caplog.text
    assert "MissingExecutionProvider" in caplog.text and "fake_providers_missing_module" in caplog.text
    assert "OldSdkExecutionProvider" not in ort.get_available_providers()


def test_plugins_are_discovered_through_the_entry_point(test_plugins):
    assert "AddMulExecutionProvider" in ort.get_all_providers()
    assert "AddMulExecutionProvider" in ort.get_available_providers()
    assert ort.get_available_providers()[-1] == "CPUExecutionProvider"


def test_unknown_provider_option_is_an_error_naming_it(test_plugins):
    m = _model([helper.make_node("Add", ["x", "x"], ["y"])])
    with pytest.raises(ort.InvalidArgument, match="bogus"):
        ort.InferenceSession(m, providers=[("AddMulExecutionProvider", {"bogus": 1})])
    s = ort.InferenceSession(m, providers=[("AddMulExecutionProvider", {"device_id": 0})])
    assert s.get_provider_options()["AddMulExecutionProvider"] == {"device_id": "0"}
