"""The plugin SDK: the conformance kit (engineroom.plugin_sdk.testing), onnxruntime's device API
(get_ep_devices, add_provider_for_devices, selection policies) and how broken plugins are reported.
The providers are defined in tests/plugins/device_providers.py and registered through an entry point."""
from __future__ import annotations

import json
import logging
import subprocess
import sys

import numpy as np
import pytest
from conftest import registered_plugins
from onnx import TensorProto, helper, numpy_helper

import engineroom as ort
from engineroom.devices import select_ep_devices
from engineroom.plugin_sdk import SDK_VERSION
from engineroom.plugin_sdk.testing import check_contract, close, node_tests, principal_op, run_kit, run_node_tests

Policy = ort.OrtExecutionProviderDevicePolicy
_ENTRY_POINTS = """[engineroom.providers]
FakeGpuExecutionProvider = device_providers:FakeGpuExecutionProvider
FakeNpuExecutionProvider = device_providers:FakeNpuExecutionProvider
HostOnlyExecutionProvider = device_providers:HostOnlyExecutionProvider
WrongAddExecutionProvider = device_providers:WrongAddExecutionProvider
LossyCopyExecutionProvider = device_providers:LossyCopyExecutionProvider
RaisingAvailabilityExecutionProvider = device_providers:RaisingAvailabilityExecutionProvider
CrashingExecutionProvider = device_providers:CrashingExecutionProvider
BadNameExecutionProvider = device_providers:badname
PickyExecutionProvider = sdk_providers:PickyExecutionProvider
PackingExecutionProvider = sdk_providers:PackingExecutionProvider
HostPackingExecutionProvider = sdk_providers:HostPackingExecutionProvider
"""


@pytest.fixture(scope="module")
def device_plugins(tmp_path_factory, test_plugins):
    """Register tests/plugins/device_providers.py as an installed plugin would be (with conftest's)."""
    with registered_plugins(tmp_path_factory, "engineroom-device-test-plugins", _ENTRY_POINTS):
        yield


def _model(op="Relu", n_inputs=1, opset=17):
    ins = [f"x{i}" for i in range(n_inputs)]
    g = helper.make_graph([helper.make_node(op, ins, ["y"], name="n")], "g",
                          [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 3]) for n in ins],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)]).SerializeToString()


def _by_name(devices, name):
    return [d for d in devices if d.ep_name == name]


# -- the kit ------------------------------------------------------------------------------------------------
def test_kit_against_the_cpu_provider_subset():
    report = run_kit("CPUExecutionProvider", only=["test_relu", "test_gemm", "test_reduce_sum_", "test_softmax_axis"])
    print(report.format())
    assert report.ok, report.format()
    assert all(c.ok for c in report.contract), report.format()
    t = report.node_tests.totals
    assert t.tests > 20 and t.claimed == t.tests == t.passed
    assert {"Relu", "Gemm", "ReduceSum", "Softmax"} <= set(report.node_tests.ops)
    d = report.to_dict()
    assert d["ok"] and d["node_tests"]["ops"]["Gemm"]["passed"] == report.node_tests.ops["Gemm"].passed


def test_kit_counts_claims_passes_and_copies_on_a_device_provider(device_plugins):
    # FakeGpu claims Relu and Add on a fake device: every claimed test runs through real copies
    # (its kernels assert their inputs are on the device); the rest falls back to CPU.
    report = run_kit("FakeGpuExecutionProvider", only=["test_relu", "test_add", "test_sub"])
    print(report.format())
    assert report.ok, report.format()
    ops = report.node_tests.ops
    assert ops["Relu"].claimed == ops["Relu"].passed >= 1
    assert ops["Add"].claimed >= 1 and ops["Add"].passed == ops["Add"].claimed
    assert ops["Sub"].claimed == 0 and ops["Sub"].tests >= 1
    assert report.check("copies").ok and report.check("unknown_option").ok


