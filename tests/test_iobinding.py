"""IOBinding (``session.io_binding()`` / ``run_with_iobinding``): host bindings give run()'s results,
bad bindings fail with run()'s messages and leave the session usable, and values bound on a device
(OpenCL on PoCL here) stay there: no transfer to the host and back, counted at the OpenCL runtime.
"""
from __future__ import annotations

import contextlib

import numpy as np
import pytest
from conftest import copies
from onnx import TensorProto, helper, numpy_helper

import engineroom as ort
from engineroom.providers.opencl import OpenCLExecutionProvider

OCL = "OpenCLExecutionProvider"
CPU = "CPUExecutionProvider"
needs_opencl = pytest.mark.skipif(not OpenCLExecutionProvider.is_available(),
                                  reason=f"no OpenCL device: {OpenCLExecutionProvider.unavailable_reason()}")
_r = np.random.default_rng(3)


def _relu_add(shape=(2, 3)):
    """y = Relu(x) + b, z = Relu(x) * 2: every node on OpenCL when it is asked first."""
    b = numpy_helper.from_array(np.arange(shape[-1], dtype=np.float32), "b")
    two = numpy_helper.from_array(np.array(2.0, np.float32), "two")
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Add", ["r", "b"], ["y"]),
             helper.make_node("Mul", ["r", "two"], ["z"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape)),
                           helper.make_tensor_value_info("z", TensorProto.FLOAT, list(shape))], [b, two])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


def _session(model, providers=(CPU,)):
    return ort.InferenceSession(model.SerializeToString(), providers=list(providers))


def x23():
    return _r.standard_normal((2, 3)).astype(np.float32)


# -- host bindings ----------------------------------------------------------------------------------
def test_cpu_bindings_give_run_results():
    s = _session(_relu_add())
    x = x23()
    y, z = s.run(None, {"x": x})
    io = s.io_binding()
    io.bind_cpu_input("x", x)
    io.bind_output("z")
    io.bind_output("y", "cpu", 0)
    s.run_with_iobinding(io)
    outs = io.get_outputs()
    assert [o.device_name() for o in outs] == ["cpu", "cpu"]
    np.testing.assert_array_equal(outs[0].numpy(), z)       # in the order bound
    np.testing.assert_array_equal(outs[1].numpy(), y)
    zc, yc = io.copy_outputs_to_cpu()
    np.testing.assert_array_equal(yc, y)
    np.testing.assert_array_equal(zc, z)


def test_bound_array_is_referenced_not_copied():
    s = _session(_relu_add())
    x = x23()
    io = s.io_binding()
    io.bind_cpu_input("x", x)
    io.bind_output("y")
    s.run_with_iobinding(io)
    x += 5.0                                               # seen by the next run, as in onnxruntime
    s.run_with_iobinding(io)
    np.testing.assert_array_equal(io.copy_outputs_to_cpu()[0], s.run(["y"], {"x": x})[0])


def test_ortvalue_input_and_preallocated_output():
    s = _session(_relu_add())
    x = x23()
    out = ort.OrtValue.ortvalue_from_numpy(np.zeros((2, 3), np.float32))
    io = s.io_binding()
    io.bind_ortvalue_input("x", ort.OrtValue.ortvalue_from_numpy(x))
    io.bind_ortvalue_output("y", out)
    s.run_with_iobinding(io)
    assert io.get_outputs()[0] is out
    np.testing.assert_array_equal(out.numpy(), s.run(["y"], {"x": x})[0])


def test_host_buffer_pointers_bind_without_a_copy():
    s = _session(_relu_add())
    x = x23()
    y = np.zeros((2, 3), np.float32)
    io = s.io_binding()
    io.bind_input("x", "cpu", 0, np.float32, x.shape, x.ctypes.data)
    io.bind_output("y", "cpu", 0, np.float32, y.shape, y.ctypes.data)
    s.run_with_iobinding(io)
    np.testing.assert_array_equal(y, s.run(["y"], {"x": x})[0])    # written into the caller's buffer
    x *= -1.0
    s.run_with_iobinding(io)
    np.testing.assert_array_equal(y, s.run(["y"], {"x": x})[0])
    assert ort.OrtValue.ortvalue_from_numpy(x).data_ptr() == x.ctypes.data
    with pytest.raises(ValueError, match="element_type"):
        io.bind_output("y", "cpu", 0, None, y.shape, y.ctypes.data)
    with pytest.raises(ValueError, match="shape"):
        io.bind_output("y", "cpu", 0, np.float32, None, y.ctypes.data)


