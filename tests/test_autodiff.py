"""The training-preview Gradient op, expanded into backward nodes, against finite differences."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import engineroom as ort


def _grad_model(nodes, shapes, y="y", xs=("a", "b")):
    inputs = [helper.make_tensor_value_info(n, TensorProto.DOUBLE, s) for n, s in shapes.items()]
    grad = helper.make_node("Gradient", list(xs), [f"d_{x}" for x in xs], xs=list(xs), y=y,
                            domain="ai.onnx.preview.training")
    outs = [helper.make_tensor_value_info(y, TensorProto.DOUBLE, None)] + [
        helper.make_tensor_value_info(f"d_{x}", TensorProto.DOUBLE, None) for x in xs]
    g = helper.make_graph(nodes + [grad], "g", inputs, outs)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17),
                                               helper.make_opsetid("ai.onnx.preview.training", 1)])


def _numeric(f, feed, name, eps=1e-6):
    x = feed[name]
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        hi, lo = dict(feed), dict(feed)
        hi[name], lo[name] = x.copy(), x.copy()
        hi[name][idx] += eps
        lo[name][idx] -= eps
        g[idx] = (f(hi).sum() - f(lo).sum()) / (2 * eps)
    return g


@pytest.mark.parametrize("case", ["broadcast_mul_div", "matmul_relu_tanh"])
def test_gradient_matches_finite_differences(case):
    rng = np.random.default_rng(1)
    if case == "broadcast_mul_div":
        nodes = [helper.make_node("Mul", ["a", "b"], ["m"]), helper.make_node("Div", ["m", "a"], ["q"]),
                 helper.make_node("Sub", ["q", "b"], ["s"]), helper.make_node("Exp", ["s"], ["y"])]
        shapes = {"a": [2, 3], "b": [3]}
    else:
        nodes = [helper.make_node("MatMul", ["a", "b"], ["m"]), helper.make_node("Relu", ["m"], ["r"]),
                 helper.make_node("Tanh", ["r"], ["t"]), helper.make_node("Sigmoid", ["t"], ["y"])]
        shapes = {"a": [2, 3], "b": [3, 4]}
    feed = {n: rng.uniform(0.5, 1.5, s) for n, s in shapes.items()}
    s = ort.InferenceSession(_grad_model(nodes, shapes))
    y, da, db = s.run(None, feed)
    fwd = lambda f: s.run(["y"], f)[0]  # noqa: E731
    np.testing.assert_allclose(da, _numeric(fwd, feed, "a"), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(db, _numeric(fwd, feed, "b"), rtol=1e-5, atol=1e-7)


def test_gradient_through_unsupported_op_is_a_clear_error():
    nodes = [helper.make_node("Sin", ["a"], ["s"]), helper.make_node("Add", ["s", "b"], ["y"])]
    with pytest.raises(ort.NotImplemented, match="Gradient through Sin"):
        ort.InferenceSession(_grad_model(nodes, {"a": [2], "b": [2]}))