def test_kit_reports_wrong_results_and_errors(device_plugins):
    report = run_kit("WrongAddExecutionProvider", only=["test_add", "test_mul"])
    assert not report.ok
    ops = report.node_tests.ops
    assert ops["Add"].claimed >= 1 and ops["Add"].wrong >= 1 and ops["Add"].passed == 0
    assert ops["Mul"].errors >= 1
    text = report.format()
    assert "wrong: data set 0, output 0: max abs diff" in text and "Mul kernel crashed" in text
    assert "RESULT: FAIL" in text


def test_kit_expected_failures_only_shrink(device_plugins):
    names = [t.name for t in node_tests("test_add") if t.name in ("test_add", "test_add_bcast")]
    report = run_kit("WrongAddExecutionProvider", only="test_add", expected_failures={n: "subtracts" for n in names})
    statuses = {r.name: r.status for r in report.node_tests.results}
    assert all(statuses[n] == "xfail" for n in names)
    # listing a test that passes (FakeGpu adds correctly) fails the report
    report = run_kit("FakeGpuExecutionProvider", only="test_add", expected_failures=["test_add"])
    assert not report.ok and report.node_tests.by_status("xpass")[0].name == "test_add"


def test_kit_isolate_survives_a_crashing_provider(device_plugins):
    report = run_kit("CrashingExecutionProvider", only=["test_neg_example", "test_relu"], isolate=True)
    res = {r.name: r for r in report.node_tests.results}
    assert res["test_neg_example"].status == "error"
    assert "died with signal 11 (SIGSEGV) during this test" in res["test_neg_example"].detail
    assert res["test_relu"].status == "passed" and res["test_relu"].nodes == 1     # a new worker went on
    assert not report.ok


def test_kit_contract_failures_name_the_problem(device_plugins):
    checks = {c.name: c for c in check_contract("LossyCopyExecutionProvider")}
    assert checks["unknown_option"].ok is False and "was accepted" in checks["unknown_option"].detail
    assert checks["copies"].ok is False
    assert "float16" in checks["copies"].detail and "bool" in checks["copies"].detail
    assert "float64" not in checks["copies"].detail

    checks = {c.name: c for c in check_contract("RaisingAvailabilityExecutionProvider")}
    assert checks["is_available"].ok is False and "libfake.so" in checks["is_available"].detail
    assert checks["copies"].ok is None

    checks = {c.name: c for c in check_contract("BadNameExecutionProvider")}
    assert checks["name"].ok is False and "'badname'" in checks["name"].detail

    checks = {c.name: c for c in check_contract("BrokenExecutionProvider")}
    assert checks["starts"].ok is False and "driver not found" in checks["starts"].detail

    checks = check_contract("OldSdkExecutionProvider")
    assert checks[0].name == "registered" and checks[0].ok is False
    assert "'0.1'" in checks[0].detail and repr(SDK_VERSION) in checks[0].detail

    checks = check_contract("MissingExecutionProvider")
    assert checks[0].ok is False and "fake_providers_missing_module" in checks[0].detail

    report = run_kit("NoSuchExecutionProvider")
    assert not report.ok and report.node_tests is None and "no provider of that name" in report.format()
    with pytest.raises(LookupError, match="NoSuchExecutionProvider cannot be tested"):
        run_node_tests("NoSuchExecutionProvider")


