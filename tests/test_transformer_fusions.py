"""The level-2 transformer fusions of gelu_fusion and rms_norm_fusion: each fires on the forms exporters
write (the fused ops in the optimized model), the numbers match onnxruntime's, and a pattern that differs
in one condition (an axis, a constant, an intermediate read elsewhere) is left as it is."""
from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import make_model, optimized_ops
from onnx import TensorProto, helper

import engineroom as ort

onnxruntime = pytest.importorskip("onnxruntime", reason="onnxruntime is the oracle")

RNG = np.random.default_rng(16)
ALL = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
H = 32


def _f(name, shape, t=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, t, shape)


def _c(name, value, dtype=np.float32):
    return (name, np.asarray(value, dtype))


def _vs_ort(model, feed, tmp_path, rtol=1e-5, atol=1e-5):
    """Ops after engineroom's optimizer, outputs compared with onnxruntime's (fully optimized)."""
    s, ops = optimized_ops(model, ALL, tmp_path)
    ref = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = s.run(None, feed)
    for g, r in zip(got, ref.run(None, feed)):
        assert g.dtype == r.dtype and g.shape == r.shape
        np.testing.assert_allclose(g.astype(np.float32), r.astype(np.float32), rtol=rtol, atol=atol)
    return ops


# -- RMS normalization --------------------------------------------------------------------------------------

def _rms_nodes(x, y, *, square="pow", inv="div1", opset=18, axis=-1, eps=1e-6, keep=1):
    """x·(1/√(mean(x²)+ε))·w as T5/Llama exports write it, from ``x`` to ``y``."""
    sq = (helper.make_node("Pow", [x, "two"], ["sq"]) if square == "pow"
          else helper.make_node("Mul", [x, x], ["sq"]))
    mean = (helper.make_node("ReduceMean", ["sq", "axes"], ["ms"], keepdims=keep) if opset >= 18
            else helper.make_node("ReduceMean", ["sq"], ["ms"], axes=[axis], keepdims=keep))
    nodes = [sq, mean, helper.make_node("Add", ["ms", "eps"], ["v"]), helper.make_node("Sqrt", ["v"], ["sd"])]
    if inv == "div1":
        nodes += [helper.make_node("Div", ["one", "sd"], ["r"]), helper.make_node("Mul", [x, "r"], ["n"])]
    elif inv == "reciprocal":
        nodes += [helper.make_node("Reciprocal", ["sd"], ["r"]), helper.make_node("Mul", ["r", x], ["n"])]
    else:
        nodes += [helper.make_node("Div", [x, "sd"], ["n"])]
    nodes.append(helper.make_node("Mul", ["w", "n"], [y]))
    inits = [_c("two", 2.0), _c("eps", eps), _c("one", 1.0), ("axes", np.array([axis], np.int64)),
             _c("w", RNG.standard_normal(H) + 1)]
    return nodes, inits


@pytest.mark.parametrize("square,inv,opset", [("pow", "div1", 18), ("mul", "reciprocal", 18),
                                              ("pow", "div", 13), ("mul", "div1", 17)])
def test_rms_norm_becomes_simplified_layer_normalization(tmp_path, square, inv, opset):
    nodes, inits = _rms_nodes("x", "y", square=square, inv=inv, opset=opset)
    m = make_model(nodes, [_f("x", ["b", 7, H])], [_f("y", None)], inits, opset=opset)
    ops = _vs_ort(m, {"x": RNG.standard_normal((2, 7, H)).astype(np.float32)}, tmp_path)
    assert ops == [("", "SimplifiedLayerNormalization")]


def _t5_block(sum_is_output: bool):
    """T5's residual: s = a + b, normalized, and s read again by the next residual Add."""
    nodes, inits = _rms_nodes("s", "y")
    nodes = [helper.make_node("Add", ["a", "b"], ["s"])] + nodes + [helper.make_node("Add", ["s", "y"], ["z"])]
    outs = [_f("z", None)] + ([_f("s", None)] if sum_is_output else [])
    return make_model(nodes, [_f("a", ["b", 5, H]), _f("b", ["b", 5, H])], outs, inits, opset=18)


@pytest.mark.parametrize("sum_is_output", [False, True])
def test_residual_rms_norm_becomes_skip_simplified_layer_normalization(tmp_path, sum_is_output):
    feed = {"a": RNG.standard_normal((2, 5, H)).astype(np.float32),
            "b": RNG.standard_normal((2, 5, H)).astype(np.float32)}
    ops = _vs_ort(_t5_block(sum_is_output), feed, tmp_path)
    assert ops == [("com.microsoft", "SkipSimplifiedLayerNormalization"), ("", "Add")]


