"""The classes of real-world models that failed to load (issue 22), each as a small model built here and
checked against onnxruntime: maps and sequences of maps (ZipMap), nodes out of topological order,
negative dims, the GELU forms of a T5 encoder at each optimization level, and the OpenVINO provider on
int8 arithmetic. The downloaded models themselves are run by ``../shared/realworld/run_all.py``."""
from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as h
import pytest
from conftest import make_model
from onnx import TensorProto as T

import engineroom as ort

onnxruntime = pytest.importorskip("onnxruntime", reason="onnxruntime is the oracle of these tests")

RNG = np.random.default_rng(22)
ML = h.make_opsetid("ai.onnx.ml", 1)


def _model(nodes, inputs, outputs, opset=17, extra=(), initializers=()):
    return make_model(nodes, inputs, outputs, initializers, opset, opsets=extra)


def _both(m, feed, **kw):
    ref = onnxruntime.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"], **kw)
    return ref, s, ref.run(None, feed), s.run(None, feed)


# ------------------------------------------------------------------------------------------- maps
def _classifier(labels: dict) -> onnx.ModelProto:
    """logreg_iris's shape: LinearClassifier -> Normalizer -> ZipMap, probabilities as seq(map)."""
    key = T.INT64 if "classlabels_int64s" in labels else T.STRING
    lab = {"classlabels_ints": labels["classlabels_int64s"]} if key == T.INT64 else \
        {"classlabels_strings": labels["classlabels_strings"]}
    nodes = [
        h.make_node("LinearClassifier", ["x"], ["label", "scores"], domain="ai.onnx.ml",
                    coefficients=RNG.standard_normal(12).tolist(), intercepts=[0.25, 0.5, -0.75],
                    post_transform="LOGISTIC", **lab),
        h.make_node("Normalizer", ["scores"], ["p"], domain="ai.onnx.ml", norm="L1"),
        h.make_node("ZipMap", ["p"], ["probabilities"], domain="ai.onnx.ml", **labels),
    ]
    seq_map = h.make_sequence_type_proto(h.make_map_type_proto(key, h.make_tensor_type_proto(T.FLOAT, None)))
    return _model(nodes, [h.make_tensor_value_info("x", T.FLOAT, [None, 4])],
                  [h.make_tensor_value_info("label", key, [None]), h.make_value_info("probabilities", seq_map)],
                  extra=[ML])


@pytest.mark.parametrize("labels", [{"classlabels_int64s": [3, 1, 7]}, {"classlabels_strings": ["a", "b", "c"]}],
                         ids=["int64", "string"])
def test_zipmap_returns_a_list_of_dicts_as_onnxruntime(labels):
    m = _classifier(labels)
    feed = {"x": RNG.uniform(0.5, 7.5, (5, 4)).astype(np.float32)}
    ref, s, want, got = _both(m, feed)
    assert [(o.name, o.type, o.shape) for o in s.get_outputs()] == \
        [(o.name, o.type, o.shape) for o in ref.get_outputs()]
    assert list(got[0]) == list(want[0])
    assert isinstance(got[1], list) and len(got[1]) == len(want[1]) == 5
    for g, w in zip(got[1], want[1]):
        assert list(g) == list(w)                                   # same keys, same order
        assert [type(k) for k in g] == [type(k) for k in w]         # int or str, as onnxruntime's
        assert all(type(v) is float for v in g.values())
        np.testing.assert_allclose([g[k] for k in w], [w[k] for k in w], rtol=1e-5, atol=1e-6)


def _map_in_model(node, key, value, out_type):
    mt = h.make_map_type_proto(key, h.make_tensor_type_proto(value, None))
    return _model([node], [h.make_value_info("x", mt)], [h.make_tensor_value_info("y", out_type, None)], extra=[ML])


@pytest.mark.parametrize("case", ["string_vocabulary", "int64_vocabulary", "cast_dense", "cast_sparse",
                                  "cast_int64", "cast_string"])
