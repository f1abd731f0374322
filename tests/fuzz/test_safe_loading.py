"""Loading is safe: external data may come only from inside the model's folder (``../``, absolute paths
and symlinks that leave the folder are refused), and nothing in a model is evaluated or unpickled."""

from __future__ import annotations

import os
import pickle

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import engineroom as ort

W = np.arange(6, dtype=np.float32).reshape(2, 3)


def _model_with_external(location: str, offset: int | None = None, length: int | None = None, in_subgraph=False):
    w = numpy_helper.from_array(W, "w")
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    w.external_data.add(key="location", value=location)
    if offset is not None:
        w.external_data.add(key="offset", value=str(offset))
    if length is not None:
        w.external_data.add(key="length", value=str(length))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])
    if in_subgraph:
        branch = helper.make_graph(
            [helper.make_node("Add", ["x", "w"], ["b"])],
            "branch",
            [],
            [helper.make_tensor_value_info("b", TensorProto.FLOAT, [2, 3])],
            [w],
        )
        nodes = [helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch)]
        g = helper.make_graph(nodes, "g", [x], [y], [numpy_helper.from_array(np.array(True), "c")])
    else:
        g = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g", [x], [y], [w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture
def folders(tmp_path):
    """tmp/model/ (the model's folder) and tmp/secret.bin beside it, outside."""
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (tmp_path / "secret.bin").write_bytes(W.tobytes())
    return model_dir, tmp_path / "secret.bin"


def _save(model, folder) -> str:
    path = os.path.join(folder, "model.onnx")
    onnx.save(model, path)
    return path


def test_external_data_inside_the_folder_loads(folders):
    model_dir, _ = folders
    (model_dir / "weights.bin").write_bytes(W.tobytes())
    s = ort.InferenceSession(_save(_model_with_external("weights.bin"), model_dir))
    np.testing.assert_array_equal(s.run(None, {"x": np.ones((2, 3), np.float32)})[0], W + 1)


@pytest.mark.parametrize("location", ["../secret.bin", "sub/../../secret.bin", "./../secret.bin"])
def test_dot_dot_is_refused(folders, location):
    model_dir, _ = folders
    (model_dir / "sub").mkdir()
    with pytest.raises(ort.InvalidGraph, match="outside the model's folder"):
        ort.InferenceSession(_save(_model_with_external(location), model_dir))


def test_absolute_path_is_refused(folders):
    model_dir, secret = folders
    with pytest.raises(ort.InvalidGraph, match="outside the model's folder"):
        ort.InferenceSession(_save(_model_with_external(str(secret)), model_dir))


def test_symlink_leaving_the_folder_is_refused(folders):
    model_dir, secret = folders
    os.symlink(secret, model_dir / "weights.bin")
    with pytest.raises(ort.InvalidGraph, match="outside the model's folder"):
        ort.InferenceSession(_save(_model_with_external("weights.bin"), model_dir))


def test_symlinked_folder_leaving_the_folder_is_refused(folders):
    model_dir, secret = folders
    os.symlink(secret.parent, model_dir / "up")
    with pytest.raises(ort.InvalidGraph, match="outside the model's folder"):
        ort.InferenceSession(_save(_model_with_external("up/secret.bin"), model_dir))


def test_subgraph_external_data_is_held_to_the_same_rule(folders):
    model_dir, _ = folders
    with pytest.raises(ort.InvalidGraph, match="outside the model's folder"):
        ort.InferenceSession(_save(_model_with_external("../secret.bin", in_subgraph=True), model_dir))


def test_missing_file_and_bytes_without_a_folder(folders):
    model_dir, _ = folders
    with pytest.raises(ort.NoSuchFile, match="missing.bin"):
        ort.InferenceSession(_save(_model_with_external("missing.bin"), model_dir))
    with pytest.raises(ort.InvalidArgument, match="external data"):
        ort.InferenceSession(_model_with_external("weights.bin").SerializeToString())


@pytest.mark.parametrize("offset, length", [(4096, None), (0, 10**12), (8, 4)])
def test_offset_and_length_outside_the_file_are_refused(folders, offset, length):
    model_dir, _ = folders
    (model_dir / "weights.bin").write_bytes(W.tobytes())
    with pytest.raises(ort.EngineroomError):
        ort.InferenceSession(_save(_model_with_external("weights.bin", offset, length), model_dir))


class _Boom:
    def __reduce__(self):
        return (open, ("/tmp/engineroom_unpickled_marker_must_not_exist", "w"))


def test_nothing_is_unpickled_or_evaluated(tmp_path):
    # a string initializer and the metadata hold a pickle and Python source: they stay bytes and text
    payload = pickle.dumps(_Boom(), protocol=0)  # ASCII: a valid UTF-8 string element
    marker = "/tmp/engineroom_unpickled_marker_must_not_exist"
    if os.path.exists(marker):
        os.remove(marker)
    t = helper.make_tensor(
        "s", TensorProto.STRING, [2], [payload, b"__import__('os').system('touch " + marker.encode() + b"')"]
    )
    g = helper.make_graph(
        [helper.make_node("Identity", ["s"], ["y"])],
        "g",
        [],
        [helper.make_tensor_value_info("y", TensorProto.STRING, [2])],
        [t],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    helper.set_model_props(m, {"pickle": payload.hex(), "code": f"open('{marker}', 'w')"})
    s = ort.InferenceSession(_save(m, tmp_path))
    out = s.run(None, {})[0]
    assert out.tolist()[0] in (payload, payload.decode("latin1")) or len(out) == 2
    assert s.get_modelmeta().custom_metadata_map["code"].startswith("open(")
    assert not os.path.exists(marker)
