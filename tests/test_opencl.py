"""OpenCLExecutionProvider: per-op results against onnx.reference, partitions and copies, the zoo.

Everything that needs a device skips, with is_available()'s reason, where no OpenCL platform exists
(``pip install "pyopencl[pocl]"`` gives one on any machine: PoCL's CPU device).
"""
from __future__ import annotations

import threading

import numpy as np
import pytest
from conftest import ZOO_MODELS, assert_matches_pytorch, assignment, copies, make_model, python_c, run_zoo, tensor_info
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import engineroom as ort
from engineroom.providers.opencl import OpenCLExecutionProvider

OCL = "OpenCLExecutionProvider"
CPU = "CPUExecutionProvider"
needs_opencl = pytest.mark.skipif(not OpenCLExecutionProvider.is_available(),
                                  reason=f"no OpenCL device: {OpenCLExecutionProvider.unavailable_reason()}")


def _model(nodes, inputs, outputs, inits=(), opset=18, **kw):
    return make_model(nodes, inputs, outputs, inits, opset, **kw)


def _single(op, inputs, attrs=None, consts=(), n_out=1, opset=18):
    """A one-node model over ``inputs`` (a list of arrays; None = absent); ``consts`` are initializers."""
    names = [f"x{k}" if v is not None else "" for k, v in enumerate(inputs)]
    graph_in = [tensor_info(n, v) for n, v in zip(names, inputs) if n and n not in consts]
    inits = [numpy_helper.from_array(v, n) for n, v in zip(names, inputs) if n in consts]
    outs = [helper.make_tensor_value_info(f"y{k}", TensorProto.UNDEFINED, None) for k in range(n_out)]
    node = helper.make_node(op, names, [o.name for o in outs], name=op.lower(), **(attrs or {}))
    feed = {n: v for n, v in zip(names, inputs) if n and n not in consts}
    return _model([node], graph_in, outs, inits, opset), feed


def _session(model, providers=(OCL, CPU), level=None):
    so = ort.SessionOptions()
    if level is not None:
        so.graph_optimization_level = level
    return ort.InferenceSession(model.SerializeToString(), so, providers=list(providers))


# -- without a device -----------------------------------------------------------------------------
def test_import_does_not_need_pyopencl_and_is_available_never_raises():
    code = ("import sys, engineroom, engineroom.providers.opencl as p; assert 'pyopencl' not in sys.modules; "
            "from engineroom import discovery; discovery.provider_names(); "
            "assert 'pyopencl' not in sys.modules; print(type(p.OpenCLExecutionProvider.is_available()).__name__)")
    assert python_c(code).strip() == "bool"
    assert isinstance(OpenCLExecutionProvider.unavailable_reason(), str)


def test_unknown_option_is_an_error_naming_it():
    m, _ = _single("Relu", [np.ones((2, 2), np.float32)])
    with pytest.raises(ort.InvalidArgument, match="bogus"):
        _session(m, [(OCL, {"bogus": "1"}), CPU])


# -- per-op results against onnx.reference ------------------------------------------------------
_r = np.random.default_rng(7)


def f32(*shape):
    return _r.standard_normal(shape).astype(np.float32)


def pos(*shape):
    return (np.abs(_r.standard_normal(shape)) + 0.1).astype(np.float32)


