"""The backend-test model folders that ship inside the onnx wheel (pytorch-converted,
pytorch-operator, simple): every model, every data set, against its stored outputs."""
from __future__ import annotations

import glob
import os

import onnx
import pytest
from onnx import numpy_helper

import engineroom as ort
from engineroom.plugin_sdk.testing import close

DATA = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data")
DIRS = sorted(d for sub in ("pytorch-converted", "pytorch-operator", "simple")
              for d in glob.glob(os.path.join(DATA, sub, "test_*")))


def _load(path):
    t = onnx.TensorProto()
    with open(path, "rb") as f:
        t.ParseFromString(f.read())
    return numpy_helper.to_array(t)


def _numbered(ds, prefix):
    paths = glob.glob(os.path.join(ds, f"{prefix}_*.pb"))
    return sorted(paths, key=lambda p: int(os.path.basename(p)[len(prefix) + 1:-3]))


@pytest.mark.parametrize("folder", DIRS, ids=[f"{os.path.basename(os.path.dirname(d))}/{os.path.basename(d)}"
                                              for d in DIRS])
def test_wheel_model(folder):
    s = ort.InferenceSession(os.path.join(folder, "model.onnx"))
    names = [i.name for i in s.get_inputs()]
    for ds in sorted(glob.glob(os.path.join(folder, "test_data_set_*"))):
        ins = [_load(p) for p in _numbered(ds, "input")]
        refs = [_load(p) for p in _numbered(ds, "output")]
        got = s.run(None, dict(zip(names, ins)))
        assert len(got) == len(refs)
        for k, (g, r) in enumerate(zip(got, refs)):
            assert close(g, r), f"output {k} of {os.path.basename(folder)}/{os.path.basename(ds)} differs"


def test_all_three_folders_are_present():
    assert len(DIRS) >= 130, f"expected the onnx wheel's backend test models under {DATA}"
