"""Conv activations applied in the conv's last pass: HardSwish (the level-3 fusion into
com.engineroom::FusedConv, optimizer/conv_hardswish.py) and HardSigmoid (onnxruntime's FusedConv at
level 2), against onnxruntime running the unfused model, on both kernel paths."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import optimized_ops
from jit_paths import JIT_PATHS, choose_path
from onnx import TensorProto, helper, numpy_helper

import engineroom as ort

RNG = np.random.default_rng(11)
LEVELS = ort.GraphOptimizationLevel
ER_FUSED = ("com.engineroom", "FusedConv")
MS_FUSED = ("com.microsoft", "FusedConv")


@pytest.fixture(params=JIT_PATHS)
def path(request, monkeypatch):
    return choose_path(request, monkeypatch, "conv")


def conv_act_model(C=8, M=16, H=20, W=20, k=3, stride=1, group=1, act="HardSwish", residual=False, bias=True,
                   act_attrs=None):
    """x -> Conv [-> + r] -> act; r a second input of the conv output's shape."""
    pad = k // 2
    OH = (H + 2 * pad - k) // stride + 1
    OW = (W + 2 * pad - k) // stride + 1
    inits = [numpy_helper.from_array((RNG.standard_normal((M, C // group, k, k)) * 0.5).astype(np.float32), "w")]
    ins = ["x", "w"]
    if bias:
        inits.append(numpy_helper.from_array(RNG.standard_normal(M).astype(np.float32), "b"))
        ins.append("b")
    nodes = [helper.make_node("Conv", ins, ["c"], kernel_shape=[k, k], pads=[pad] * 4, strides=[stride] * 2,
                              group=group)]
    src = "c"
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, H, W])]
    if residual:
        nodes.append(helper.make_node("Add", ["c", "r"], ["s"]))
        inputs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, [1, M, OH, OW]))
        src = "s"
    nodes.append(helper.make_node(act, [src], ["y"], **(act_attrs or {})))
    g = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), (1, M, OH, OW)


def _feed(m, out_shape):
    shape = [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]
    feed = {"x": RNG.standard_normal(shape).astype(np.float32) * 3}
    if len(m.graph.input) > 1:
        feed["r"] = RNG.standard_normal(out_shape).astype(np.float32) * 3
    return feed


def _reference(m, feed):
    import onnxruntime
    so = onnxruntime.SessionOptions()
    so.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    return onnxruntime.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feed)[0]


CASES = {
    "winograd_3x3": dict(C=16, M=24, H=28, W=28),                 # compiled Winograd, then the activation pass
    "im2col_stride2": dict(C=8, M=16, H=21, W=19, stride=2),      # GEMM: bias + activation in one pass
    "pointwise": dict(C=32, M=48, H=14, W=14, k=1),
    "depthwise": dict(C=32, M=32, H=30, W=30, group=32),
    "depthwise_5x5_s2": dict(C=24, M=24, H=17, W=23, k=5, stride=2, group=24),
    "depthwise_small": dict(C=16, M=16, H=7, W=7, group=16),     # the plane path (the flat one needs W >= 10)
    "residual": dict(C=16, M=16, H=12, W=12, residual=True),      # FusedConv(Z) -> HardSwish
    "residual_pointwise": dict(C=16, M=16, H=12, W=12, k=1, residual=True),
    "no_bias": dict(C=8, M=8, H=9, W=11, bias=False),
    "split_over_threads": dict(C=64, M=64, H=96, W=96, k=1),      # the activation pass over channel ranges
}


@pytest.mark.parametrize("case", list(CASES))
def test_conv_hardswish_fuses_at_level3_and_matches_onnxruntime(case, path, tmp_path):
    m, out_shape = conv_act_model(**CASES[case])
    feed = _feed(m, out_shape)
    ref = _reference(m, feed)
    s, ops = optimized_ops(m, LEVELS.ORT_ENABLE_ALL, tmp_path)
    assert ops == [ER_FUSED], ops
    got = s.run(None, feed)[0]
    # the compiled activation pass after the GEMM or Winograd; the depthwise loop applies it as it writes
    path.expect("depthwise2d_act" if CASES[case].get("group") else "bias_hard_act")
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


def test_level2_keeps_onnxruntimes_ops(tmp_path):
    """At level 2 the HardSwish stays a node of its own: the saved model is one onnxruntime runs."""
    import onnx
    import onnxruntime
    m, out_shape = conv_act_model()
    s, ops = optimized_ops(m, LEVELS.ORT_ENABLE_EXTENDED, tmp_path)
    assert ER_FUSED not in ops and ("", "HardSwish") in ops, ops
    feed = _feed(m, out_shape)
    saved = onnx.load(str(tmp_path / f"opt{int(LEVELS.ORT_ENABLE_EXTENDED)}.onnx"))
    ort_got = onnxruntime.InferenceSession(saved.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)
    np.testing.assert_allclose(s.run(None, feed)[0], ort_got[0], rtol=1e-4, atol=1e-4)


