"""Each optimizer pass: the rewrite it makes, and numbers unchanged against the unoptimized graph."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import make_model as _model
from conftest import optimized_ops as _ops_after
from onnx import TensorProto, helper

import engineroom as ort

RNG = np.random.default_rng(0)


def _f(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _check_same(model, feed, tmp_path, level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL, rtol=1e-5, atol=1e-6):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    ref = ort.InferenceSession(model, so).run(None, feed)
    s, ops = _ops_after(model, level, tmp_path)
    got = s.run(None, feed)
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g, r, rtol=rtol, atol=atol)
    return ops


def test_constant_folding(tmp_path):
    a = RNG.standard_normal((3,)).astype(np.float32)
    m = _model([helper.make_node("Mul", ["a", "a"], ["a2"]), helper.make_node("Add", ["x", "a2"], ["y"])],
               [_f("x", [2, 3])], [_f("y", [2, 3])], [("a", a)])
    ops = _check_same(m, {"x": RNG.standard_normal((2, 3)).astype(np.float32)}, tmp_path,
                      ort.GraphOptimizationLevel.ORT_ENABLE_BASIC)
    assert ops == [("", "Add")]


def test_shape_of_static_input_folds(tmp_path):
    m = _model([helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Reshape", ["x", "s"], ["y"])],
               [_f("x", [2, 3])], [_f("y", [2, 3])])
    ops = _check_same(m, {"x": np.ones((2, 3), np.float32)}, tmp_path, ort.GraphOptimizationLevel.ORT_ENABLE_BASIC)
    assert ops == [("", "Reshape")]


def test_identity_dropout_and_redundant_cast_are_removed(tmp_path):
    m = _model([helper.make_node("Identity", ["x"], ["a"]), helper.make_node("Dropout", ["a"], ["b"]),
                helper.make_node("Cast", ["b"], ["c"], to=TensorProto.FLOAT), helper.make_node("Relu", ["c"], ["y"])],
               [_f("x", [2, 3])], [_f("y", [2, 3])])
    ops = _check_same(m, {"x": RNG.standard_normal((2, 3)).astype(np.float32)}, tmp_path,
                      ort.GraphOptimizationLevel.ORT_ENABLE_BASIC)
    assert ops == [("", "Relu")]


def test_transpose_pairs_compose_or_vanish(tmp_path):
    m = _model([helper.make_node("Transpose", ["x"], ["a"], perm=[0, 2, 1]),
                helper.make_node("Transpose", ["a"], ["b"], perm=[0, 2, 1]),
                helper.make_node("Transpose", ["b"], ["c"], perm=[1, 0, 2]),
                helper.make_node("Transpose", ["c"], ["y"], perm=[2, 1, 0])],
               [_f("x", [2, 3, 4])], [_f("y", None)])
    ops = _check_same(m, {"x": RNG.standard_normal((2, 3, 4)).astype(np.float32)}, tmp_path,
                      ort.GraphOptimizationLevel.ORT_ENABLE_BASIC)
    assert ops == [("", "Transpose")]


def test_common_subexpressions_are_computed_once(tmp_path):
    m = _model([helper.make_node("Exp", ["x"], ["a"]), helper.make_node("Exp", ["x"], ["b"]),
                helper.make_node("Add", ["a", "b"], ["y"])], [_f("x", [4])], [_f("y", [4])])
    ops = _check_same(m, {"x": RNG.standard_normal(4).astype(np.float32)}, tmp_path,
                      ort.GraphOptimizationLevel.ORT_ENABLE_BASIC)
    assert ops == [("", "Exp"), ("", "Add")]


def _conv_inits(c_in=3, c_out=4):
    return [("w", RNG.standard_normal((c_out, c_in, 3, 3)).astype(np.float32)),
            ("b", RNG.standard_normal(c_out).astype(np.float32))]


def test_conv_batchnorm_mul_add_fold_into_conv(tmp_path):
    bn = [("s", RNG.uniform(0.5, 2, 4).astype(np.float32)), ("bb", RNG.standard_normal(4).astype(np.float32)),
          ("mu", RNG.standard_normal(4).astype(np.float32)), ("var", RNG.uniform(0.5, 2, 4).astype(np.float32)),
          ("k", RNG.standard_normal((4, 1, 1)).astype(np.float32)),
          ("c", RNG.standard_normal((1, 4, 1, 1)).astype(np.float32))]
    m = _model([helper.make_node("Conv", ["x", "w", "b"], ["a"], pads=[1, 1, 1, 1]),
                helper.make_node("BatchNormalization", ["a", "s", "bb", "mu", "var"], ["n"], epsilon=1e-3),
                helper.make_node("Mul", ["n", "k"], ["m"]), helper.make_node("Add", ["c", "m"], ["y"])],
               [_f("x", [1, 3, 8, 8])], [_f("y", [1, 4, 8, 8])], _conv_inits() + bn)
    ops = _check_same(m, {"x": RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)}, tmp_path,
                      ort.GraphOptimizationLevel.ORT_ENABLE_BASIC, rtol=1e-4, atol=1e-4)
    assert ops == [("", "Conv")]


def test_folded_weights_are_not_kept_beside_their_folds(tmp_path):
    """The weights a fold replaced are dropped (the plan would hold both for the session's life); an
    overridable initializer nothing reads stays a graph input, as onnxruntime keeps it. Numbers against
    onnxruntime."""
    import onnx

    onnxruntime = pytest.importorskip("onnxruntime", reason="onnxruntime is the oracle")
    rng = np.random.default_rng(1)   # its own: the later tests' inputs stay what they were
    bn = [("s", rng.uniform(0.5, 2, 4).astype(np.float32)), ("bb", rng.standard_normal(4).astype(np.float32)),
          ("mu", rng.standard_normal(4).astype(np.float32)), ("var", rng.uniform(0.5, 2, 4).astype(np.float32)),
          ("spare", np.ones(3, np.float32))]
    m = _model([helper.make_node("Conv", ["x", "w", "b"], ["a"], pads=[1, 1, 1, 1]),
                helper.make_node("BatchNormalization", ["a", "s", "bb", "mu", "var"], ["y"], epsilon=1e-3)],
               [_f("x", [1, 3, 8, 8]), _f("spare", [3])], [_f("y", [1, 4, 8, 8])],
               [("w", rng.standard_normal((4, 3, 3, 3)).astype(np.float32)),
                ("b", rng.standard_normal(4).astype(np.float32))] + bn)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    x = {"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)}
    s = ort.InferenceSession(m.SerializeToString(), so)
    want = onnxruntime.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, x)
    np.testing.assert_allclose(s.run(None, x)[0], want[0], rtol=1e-4, atol=1e-4)
    saved = onnx.load(so.optimized_model_filepath)
    read = {i for n in saved.graph.node for i in n.input}
    assert {t.name for t in saved.graph.initializer} == (read & {t.name for t in saved.graph.initializer}) | {"spare"}
    assert len(saved.graph.initializer) == 3        # the folded weight and bias, and the overridable one
    assert [v.name for v in s.get_overridable_initializers()] == ["spare"]


@pytest.mark.parametrize("act, extra", [("Relu", {}), ("Sigmoid", {}), ("LeakyRelu", {"alpha": 0.2}),
                                        ("HardSigmoid", {}), ("Tanh", {})])
def test_conv_activation_fuses_on_cpu(tmp_path, act, extra):
    m = _model([helper.make_node("Conv", ["x", "w", "b"], ["a"], pads=[1, 1, 1, 1]),
                helper.make_node(act, ["a"], ["y"], **extra)],
               [_f("x", ["n", 3, 8, 8])], [_f("y", None)], _conv_inits())
    ops = _check_same(m, {"x": RNG.standard_normal((2, 3, 8, 8)).astype(np.float32)}, tmp_path, rtol=1e-4,
                      atol=1e-5)
    assert ops == [("com.microsoft", "FusedConv")]


def test_conv_residual_add_clip_fuses(tmp_path):
    lo, hi = np.array(0, np.float32), np.array(6, np.float32)
    m = _model([helper.make_node("Conv", ["x", "w", "b"], ["a"], pads=[1, 1, 1, 1]),
                helper.make_node("Add", ["a", "x"], ["s"]), helper.make_node("Clip", ["s", "lo", "hi"], ["y"])],
               [_f("x", ["n", 3, 8, 8])], [_f("y", None)], _conv_inits(3, 3) + [("lo", lo), ("hi", hi)])
    ops = _check_same(m, {"x": RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)}, tmp_path, rtol=1e-4,
                      atol=1e-5)
    assert ops == [("com.microsoft", "FusedConv")]


def test_fusion_only_where_the_owning_provider_has_the_kernel(tmp_path):
    m = _model([helper.make_node("Conv", ["x", "w", "b"], ["a"]), helper.make_node("Relu", ["a"], ["y"])],
               [_f("x", [1, 3, 8, 8])], [_f("y", None)], _conv_inits())
    # level 1 must not fuse (extended fusions belong to level 2)
    _, ops = _ops_after(m, ort.GraphOptimizationLevel.ORT_ENABLE_BASIC, tmp_path)
    assert ops == [("", "Conv"), ("", "Relu")]


def test_tanh_gelu_becomes_fast_gelu(tmp_path):
    c = {n: np.array(v, np.float32) for n, v in
         (("three", 3.0), ("k", 0.044715), ("s", np.sqrt(2 / np.pi)), ("one", 1.0), ("half", 0.5))}
    nodes = [helper.make_node("Mul", ["x", "half"], ["h"]), helper.make_node("Pow", ["x", "three"], ["p"]),
             helper.make_node("Mul", ["p", "k"], ["pk"]), helper.make_node("Add", ["x", "pk"], ["a"]),
             helper.make_node("Mul", ["a", "s"], ["as"]), helper.make_node("Tanh", ["as"], ["t"]),
             helper.make_node("Add", ["t", "one"], ["t1"]), helper.make_node("Mul", ["h", "t1"], ["y"])]
    m = _model(nodes, [_f("x", [2, 16])], [_f("y", [2, 16])], list(c.items()))
    ops = _check_same(m, {"x": RNG.standard_normal((2, 16)).astype(np.float32)}, tmp_path)
    assert ops == [("com.microsoft", "FastGelu")]


def test_bias_gelu(tmp_path):
    b = RNG.standard_normal(16).astype(np.float32)
    m = _model([helper.make_node("Add", ["x", "b"], ["a"]), helper.make_node("Gelu", ["a"], ["y"])],
               [_f("x", ["n", 16])], [_f("y", None)], [("b", b)], opset=20)
    ops = _check_same(m, {"x": RNG.standard_normal((3, 16)).astype(np.float32)}, tmp_path)
    assert ops == [("com.microsoft", "BiasGelu")]


def test_matmul_add_becomes_gemm(tmp_path):
    w, c = RNG.standard_normal((8, 5)).astype(np.float32), RNG.standard_normal(5).astype(np.float32)
    m = _model([helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "c"], ["y"])],
               [_f("x", ["n", 8])], [_f("y", None)], [("w", w), ("c", c)])
    ops = _check_same(m, {"x": RNG.standard_normal((4, 8)).astype(np.float32)}, tmp_path)
    assert ops == [("", "Gemm")]


@pytest.mark.parametrize("square", ["Pow", "Mul"])
def test_decomposed_layer_norm_becomes_layer_normalization(tmp_path, square):
    g, b = RNG.standard_normal(16).astype(np.float32), RNG.standard_normal(16).astype(np.float32)
    two, eps = np.array(2, np.float32), np.array(1e-5, np.float32)
    sq = (helper.make_node("Pow", ["d", "two"], ["p"]) if square == "Pow"
          else helper.make_node("Mul", ["d", "d"], ["p"]))
    nodes = [helper.make_node("ReduceMean", ["x"], ["mu"], axes=[-1]), helper.make_node("Sub", ["x", "mu"], ["d"]),
             sq, helper.make_node("ReduceMean", ["p"], ["var"], axes=[-1]),
             helper.make_node("Add", ["var", "eps"], ["ve"]), helper.make_node("Sqrt", ["ve"], ["sd"]),
             helper.make_node("Div", ["d", "sd"], ["nrm"]), helper.make_node("Mul", ["nrm", "g"], ["sc"]),
             helper.make_node("Add", ["sc", "b"], ["y"])]
    m = _model(nodes, [_f("x", ["n", 5, 16])], [_f("y", None)],
               [("g", g), ("b", b), ("two", two), ("eps", eps)], opset=17)
    ops = _check_same(m, {"x": RNG.standard_normal((2, 5, 16)).astype(np.float32)}, tmp_path, rtol=1e-4,
                      atol=1e-5)
    assert ops == [("", "LayerNormalization")]


def test_decomposed_layer_norm_after_a_residual_add_becomes_skip_layer_normalization(tmp_path):
    """A fusion builds on one made earlier in the same pass: the LayerNormalization fused from its
    decomposed form keeps its nodes' provider, so the residual Add then joins it."""
    g, b = RNG.standard_normal(16).astype(np.float32), RNG.standard_normal(16).astype(np.float32)
    eps = np.array(1e-5, np.float32)
    nodes = [helper.make_node("Add", ["r", "x"], ["s"]),
             helper.make_node("ReduceMean", ["s"], ["mu"], axes=[-1]), helper.make_node("Sub", ["s", "mu"], ["d"]),
             helper.make_node("Mul", ["d", "d"], ["p"]), helper.make_node("ReduceMean", ["p"], ["var"], axes=[-1]),
             helper.make_node("Add", ["var", "eps"], ["ve"]), helper.make_node("Sqrt", ["ve"], ["sd"]),
             helper.make_node("Div", ["d", "sd"], ["nrm"]), helper.make_node("Mul", ["nrm", "g"], ["sc"]),
             helper.make_node("Add", ["sc", "b"], ["y"])]
    m = _model(nodes, [_f("x", ["n", 5, 16]), _f("r", ["n", 5, 16])], [_f("y", None)],
               [("g", g), ("b", b), ("eps", eps)], opset=17)
    feed = {"x": RNG.standard_normal((2, 5, 16)).astype(np.float32),
            "r": RNG.standard_normal((2, 5, 16)).astype(np.float32)}
    ops = _check_same(m, feed, tmp_path, rtol=1e-4, atol=1e-5)
    assert ops == [("com.microsoft", "SkipLayerNormalization")]


def _residual_ln_model(bias: bool, sum_is_output: bool):
    g, be = RNG.standard_normal(16).astype(np.float32), RNG.standard_normal(16).astype(np.float32)
    inits = [("g", g), ("be", be), ("bias", RNG.standard_normal(16).astype(np.float32))]
    nodes = [helper.make_node("Add", ["x", "bias"], ["xb"])] if bias else []
    nodes += [helper.make_node("Add", ["r", "xb" if bias else "x"], ["s"]),
              helper.make_node("LayerNormalization", ["s", "g", "be"], ["y"], axis=-1, epsilon=1e-6)]
    outs = [_f("y", None)] + ([_f("s", None)] if sum_is_output else [])
    return _model(nodes, [_f("x", ["n", 5, 16]), _f("r", ["n", 5, 16])], outs, inits, opset=17)


@pytest.mark.parametrize("bias", [True, False])
def test_bias_residual_layer_norm_becomes_skip_layer_normalization(tmp_path, bias):
    feed = {"x": RNG.standard_normal((2, 5, 16)).astype(np.float32),
            "r": RNG.standard_normal((2, 5, 16)).astype(np.float32)}
    ops = _check_same(_residual_ln_model(bias, False), feed, tmp_path)
    assert ops == [("com.microsoft", "SkipLayerNormalization")]


@pytest.mark.parametrize("bias", [True, False])
def test_residual_sum_used_elsewhere_comes_from_the_fourth_output(tmp_path, bias):
    """The sum also read elsewhere (here a graph output; GPT-2's residual stream): SkipLayerNormalization
    with its input_skip_bias_sum output, numbers and names as onnxruntime has them unfused."""
    import onnxruntime

    m = _residual_ln_model(bias, True)
    feed = {"x": RNG.standard_normal((2, 5, 16)).astype(np.float32),
            "r": RNG.standard_normal((2, 5, 16)).astype(np.float32)}
    ref = onnxruntime.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)
    s, ops = _ops_after(m, ort.GraphOptimizationLevel.ORT_ENABLE_ALL, tmp_path)
    assert ops == [("com.microsoft", "SkipLayerNormalization")]
    assert [o.name for o in s.get_outputs()] == ["y", "s"]
    got = s.run(None, feed)
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got[1], ref[1])