def test_overridable_initializer_defaults_and_clearing():
    m = _relu_add()
    m.graph.input.append(helper.make_tensor_value_info("b", TensorProto.FLOAT, [3]))
    s = _session(m)
    x = x23()
    io = s.io_binding()
    io.bind_cpu_input("x", x)
    io.bind_output("y")
    s.run_with_iobinding(io)                                 # b from its initializer
    np.testing.assert_array_equal(io.copy_outputs_to_cpu()[0], np.maximum(x, 0) + np.arange(3, dtype=np.float32))
    io.bind_cpu_input("b", np.ones(3, np.float32))
    s.run_with_iobinding(io)
    np.testing.assert_array_equal(io.copy_outputs_to_cpu()[0], np.maximum(x, 0) + 1)
    io.clear_binding_inputs()
    with pytest.raises(ort.InvalidArgument, match=r"Required inputs \(\['x'\]\) are missing"):
        s.run_with_iobinding(io)
    io.clear_binding_outputs()
    assert io.get_outputs() == []
    io.bind_cpu_input("x", x)
    with pytest.raises(ort.InvalidArgument, match="At least one output should be requested"):
        s.run_with_iobinding(io)


@pytest.mark.parametrize("bind, message", [
    (lambda io: io.bind_cpu_input("nope", x23()), "Invalid input name: nope"),
    (lambda io: io.bind_output("nope"), "Invalid output name: nope"),
    (lambda io: io.bind_ortvalue_output("nope", ort.OrtValue.ortvalue_from_numpy(x23())), "Invalid output name: nope"),
    (lambda io: io.bind_cpu_input("x", x23().astype(np.float64)),
     r"Unexpected input data type for input 'x'. Actual: \(tensor\(double\)\) , expected: \(tensor\(float\)\)"),
    (lambda io: io.bind_cpu_input("x", np.zeros((2, 3, 1), np.float32)),
     "Invalid rank for input: x Got: 3 Expected: 2"),
    (lambda io: io.bind_cpu_input("x", np.zeros((2, 4), np.float32)), "Got invalid dimensions for input: x"),
    (lambda io: io.bind_output("y", "cuda", 0), "no provider of this session runs on device 'cuda:0'"),
])
def test_bad_bindings_are_invalid_argument_and_the_session_still_works(bind, message):
    s = _session(_relu_add())
    io = s.io_binding()
    with pytest.raises(ort.InvalidArgument, match=message):
        bind(io)
    x = x23()
    io.bind_cpu_input("x", x)
    io.bind_output("y")
    s.run_with_iobinding(io)
    np.testing.assert_array_equal(io.copy_outputs_to_cpu()[0], s.run(["y"], {"x": x})[0])


def test_host_bindings_run_the_session_plan():
    s = _session(_relu_add())
    io = s.io_binding()
    io.bind_cpu_input("x", x23())
    io.bind_output("y")
    s.run_with_iobinding(io)
    assert s._binding.variants == {}                                # no variant: outputs are made on the host


# -- device bindings (OpenCL) -----------------------------------------------------------------------
@contextlib.contextmanager
def _count_transfers(monkeypatch):
    """Counts every host<->device transfer of the OpenCL runtime (whoever asks for it)."""
    from engineroom.providers.opencl import runtime

    n = {"to_device": 0, "to_host": 0}
    for name in n:
        orig = getattr(runtime.Runtime, name)

        def counted(self, a, _orig=orig, _name=name):
            n[_name] += 1
            return _orig(self, a)

        monkeypatch.setattr(runtime.Runtime, name, counted)
    yield n


def _ocl_session(model=None):
    return _session(model or _relu_add(), (OCL, CPU))


@needs_opencl
def test_opencl_input_and_outputs_stay_on_the_device(monkeypatch):
    s = _ocl_session()
    assert {p.ep_name for p in s.get_provider_graph_assignment_info()} == {OCL}
    x = x23()
    y, z = s.run(None, {"x": x})
    xv = ort.OrtValue.ortvalue_from_numpy(x, "opencl", 0)
    io = s.io_binding()
    io.bind_ortvalue_input("x", xv)
    io.bind_output("y", "opencl", 0)
    io.bind_output("z", "opencl", 0)
    with _count_transfers(monkeypatch) as n:
        s.run_with_iobinding(io)
        s.run_with_iobinding(io)
    assert n == {"to_device": 0, "to_host": 0}                # no host round trip, in or out
    outs = io.get_outputs()
    assert [o.device_name() for o in outs] == ["opencl", "opencl"]
    assert all(s._providers[0].holds(o._value) for o in outs)
    io.synchronize_outputs()
    np.testing.assert_array_equal(outs[0].numpy(), y)
    np.testing.assert_array_equal(outs[1].numpy(), z)
    # one variant, cached: its only copy step is the input's (which passes the bound value through)
    assert len(s._binding.variants) == 1
    variant = next(iter(s._binding.variants.values()))
    assert copies(s) == 3 and variant.n_copies == 1
    assert variant.output_devices == [xv._provider.device] * 2


@needs_opencl
def test_opencl_input_with_host_outputs_and_host_input_with_device_outputs(monkeypatch):
    s = _ocl_session()
    x = x23()
    y = s.run(["y"], {"x": x})[0]
    io = s.io_binding()
    io.bind_ortvalue_input("x", ort.OrtValue.ortvalue_from_numpy(x, "opencl", 0))
    io.bind_output("y")
    with _count_transfers(monkeypatch) as n:
        s.run_with_iobinding(io)
    assert n == {"to_device": 0, "to_host": 1}                # only the output comes back
    np.testing.assert_array_equal(io.copy_outputs_to_cpu()[0], y)

    io = s.io_binding()
    io.bind_cpu_input("x", x)
    io.bind_output("y", "opencl", 0)
    with _count_transfers(monkeypatch) as n:
        s.run_with_iobinding(io)
    assert n == {"to_device": 1, "to_host": 0}                # only the input goes up
    np.testing.assert_array_equal(io.copy_outputs_to_cpu()[0], y)


