"""Regression tests for the fuzzer's findings (tests/fuzz/fuzzing.py, bench/fuzz.py): each reproduces one
case that crashed, hung, raised an exception that was not engineroom's, or differed from onnxruntime,
and checks the behaviour fixed at its root."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import engineroom as ort


def _model(nodes, inputs=(), outputs=("y",), inits=(), opset=17):
    g = helper.make_graph(nodes, "g", list(inputs), [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None)
                                                     for o in outputs], list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def test_shape_with_a_tensor_end_attribute_is_an_engineroom_error():
    # seed 19 case 244: Shape's 'end' retyped as a tensor made constant folding raise TypeError
    shape = helper.make_node("Shape", ["x"], ["y"], end=numpy_helper.from_array(np.array([1.5], np.float32)))
    m = _model([shape], inits=[numpy_helper.from_array(np.ones((2, 3), np.float32), "x")])
    with pytest.raises(ort.EngineroomError, match="Shape"):
        ort.InferenceSession(m.SerializeToString()).run(None, {})