def test_kit_cli_contract_only_and_json(device_plugins, tmp_path):
    out = tmp_path / "r.json"
    r = subprocess.run([sys.executable, "-m", "engineroom.plugin_sdk.testing", "CPUExecutionProvider",
                        "--contract-only", "--json", str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "RESULT: PASS" in r.stdout and "copies" in r.stdout
    d = json.loads(out.read_text())
    assert d["ok"] and d["provider"] == "CPUExecutionProvider" and d["node_tests"] is None
    r = subprocess.run([sys.executable, "-m", "engineroom.plugin_sdk.testing", "NoSuchExecutionProvider",
                        "--contract-only"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "NoSuchExecutionProvider" in r.stdout


def test_principal_op_and_comparison():
    tests = {t.name: t for t in node_tests(["test_reduce_sum_keepdims_random", "test_softmax_axis_0_expanded",
                                            "test_sce_mean_expanded"])}
    assert principal_op("test_reduce_sum_keepdims_random", tests["test_reduce_sum_keepdims_random"].model) == \
        "ReduceSum"
    assert tests["test_softmax_axis_0_expanded"].op == "Softmax"
    assert tests["test_sce_mean_expanded"].op == "SoftmaxCrossEntropyLoss"
    assert close(np.float32([1, np.nan]), np.float32([1.0005, np.nan]))
    assert not close(np.float32([1]), np.float32([1.01])) and not close(np.int64([1]), np.int64([2]))
    assert close([np.ones(2)], [np.ones(2)]) and not close(np.ones((2, 1)), np.ones(2))


# -- device API ---------------------------------------------------------------------------------------------
def test_get_ep_devices_one_per_provider_and_device(device_plugins):
    devs = ort.get_ep_devices()
    gpu = _by_name(devs, "FakeGpuExecutionProvider")
    assert [d.ep_options for d in gpu] == [{"device_id": "0"}, {"device_id": "1"}]
    assert all(d.device.type == ort.OrtHardwareDeviceType.GPU and d.ep_vendor == "tests" for d in gpu)
    assert [(d.device.vendor, d.device.vendor_id, d.device.device_id) for d in gpu] == [
        ("NVIDIA", 0x10DE, 0x2684), ("NVIDIA", 0x10DE, 0x2685)]
    assert gpu[1].device.metadata["name"] == "Fake GPU 1" and gpu[1].ep_metadata["sdk_version"] == "1.0"
    (npu,) = _by_name(devs, "FakeNpuExecutionProvider")
    assert npu.device.type == ort.OrtHardwareDeviceType.NPU
    (host,), (cpu,) = _by_name(devs, "HostOnlyExecutionProvider"), _by_name(devs, "CPUExecutionProvider")
    assert host.device == cpu.device and cpu.device.type == ort.OrtHardwareDeviceType.CPU   # one CPU, two EPs
    assert cpu.ep_vendor == "engineroom" and cpu.device.vendor
    assert devs[-1].ep_name == "CPUExecutionProvider"
    names = {d.ep_name for d in devs}
    assert not names & {"RaisingAvailabilityExecutionProvider", "OldSdkExecutionProvider", "MissingExecutionProvider"}
    assert "FakeGpuExecutionProvider" in repr(gpu[0])


def test_add_provider_for_devices(device_plugins):
    gpu1 = _by_name(ort.get_ep_devices(), "FakeGpuExecutionProvider")[1]
    so = ort.SessionOptions()
    so.add_provider_for_devices([gpu1], {})
    assert so.has_providers()
    s = ort.InferenceSession(_model(), so)
    assert s.get_providers() == ["FakeGpuExecutionProvider", "CPUExecutionProvider"]
    assert s.get_provider_options()["FakeGpuExecutionProvider"] == {"device_id": "1"}
    assert s.get_input_epdevices() == [gpu1]                        # the provider started on device 1
    x = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(s.run(None, {"x0": x})[0], np.maximum(x, 0))
    assert [p.ep_name for p in s.get_provider_graph_assignment_info()] == ["FakeGpuExecutionProvider"]

    so = ort.SessionOptions()
    so.add_provider_for_devices([gpu1], {"device_id": "0"})       # explicit options win
    assert ort.InferenceSession(_model(), so).get_provider_options()["FakeGpuExecutionProvider"] == {"device_id": "0"}
    # explicit providers win over the options' devices, as in onnxruntime
    assert ort.InferenceSession(_model(), so, providers=["CPUExecutionProvider"]).get_providers() == [
        "CPUExecutionProvider"]

    npu = _by_name(ort.get_ep_devices(), "FakeNpuExecutionProvider")
    with pytest.raises(ort.InvalidArgument, match="same execution provider"):
        ort.SessionOptions().add_provider_for_devices([gpu1] + npu, {})
    with pytest.raises(ort.InvalidArgument, match="OrtEpDevice"):
        ort.SessionOptions().add_provider_for_devices(["FakeGpuExecutionProvider"], {})


def _ep(name, kind):
    return ort.OrtEpDevice(name, "v", {}, {}, ort.OrtHardwareDevice(ort.OrtHardwareDeviceType[kind], "v"))


@pytest.mark.parametrize("policy, expected", [
    (Policy.DEFAULT, ["HostA", "CPUExecutionProvider"]),
    (Policy.PREFER_CPU, ["HostA", "CPUExecutionProvider"]),
    (Policy.PREFER_GPU, ["Gpu1", "Gpu2", "CPUExecutionProvider"]),
    (Policy.MAX_PERFORMANCE, ["Gpu1", "Gpu2", "CPUExecutionProvider"]),
    (Policy.PREFER_NPU, ["Npu", "CPUExecutionProvider"]),
    (Policy.MAX_EFFICIENCY, ["Npu", "CPUExecutionProvider"]),
    (Policy.MIN_OVERALL_POWER, ["Npu", "CPUExecutionProvider"]),
])
def test_selection_policies_order_devices_as_onnxruntime(policy, expected):
    devs = [_ep("CPUExecutionProvider", "CPU"), _ep("Gpu1", "GPU"), _ep("HostA", "CPU"), _ep("Npu", "NPU"),
            _ep("Gpu2", "GPU")]
    assert [d.ep_name for d in select_ep_devices(devs, policy)] == expected


@pytest.mark.parametrize("policy, first", [(Policy.PREFER_GPU, "FakeGpuExecutionProvider"),
                                           (Policy.MAX_PERFORMANCE, "FakeGpuExecutionProvider"),
                                           (Policy.PREFER_NPU, "FakeNpuExecutionProvider"),
                                           (Policy.MIN_OVERALL_POWER, "FakeNpuExecutionProvider"),
                                           (Policy.PREFER_CPU, "HostOnlyExecutionProvider"),
                                           (Policy.DEFAULT, "HostOnlyExecutionProvider")])
def test_session_with_a_selection_policy(device_plugins, policy, first):
    kinds = {d.ep_name: d.device.type for d in ort.get_ep_devices()}
    want = {"FakeGpuExecutionProvider": "GPU", "FakeNpuExecutionProvider": "NPU",
            "HostOnlyExecutionProvider": "CPU"}[first]
    so = ort.SessionOptions()
    so.set_provider_selection_policy(policy)
    s = ort.InferenceSession(_model(), so)
    provs = s.get_providers()
    assert first in provs and provs[-1] == "CPUExecutionProvider", provs     # CPU fallback last
    assert all(kinds[p].name == want for p in provs[:-1]), provs            # only devices of the preferred type
    x = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(s.run(None, {"x0": x})[0], np.maximum(x, 0))


def test_selection_policy_without_cpu_fallback_and_delegate(device_plugins):
    so = ort.SessionOptions()
    so.set_provider_selection_policy(Policy.PREFER_NPU)
    so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    assert ort.InferenceSession(_model(), so).get_providers() == ["FakeNpuExecutionProvider"]

    seen = {}

    def pick_second_gpu(ep_devices, model_metadata, runtime_metadata, max_selections):
        seen["n"] = max_selections
        return [d for d in ep_devices if d.ep_name == "FakeGpuExecutionProvider"][1:]

    so = ort.SessionOptions()
    so.set_provider_selection_policy_delegate(pick_second_gpu)
    s = ort.InferenceSession(_model(), so)
    assert s.get_providers() == ["FakeGpuExecutionProvider", "CPUExecutionProvider"] and seen["n"] >= 4
    assert s.get_provider_options()["FakeGpuExecutionProvider"] == {"device_id": "1"}


# -- broken plugins: each reported with its name and the reason --------------------------------------------
def test_plugin_raising_in_is_available_is_reported(device_plugins, caplog):
    assert "RaisingAvailabilityExecutionProvider" in ort.get_all_providers()
    assert "RaisingAvailabilityExecutionProvider" not in ort.get_available_providers()
    with caplog.at_level(logging.WARNING, logger="engineroom"):
        s = ort.InferenceSession(_model(), providers=["RaisingAvailabilityExecutionProvider", "CPUExecutionProvider"])
    assert s.get_providers() == ["CPUExecutionProvider"]
    assert "RaisingAvailabilityExecutionProvider cannot be used: is_available() raised OSError: libfake.so" \
        in caplog.text
    so = ort.SessionOptions()
    so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    with pytest.raises(ort.EPFail, match="RaisingAvailabilityExecutionProvider.*libfake.so"):
        ort.InferenceSession(_model(), so, providers=["RaisingAvailabilityExecutionProvider"])


@pytest.mark.parametrize("name, reason", [("BrokenExecutionProvider", "RuntimeError: driver not found"),
                                          ("OldSdkExecutionProvider", "built for plugin SDK '0.1'")])
def test_plugin_failing_init_or_built_for_another_sdk_is_reported(test_plugins, caplog, name, reason):
    with caplog.at_level(logging.WARNING, logger="engineroom"):
        s = ort.InferenceSession(_model(), providers=[name, "CPUExecutionProvider"])
    assert s.get_providers() == ["CPUExecutionProvider"]
    assert f"{name} cannot be used" in caplog.text and reason in caplog.text
    so = ort.SessionOptions()
    so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    with pytest.raises(ort.EPFail, match=name):
        ort.InferenceSession(_model(), so, providers=[name])


# -- what the SDK gives providers: typed errors, @kernel(prepack=, host_only=), the notes channel ------------
def _matmul_relu_neg_model(b_const: bool):
    """y = Neg(Relu(x @ B)), B a constant (initializer) or a graph input."""
    rng = np.random.default_rng(7)
    b = rng.standard_normal((4, 3)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "b"], ["m"], name="mm"),
             helper.make_node("Relu", ["m"], ["r"], name="relu"), helper.make_node("Neg", ["r"], ["y"], name="neg")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])]
    inits = []
    if b_const:
        inits.append(numpy_helper.from_array(b, "b"))
    else:
        inputs.append(helper.make_tensor_value_info("b", TensorProto.FLOAT, [4, 3]))
    g = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString(), b


