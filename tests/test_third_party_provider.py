"""The example third-party provider (examples/third_party_provider, distribution engineroom-precise-ep):
built as a wheel with ``pip wheel``, installed with ``pip install``, found through the
``engineroom.providers`` entry point only, listed, selected by name and by device, passing the
conformance kit, and uninstalled again. Also checks that docs/writing-a-provider.md shows the
example's real code."""
from __future__ import annotations

import glob
import importlib
import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import python_c
from onnx import TensorProto, helper

import engineroom as ort
from engineroom import discovery
from engineroom.plugin_sdk.testing import read_expected_failures, run_kit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "examples", "third_party_provider")
DIST, MODULE, NAME = "engineroom-precise-ep", "engineroom_precise_ep", "PreciseExecutionProvider"
EXPECTED = read_expected_failures(os.path.join(EXAMPLE, "tests", "expected_failures.txt"))


def _pip(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "pip", *args, "--disable-pip-version-check", "--no-input"],
                          capture_output=True, text=True, timeout=timeout)


def _forget_module():
    for m in [m for m in sys.modules if m == MODULE or m.startswith(MODULE + ".")]:
        del sys.modules[m]
    importlib.invalidate_caches()
    discovery.refresh()  # also forgets stevedore's in-memory entry points (same sys.path, new wheel)


def _uninstall():
    _pip("uninstall", "-y", DIST)
    _forget_module()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """Build the example's wheel from a copy of its folder, then install it into this environment."""
    src = tmp_path_factory.mktemp("precise_src") / "engineroom-precise-ep"
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__"))
    out = tmp_path_factory.mktemp("precise_dist")
    # Offline first, with the setuptools already installed; setuptools older than 70.1 needs the
    # 'wheel' package for that, so fall back to pip's isolated build (which fetches its build deps).
    r = _pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(out), str(src))
    if r.returncode != 0:
        r = _pip("wheel", "--no-deps", "-w", str(out), str(src))
    assert r.returncode == 0, f"pip wheel failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    (whl,) = glob.glob(str(out / "engineroom_precise_ep-*.whl"))
    r = _pip("install", "--no-deps", "--force-reinstall", whl)
    assert r.returncode == 0, f"pip install failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    _forget_module()
    yield whl
    _uninstall()


def _model():
    # x -> MatMul(W) -> Relu -> ReduceSum(axis 1) -> y: Precise takes MatMul and ReduceSum, CPU the Relu
    w = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["a"], name="matmul"),
         helper.make_node("Relu", ["a"], ["b"], name="relu"),
         helper.make_node("ReduceSum", ["b", "axes"], ["y"], name="sum", keepdims=0)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.ravel()),
         helper.make_tensor("axes", TensorProto.INT64, [1], [1])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString(), w


def test_wheel_is_built_and_installed(wheel):
    assert os.path.basename(wheel) == "engineroom_precise_ep-0.1.0-py3-none-any.whl"
    dist = importlib.metadata.distribution(DIST)
    eps = [e for e in dist.entry_points if e.group == "engineroom.providers"]
    assert [(e.name, e.value) for e in eps] == [(NAME, "engineroom_precise_ep:PreciseExecutionProvider")]
    assert os.path.dirname(os.path.dirname(str(dist.locate_file(MODULE)))) != EXAMPLE   # installed, not the source


def test_found_through_the_entry_point_only(wheel):
    # engineroom's own code never names the plugin's module ...
    for folder in ("core", "plugin_sdk", "providers"):
        for path in glob.glob(os.path.join(ROOT, folder, "**", "*.py"), recursive=True):
            with open(path, encoding="utf-8") as f:
                assert MODULE not in f.read(), f"{path} names {MODULE}"
    # ... and in a fresh interpreter it is imported only when discovery loads the entry point
    code = ("import sys, engineroom; assert 'engineroom_precise_ep' not in sys.modules; "
            "from engineroom import discovery; cls = discovery.provider_class('PreciseExecutionProvider'); "
            "print(cls.__module__, 'engineroom_precise_ep' in sys.modules)")
    assert python_c(code).split() == ["engineroom_precise_ep.provider", "True"]
    cls = discovery.provider_class(NAME)
    assert cls.__module__ == "engineroom_precise_ep.provider" and cls.name == NAME


