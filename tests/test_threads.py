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
    # 8 threads x 50 runs, every run its own input, each output against a single-threaded run
    xs = [rng.standard_normal((1 + k % 3, 3, 16, 16)).astype(np.float32) for k in range(400)]
    expected = [s.run(None, {"x": x})[0] for x in xs]
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda x: s.run(None, {"x": x})[0], xs))
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)


def test_concurrent_runs_of_a_zoo_model():
    from conftest import zoo_path

    path = zoo_path("bert_mini")
    z = np.load(path[:-5] + ".io.npz")
    s = ort.InferenceSession(path)
    names = [a.name for a in s.get_inputs()]
    rng = np.random.default_rng(1)
    feeds = []
    for _ in range(16):
        ids = z["in_0"].copy()
        ids[:, rng.integers(0, ids.shape[1], 8)] = rng.integers(0, 1000, 8)
        feeds.append({names[0]: ids, names[1]: z["in_1"]})
    expected = [s.run(None, f) for f in feeds]
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda f: s.run(None, f), feeds * 3))
    for outs, ref in zip(got, expected * 3):
        for a, b in zip(outs, ref):
            np.testing.assert_array_equal(a, b)