I64 = np.int64
# (id, op, inputs, attrs, constant input names, opset, n_out)
CASES = [
    ("relu", "Relu", [f32(3, 5)], {}, (), 18, 1),
    ("sigmoid", "Sigmoid", [f32(4, 33)], {}, (), 18, 1),
    ("tanh", "Tanh", [f32(70)], {}, (), 18, 1),
    ("gelu", "Gelu", [f32(2, 9)], {}, (), 20, 1),
    ("gelu_tanh", "Gelu", [f32(2, 9)], {"approximate": "tanh"}, (), 20, 1),
    ("erf", "Erf", [f32(3, 4)], {}, (), 18, 1),
    ("exp_log_sqrt", "Sqrt", [pos(5, 3)], {}, (), 18, 1),
    ("leakyrelu", "LeakyRelu", [f32(8)], {"alpha": 0.2}, (), 18, 1),
    ("elu", "Elu", [f32(8)], {"alpha": 0.7}, (), 18, 1),
    ("hardsigmoid", "HardSigmoid", [f32(8)], {"alpha": 0.3, "beta": 0.4}, (), 18, 1),
    ("clip", "Clip", [f32(4, 6), np.array(-0.5, np.float32), np.array(0.7, np.float32)], {}, ("x1", "x2"), 18, 1),
    ("clip_max_only", "Clip", [f32(4, 6), None, np.array(0.2, np.float32)], {}, (), 18, 1),
    ("add_bcast", "Add", [f32(2, 3, 4, 5), f32(3, 1, 5)], {}, (), 18, 1),
    ("sub_scalar", "Sub", [f32(3, 4), np.array(1.5, np.float32)], {}, (), 18, 1),
    ("mul_rows", "Mul", [f32(6, 1), f32(1, 7)], {}, (), 18, 1),
    ("div", "Div", [f32(3, 4), pos(4)], {}, (), 18, 1),
    ("pow", "Pow", [pos(3, 4), f32(4)], {}, (), 18, 1),
    ("add_6d_bcast", "Add", [f32(2, 1, 3, 2, 1, 4), f32(2, 3, 1, 5, 4)], {}, (), 18, 1),
    ("max3", "Max", [f32(3, 4), f32(4), f32(3, 1)], {}, (), 18, 1),
    ("mean2", "Mean", [f32(3, 4), f32(3, 4)], {}, (), 18, 1),
    ("less", "Less", [f32(3, 4), f32(4)], {}, (), 18, 1),
    ("where", "Where", [f32(3, 4) > 0, f32(3, 4), f32(1, 4)], {}, (), 18, 1),
    ("cast_i64", "Cast", [f32(3, 4) * 10], {"to": TensorProto.INT64}, (), 18, 1),
    ("isnan", "IsNaN", [np.array([1.0, np.nan, np.inf], np.float32)], {}, (), 18, 1),
    ("matmul", "MatMul", [f32(5, 7), f32(7, 9)], {}, (), 18, 1),
    ("matmul_folded", "MatMul", [f32(2, 3, 5, 17), f32(17, 33)], {}, (), 18, 1),
    ("matmul_batched", "MatMul", [f32(2, 3, 5, 17), f32(3, 17, 10)], {}, (), 18, 1),
    ("matmul_vec", "MatMul", [f32(17), f32(3, 17, 4)], {}, (), 18, 1),
    ("gemm_const", "Gemm", [f32(5, 7), f32(9, 7), f32(9)], {"transB": 1, "alpha": 0.5, "beta": 2.0},
     ("x1", "x2"), 18, 1),
    ("gemm_transA", "Gemm", [f32(7, 5), f32(9, 7), f32(5, 1)], {"transA": 1, "transB": 1}, (), 18, 1),
    ("conv", "Conv", [f32(1, 3, 10, 10), f32(4, 3, 3, 3), f32(4)], {"pads": [1, 1, 1, 1]}, ("x1", "x2"), 18, 1),
    ("conv_groups", "Conv", [f32(2, 4, 9, 11), f32(6, 2, 3, 2), f32(6)],
     {"group": 2, "strides": [2, 1], "dilations": [1, 2], "pads": [1, 0, 2, 1]}, (), 18, 1),
    ("conv_depthwise", "Conv", [f32(2, 6, 8, 8), f32(6, 1, 3, 3), f32(6)],
     {"group": 6, "pads": [1, 1, 1, 1], "strides": [2, 2]}, (), 18, 1),
    ("conv_1x1", "Conv", [f32(1, 8, 7, 7), f32(16, 8, 1, 1)], {}, (), 18, 1),
    ("conv_1d_same", "Conv", [f32(1, 3, 9), f32(4, 3, 3)], {"auto_pad": "SAME_UPPER"}, (), 18, 1),
    ("conv_3d", "Conv", [f32(1, 2, 5, 6, 7), f32(3, 2, 3, 3, 3)], {"pads": [1, 0, 1, 1, 2, 0]}, (), 18, 1),
    ("convtranspose", "ConvTranspose", [f32(1, 4, 5, 5), f32(4, 3, 3, 3), f32(3)],
     {"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]}, (), 18, 1),
    ("maxpool", "MaxPool", [f32(1, 3, 10, 10)], {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]},
     (), 18, 1),
    ("maxpool_ceil_idx", "MaxPool", [f32(1, 3, 10, 10)], {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1},
     (), 18, 2),
    ("avgpool_pad", "AveragePool", [f32(1, 3, 10, 10)],
     {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "count_include_pad": 1}, (), 18, 1),
    ("avgpool_excl", "AveragePool", [f32(1, 3, 9, 9)], {"kernel_shape": [2, 2], "pads": [1, 1, 0, 0]}, (), 18, 1),
    ("globalavgpool", "GlobalAveragePool", [f32(2, 3, 5, 5)], {}, (), 18, 1),
    ("batchnorm", "BatchNormalization", [f32(2, 3, 4, 5), f32(3), f32(3), f32(3), pos(3)], {},
     ("x1", "x2", "x3", "x4"), 18, 1),
    ("softmax", "Softmax", [f32(2, 3, 4)], {"axis": 1}, (), 18, 1),
    ("logsoftmax", "LogSoftmax", [f32(4, 7)], {}, (), 18, 1),
    ("layernorm", "LayerNormalization", [f32(2, 3, 8), f32(8), f32(8)], {"axis": -1}, (), 18, 1),
    ("layernorm_stats", "LayerNormalization", [f32(2, 3, 8), f32(3, 8)], {"axis": 1}, (), 18, 3),
    ("instancenorm", "InstanceNormalization", [f32(2, 3, 4, 5), f32(3), f32(3)], {}, (), 18, 1),
    ("reducemean", "ReduceMean", [f32(2, 3, 4, 5), np.array([2, 3], I64)], {}, ("x1",), 18, 1),
    ("reducesum_gap", "ReduceSum", [f32(2, 3, 4, 5), np.array([0, 2], I64)], {"keepdims": 0}, ("x1",), 18, 1),
    ("reducemax_all", "ReduceMax", [f32(2, 3, 4)], {"keepdims": 0}, (), 18, 1),
    ("reducel2_attr", "ReduceL2", [f32(2, 3, 4)], {"axes": [-1]}, (), 13, 1),
    ("reshape", "Reshape", [f32(2, 6), np.array([3, -1], I64)], {}, ("x1",), 18, 1),
    ("flatten", "Flatten", [f32(2, 3, 4)], {"axis": 2}, (), 18, 1),
    ("squeeze", "Squeeze", [f32(3, 1, 4), np.array([1], I64)], {}, ("x1",), 18, 1),
    ("unsqueeze", "Unsqueeze", [f32(3, 4), np.array([0, 3], I64)], {}, ("x1",), 18, 1),
    ("transpose", "Transpose", [f32(2, 3, 4, 5)], {"perm": [2, 0, 3, 1]}, (), 18, 1),
    ("concat", "Concat", [f32(2, 3), f32(2, 5), f32(2, 1)], {"axis": 1}, (), 18, 1),
    ("split", "Split", [f32(6, 2)], {"axis": 0, "num_outputs": 2}, (), 18, 2),
    ("slice_neg_step", "Slice", [f32(10, 8), np.array([1, -1], I64), np.array([8, 0], I64),
                                 np.array([0, 1], I64), np.array([2, -2], I64)], {}, ("x1", "x2", "x3", "x4"), 18, 1),
    ("gather", "Gather", [f32(5, 4), np.array([[0, 4], [-1, 2]], I64)], {"axis": 0}, (), 18, 1),
    ("gather_axis1_scalar", "Gather", [f32(3, 5, 4), np.array(2, I64)], {"axis": 1}, (), 18, 1),
    ("expand", "Expand", [f32(3, 1), np.array([2, 3, 4], I64)], {}, ("x1",), 18, 1),
    ("add_f64", "Add", [f32(3, 4).astype(np.float64), f32(4).astype(np.float64)], {}, (), 18, 1),
    ("softmax_f64", "Softmax", [f32(3, 5).astype(np.float64)], {}, (), 18, 1),
    ("layernorm_f64", "LayerNormalization", [f32(2, 8).astype(np.float64), f32(8).astype(np.float64)], {}, (), 18, 1),
    ("resize_nearest", "Resize", [f32(1, 2, 4, 5), None, np.array([1, 1, 2, 2], np.float32)],
     {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}, ("x2",), 18, 1),
    ("resize_linear", "Resize", [f32(1, 2, 4, 5), None, np.array([1, 1, 2, 1.5], np.float32)], {"mode": "linear"},
     ("x2",), 18, 1),
    ("resize_sizes_cubic", "Resize", [f32(1, 2, 4, 5), None, None, np.array([1, 2, 7, 9], I64)],
     {"mode": "cubic", "coordinate_transformation_mode": "align_corners"}, ("x3",), 18, 1),
]


@needs_opencl
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_op_matches_onnx_reference(case):
    _, op, inputs, attrs, consts, opset, n_out = case
    m, feed = _single(op, inputs, attrs, consts, n_out, opset)
    s = _session(m)
    assert [p for p, _ in assignment(s)] == [OCL], s.placement
    got = s.run(None, feed)
    want = ReferenceEvaluator(m).run(None, feed)
    for g, w in zip(got, want):
        w = np.asarray(w)
        assert g.shape == w.shape and g.dtype == w.dtype
        if w.dtype.kind == "f":
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
        else:
            np.testing.assert_array_equal(g, w)


@needs_opencl
def test_softmax_before_opset_13_coerces_to_2d():
    # (onnx.reference applies the opset-13 semantics to every opset, so NumPy is the oracle here)
    x = f32(2, 3, 4)
    m, feed = _single("Softmax", [x], {"axis": 1}, opset=11)
    s = _session(m)
    assert [p for p, _ in assignment(s)] == [OCL]
    e = np.exp(x.reshape(2, 12) - x.reshape(2, 12).max(axis=1, keepdims=True))
    np.testing.assert_allclose(s.run(None, feed)[0], (e / e.sum(axis=1, keepdims=True)).reshape(2, 3, 4), rtol=1e-5)


@needs_opencl
@pytest.mark.parametrize("act,params,residual", [("Relu", [], True), ("Clip", [0.0, 6.0], False),
                                                 ("LeakyRelu", [0.1], True), ("Sigmoid", [], False)])
@pytest.mark.parametrize("depthwise", [False, True], ids=["im2col", "depthwise"])
def test_fused_conv_matches_the_cpu_provider(act, params, residual, depthwise):
    c = 6
    x = f32(1, c, 9, 9)
    w = f32(c, 1 if depthwise else c, 3, 3)
    b = f32(c)
    z = f32(1, c, 9, 9)
    inputs = [x, w, b] + ([z] if residual else [])
    attrs = {"pads": [1, 1, 1, 1], "activation": act, "group": c if depthwise else 1}
    if params:
        attrs["activation_params"] = params
    names = ["x", "w", "b", "z"][: len(inputs)]
    node = helper.make_node("FusedConv", names, ["y"], domain="com.microsoft", **attrs)
    m = _model([node], [tensor_info(n, v) for n, v in zip(names, inputs)],
               [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    m.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    feed = dict(zip(names, inputs))
    s = _session(m)
    assert [p for p, _ in assignment(s)] == [OCL], s.placement
    want = _session(m, [CPU]).run(None, feed)[0]
    np.testing.assert_allclose(s.run(None, feed)[0], want, rtol=1e-4, atol=1e-5)


@needs_opencl
def test_fast_gelu_with_bias():
    x, bias = f32(3, 16), f32(16)
    node = helper.make_node("FastGelu", ["x", "bias"], ["y"], domain="com.microsoft")
    m = _model([node], [tensor_info("x", x), tensor_info("bias", bias)], [tensor_info("y", TensorProto.FLOAT, None)],
               opsets=[("com.microsoft", 1)])
    s = _session(m)
    assert [p for p, _ in assignment(s)] == [OCL]
    v = x + bias
    want = 0.5 * v * (1 + np.tanh(np.sqrt(2 / np.pi) * (v + 0.044715 * v ** 3)))
    np.testing.assert_allclose(s.run(None, {"x": x, "bias": bias})[0], want, rtol=1e-5, atol=1e-6)


@needs_opencl
def test_unsupported_node_falls_back_to_cpu_visibly():
    # float16 has no kernel here: the node goes to the CPU, and the placement line says so
    m, feed = _single("Relu", [np.ones((2, 3), np.float16)])
    s = _session(m)
    assert assignment(s) == [(CPU, ["relu"])]
    assert "CPUExecutionProvider took 1/1 nodes (Relu)" in s.placement
    np.testing.assert_array_equal(s.run(None, feed)[0], np.ones((2, 3), np.float16))
    # float64 GEMMs stay on the CPU (PoCL's compiler cannot build the double8 tile)
    a, b = f32(3, 4).astype(np.float64), f32(4, 2).astype(np.float64)
    m, feed = _single("MatMul", [a, b])
    s = _session(m)
    assert assignment(s) == [(CPU, ["matmul"])]
    np.testing.assert_allclose(s.run(None, feed)[0], a @ b)


# -- partitions and copies ------------------------------------------------------------------------
@needs_opencl
def test_middle_slices_of_a_chain_cpu_opencl_cpu_opencl():
    # x -> CumSum [cpu] -> Relu -> Mul(w) [opencl] -> LpNormalization [cpu] -> Sigmoid [opencl] -> y
    x = pos(3, 8)
    w = f32(8)
    axis = numpy_helper.from_array(np.array(1, I64), "axis")
    nodes = [helper.make_node("CumSum", ["x", "axis"], ["a"], name="cumsum"),
             helper.make_node("Relu", ["a"], ["b"], name="relu"),
             helper.make_node("Mul", ["b", "w"], ["c"], name="mul"),
             helper.make_node("LpNormalization", ["c"], ["d"], name="lpnorm", axis=1, p=2),
             helper.make_node("Sigmoid", ["d"], ["y"], name="sigmoid")]
    m = _model(nodes, [tensor_info("x", x)], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
               [axis, numpy_helper.from_array(w, "w")])
    s = _session(m)
    assert assignment(s) == [(CPU, ["cumsum"]), (OCL, ["relu", "mul"]), (CPU, ["lpnorm"]), (OCL, ["sigmoid"])]
    # a: cpu->opencl, c: opencl->cpu, d: cpu->opencl, y: opencl->cpu (w moves once, at session creation)
    assert copies(s) == 4
    c = np.maximum(np.cumsum(x, axis=1), 0) * w
    d = c / np.linalg.norm(c, axis=1, keepdims=True)
    np.testing.assert_allclose(s.run(None, {"x": x})[0], 1 / (1 + np.exp(-d)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(s.run(None, {"x": x})[0], ReferenceEvaluator(m).run(None, {"x": x})[0], rtol=1e-5)


@needs_opencl
def test_values_between_opencl_nodes_stay_on_the_device(monkeypatch):
    import pyopencl.array as cla

    seen = []
    create = OpenCLExecutionProvider.create_kernel

    def recording(self, info):
        fn = create(self, info)
        return lambda *a: seen.append((info.op_type, [type(v) for v in a])) or fn(*a)

    monkeypatch.setattr(OpenCLExecutionProvider, "create_kernel", recording)
    x = f32(4, 4)
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Tanh", ["a"], ["y"])]
    m = _model(nodes, [tensor_info("x", x)], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    s = _session(m)
    assert copies(s) == 2
    y = s.run(None, {"x": x})[0]
    np.testing.assert_allclose(y, np.tanh(np.maximum(x, 0)), rtol=1e-6)
    assert isinstance(y, np.ndarray)
    # both kernels read device arrays: the copy in happens before Relu, the copy out after Tanh
    assert seen == [("Relu", [cla.Array]), ("Tanh", [cla.Array])]


@needs_opencl
def test_shape_inputs_stay_on_the_host_and_shape_arithmetic_stays_on_cpu():
    x = f32(2, 3, 4)
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="relu"),
             helper.make_node("Shape", ["a"], ["s"], name="shape"),
             helper.make_node("Gather", ["s", "zero"], ["n"], name="gather_dim", axis=0),
             helper.make_node("Concat", ["n", "minus1"], ["shape2"], name="concat", axis=0),
             helper.make_node("Reshape", ["a", "shape2"], ["y"], name="reshape")]
    inits = [numpy_helper.from_array(np.array([0], I64), "zero"),
             numpy_helper.from_array(np.array([-1], I64), "minus1")]
    m = _model(nodes, [tensor_info("x", x)], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    s = _session(m, level=ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    owner = {n: p for p, ns in assignment(s) for n in ns}
    assert owner == {"relu": OCL, "shape": OCL, "gather_dim": CPU, "concat": CPU, "reshape": OCL}
    # x in, the 3-element shape out to the CPU, y out; Reshape reads shape2 on the host: no copy back
    assert copies(s) == 3
    np.testing.assert_array_equal(s.run(None, {"x": x})[0], np.maximum(x, 0).reshape(2, -1))


@needs_opencl
def test_bad_device_id_is_an_invalid_argument_not_a_fallback(caplog):
    """The provider raises the SDK's InvalidArgument (engineroom.InvalidArgument, the same class); the
    session hands it to the user as onnxruntime does for a bad device_id, instead of falling back."""
    m, feed = _single("Relu", [f32(2, 2)])
    with caplog.at_level("WARNING", logger="engineroom"):
        with pytest.raises(ort.InvalidArgument, match="no OpenCL device 99") as e:
            _session(m, [(OCL, {"device_id": 99}), CPU])
    assert "falling back" not in caplog.text
    assert "INVALID_ARGUMENT" in str(e.value) and "devices: 0: " in str(e.value)
    so = ort.SessionOptions()
    so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    with pytest.raises(ort.InvalidArgument, match="no OpenCL device 99"):
        ort.InferenceSession(m.SerializeToString(), so, providers=[(OCL, {"device_id": 99})])
    with pytest.raises(ort.InvalidArgument, match="device_type"):
        _session(m, [(OCL, {"device_type": "quantum"}), CPU])


@needs_opencl
def test_device_listing_and_options():
    devs = [d for d in ort.get_ep_devices() if d.ep_name == OCL]
    assert devs and devs[0].ep_options == {"device_id": "0"}
    m, feed = _single("Relu", [f32(3, 3)])
    s = _session(m, [(OCL, {"device_id": "0", "device_type": "all"}), CPU])
    assert s.get_provider_options()[OCL]["device_id"] == "0"
    np.testing.assert_array_equal(s.run(None, feed)[0], np.maximum(feed["x0"], 0))


@needs_opencl
def test_one_session_runs_from_several_threads():
    x = f32(1, 8, 12, 12)
    w = f32(8, 8, 3, 3)
    nodes = [helper.make_node("Conv", ["x", "w"], ["a"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["a"], ["y"])]
    m = _model(nodes, [tensor_info("x", x)], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
               [numpy_helper.from_array(w, "w")])
    s = _session(m)
    feeds = [x * (k + 1) for k in range(4)]
    want = [s.run(None, {"x": f})[0] for f in feeds]
    got: dict[int, list] = {}

    def work(k):
        got[k] = [s.run(None, {"x": feeds[k]})[0] for _ in range(5)]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(4):
        for g in got[k]:
            np.testing.assert_array_equal(g, want[k])


# -- the zoo --------------------------------------------------------------------------------------
@needs_opencl
@pytest.mark.parametrize("name", ZOO_MODELS)
def test_zoo_model_matches_pytorch_with_opencl_first(name):
    s, outs, refs = run_zoo(name, providers=[OCL, CPU])
    assert_matches_pytorch(name, outs, refs, 1e-4)
    # every Conv / MatMul / Gemm / ConvTranspose runs on OpenCL, and the placement line says so
    heavy = {"Conv", "FusedConv", "ConvTranspose", "MatMul", "Gemm"}
    for p in s.get_provider_graph_assignment_info():
        if p.ep_name != OCL:
            assert not heavy & {n.op_type for n in p.get_nodes()}, s.placement
    assert s.placement.startswith("OpenCLExecutionProvider took"), s.placement