def test_a_map_input_is_a_dict_as_in_onnxruntime(case):
    """DictVectorizer (skl2onnx's for sklearn's DictVectorizer) and CastMap take one map: a dict."""
    if case == "string_vocabulary":
        m = _map_in_model(h.make_node("DictVectorizer", ["x"], ["y"], domain="ai.onnx.ml",
                                      string_vocabulary=["b", "a", "c"]), T.STRING, T.FLOAT, T.FLOAT)
        x = {"a": 1.5, "c": -2.0, "unseen": 7.0}
    elif case == "int64_vocabulary":
        m = _map_in_model(h.make_node("DictVectorizer", ["x"], ["y"], domain="ai.onnx.ml",
                                      int64_vocabulary=[5, 2, 9]), T.INT64, T.FLOAT, T.FLOAT)
        x = {9: 0.25, 5: -1.0}
    else:
        kw = {"cast_dense": {}, "cast_sparse": {"map_form": "SPARSE", "max_map": 6},
              "cast_int64": {"cast_to": "TO_INT64"}, "cast_string": {"cast_to": "TO_STRING"}}[case]
        out = {"cast_int64": T.INT64, "cast_string": T.STRING}.get(case, T.FLOAT)
        m = _map_in_model(h.make_node("CastMap", ["x"], ["y"], domain="ai.onnx.ml", **kw), T.INT64, T.FLOAT, out)
        x = {3: 1.5, 1: 2.25, 0: -3.7}
    ref, s, want, got = _both(m, {"x": x})
    assert s.get_inputs()[0].type == ref.get_inputs()[0].type
    assert got[0].dtype == want[0].dtype and got[0].shape == want[0].shape
    np.testing.assert_array_equal(got[0], want[0])


def test_zipmap_output_as_ortvalue_names_its_map_type():
    m = _classifier({"classlabels_int64s": [0, 1, 2]})
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    out = s.run_with_ort_values(None, {"x": np.ones((2, 4), np.float32)})
    assert out[1].data_type() == "seq(map(int64,tensor(float)))"
    assert not out[1].is_tensor()


def test_map_types_are_kept_in_a_saved_optimized_model(tmp_path):
    """The IR cannot hold map types; the optimized model written from it must still have them, and
    onnxruntime must load it and give the same maps."""
    m = _classifier({"classlabels_strings": ["x", "y", "z"]})
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    saved = onnx.load(so.optimized_model_filepath)
    assert saved.graph.output[1].type.sequence_type.elem_type.map_type.key_type == T.STRING
    assert not saved.graph.output[1].metadata_props
    feed = {"x": RNG.standard_normal((3, 4)).astype(np.float32)}
    read = onnxruntime.InferenceSession(saved.SerializeToString(), providers=["CPUExecutionProvider"])
    assert read.get_outputs()[1].type == "seq(map(string,tensor(float)))"
    a = read.run(None, feed)
    b = onnxruntime.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)
    assert a[1] == b[1]


def test_an_unreadable_graph_names_the_real_cause():
    """A map type where onnx_ir reads it and no workaround applies (an Optional's type attribute): the
    error carries onnx_ir's own reason, not only its "Error calling _deserialize_graph" wrapper."""
    map_type = h.make_map_type_proto(T.INT64, h.make_tensor_type_proto(T.FLOAT, None))
    node = h.make_node("Optional", [], ["o"], type=map_type)
    m = _model([node, h.make_node("OptionalHasElement", ["o"], ["y"])], [], [h.make_tensor_value_info("y", T.BOOL, [])],
               opset=18)
    with pytest.raises(ort.InvalidGraph, match="NotImplementedError: Map types are not supported") as e:
        ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    assert e.value.__cause__ is not None