@pytest.mark.parametrize("x_first", [True, False])
def test_silu_becomes_quick_gelu(tmp_path, x_first):
    mul_in = ["x", "s"] if x_first else ["s", "x"]
    m = _model([helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", mul_in, ["y"])],
               [_f("x", ["n", 4, 8, 8])], [_f("y", None)])
    x = (RNG.standard_normal((2, 4, 8, 8)) * 6).astype(np.float32)
    x.flat[:4] = [0.0, -100.0, 100.0, -20.0]
    ops = _check_same(m, {"x": x}, tmp_path)
    assert ops == [("com.microsoft", "QuickGelu")]
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    got = ort.InferenceSession(m, so).run(None, {"x": x})[0]
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(got, x64 / (1 + np.exp(-x64)), rtol=2e-6, atol=1e-30)


@pytest.mark.parametrize("case", ["sigmoid_is_output", "mul_of_other_input"])
def test_sigmoid_used_elsewhere_or_mul_of_other_input_is_not_silu(tmp_path, case):
    other = case == "mul_of_other_input"
    nodes = [helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", ["z" if other else "x", "s"], ["y"])]
    outs = ["y"] if other else ["y", "s"]
    m = _model(nodes, [_f("x", [2, 8]), _f("z", [2, 8])], [_f(o, None) for o in outs])
    feed = {"x": RNG.standard_normal((2, 8)).astype(np.float32), "z": RNG.standard_normal((2, 8)).astype(np.float32)}
    ops = _check_same(m, feed, tmp_path)
    assert ops == [("", "Sigmoid"), ("", "Mul")]


def _sdpa_model(kt_form: str, mask: bool, guard: bool, heads=4, d=8, batch=2, seq=5, softmax_axis=-1,
                k4_shape_used=False):
    """Scaled dot-product attention as PyTorch's exporter spells it: heads split by Reshape+Transpose,
    Kᵀ by a Transpose or by the Reshape/Transpose/Reshape chain, both sides scaled by c = D**-0.25,
    an additive mask, an IsNaN guard after the softmax, the heads merged back by Transpose+Reshape."""
    hd = heads * d
    c = np.array(d ** -0.25, np.float32)
    inits = [("c", c), ("zero", np.array(0.0, np.float32)),
             ("split", np.array([batch, seq, heads, d], np.int64)),
             ("merge", np.array([batch, seq, hd], np.int64)),
             ("flat", np.array([batch * heads, seq, d], np.int64)),
             ("unflat", np.array([batch, heads, d, seq], np.int64))]
    nodes = []
    for t in ("q", "k", "v"):
        nodes += [helper.make_node("Reshape", [t, "split"], [t + "_r"]),
                  helper.make_node("Transpose", [t + "_r"], [t + "4"], perm=[0, 2, 1, 3])]
    if kt_form == "transpose":
        nodes.append(helper.make_node("Transpose", ["k4"], ["kt"], perm=[0, 1, 3, 2]))
    else:
        nodes += [helper.make_node("Reshape", ["k4", "flat"], ["k3"]),
                  helper.make_node("Transpose", ["k3"], ["k3t"], perm=[0, 2, 1]),
                  helper.make_node("Reshape", ["k3t", "unflat"], ["kt"])]
    nodes += [helper.make_node("Mul", ["q4", "c"], ["qs"]), helper.make_node("Mul", ["kt", "c"], ["kts"]),
              helper.make_node("MatMul", ["qs", "kts"], ["scores"])]
    logits = "scores"
    if mask:
        nodes.append(helper.make_node("Add", ["scores", "mask"], ["logits"]))
        logits = "logits"
    nodes.append(helper.make_node("Softmax", [logits], ["p"], axis=softmax_axis))
    probs = "p"
    if guard:
        nodes += [helper.make_node("IsNaN", ["p"], ["nan"]), helper.make_node("Where", ["nan", "zero", "p"], ["pg"])]
        probs = "pg"
    nodes += [helper.make_node("MatMul", [probs, "v4"], ["o4"]),
              helper.make_node("Transpose", ["o4"], ["o"], perm=[0, 2, 1, 3]),
              helper.make_node("Reshape", ["o", "merge"], ["y"])]
    outs = [_f("y", None)]
    if k4_shape_used:
        nodes.append(helper.make_node("Shape", ["k4"], ["k4_shape"]))
        outs.append(helper.make_tensor_value_info("k4_shape", TensorProto.INT64, None))
    ins = [_f(t, [batch, seq, hd]) for t in ("q", "k", "v")] + ([_f("mask", [1, 1, seq, seq])] if mask else [])
    return _model(nodes, ins, outs, inits, opset=17)


def _sdpa_feed(mask: bool, batch=2, seq=5, hd=32):
    feed = {t: RNG.standard_normal((batch, seq, hd)).astype(np.float32) for t in ("q", "k", "v")}
    if mask:
        m = np.where(np.tril(np.ones((seq, seq), bool)), 0.0, np.finfo(np.float32).min).astype(np.float32)
        feed["mask"] = m[None, None]
    return feed


@pytest.mark.parametrize("kt_form", ["transpose", "reshapes"])
@pytest.mark.parametrize("mask, guard", [(True, True), (False, False), (True, False)])
def test_scaled_dot_product_attention_becomes_multi_head_attention(tmp_path, kt_form, mask, guard):
    import onnxruntime

    m = _sdpa_model(kt_form, mask, guard)
    feed = _sdpa_feed(mask)
    ref = onnxruntime.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)
    s, ops = _ops_after(m, ort.GraphOptimizationLevel.ORT_ENABLE_ALL, tmp_path)
    assert ("com.microsoft", "MultiHeadAttention") in ops
    assert not {op for _, op in ops} & {"Softmax", "MatMul", "Mul", "IsNaN", "Where", "Transpose"}
    np.testing.assert_allclose(s.run(None, feed)[0], ref[0], rtol=1e-5, atol=1e-6)
    # onnxruntime runs the optimized model too: the fused node is its contrib op, same numbers
    opt = onnxruntime.InferenceSession(str(tmp_path / f"opt{int(ort.GraphOptimizationLevel.ORT_ENABLE_ALL)}.onnx"),
                                       providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(opt.run(None, feed)[0], ref[0], rtol=1e-5, atol=1e-6)


def test_attention_keeps_what_the_rest_of_the_graph_reads(tmp_path):
    """K's heads tensor also feeds a Shape: that Transpose stays, the rest fuses, both outputs right."""
    import onnxruntime

    m = _sdpa_model("reshapes", True, True, k4_shape_used=True)
    feed = _sdpa_feed(True)
    ref = onnxruntime.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)
    s, ops = _ops_after(m, ort.GraphOptimizationLevel.ORT_ENABLE_ALL, tmp_path)
    assert ("com.microsoft", "MultiHeadAttention") in ops and ("", "Softmax") not in ops
    got = s.run(None, feed)
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got[1], ref[1])