def test_a_provider_raises_the_sdks_typed_errors_and_the_user_gets_them(device_plugins, caplog):
    """InvalidArgument from a provider's __init__ is engineroom.InvalidArgument (one class, defined in the SDK):
    the session raises it, as onnxruntime does for a bad option, instead of warning and falling back."""
    from engineroom.plugin_sdk import ProviderOptionError, errors

    assert ort.InvalidArgument is errors.InvalidArgument and ort.Fail is errors.Fail
    assert issubclass(ProviderOptionError, ort.InvalidArgument) and issubclass(ort.InvalidArgument, ValueError)
    with caplog.at_level(logging.WARNING, logger="engineroom"):
        with pytest.raises(ort.InvalidArgument, match="PickyExecutionProvider: no device 3; devices: 0") as e:
            ort.InferenceSession(_model(), providers=[("PickyExecutionProvider", {"device_id": "3"}),
                                                      "CPUExecutionProvider"])
    assert type(e.value) is errors.InvalidArgument and "INVALID_ARGUMENT" in str(e.value)
    assert "falling back" not in caplog.text
    # an untyped start-up failure is still the provider's, reported and fallen back from
    with caplog.at_level(logging.WARNING, logger="engineroom"):
        s = ort.InferenceSession(_model(), providers=[("PickyExecutionProvider", {"fail": "runtime"}),
                                                      "CPUExecutionProvider"])
    assert s.get_providers() == ["CPUExecutionProvider"]
    assert "PickyExecutionProvider cannot be used: it failed to start: RuntimeError: the device stopped answering" \
        in caplog.text
    s = ort.InferenceSession(_model(), providers=["PickyExecutionProvider"])
    x = np.array([[-1, 2, -3], [4, -5, 6]], np.float32)
    np.testing.assert_array_equal(s.run(None, {"x0": x})[0], np.maximum(x, 0))