def test_float16_rms_norm_with_casts_fuses_to_one_node(tmp_path):
    """Llama's float16 export: Cast to float32, normalize, Cast back, Mul by a float16 weight."""
    nodes, inits = _rms_nodes("xf", "nf")
    nodes[-1] = helper.make_node("Cast", ["n"], ["n16"], to=TensorProto.FLOAT16)
    nodes = [helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT)] + nodes + [
        helper.make_node("Mul", ["w16", "n16"], ["y"])]
    inits.append(("w16", (RNG.standard_normal(H) + 1).astype(np.float16)))
    m = make_model(nodes, [_f("x", [3, H], TensorProto.FLOAT16)], [_f("y", None, TensorProto.FLOAT16)], inits,
                   opset=18)
    x = RNG.standard_normal((3, H)).astype(np.float16)
    ops = _vs_ort(m, {"x": x}, tmp_path, rtol=2e-3, atol=2e-3)
    assert ops == [("", "SimplifiedLayerNormalization")]
    # the float16 rounding the casts did is kept: within an ulp of float16 of the exact value
    xd = x.astype(np.float64)
    want = xd / np.sqrt((xd * xd).mean(-1, keepdims=True) + 1e-6) * inits[-1][1].astype(np.float64)
    got = ort.InferenceSession(m.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_allclose(got.astype(np.float64), want, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("case", ["not_last_axis", "no_keepdims", "sqrt_read_elsewhere", "gamma_is_input",
                                  "not_square"])
def test_rms_norm_left_alone_where_a_condition_fails(tmp_path, case):
    nodes, inits = _rms_nodes("x", "y", axis=1 if case == "not_last_axis" else -1,
                              keep=0 if case == "no_keepdims" else 1)
    ins, outs = [_f("x", [2, 6, H])], [_f("y", None)]
    if case == "sqrt_read_elsewhere":
        outs.append(_f("sd", None))
    if case == "gamma_is_input":
        inits = [t for t in inits if t[0] != "w"]
        ins.append(_f("w", [H]))
    if case == "not_square":
        inits[0] = _c("two", 4.0)
    if case == "no_keepdims":       # the (2, 6) mean broadcast against (2, 6, 32) fails: keep it valid
        nodes[1] = helper.make_node("ReduceMean", ["sq", "axes"], ["ms"], keepdims=0)
        inits[3] = ("axes", np.array([0], np.int64))
        ins = [_f("x", [6, 6, 6])]
        inits[4] = _c("w", RNG.standard_normal(6) + 1)
    m = make_model(nodes, ins, outs, inits, opset=18)
    feed = {"x": RNG.standard_normal((6, 6, 6) if case == "no_keepdims" else (2, 6, H)).astype(np.float32)}
    if case == "gamma_is_input":
        feed["w"] = RNG.standard_normal(H).astype(np.float32)
    ops = _vs_ort(m, feed, tmp_path)
    assert ("", "SimplifiedLayerNormalization") not in ops and ("", "Sqrt") in ops


# -- GELU, erf form ----------------------------------------------------------------------------------------

def _gelu_nodes(x, y, form, arg="div", half=0.5, root=math.sqrt(2.0)):
    """x·0.5·(1+erf(x/√2)) in ``form``: 'vit' (x·(1+e))·0.5, 'dynamo' x·(0.5·(1+e)), 'half_x' (0.5·x)·(1+e)."""
    nodes = [helper.make_node("Div", [x, "root"], ["t"]) if arg == "div" else helper.make_node("Mul", ["iroot", x], ["t"]),
             helper.make_node("Erf", ["t"], ["e"]), helper.make_node("Add", ["e", "one"], ["p"])]
    if form == "vit":
        nodes += [helper.make_node("Mul", [x, "p"], ["q"]), helper.make_node("Mul", ["q", "half"], [y])]
    elif form == "dynamo":
        nodes += [helper.make_node("Mul", ["half", "p"], ["q"]), helper.make_node("Mul", [x, "q"], [y])]
    else:
        nodes += [helper.make_node("Mul", [x, "half"], ["hx"]), helper.make_node("Mul", ["hx", "p"], [y])]
    inits = [_c("root", root), _c("iroot", 1 / root), _c("one", 1.0), _c("half", half)]
    return nodes, inits


@pytest.mark.parametrize("form,arg", [("vit", "div"), ("dynamo", "div"), ("half_x", "mul"), ("vit", "mul")])
def test_erf_gelu_with_bias_becomes_bias_gelu(tmp_path, form, arg):
    nodes, inits = _gelu_nodes("h", "y", form, arg)
    nodes = [helper.make_node("Add", ["bias", "x"], ["h"])] + nodes
    inits.append(_c("bias", RNG.standard_normal(H)))
    m = make_model(nodes, [_f("x", ["n", H])], [_f("y", None)], inits, opset=14)
    x = (RNG.standard_normal((9, H)) * 4).astype(np.float32)
    ops = _vs_ort(m, {"x": x}, tmp_path, rtol=1e-6, atol=1e-6)
    assert ops == [("com.microsoft", "BiasGelu")]


def test_erf_gelu_without_bias_becomes_gelu(tmp_path):
    nodes, inits = _gelu_nodes("x", "y", "vit")
    m = make_model(nodes, [_f("x", [4, H])], [_f("y", None)], inits, opset=17)
    ops = _vs_ort(m, {"x": (RNG.standard_normal((4, H)) * 4).astype(np.float32)}, tmp_path, rtol=1e-6, atol=1e-6)
    assert ops == [("com.microsoft", "Gelu")]


@pytest.mark.parametrize("case", ["half_is_0.6", "root_is_2", "erf_read_elsewhere", "other_x"])
def test_erf_gelu_left_alone_where_a_condition_fails(tmp_path, case):
    nodes, inits = _gelu_nodes("x", "y", "vit", half=0.6 if case == "half_is_0.6" else 0.5,
                               root=2.0 if case == "root_is_2" else math.sqrt(2.0))
    ins, outs = [_f("x", [4, H]), _f("z", [4, H])], [_f("y", None)]
    if case == "erf_read_elsewhere":
        outs.append(_f("e", None))
    if case == "other_x":
        nodes[3] = helper.make_node("Mul", ["z", "p"], ["q"])
    m = make_model(nodes, ins, outs, inits, opset=17)
    feed = {k: RNG.standard_normal((4, H)).astype(np.float32) for k in ("x", "z")}
    ops = _vs_ort(m, feed, tmp_path, rtol=1e-6, atol=1e-6)
    assert ("", "Erf") in ops and not any(op == "Gelu" for _, op in ops)


# -- attention whose output shape is read back (ViT's export) -----------------------------------------------

def _vit_attention(gather_dims=(0, 1)):
    """ViT's attention: heads by Reshape/Transpose, Q and Kᵀ each scaled by D^-1/4, and the final Reshape's
    shape built from Shape(Transpose output) -> Gather dims ``gather_dims`` -> Concat with (H·D)."""
    heads, d = 2, 8
    nodes = []
    for n, perm in (("q", (0, 2, 1, 3)), ("k", (0, 2, 3, 1)), ("v", (0, 2, 1, 3))):
        nodes += [helper.make_node("Reshape", [n, "hshape"], [n + "4"]),
                  helper.make_node("Transpose", [n + "4"], [n + "t"], perm=perm)]
    nodes += [helper.make_node("Mul", ["qt", "c"], ["qs"]), helper.make_node("Mul", ["kt", "c"], ["ks"]),
              helper.make_node("MatMul", ["qs", "ks"], ["s"]), helper.make_node("Softmax", ["s"], ["p"], axis=-1),
              helper.make_node("MatMul", ["p", "vt"], ["o4"]),
              helper.make_node("Transpose", ["o4"], ["o"], perm=(0, 2, 1, 3)),
              helper.make_node("Shape", ["o"], ["sh"])]
    for i, dim in enumerate(gather_dims):
        nodes += [helper.make_node("Gather", ["sh", f"i{dim}"], [f"g{i}"], axis=0),
                  helper.make_node("Unsqueeze", [f"g{i}", "zero"], [f"u{i}"])]
    nodes += [helper.make_node("Concat", [f"u{i}" for i in range(len(gather_dims))] + ["hd"], ["oshape"], axis=0),
              helper.make_node("Reshape", ["o", "oshape"], ["y"])]
    inits = [("hshape", np.array([0, 0, heads, d], np.int64)), _c("c", d ** -0.25), ("zero", np.array([0], np.int64)),
             ("i0", np.array(0, np.int64)), ("i1", np.array(1, np.int64)), ("i2", np.array(2, np.int64)),
             ("hd", np.array([heads * d] if len(gather_dims) == 2 else [d], np.int64))]
    ins = [_f(n, ["b", "s", heads * d]) for n in "qkv"]
    return make_model(nodes, ins, [_f("y", None)], inits, opset=17)


@pytest.mark.parametrize("dims,fused", [((0, 1), True), ((0, 1, 2), False)])
def test_attention_output_read_by_shape_of_batch_and_sequence_still_fuses(tmp_path, dims, fused):
    """Shape(attention output) read for B and S only: the same in the fused 3-D output, so the fusion
    fires; a Shape that also reads the heads dim keeps the pattern unfused."""
    feed = {n: RNG.standard_normal((2, 5, 16)).astype(np.float32) for n in "qkv"}
    ops = _vs_ort(_vit_attention(dims), feed, tmp_path, rtol=1e-5, atol=1e-6)
    assert (("com.microsoft", "MultiHeadAttention") in ops) is fused