def test_softmax_over_another_axis_is_not_attention(tmp_path):
    ops = _check_same(_sdpa_model("transpose", True, True, softmax_axis=2), _sdpa_feed(True), tmp_path)
    assert ("com.microsoft", "MultiHeadAttention") not in ops and ("", "Softmax") in ops


def test_softmax_before_opset_13_without_axis_is_not_attention(tmp_path):
    """Opset 11's Softmax defaults to axis 1 (the last three axes flattened): not the attention softmax."""
    m = _sdpa_model("transpose", True, False)
    del m.graph.node[[n.op_type for n in m.graph.node].index("Softmax")].attribute[:]
    m.opset_import[0].version = 11
    ops = _check_same(m, _sdpa_feed(True), tmp_path)
    assert ("com.microsoft", "MultiHeadAttention") not in ops and ("", "Softmax") in ops


def _upsample_conv_model(ctm="asymmetric", nearest="floor", by="scales", bias=True, scale=2.0, conv_pads=(1, 1, 1, 1),
                         strides=(1, 1), shape=(2, 6, 5, 7)):
    c_out = 4
    inits = [("w", RNG.standard_normal((c_out, shape[1], 3, 3)).astype(np.float32))]
    if bias:
        inits.append(("b", RNG.standard_normal(c_out).astype(np.float32)))
    if by == "scales":
        inits.append(("sc", np.array([1, 1, scale, scale], np.float32)))
        rs_in = ["x", "", "sc"]
    else:
        inits.append(("sz", np.array([shape[0], shape[1], int(shape[2] * scale), int(shape[3] * scale)], np.int64)))
        rs_in = ["x", "", "", "sz"]
    nodes = [helper.make_node("Resize", rs_in, ["u"], mode="nearest", coordinate_transformation_mode=ctm,
                              nearest_mode=nearest),
             helper.make_node("Conv", ["u", "w"] + (["b"] if bias else []), ["y"], pads=list(conv_pads),
                              strides=list(strides))]
    return _model(nodes, [_f("x", list(shape))], [_f("y", None)], inits, opset=17)


