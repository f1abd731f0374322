"""Bad input gets a typed error naming what is wrong, and the session keeps working afterwards."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import engineroom as ort


@pytest.fixture(scope="module")
def model():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])
    w = helper.make_tensor_value_info("w", TensorProto.FLOAT, [3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])
    g = helper.make_graph([helper.make_node("Mul", ["x", "w"], ["m"]), helper.make_node("Relu", ["m"], ["y"])],
                          "g", [x, w], [y])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def session(model):
    return ort.InferenceSession(model.SerializeToString())


X = np.array([[1, -2, 3], [-4, 5, -6]], np.float32)
W = np.array([1, 2, 3], np.float32)


def _still_works(s):
    np.testing.assert_array_equal(s.run(None, {"x": X, "w": W})[0], np.maximum(X * W, 0))


def test_missing_file():
    with pytest.raises(ort.NoSuchFile, match="nope.onnx"):
        ort.InferenceSession("/definitely/not/here/nope.onnx")


def test_truncated_model_bytes(model):
    data = model.SerializeToString()
    with pytest.raises((ort.InvalidProtobuf, ort.InvalidGraph)):
        ort.InferenceSession(data[: len(data) // 2])


def test_garbage_bytes():
    with pytest.raises(ort.InvalidProtobuf, match="protobuf"):
        ort.InferenceSession(b"\xff\xfe not a model at all")


def test_unknown_op():
    g = helper.make_graph([helper.make_node("FrobnicateX", ["x"], ["y"], name="frob")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ort.NotImplemented, match="FrobnicateX.*'frob'"):
        ort.InferenceSession(m)


@pytest.mark.parametrize("feed, kind, words", [
    ({"x": X, "w": W, "bogus": X}, ort.InvalidArgument, ["Invalid input name", "bogus"]),
    ({"x": X.astype(np.float64), "w": W}, ort.InvalidArgument, ["x", "tensor(double)", "tensor(float)"]),
    ({"x": X[None], "w": W}, ort.InvalidArgument, ["Invalid rank for input: x", "Got: 3", "Expected: 2"]),
    ({"x": np.ones((2, 4), np.float32), "w": W}, ort.InvalidArgument, ["invalid dimensions for input: x",
                                                                        "index: 1 Got: 4 Expected: 3"]),
    ({"x": X}, ort.InvalidArgument, ["Required inputs", "'w'", "missing"]),
])
def test_bad_feed_then_next_run_works(session, feed, kind, words):
    with pytest.raises(kind) as e:
        session.run(None, feed)
    for w in words:
        assert w in str(e.value)
    _still_works(session)


def test_missing_input_is_also_a_value_error(session):
    with pytest.raises(ValueError):
        session.run(None, {"x": X})
    _still_works(session)


def test_wrong_output_name(session):
    with pytest.raises(ort.InvalidArgument, match="nope"):
        session.run(["nope"], {"x": X, "w": W})
    _still_works(session)


def test_kernel_failure_names_the_node_and_session_survives():
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, None)
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, None)
    g = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["y"], name="mm")], "g", [a, b],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    s = ort.InferenceSession(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    with pytest.raises(ort.RuntimeException, match="'mm'.*MatMul"):
        s.run(None, {"a": np.ones((2, 3), np.float32), "b": np.ones((4, 5), np.float32)})
    out = s.run(None, {"a": np.ones((2, 3), np.float32), "b": np.ones((3, 5), np.float32)})[0]
    np.testing.assert_array_equal(out, np.full((2, 5), 3, np.float32))


def test_external_data_outside_model_folder_is_refused(tmp_path):
    from onnx import numpy_helper

    t = numpy_helper.from_array(np.ones(3, np.float32), "w")
    t.ClearField("float_data")
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    e = t.external_data.add()
    e.key, e.value = "location", "../secret.bin"
    g = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])], [t])
    p = tmp_path / "m.onnx"
    p.write_bytes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    with pytest.raises(ort.InvalidGraph, match="outside the model's folder"):
        ort.InferenceSession(str(p))


def test_scalar_results_stay_zero_dimensional():
    """Shape -> Gather(scalar index) and Transpose of a scalar give 0-d arrays, as onnxruntime does."""
    from onnx import numpy_helper

    g = helper.make_graph([helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Gather", ["s", "i"], ["d"]),
                           helper.make_node("Transpose", ["d"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["a", "b"])],
                          [helper.make_tensor_value_info("y", TensorProto.INT64, None)],
                          [numpy_helper.from_array(np.array(1, np.int64), "i")])
    s = ort.InferenceSession(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    y = s.run(None, {"x": np.zeros((2, 3), np.float32)})[0]
    assert y.shape == () and int(y) == 3