@pytest.mark.parametrize("b_const", [True, False])
def test_prepack_and_host_only_declared_on_a_kernel_take_effect(device_plugins, b_const):
    """prepack=(1,): a constant B stays on the host for the factory to prepare (no copy of it; the kernel
    asserts it gets the host array); a computed B is copied to the device as usual. host_only: the device
    provider leaves Neg (a NumPy-only kernel of its kernel set) to the CPU, and says so in the placement line."""
    from conftest import assignment, copies

    model, b = _matmul_relu_neg_model(b_const)
    s = ort.InferenceSession(model, providers=["PackingExecutionProvider", "CPUExecutionProvider"])
    x = np.random.default_rng(8).standard_normal((2, 4)).astype(np.float32)
    feed = {"x": x} if b_const else {"x": x, "b": b}
    np.testing.assert_allclose(s.run(None, feed)[0], -np.maximum(x @ b, 0), rtol=1e-6, atol=1e-6)
    assert assignment(s) == [("PackingExecutionProvider", ["mm", "relu"]), ("CPUExecutionProvider", ["neg"])]
    # x in, r out; with a computed B, B in too (a prepacked constant is never copied)
    assert copies(s) == (2 if b_const else 3)
    assert "PackingExecutionProvider: left Neg: NumPy-only kernels" in s.placement