def test_saved_level2_residual_conv_runs_in_onnxruntime(tmp_path):
    """Conv + Add (no activation) fuses at level 2 into a FusedConv without an ``activation`` attribute:
    onnxruntime refuses ``activation="Identity"``, so the saved model would not load there."""
    import onnx
    import onnxruntime
    m, out_shape = conv_act_model(residual=True, act="Identity")
    s, ops = optimized_ops(m, LEVELS.ORT_ENABLE_EXTENDED, tmp_path)
    assert ops == [MS_FUSED], ops
    feed = _feed(m, out_shape)
    saved = onnx.load(str(tmp_path / f"opt{int(LEVELS.ORT_ENABLE_EXTENDED)}.onnx"))
    ort_got = onnxruntime.InferenceSession(saved.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)
    np.testing.assert_allclose(s.run(None, feed)[0], ort_got[0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ort_got[0], _reference(m, feed), rtol=1e-4, atol=1e-4)


def test_hardswish_not_fused_where_the_conv_output_is_read_twice(tmp_path):
    m, out_shape = conv_act_model()
    m.graph.node.append(helper.make_node("Relu", ["c"], ["y2"]))
    m.graph.output.append(helper.make_tensor_value_info("y2", TensorProto.FLOAT, None))
    s, ops = optimized_ops(m, LEVELS.ORT_ENABLE_ALL, tmp_path)
    assert ER_FUSED not in ops and ("", "HardSwish") in ops, ops
    feed = _feed(m, out_shape)
    np.testing.assert_allclose(s.run(None, feed)[0], _reference(m, feed), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case", ["im2col_stride2", "depthwise", "winograd_3x3", "residual_pointwise"])
def test_conv_hardsigmoid_in_the_conv_pass(case, path, tmp_path):
    """HardSigmoid (onnxruntime's FusedConv activation, level 2), with non-default alpha and beta."""
    m, out_shape = conv_act_model(**CASES[case], act="HardSigmoid", act_attrs=dict(alpha=0.3, beta=0.4))
    feed = _feed(m, out_shape)
    s, ops = optimized_ops(m, LEVELS.ORT_ENABLE_EXTENDED, tmp_path)
    assert ops == [MS_FUSED], ops
    np.testing.assert_allclose(s.run(None, feed)[0], _reference(m, feed), rtol=1e-4, atol=1e-4)
    path.expect("depthwise2d_act" if CASES[case].get("group") else "bias_hard_act")


def _spelled_out_model(alpha, C=8, M=16, H=12, W=15):
    """x -> Conv -> c; y = Mul(c, HardSigmoid(c, alpha, 1/2)) (Paddle's HardSwish export)."""
    inits = [numpy_helper.from_array((RNG.standard_normal((M, C, 3, 3)) * 0.5).astype(np.float32), "w"),
             numpy_helper.from_array(RNG.standard_normal(M).astype(np.float32), "b")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[3, 3], pads=[1] * 4),
             helper.make_node("HardSigmoid", ["c"], ["h"], alpha=alpha, beta=0.5),
             helper.make_node("Mul", ["h", "c"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, H, W])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("alpha,fuses", [(1.0 / 6.0, True), (0.2, False)])
def test_spelled_out_hardswish(alpha, fuses, path, tmp_path):
    """Mul(c, HardSigmoid(c, 1/6, 1/2)) is HardSwish and fuses at level 3; another alpha is not."""
    m = _spelled_out_model(alpha)
    feed = {"x": RNG.standard_normal((1, 8, 12, 15)).astype(np.float32) * 3}
    s, ops = optimized_ops(m, LEVELS.ORT_ENABLE_ALL, tmp_path)
    assert (ops == [ER_FUSED]) == fuses, ops
    np.testing.assert_allclose(s.run(None, feed)[0], _reference(m, feed), rtol=1e-4, atol=1e-4)
    path.expect("bias_hard_act", fuses)


def _relu6_model(three=3.0, six=6.0, clip_max=6.0, swap=False, opset=17, mul_first=False):
    """x -> Conv -> c; y = c * Clip(c + three, 0, clip_max) / six (Paddle's hard_swish exports: divided then
    multiplied, or multiplied then divided)."""
    C, M = 8, 12
    inits = [numpy_helper.from_array((RNG.standard_normal((M, C, 3, 3)) * 0.5).astype(np.float32), "w"),
             numpy_helper.from_array(RNG.standard_normal(M).astype(np.float32), "b"),
             numpy_helper.from_array(np.array(three, np.float32), "three"),
             numpy_helper.from_array(np.array(six, np.float32), "six")]
    if opset >= 11:
        inits += [numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
                  numpy_helper.from_array(np.array(clip_max, np.float32), "hi")]
        clip = helper.make_node("Clip", ["a", "lo", "hi"], ["r"])
    else:
        clip = helper.make_node("Clip", ["a"], ["r"], min=0.0, max=clip_max)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[3, 3], pads=[1] * 4),
             helper.make_node("Add", ["three", "c"] if swap else ["c", "three"], ["a"]), clip,
             helper.make_node("Div", ["r", "six"], ["d"]),
             helper.make_node("Mul", ["d", "c"] if swap else ["c", "d"], ["y"])]
    if mul_first:
        nodes[-2:] = [helper.make_node("Mul", ["r", "c"] if swap else ["c", "r"], ["d"]),
                      helper.make_node("Div", ["d", "six"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, 11, 13])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize("kw,fuses", [({}, True), ({"swap": True}, True), ({"opset": 10}, True),
                                      ({"mul_first": True}, True), ({"mul_first": True, "swap": True}, True),
                                      ({"mul_first": True, "six": 3.0}, False),
                                      ({"three": 2.0}, False), ({"six": 5.0}, False), ({"clip_max": 5.0}, False)])
def test_relu6_spelled_hardswish(kw, fuses, path, tmp_path):
    """Mul(c, Div(Clip(Add(c, 3), 0, 6), 6)) and Div(Mul(c, Clip(...)), 6) are HardSwish and fuse at level 3
    (either operand order, Clip's bounds as inputs or attributes); other constants are not."""
    m = _relu6_model(**kw)
    feed = {"x": RNG.standard_normal((1, 8, 11, 13)).astype(np.float32) * 3}
    s, ops = optimized_ops(m, LEVELS.ORT_ENABLE_ALL, tmp_path)
    assert (ops == [ER_FUSED]) == fuses, ops
    np.testing.assert_allclose(s.run(None, feed)[0], _reference(m, feed), rtol=1e-5, atol=1e-5)