@pytest.mark.parametrize("ctm, nearest, by, bias", [("asymmetric", "floor", "scales", True),
                                                    ("asymmetric", "round_prefer_floor", "sizes", False),
                                                    ("half_pixel", "round_prefer_floor", "scales", True),
                                                    ("pytorch_half_pixel", "round_prefer_ceil", "sizes", True)])
def test_nearest_upsample_then_conv3x3_becomes_conv_transpose(tmp_path, ctm, nearest, by, bias):
    import onnxruntime

    m = _upsample_conv_model(ctm, nearest, by, bias)
    feed = {"x": RNG.standard_normal((2, 6, 5, 7)).astype(np.float32)}
    ref = onnxruntime.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    s, ops = _ops_after(m, ort.GraphOptimizationLevel.ORT_ENABLE_ALL, tmp_path)
    assert ops == [("", "ConvTranspose")]
    got = s.run(None, feed)[0]
    assert got.shape == ref.shape == (2, 4, 10, 14)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    opt = onnxruntime.InferenceSession(str(tmp_path / f"opt{int(ort.GraphOptimizationLevel.ORT_ENABLE_ALL)}.onnx"),
                                       providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(opt.run(None, feed)[0], ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", [dict(ctm="align_corners"), dict(nearest="ceil"), dict(scale=3.0),
                                  dict(conv_pads=(0, 0, 0, 0)), dict(strides=(2, 2))])