# ----------------------------------------------------------------------------- topological order
def _unsorted_model(branch_sorted: bool = False) -> onnx.ModelProto:
    """Nodes written consumers first, in the main graph and in an If branch, and a branch that reads an
    outer value whose producer is written after the If (a dependency only the subgraph shows).
    onnxruntime sorts the main graph but refuses an unsorted subgraph: it is given the branch sorted."""
    one = h.make_tensor("one", T.FLOAT, [], [1.0])
    branch = [h.make_node("Mul", ["t0", "a"], ["t1"]), h.make_node("Add", ["a", "one"], ["t0"])]
    then_g = h.make_graph(branch[::-1] if branch_sorted else branch,
                          "then", [], [h.make_tensor_value_info("t1", T.FLOAT, None)])
    else_g = h.make_graph([h.make_node("Sub", ["a", "one"], ["e1"])], "else", [],
                          [h.make_tensor_value_info("e1", T.FLOAT, None)])
    nodes = [
        h.make_node("Tanh", ["r"], ["y"], name="last"),
        h.make_node("If", ["c"], ["r"], name="branch", then_branch=then_g, else_branch=else_g),
        h.make_node("ReduceSum", ["a"], ["s"], keepdims=0, name="sum"),
        h.make_node("Greater", ["s", "zero"], ["c"], name="cond"),
        h.make_node("Relu", ["x"], ["a"], name="first"),
    ]
    zero = h.make_tensor("zero", T.FLOAT, [], [0.0])
    return _model(nodes, [h.make_tensor_value_info("x", T.FLOAT, [2, 3])],
                  [h.make_tensor_value_info("y", T.FLOAT, None)], initializers=[one, zero])


@pytest.mark.parametrize("sign", [1.0, -1.0], ids=["then", "else"])
def test_nodes_out_of_order_are_sorted_as_onnxruntime_does(sign):
    feed = {"x": (sign * np.abs(RNG.standard_normal((2, 3)))).astype(np.float32)}
    ref = onnxruntime.InferenceSession(_unsorted_model(branch_sorted=True).SerializeToString(),
                                       providers=["CPUExecutionProvider"])
    s = ort.InferenceSession(_unsorted_model().SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(s.run(None, feed)[0], ref.run(None, feed)[0], rtol=1e-6)


def test_a_real_cycle_is_refused_naming_its_nodes():
    nodes = [h.make_node("Relu", ["x"], ["a"], name="head"),
             h.make_node("Add", ["a", "c"], ["b"], name="add"),
             h.make_node("Neg", ["b"], ["c"], name="neg"),
             h.make_node("Abs", ["b"], ["y"], name="tail")]
    m = _model(nodes, [h.make_tensor_value_info("x", T.FLOAT, [2])], [h.make_tensor_value_info("y", T.FLOAT, [2])])
    with pytest.raises(onnxruntime.capi.onnxruntime_pybind11_state.Fail, match="not acyclic"):
        onnxruntime.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    with pytest.raises(ort.Fail, match=r"not acyclic: it has the cycle 'add' \(Add\) -> 'neg' \(Neg\) -> 'add'"):
        ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])


def test_an_output_declared_without_a_type_is_inferred_as_onnxruntime_does():
    m = _model([h.make_node("Relu", ["x"], ["a"]), h.make_node("Neg", ["a"], ["y"])],
               [h.make_tensor_value_info("x", T.FLOAT, [2, 3])],
               [h.make_tensor_value_info("y", T.FLOAT, [2, 3]), h.make_empty_tensor_value_info("a")])
    feed = {"x": RNG.standard_normal((2, 3)).astype(np.float32)}
    ref, s, want, got = _both(m, feed)
    assert s.get_outputs()[1].type == ref.get_outputs()[1].type == "tensor(float)"
    np.testing.assert_array_equal(got[1], want[1])


# ---------------------------------------------------------------------------------- negative dims
def test_negative_dims_are_unknown_as_in_onnxruntime():
    """A Paddle export declares [-1, 3, ?, ?]: every batch size runs; NodeArg.shape shows None there."""
    nodes = [h.make_node("Relu", ["x"], ["r"]), h.make_node("ReduceMean", ["r"], ["y"], axes=[2, 3], keepdims=0)]
    m = _model(nodes, [h.make_tensor_value_info("x", T.FLOAT, [-1, 3, "h", -1])],
               [h.make_tensor_value_info("y", T.FLOAT, [-1, -1])])
    feed = {"x": RNG.standard_normal((4, 3, 5, 6)).astype(np.float32)}
    ref, s, want, got = _both(m, feed)
    assert s.get_inputs()[0].shape == ref.get_inputs()[0].shape == [None, 3, "h", None]
    assert s.get_outputs()[0].shape == ref.get_outputs()[0].shape
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6)