def test_listed_by_get_available_providers_and_get_ep_devices(wheel):
    assert NAME in ort.get_all_providers()
    avail = ort.get_available_providers()
    assert NAME in avail and avail[-1] == "CPUExecutionProvider"
    (dev,) = [d for d in ort.get_ep_devices() if d.ep_name == NAME]
    assert dev.ep_vendor == "Example Corp" and dev.device.type == ort.OrtHardwareDeviceType.CPU


def test_selected_by_name(wheel):
    model, w = _model()
    x = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)
    expect = np.maximum(x.astype(np.float64) @ w.astype(np.float64), 0).sum(1)
    s = ort.InferenceSession(model, providers=[NAME, "CPUExecutionProvider"])
    assert s.get_providers() == [NAME, "CPUExecutionProvider"]
    assert [(p.ep_name, [n.name for n in p.get_nodes()]) for p in s.get_provider_graph_assignment_info()] == [
        (NAME, ["matmul"]), ("CPUExecutionProvider", ["relu"]), (NAME, ["sum"])]
    np.testing.assert_allclose(s.run(None, {"x": x})[0], expect, rtol=1e-6)
    s = ort.InferenceSession(model, providers=[(NAME, {"accumulation": "longdouble"}), "CPUExecutionProvider"])
    assert s.get_provider_options()[NAME] == {"accumulation": "longdouble"}
    np.testing.assert_allclose(s.run(None, {"x": x})[0], expect, rtol=1e-6)
    with pytest.raises(ort.InvalidArgument, match="accumulation must be"):
        ort.InferenceSession(model, providers=[(NAME, {"accumulation": "float16"})])
    with pytest.raises(ort.InvalidArgument, match="unknown provider option"):
        ort.InferenceSession(model, providers=[(NAME, {"precision": "high"})])


def test_selected_by_device(wheel):
    model, _ = _model()
    so = ort.SessionOptions()
    so.add_provider_for_devices([d for d in ort.get_ep_devices() if d.ep_name == NAME], {})
    assert ort.InferenceSession(model, so).get_providers() == [NAME, "CPUExecutionProvider"]


def test_passes_the_conformance_kit(wheel):
    report = run_kit(NAME, expected_failures=EXPECTED)
    print(report.format())
    assert report.ok, report.format()
    ops = report.node_tests.ops
    for op in ("MatMul", "Gemm", "Conv", "ReduceSum", "ReduceMean", "Softmax", "LogSoftmax"):
        assert ops[op].claimed == ops[op].passed > 0, (op, ops[op])
    assert report.node_tests.totals.claimed > 300
    assert all(c.ok for c in report.contract)


def test_kit_command_line_against_the_installed_wheel(wheel, tmp_path):
    out = tmp_path / "report.json"
    r = subprocess.run([sys.executable, "-m", "engineroom.plugin_sdk.testing", NAME, "--only", "test_gemm",
                        "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "RESULT: PASS" in r.stdout and "from engineroom-precise-ep 0.1.0" in r.stdout
    assert '"Gemm"' in out.read_text()


def test_the_authors_own_tests_pass(wheel):
    spec = importlib.util.spec_from_file_location("precise_author_tests",
                                                  os.path.join(EXAMPLE, "tests", "test_conformance.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for name in sorted(n for n in dir(mod) if n.startswith("test_")):
        getattr(mod, name)()


def test_uninstalled_it_is_gone(wheel):
    _uninstall()
    assert NAME not in ort.get_all_providers()
    with pytest.raises(importlib.metadata.PackageNotFoundError):
        importlib.metadata.distribution(DIST)


def test_doc_code_is_the_example_code():
    """Every code block of docs/writing-a-provider.md that starts with '# from <path>' is that file's text."""
    doc = open(os.path.join(ROOT, "docs", "writing-a-provider.md"), encoding="utf-8").read()
    blocks = re.findall(r"```[a-z]*\n# from (\S+)\n(.*?)\n```", doc, re.S)
    assert len(blocks) >= 6
    for path, body in blocks:
        with open(os.path.join(ROOT, path), encoding="utf-8") as f:
            assert body in f.read(), f"a block of docs/writing-a-provider.md is no longer {path}'s text"
    assert "pip wheel --no-deps" in doc and "python -m engineroom.plugin_sdk.testing" in doc