def test_other_upsample_conv_pairs_stay(tmp_path, case):
    """Other coordinate maps, scales or conv geometries are not the ConvTranspose; numbers unchanged."""
    import onnxruntime

    m = _upsample_conv_model(**case)
    feed = {"x": RNG.standard_normal((2, 6, 5, 7)).astype(np.float32)}
    ref = onnxruntime.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    s, ops = _ops_after(m, ort.GraphOptimizationLevel.ORT_ENABLE_ALL, tmp_path)
    assert ("", "ConvTranspose") not in ops and ("", "Resize") in ops
    np.testing.assert_allclose(s.run(None, feed)[0], ref, rtol=1e-5, atol=1e-5)


_LEVELS = ort.GraphOptimizationLevel


@pytest.mark.parametrize("level", [_LEVELS.ORT_DISABLE_ALL, _LEVELS.ORT_ENABLE_BASIC, _LEVELS.ORT_ENABLE_EXTENDED,
                                   _LEVELS.ORT_ENABLE_ALL])
def test_outputs_a_fusion_rewrites_keep_their_names_types_and_shapes(level):
    """get_outputs() after a fusion replaced the value of a graph output (here the LayerNormalization that
    becomes SkipLayerNormalization): as onnxruntime reports it, at every level."""
    import onnxruntime

    m = _residual_ln_model(True, False)
    so = ort.SessionOptions()
    so.graph_optimization_level = level
    got = [(o.name, o.type, o.shape) for o in ort.InferenceSession(m, so).get_outputs()]
    ref = onnxruntime.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).get_outputs()
    assert got == [(o.name, o.type, o.shape) for o in ref]