# ------------------------------------------------------------------- T5's GELU in an int8 model
def _t5_ffn(form: str = "pow") -> onnx.ModelProto:
    """A dynamic-int8 MatMul, then GELU written out as T5's export writes it (0.5 x (1 + tanh(0.7978846
    (x + 0.044715 x^3)))) or as Hugging Face's FastGELUActivation does (tanh((0.7978846 x) (1 + 0.044715 x x))),
    then the next layer's DynamicQuantizeLinear: what re-quantizes each ulp."""
    w = RNG.integers(-127, 128, (32, 64)).astype(np.int8)
    consts = {"w": w, "wz": np.int8(0), "ws": np.float32(0.02), "half": np.float32(0.5), "three": np.float32(3.0),
              "k": np.float32(0.044715), "c": np.float32(0.7978846), "one": np.float32(1.0)}
    inits = [onnx.numpy_helper.from_array(np.asarray(v), k) for k, v in consts.items()]
    nodes = [
        h.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
        h.make_node("MatMulInteger", ["xq", "w", "xz", "wz"], ["acc"]),
        h.make_node("Cast", ["acc"], ["accf"], to=T.FLOAT),
        h.make_node("Mul", ["xs", "ws"], ["scale"]),
        h.make_node("Mul", ["accf", "scale"], ["v"]),
        h.make_node("Mul", ["v", "half"], ["hv"]),
        *([h.make_node("Pow", ["v", "three"], ["v3"]),
           h.make_node("Mul", ["v3", "k"], ["kv3"]),
           h.make_node("Add", ["v", "kv3"], ["inner"]),
           h.make_node("Mul", ["inner", "c"], ["u"])] if form == "pow" else
          [h.make_node("Mul", ["v", "c"], ["cv"]),
           h.make_node("Mul", ["v", "k"], ["kv"]),
           h.make_node("Mul", ["kv", "v"], ["kvv"]),
           h.make_node("Add", ["one", "kvv"], ["poly"]),
           h.make_node("Mul", ["cv", "poly"], ["u"])]),
        h.make_node("Tanh", ["u"], ["t"]),
        h.make_node("Add", ["t", "one"], ["t1"]),
        h.make_node("Mul", ["hv", "t1"], ["g"]),
        h.make_node("DynamicQuantizeLinear", ["g"], ["gq", "gs", "gz"]),
        h.make_node("Neg", ["g"], ["neg_g"]),
    ]
    # onnxruntime fuses only where the GELU's own output is no graph output: it is seen through an exact Neg
    outs = [h.make_tensor_value_info("gq", T.UINT8, None), h.make_tensor_value_info("neg_g", T.FLOAT, None)]
    return _model(nodes, [h.make_tensor_value_info("x", T.FLOAT, [None, None, 32])], outs, initializers=inits)


@pytest.mark.parametrize("form", ["pow", "product"])
def test_t5_gelu_fused_as_onnxruntime_fuses_it(tmp_path, form):
    """At the default level both engines fuse the GELU into com.microsoft FastGelu; onnxruntime's kernel
    cancels in 1 + tanh u and uses MLAS's tanh, and ours does the same arithmetic: the GELU comes out
    bit for bit, so the next layer's uint8 quantization does too (the cancellation-free form moved a
    dynamic-int8 T5 encoder's output by 0.15)."""
    m = _t5_ffn(form)
    feed = {"x": (RNG.standard_normal((2, 48, 32)) * 2).astype(np.float32)}
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ref_so = onnxruntime.SessionOptions()
    ref_so.optimized_model_filepath = str(tmp_path / "ort.onnx")
    cpu = ["CPUExecutionProvider"]
    want = onnxruntime.InferenceSession(m.SerializeToString(), ref_so, providers=cpu).run(None, feed)
    got = ort.InferenceSession(m.SerializeToString(), so, providers=cpu).run(None, feed)
    for path in (ref_so.optimized_model_filepath, so.optimized_model_filepath):
        assert [n.op_type for n in onnx.load(path).graph.node].count("FastGelu") == 1, path
    np.testing.assert_array_equal(got[1], want[1])       # the GELU, bit for bit
    np.testing.assert_array_equal(got[0], want[0])       # and so its quantization