def test_host_only_kernels_are_claimed_on_the_host_and_prepack_reported_as_host_resident():
    """The same kernel set on a host provider claims the host_only kernel; on a device it does not. A prepack
    input counts as host-resident only where it is a constant."""
    from sdk_providers import HostPackingExecutionProvider, PackingExecutionProvider

    from engineroom.plugin_sdk import NodeView

    def view(op, const_b=None):
        n = 2 if op == "MatMul" else 1
        return NodeView(0, op, "", 17, "n", ("a", "b")[:n], ("y",), (np.dtype(np.float32),) * n,
                        (np.dtype(np.float32),), ((2, 4), (4, 3))[:n], ((2, 3),), {}, (None, const_b)[:n])

    dev, host = PackingExecutionProvider(), HostPackingExecutionProvider()
    assert dev.kernel_for(view("Neg")) is None and host.kernel_for(view("Neg")) is not None
    assert dev.kernel_for(view("Relu")) is not None and host.kernel_for(view("Relu")) is not None
    assert dev.host_input_indices(view("MatMul", np.ones((4, 3), np.float32))) == (1,)
    assert dev.host_input_indices(view("MatMul")) == ()
    from engineroom.plugin_sdk import ExecutionProvider

    assert ExecutionProvider().kernel_for(view("Relu")) is None    # the fuser asks every provider this


def test_notes_channel_reaches_the_placement_line_and_claims_nothing(device_plugins):
    """Notes go through GraphView.add_note, not through empty Capability objects; the core prefixes the
    provider's name and adds them to the placement line once."""
    from engineroom.plugin_sdk import GraphView

    view = GraphView(nodes=[], opsets={"": 17})
    view.add_note("one")
    view.add_note("")
    assert view.notes == ["one"]
    s = ort.InferenceSession(_model("Neg"), providers=["PackingExecutionProvider", "CPUExecutionProvider"])
    assert s.placement.count("PackingExecutionProvider: left Neg: NumPy-only kernels") == 1
    assert [p.ep_name for p in s.get_provider_graph_assignment_info()] == ["CPUExecutionProvider"]


def test_cycle_free_runs_is_the_partitioners_grouping():
    """plugin_sdk.grouping: a run never leaves and re-enters (a -> b -> c with a, c on one provider and b on
    another gives three runs, not two), and runs follow the lowest ready index."""
    from engineroom.plugin_sdk import NodeView
    from engineroom.plugin_sdk.grouping import cycle_free_runs

    def node(i, ins, out):
        return NodeView(i, "Relu", "", 17, f"n{i}", tuple(ins), (out,), (), (), (), (), {}, ())

    nodes = [node(0, ["x"], "a"), node(1, ["a"], "b"), node(2, ["b"], "c"), node(3, ["x"], "d")]
    color = {0: "P", 1: "Q", 2: "P", 3: "P"}.__getitem__
    assert cycle_free_runs(nodes, color) == [("P", [0, 3]), ("Q", [1]), ("P", [2])]
    with pytest.raises(ValueError, match="cycle"):
        cycle_free_runs([node(0, ["b"], "a"), node(1, ["a"], "b")], lambda i: "P")
