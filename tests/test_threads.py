"""``run`` is thread-safe on one session: concurrent runs give each caller its own right answer."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
from onnx import TensorProto, helper, numpy_helper

import engineroom as ort


def test_concurrent_runs_on_one_session():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("ReduceMean", ["r"], ["y"], axes=[2, 3], keepdims=0)],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [numpy_helper.from_array(w, "w")])
    s = ort.InferenceSession(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    xs = [rng.standard_normal((1 + k % 3, 3, 16, 16)).astype(np.float32) for k in range(16)]
    expected = [s.run(None, {"x": x})[0] for x in xs]
    with ThreadPoolExecutor(4) as pool:
        for _ in range(5):
            got = list(pool.map(lambda x: s.run(None, {"x": x})[0], xs))
            for a, b in zip(got, expected):
                np.testing.assert_array_equal(a, b)