# ----------------------------------------------------- other providers ahead of dynamic quantization
def _device_ready(name: str) -> str | None:
    """None if provider ``name`` can run here, else why not."""
    import importlib.util

    if name == "OpenVINOExecutionProvider" and importlib.util.find_spec("openvino") is None:
        return "the openvino package is not installed (pip install engineroom[openvino])"
    if name == "OpenCLExecutionProvider":
        if importlib.util.find_spec("pyopencl") is None:
            return "pyopencl is not installed (pip install engineroom[opencl])"
        from engineroom.providers.opencl import OpenCLExecutionProvider

        if not OpenCLExecutionProvider.is_available():
            return f"no OpenCL device: {OpenCLExecutionProvider.unavailable_reason()}"
    return None


def _rmsnorm_then_dynamic_int8() -> onnx.ModelProto:
    """A T5 block's head: RMSNorm in float, DynamicQuantizeLinear, MatMulInteger, rescale; then a float
    tail (Softmax) that no quantizer reads."""
    w = RNG.integers(-127, 128, (64, 48)).astype(np.int8)
    consts = {"w": w, "wz": np.int8(0), "ws": np.float32(0.01), "two": np.float32(2.0), "eps": np.float32(1e-6),
              "g": RNG.uniform(0.5, 1.5, 64).astype(np.float32)}
    inits = [onnx.numpy_helper.from_array(np.asarray(v), k) for k, v in consts.items()]
    nodes = [
        h.make_node("Pow", ["x", "two"], ["x2"]),
        h.make_node("ReduceMean", ["x2"], ["ms"], axes=[-1], keepdims=1),
        h.make_node("Add", ["ms", "eps"], ["mse"]),
        h.make_node("Sqrt", ["mse"], ["rms"]),
        h.make_node("Div", ["x", "rms"], ["xn"]),
        h.make_node("Mul", ["xn", "g"], ["y"]),
        h.make_node("DynamicQuantizeLinear", ["y"], ["yq", "ys", "yz"]),
        h.make_node("MatMulInteger", ["yq", "w", "yz", "wz"], ["acc"]),
        h.make_node("Cast", ["acc"], ["accf"], to=T.FLOAT),
        h.make_node("Mul", ["ys", "ws"], ["scale"]),
        h.make_node("Mul", ["accf", "scale"], ["v"]),
        h.make_node("Softmax", ["v"], ["p"], axis=-1),
    ]
    return _model(nodes, [h.make_tensor_value_info("x", T.FLOAT, [None, 16, 64])],
                  [h.make_tensor_value_info("p", T.FLOAT, None), h.make_tensor_value_info("yq", T.UINT8, None)],
                  opset=17, initializers=inits)


@pytest.mark.parametrize("provider", ["OpenVINOExecutionProvider", "OpenCLExecutionProvider"])
def test_float_arithmetic_ahead_of_dynamic_quantization_stays_on_the_cpu(provider):
    """Another provider's float kernels round differently by an ulp here and there, and dynamic
    quantization makes an ulp a quantization step (T5 int8: 0.25 off on OpenVINO, 0.24 on OpenCL): the
    nodes up to each quantizer stay on the CPU provider, the placement line says why, and the
    quantized values equal onnxruntime's exactly; what follows the last quantizer may still go there."""
    why = _device_ready(provider)
    if why:
        pytest.skip(why)
    from engineroom.plugin_sdk.dynamic_quantization import REASON

    m = _rmsnorm_then_dynamic_int8()
    feed = {"x": (RNG.standard_normal((3, 16, 64)) * 3).astype(np.float32)}
    ref = onnxruntime.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    s = ort.InferenceSession(m.SerializeToString(), providers=[provider, "CPUExecutionProvider"])
    placed = {n.op_type: p.ep_name for p in s.get_provider_graph_assignment_info() for n in p.get_nodes()}
    # the RMS normalization stays on the CPU, spelled out or fused (level 2 makes it SimplifiedLayerNormalization)
    assert "DynamicQuantizeLinear" in placed and ("Pow" in placed or "SimplifiedLayerNormalization" in placed), placed
    for op in ("Pow", "ReduceMean", "Sqrt", "Div", "SimplifiedLayerNormalization", "DynamicQuantizeLinear"):
        assert placed.get(op, "CPUExecutionProvider") == "CPUExecutionProvider", (op, s.placement)
    assert placed["Softmax"] == provider, s.placement
    assert REASON in s.placement
    want, got = ref.run(None, feed), s.run(None, feed)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-7)
