"""engineroom, as code written for onnxruntime sees it (``engineroom.compat``), has onnxruntime's public Python
surface: every public name of the ``onnxruntime`` module, of each of its public classes, and of
``onnxruntime.capi._pybind_state``, except those ``tests/ort_api_left_out.txt`` names with a reason."""
from __future__ import annotations

import enum
import inspect
import pathlib

import numpy as np
import pytest
from onnx import TensorProto, helper

onnxruntime = pytest.importorskip("onnxruntime", reason="onnxruntime (whose API is compared) is not installed")

import engineroom  # noqa: E402
import engineroom.compat.onnxruntime as shim  # noqa: E402
from engineroom.compat.onnxruntime.capi import _pybind_state as shim_capi  # noqa: E402

LEFT_OUT = pathlib.Path(__file__).with_name("ort_api_left_out.txt")


def _left_out() -> dict[str, str]:
    entries = {}
    for line in LEFT_OUT.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, reason = line.partition("#")
        assert reason.strip(), f"{LEFT_OUT.name}: '{name.strip()}' has no reason"
        entries[name.strip()] = reason.strip()
    return entries


def _public(names) -> set[str]:
    return {n for n in names if not n.startswith("_")}


def _session():
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    return engineroom.InferenceSession(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))


def _samples() -> dict[str, object]:
    """An instance of each engineroom class whose attributes are set per instance."""
    s = _session()
    dev = engineroom.get_ep_devices()[0]
    return {
        "InferenceSession": s, "SessionOptions": engineroom.SessionOptions(), "RunOptions": engineroom.RunOptions(),
        "NodeArg": s.get_inputs()[0], "ModelMetadata": s.get_modelmeta(), "IOBinding": s.io_binding(),
        "OrtValue": engineroom.OrtValue.ortvalue_from_numpy(np.zeros(2, np.float32)),
        "OrtDevice": engineroom.OrtDevice.make("cpu", 0), "OrtArenaCfg": engineroom.OrtArenaCfg(),
        "OrtMemoryInfo": engineroom.OrtMemoryInfo("Cpu", engineroom.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0,
                                                  engineroom.OrtMemType.DEFAULT),
        "OrtEpDevice": dev, "OrtHardwareDevice": dev.device,
        "OrtEpAssignedSubgraph": s.get_provider_graph_assignment_info()[0],
        "OrtEpAssignedNode": s.get_provider_graph_assignment_info()[0].get_nodes()[0],
    }


def _members(cls, sample=None) -> set[str]:
    names = set(dir(cls))
    if isinstance(cls, type) and issubclass(cls, enum.Enum):
        names |= set(cls.__members__) | set(dir(next(iter(cls))))
    if sample is not None:
        names |= set(dir(sample))
    return _public(names)


def _missing() -> list[str]:
    missing = []
    module_missing = _public(dir(onnxruntime)) - _public(dir(shim))
    missing += [f"module:{n}" for n in sorted(module_missing)]
    samples = _samples()
    for name in sorted(_public(dir(onnxruntime))):
        real = getattr(onnxruntime, name)
        if not inspect.isclass(real) or name in module_missing:
            continue
        ours = getattr(shim, name)
        gone = _members(real) - _members(ours, samples.get(name))
        missing += [f"{name}.{m}" for m in sorted(gone)]
    capi_real = _public(dir(onnxruntime.capi._pybind_state))
    missing += [f"capi:{n}" for n in sorted(capi_real - _public(dir(shim_capi))) if n not in module_missing]
    return missing


def test_onnxruntime_public_surface_is_covered():
    left_out = _left_out()
    missing = _missing()
    unexplained = [m for m in missing if m not in left_out]
    assert not unexplained, (f"{len(unexplained)} public onnxruntime names are missing from engineroom and not in "
                             f"{LEFT_OUT.name}: {unexplained}")
    # a name the installed onnxruntime does not have (an older release) says nothing either way
    stale = sorted(n for n in set(left_out) - set(missing) if _in_onnxruntime(n))
    assert not stale, f"{LEFT_OUT.name} lists names that engineroom now has (remove them): {stale}"


def _in_onnxruntime(entry: str) -> bool:
    if entry.startswith("module:"):
        return hasattr(onnxruntime, entry[len("module:"):])
    if entry.startswith("capi:"):
        return hasattr(onnxruntime.capi._pybind_state, entry[len("capi:"):])
    cls, _, member = entry.partition(".")
    return hasattr(getattr(onnxruntime, cls, None), member)


def test_capi_modules_resolve_after_install():
    """install_as_onnxruntime() makes onnxruntime and its capi modules engineroom's, exceptions included;
    uninstall brings the real ones back."""
    from engineroom.compat import uninstall_onnxruntime

    engineroom.install_as_onnxruntime()
    try:
        import onnxruntime as ort
        from onnxruntime.capi._pybind_state import Fail
        from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument, RuntimeException

        assert ort.__name__ == "engineroom.compat.onnxruntime"
        assert ort.__version__ == engineroom.compat.ORT_API_VERSION and engineroom.__version__ != ort.__version__
        assert Fail is engineroom.Fail and InvalidArgument is engineroom.InvalidArgument
        assert RuntimeException is engineroom.RuntimeException
        with pytest.raises(InvalidArgument, match="are missing from input feed"):
            ort.InferenceSession(_session()._model_source).run(None, {"nope": np.zeros((1, 2), np.float32)})
    finally:
        uninstall_onnxruntime()
    import onnxruntime as real

    assert real.__name__ == "onnxruntime" and real.InferenceSession is not engineroom.InferenceSession


def test_options_have_exactly_onnxruntime_attributes_and_types():
    for ours, theirs in ((engineroom.SessionOptions(), onnxruntime.SessionOptions()),
                         (engineroom.RunOptions(), onnxruntime.RunOptions())):
        attrs = [n for n in _public(dir(theirs)) if not callable(getattr(theirs, n))]
        for n in attrs:   # same defaults (enums compared by value)
            assert int(getattr(ours, n)) == int(getattr(theirs, n)) if not isinstance(getattr(theirs, n), str) \
                else getattr(ours, n) == getattr(theirs, n), n
        for obj in (ours, theirs):
            with pytest.raises(AttributeError):
                obj.no_such_option = 1
        with pytest.raises(TypeError):
            ours.log_severity_level = "x"
        with pytest.raises(TypeError):
            theirs.log_severity_level = "x"
    so, their_so = engineroom.SessionOptions(), onnxruntime.SessionOptions()
    for attr, value in (("graph_optimization_level", 5), ("intra_op_num_threads", "two"),
                        ("intra_op_num_threads", 2.0), ("execution_mode", "parallel"),
                        ("optimized_model_filepath", pathlib.Path("x"))):
        with pytest.raises(TypeError):
            setattr(their_so, attr, value)
        with pytest.raises(TypeError):
            setattr(so, attr, value)
    so.enable_profiling = 1   # onnxruntime takes numbers for bools
    assert so.enable_profiling is True
    so.optimized_model_filepath = b"m.onnx"
    assert so.optimized_model_filepath == "m.onnx"
    with pytest.raises(RuntimeError, match="does not have configuration with key: nope"):
        so.get_session_config_entry("nope")
    with pytest.raises(RuntimeError, match="does not have configuration with key: nope"):
        engineroom.RunOptions().get_run_config_entry("nope")