@needs_opencl
def test_opencl_input_read_on_the_host_too_is_brought_down_once(monkeypatch):
    # x feeds Relu (OpenCL) and Shape (CPU: Shape of a graph input stays on the host)
    nodes = [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Shape", ["x"], ["s"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3]),
                           helper.make_tensor_value_info("s", TensorProto.INT64, [2])])
    s = _ocl_session(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]))
    x = x23()
    io = s.io_binding()
    io.bind_ortvalue_input("x", ort.OrtValue.ortvalue_from_numpy(x, "opencl", 0))
    io.bind_output("y", "opencl", 0)
    io.bind_output("s")
    with _count_transfers(monkeypatch) as n:
        s.run_with_iobinding(io)
    assert n == {"to_device": 1, "to_host": 1}
    y, shp = io.copy_outputs_to_cpu()
    np.testing.assert_array_equal(y, np.maximum(x, 0))
    np.testing.assert_array_equal(shp, [2, 3])


@needs_opencl
def test_opencl_preallocated_output_and_cpu_output_bound_to_the_device():
    s = _ocl_session()
    x = x23()
    y = s.run(["y"], {"x": x})[0]
    out = ort.OrtValue.ortvalue_from_numpy(np.zeros((2, 3), np.float32), "opencl", 0)
    io = s.io_binding()
    io.bind_cpu_input("x", x)
    io.bind_ortvalue_output("y", out)
    s.run_with_iobinding(io)
    assert io.get_outputs()[0] is out
    np.testing.assert_array_equal(out.numpy(), y)
    # an output produced on the CPU and bound to OpenCL: one copy, at the end
    s2 = _session(_relu_add(), (CPU, OCL))
    io = s2.io_binding()
    io.bind_cpu_input("x", x)
    io.bind_output("y", "opencl", 0)
    s2.run_with_iobinding(io)
    assert io.get_outputs()[0].device_name() == "opencl"
    np.testing.assert_array_equal(io.copy_outputs_to_cpu()[0], y)
    bad = ort.OrtValue.ortvalue_from_numpy(np.zeros((3, 3), np.float32), "opencl", 0)
    io.bind_ortvalue_output("y", bad)
    with pytest.raises(ort.InvalidArgument, match=r"output 'y' is tensor\(float\) of shape \[2, 3\]"):
        s2.run_with_iobinding(io)


@needs_opencl
def test_opencl_bad_bindings_and_raw_pointers():
    s = _ocl_session()
    io = s.io_binding()
    with pytest.raises(ort.InvalidArgument, match="Unexpected input data type for input 'x'"):
        io.bind_ortvalue_input("x", ort.OrtValue.ortvalue_from_numpy(np.zeros((2, 3), np.int32), "opencl", 0))
    with pytest.raises(ort.InvalidArgument, match="Got invalid dimensions for input: x"):
        io.bind_ortvalue_input("x", ort.OrtValue.ortvalue_from_numpy(np.zeros((2, 2), np.float32), "opencl", 0))
    with pytest.raises(ort.InvalidArgument, match="cannot use a raw opencl pointer"):
        io.bind_input("x", "opencl", 0, np.float32, (2, 3), 12345678)
    x = x23()
    io.bind_ortvalue_input("x", ort.OrtValue.ortvalue_from_numpy(x, "opencl", 0))
    io.bind_output("y", "opencl", 0)
    s.run_with_iobinding(io)
    io.synchronize_inputs()
    np.testing.assert_array_equal(io.copy_outputs_to_cpu()[0], s.run(["y"], {"x": x})[0])


@needs_opencl
def test_a_constant_output_bound_to_the_device_is_a_fresh_array_each_run():
    # b is a graph output and an input of Add on OpenCL: its device copy is a constant of the plan
    b = numpy_helper.from_array(np.arange(3, dtype=np.float32), "b")
    g = helper.make_graph([helper.make_node("Add", ["x", "b"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3]),
                           helper.make_tensor_value_info("b", TensorProto.FLOAT, [3])], [b])
    s = _ocl_session(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]))
    x = np.ones((2, 3), np.float32)
    io = s.io_binding()
    io.bind_cpu_input("x", x)
    io.bind_output("b", "opencl", 0)
    io.bind_output("y", "opencl", 0)
    s.run_with_iobinding(io)
    io.get_outputs()[0]._value.fill(7)                       # the caller writes into what it was given
    s.run_with_iobinding(io)
    np.testing.assert_array_equal(io.copy_outputs_to_cpu()[0], np.arange(3, dtype=np.float32))
    np.testing.assert_array_equal(s.run(["y"], {"x": x})[0], x + np.arange(3, dtype=np.float32))
