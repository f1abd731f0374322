"""The com.microsoft contrib kernels of the CPU provider against onnxruntime, op by op.

Each case is a one-node model (a short chain for the nchwc layout ops) built here with generated inputs;
onnxruntime (the oracle) and engineroom run it and every output must agree: strings and integer tensors
exactly, quantized outputs exactly or within ``lsb`` steps where onnxruntime's kernel rounds through an
approximation (named per case), floats within ``tol`` relative to the output's largest magnitude.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import engineroom

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is the oracle of these tests")

MS = "com.microsoft"
NCHWC = "com.microsoft.nchwc"
F32, I8, U8, I32, I64 = np.float32, np.int8, np.uint8, np.int32, np.int64


@dataclass
class Case:
    id: str
    op: str
    inputs: list                       # (name, array or None for an omitted input, is_initializer)
    attrs: dict = field(default_factory=dict)
    outputs: tuple = ("y",)
    domain: str = MS
    tol: float = 2e-6
    lsb: int = 0
    nodes: list | None = None          # a chain instead of one node
    opset: int = 17                    # of the default domain


def _q(rng, shape, dt):
    info = np.iinfo(dt)
    return rng.integers(info.min, info.max + 1, shape).astype(dt)


def _s(v):
    return np.array(v, F32)


def _zp(v, dt):
    return np.array(v, dt)


def _model(case: Case, out_types=None) -> bytes:
    inits, graph_inputs = [], []
    names = []
    for name, value, is_init in case.inputs:
        if value is None:
            names.append("")
            continue
        names.append(name)
        if is_init:
            inits.append(numpy_helper.from_array(value, name))
        else:
            et = helper.np_dtype_to_tensor_dtype(value.dtype) if value.dtype != object else TensorProto.STRING
            graph_inputs.append(helper.make_tensor_value_info(name, et, value.shape))
    nodes = case.nodes or [helper.make_node(case.op, names, list(case.outputs), domain=case.domain, **case.attrs)]
    if out_types is None:       # untyped outputs: onnxruntime infers them, engineroom is given its answer's types
        outs = [helper.make_value_info(o, helper.TypeProto()) for o in case.outputs]
    else:
        outs = [helper.make_tensor_value_info(o, t, None) for o, t in zip(case.outputs, out_types)]
    graph = helper.make_graph(nodes, case.id, graph_inputs, outs, inits)
    opsets = [helper.make_opsetid("", case.opset), helper.make_opsetid(MS, 1), helper.make_opsetid(NCHWC, 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=8).SerializeToString()


def _feeds(case: Case):
    return {n: v for n, v, is_init in case.inputs if v is not None and not is_init}


def check(case: Case):
    model = _model(case)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1       # onnxruntime's quantized LSTM rounds per batch chunk of its threads
    want = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"]).run(None, _feeds(case))
    types = [TensorProto.STRING if w.dtype == object else helper.np_dtype_to_tensor_dtype(w.dtype) for w in want]
    eso = engineroom.SessionOptions()
    eso.intra_op_num_threads = 1      # the same count: engineroom's DynamicQuantizeLSTM follows it as onnxruntime's
    got = engineroom.InferenceSession(_model(case, types), eso, providers=["CPUExecutionProvider"]).run(None,
                                                                                                       _feeds(case))
    assert len(got) == len(want)
    for name, w, g in zip(case.outputs, want, got):
        g = np.asarray(g)
        assert g.shape == w.shape, f"{name}: shape {g.shape} != onnxruntime's {w.shape}"
        assert g.dtype == w.dtype, f"{name}: dtype {g.dtype} != onnxruntime's {w.dtype}"
        if w.dtype == object or w.dtype.kind in "biu" and not case.lsb:
            assert np.array_equal(g, w), f"{name}: differs from onnxruntime at {np.argwhere(g != w)[:5].tolist()}"
        elif w.dtype.kind in "iu":
            d = np.abs(g.astype(np.int64) - w.astype(np.int64))
            assert d.max(initial=0) <= case.lsb, f"{name}: {int(d.max())} steps off onnxruntime"
        else:
            finite = np.isfinite(w)
            assert np.array_equal(g[~finite], w[~finite], equal_nan=True), f"{name}: non-finite values differ"
            scale = max(float(np.abs(w[finite]).max(initial=0)), 1e-6)
            err = float(np.abs(g[finite].astype(np.float64) - w[finite]).max(initial=0)) / scale
            assert err <= case.tol, f"{name}: relative error {err:.2e} > {case.tol:.0e}"


# --------------------------------------------------------------------------------------------------
# cases
# --------------------------------------------------------------------------------------------------
def _quant_cases():
    rng = np.random.default_rng(0)
    cases = []
    for dt in (I8, U8):
        t = np.dtype(dt).name
        mid = 0 if dt == I8 else 128
        for op in ("QLinearAdd", "QLinearMul"):
            for bshape, tag in (((2, 3, 17), "same"), ((17,), "row"), ((), "scalar")):
                cases.append(Case(f"{op}-{t}-{tag}", op, [
                    ("a", _q(rng, (2, 3, 17), dt), False), ("sa", _s(0.0213), True), ("za", _zp(mid + 3, dt), True),
                    ("b", _q(rng, bshape, dt), False), ("sb", _s(0.0371), True), ("zb", _zp(mid - 5, dt), True),
                    ("sc", _s(0.0417 if op == "QLinearAdd" else 0.7), True), ("zc", _zp(mid + 7, dt), True)]))
        for op, attrs, lsb in (("QLinearSigmoid", {}, 1), ("QLinearLeakyRelu", {"alpha": 0.1}, 0)):
            # onnxruntime's sigmoid table goes through MLAS's approximate logistic: a step off at ties
            cases.append(Case(f"{op}-{t}", op, [
                ("x", _q(rng, (3, 40), dt), False), ("sx", _s(0.05), True), ("zx", _zp(mid + 2, dt), True),
                ("sy", _s(1 / 256 if op == "QLinearSigmoid" else 0.04), True),
                ("zy", _zp(0 if dt == U8 else -128, dt) if op == "QLinearSigmoid" else _zp(mid - 1, dt), True)],
                attrs, lsb=lsb))
        for axis, opset in ((-1, 13), (1, 12)):
            cases.append(Case(f"QLinearSoftmax-{t}-axis{axis}-opset{opset}", "QLinearSoftmax", [
                ("x", _q(rng, (2, 5, 7), dt), False), ("sx", _s(0.06), True), ("zx", _zp(mid, dt), True),
                ("sy", _s(1 / 256), True), ("zy", _zp(0 if dt == U8 else -128, dt), True)],
                {"axis": axis, "opset": opset}, lsb=1))   # exp through MLAS: a step off at ties
        cases.append(Case(f"QLinearConcat-{t}", "QLinearConcat", [
            ("sy", _s(0.05), True), ("zy", _zp(mid + 1, dt), True),
            ("x0", _q(rng, (2, 3, 4), dt), False), ("s0", _s(0.05), True), ("z0", _zp(mid + 1, dt), True),
            ("x1", _q(rng, (2, 5, 4), dt), False), ("s1", _s(0.031), True), ("z1", _zp(mid - 9, dt), True)],
            {"axis": 1}))
        cases.append(Case(f"QLinearWhere-{t}", "QLinearWhere", [
            ("c", rng.random((3, 8)) > 0.5, False),
            ("x", _q(rng, (3, 8), dt), False), ("sx", _s(0.02), True), ("zx", _zp(mid + 4, dt), True),
            ("yv", _q(rng, (8,), dt), False), ("sy", _s(0.03), True), ("zy", _zp(mid - 2, dt), True),
            ("sz", _s(0.025), True), ("zz", _zp(mid, dt), True)]))
        for cl in (0, 1):
            shape = (2, 6, 5, 8) if cl else (2, 8, 6, 5)
            cases.append(Case(f"QLinearGlobalAveragePool-{t}-cl{cl}", "QLinearGlobalAveragePool", [
                ("x", _q(rng, shape, dt), False), ("sx", _s(0.02), True), ("zx", _zp(mid + 3, dt), True),
                ("sy", _s(0.015), True), ("zy", _zp(mid - 4, dt), True)], {"channels_last": cl}))
            for cip in (0, 1):
                cases.append(Case(f"QLinearAveragePool-{t}-cl{cl}-cip{cip}", "QLinearAveragePool", [
                    ("x", _q(rng, (1, 9, 7, 4) if cl else (1, 4, 9, 7), dt), False), ("sx", _s(0.02), True),
                    ("zx", _zp(mid + 3, dt), True), ("sy", _s(0.015), True), ("zy", _zp(mid - 4, dt), True)],
                    {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "channels_last": cl,
                     "count_include_pad": cip}))
        cases.append(Case(f"NhwcMaxPool-{t}", "NhwcMaxPool", [("x", _q(rng, (2, 7, 6, 5), dt), False)],
                          {"kernel_shape": [3, 2], "strides": [2, 1], "pads": [1, 0, 1, 1]}))
        w = _q(rng, (6, 4, 3, 3), I8)
        cases.append(Case(f"QLinearConv-nhwc-{t}", "QLinearConv", [
            ("x", _q(rng, (1, 7, 8, 4), dt), False), ("sx", _s(0.02), True), ("zx", _zp(mid + 3, dt), True),
            ("w", w, True), ("sw", _s(np.linspace(0.003, 0.006, 6)), True), ("zw", np.zeros(6, I8), True),
            ("sy", _s(0.05), True), ("zy", _zp(mid - 2, dt), True),
            ("bias", rng.integers(-500, 500, 6).astype(I32), True)],
            {"channels_last": 1, "pads": [1, 1, 1, 1], "strides": [1, 2]}))
        for with_y in (True, False):
            ins = [("a", _q(rng, (5, 12), dt), False), ("sa", _s(0.02), True), ("za", _zp(mid + 1, dt), True),
                   ("b", _q(rng, (7, 12), I8), True), ("sb", _s(0.01), True), ("zb", _zp(0, I8), True),
                   ("c", rng.integers(-300, 300, 7).astype(I32), True)]
            if with_y:
                ins += [("sy", _s(0.2), True), ("zy", _zp(mid - 3, dt), True)]
            cases.append(Case(f"QGemm-{t}-{'quant' if with_y else 'float'}", "QGemm", ins,
                              {"transB": 1, "alpha": 0.5}))
        cases.append(Case(f"MatMulIntegerToFloat-{t}", "MatMulIntegerToFloat", [
            ("a", _q(rng, (2, 3, 16), dt), False), ("b", _q(rng, (16, 9), I8), True), ("sa", _s(0.03), True),
            ("sb", _s(np.linspace(0.01, 0.02, 9)), True), ("za", _zp(mid + 5, dt), True),
            ("zb", np.zeros(9, I8), True), ("bias", rng.standard_normal(9).astype(F32), True)]))
    for dt in (I8, U8):
        cases.append(Case(f"DynamicQuantizeMatMul-{np.dtype(dt).name}", "DynamicQuantizeMatMul", [
            ("a", rng.standard_normal((2, 4, 24)).astype(F32), False), ("b", _q(rng, (24, 10), dt), True),
            ("sb", _s(np.linspace(0.01, 0.02, 10)), True),
            ("zb", np.full(10, 0 if dt == I8 else 128, dt), True),
            ("bias", rng.standard_normal(10).astype(F32), True)]))
    cases.append(Case("MatMulInteger16", "MatMulInteger16", [
        ("a", rng.integers(-3000, 3000, (3, 8)).astype(np.int16), False),
        ("b", rng.integers(-3000, 3000, (8, 5)).astype(np.int16), False)]))
    for op in ("QuantizeLinear", "DequantizeLinear"):
        x = rng.standard_normal((3, 4)).astype(F32) if op == "QuantizeLinear" else _q(rng, (3, 4), I8)
        cases.append(Case(f"{op}-ms-axis", op, [("x", x, False), ("s", _s([0.01, 0.02, 0.03, 0.04]), True),
                                                 ("z", np.array([0, 1, -2, 3], I8), True)], {"axis": 1}))
    return cases


def _lstm_cases():
    rng = np.random.default_rng(1)
    cases = []
    S, B, I, H = 6, 3, 5, 4
    for direction, nd in (("forward", 1), ("reverse", 1), ("bidirectional", 2)):
        for per_channel in (False, True):
            for lens in (None, np.array([6, 4, 2], I32)):
                sshape = (nd, 4 * H) if per_channel else (nd,)
                ins = [("x", rng.standard_normal((S, B, I)).astype(F32), False),
                       ("w", _q(rng, (nd, I, 4 * H), I8), True), ("r", _q(rng, (nd, H, 4 * H), I8), True),
                       ("bias", rng.standard_normal((nd, 8 * H)).astype(F32), True),
                       ("lens", lens, False),
                       ("h0", rng.standard_normal((nd, B, H)).astype(F32), False),
                       ("c0", rng.standard_normal((nd, B, H)).astype(F32), False), ("p", None, False),
                       ("ws", _s(rng.uniform(0.005, 0.02, sshape)), True), ("wz", np.zeros(sshape, I8), True),
                       ("rs", _s(rng.uniform(0.005, 0.02, sshape)), True), ("rz", np.zeros(sshape, I8), True)]
                tag = (f"{direction}-{'perchannel' if per_channel else 'pertensor'}-"
                       f"{'lens' if lens is not None else 'full'}")
                cases.append(Case(f"DynamicQuantizeLSTM-{tag}", "DynamicQuantizeLSTM", ins,
                                  {"hidden_size": H, "direction": direction}, outputs=("Y", "Y_h", "Y_c"), tol=1e-6))
    return cases


def _transformer_cases():
    rng = np.random.default_rng(2)
    cases = []

    def f(*shape):
        return rng.standard_normal(shape).astype(F32)

    for ta, tb, bta, btb, sa, sb in ((0, 0, 0, 0, (2, 3, 4, 5), (2, 3, 5, 6)), (1, 0, 0, 0, (3, 5, 4), (3, 5, 6)),
                                     (0, 1, 0, 0, (2, 4, 5), (6, 5)), (1, 1, 0, 0, (5, 4), (6, 5)),
                                     (0, 0, 1, 0, (4, 2, 3, 5), (2, 3, 5, 6)), (0, 1, 0, 1, (2, 3, 4, 5), (6, 2, 3, 5)),
                                     (1, 0, 1, 1, (5, 2, 3, 4), (5, 2, 3, 6))):
        for op in ("FusedMatMul", "TransposeMatMul"):
            if op == "TransposeMatMul" and (bta or btb):
                continue
            cases.append(Case(f"{op}-tA{ta}-tB{tb}-bA{bta}-bB{btb}", op, [("a", f(*sa), False), ("b", f(*sb), True)],
                              {"alpha": 0.75, "transA": ta, "transB": tb,
                               **({"transBatchA": bta, "transBatchB": btb} if op == "FusedMatMul" else {})}))
    for act, extra in (("Relu", {}), ("LeakyRelu", {"activation_alpha": 0.2}), ("Tanh", {}), ("Sigmoid", {}),
                       ("HardSigmoid", {"activation_alpha": 0.3, "activation_beta": 0.4})):
        cases.append(Case(f"FusedGemm-{act}", "FusedGemm", [("a", f(4, 6), False), ("b", f(5, 6), True),
                                                            ("c", f(5), True)],
                          {"transB": 1, "alpha": 1.5, "beta": 0.5, "activation": act, **extra}))
    cases.append(Case("Gelu", "Gelu", [("x", f(3, 7) * 3, False)]))
    cases.append(Case("LayerNormalization-opset13", "LayerNormalization",
                      [("x", f(2, 3, 8), False), ("g", f(8), True), ("bb", f(8), True)],
                      {"axis": -1, "epsilon": 1e-5}, domain="", tol=1e-5, opset=13))
    V, P, H, B, S = 30, 16, 8, 2, 5
    for with_seg, with_mask in ((True, True), (False, False)):
        ins = [("ids", rng.integers(0, V, (B, S)).astype(I32), False),
               ("seg", rng.integers(0, 2, (B, S)).astype(I32) if with_seg else None, False),
               ("we", f(V, H), True), ("pe", f(P, H), True), ("se", f(2, H) if with_seg else None, True),
               ("g", f(H), True), ("bb", f(H), True),
               ("mask", (rng.random((B, S)) > 0.3).astype(I32) if with_mask else None, False)]
        cases.append(Case(f"EmbedLayerNormalization-seg{int(with_seg)}-mask{int(with_mask)}",
                          "EmbedLayerNormalization", ins, {"epsilon": 1e-5},
                          outputs=("y", "mask_index", "emb_sum"), tol=1e-5))
    B, S, Hin, heads, Hh = 2, 4, 12, 2, 8
    masks = {"nomask": None, "mask2d": (rng.random((B, S)) > 0.3).astype(I32),
             "mask1d": np.array([4, 2], I32), "mask3d": (rng.random((B, S, S)) > 0.3).astype(I32)}
    for tag, m in masks.items():
        for causal in (0, 1):
            cases.append(Case(f"Attention-{tag}-causal{causal}", "Attention",
                              [("x", f(B, S, Hin), False), ("w", f(Hin, 3 * Hh), True), ("bias", f(3 * Hh), True),
                               ("mask", m, False)],
                              {"num_heads": heads, "unidirectional": causal}, tol=1e-5))
    cases.append(Case("Attention-past-present", "Attention",
                      [("x", f(B, S, Hin), False), ("w", f(Hin, 3 * Hh), True), ("bias", f(3 * Hh), True),
                       ("mask", np.ones((B, 3 + S), I32), False), ("past", f(2, B, heads, 3, Hh // heads), False)],
                      {"num_heads": heads, "unidirectional": 1}, outputs=("y", "present"), tol=1e-5))
    return cases


def _text_cases():
    texts = np.array([["The striker scored a late goal", "x"], ["Markets fell, as rates rose!", ""]], dtype=object)
    cases = []
    for tag, attrs in (("tokenexp", {"tokenexp": "[a-zA-Z0-9_]+"}),
                       ("tokenexp-min3-mark", {"tokenexp": "[a-zA-Z]+", "mincharnum": 3, "mark": 1}),
                       ("separators", {"separators": [" ", ","]}),
                       ("separators-regex", {"separators": ["[ ,!]+"], "mincharnum": 2}),
                       ("chars", {"separators": [""]})):
        full = {"mark": 0, "mincharnum": 1, "pad_value": "#", **attrs}
        cases.append(Case(f"Tokenizer-{tag}", "Tokenizer", [("text", texts, False)], full))
    cases.append(Case("Tokenizer-1d", "Tokenizer", [("text", np.array(["a bb ccc", "dd"], dtype=object), False)],
                      {"mark": 1, "mincharnum": 1, "pad_value": "<pad>", "separators": [" "]}))
    return cases


def _nchwc_cases():
    rng = np.random.default_rng(3)

    def f(*shape):
        return rng.standard_normal(shape).astype(F32)

    x = rng.standard_normal((1, 5, 6, 16)).astype(F32)
    nodes = [helper.make_node("ReorderInput", ["x"], ["t0"], domain=NCHWC, channels_last=1),
             helper.make_node("MaxPool", ["t0"], ["t1"], domain=NCHWC, kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                              strides=[2, 2]),
             helper.make_node("Upsample", ["t1"], ["t2"], domain=NCHWC, scales=[1, 1, 2, 2]),
             helper.make_node("AveragePool", ["t2"], ["t3"], domain=NCHWC, kernel_shape=[2, 2], strides=[1, 1]),
             helper.make_node("ReorderOutput", ["t3"], ["y"], domain=NCHWC, channels=16, channels_last=1),
             helper.make_node("GlobalAveragePool", ["t2"], ["t4"], domain=NCHWC),
             helper.make_node("ReorderOutput", ["t4"], ["g"], domain=NCHWC, channels=16)]
    cases = [Case("nchwc-reorder-pool-upsample", "", [("x", x, False)], outputs=("y", "g"), nodes=nodes, tol=1e-6)]
    for mode, ctm in (("linear", "asymmetric"), ("linear", "half_pixel"), ("linear", "align_corners"),
                      ("nearest", "asymmetric")):
        chain = [helper.make_node("ReorderInput", ["x"], ["t0"], domain=NCHWC),
                 helper.make_node("Upsample", ["t0"], ["t1"], domain=NCHWC, scales=[1, 1, 2, 3], mode=mode,
                                  coordinate_transformation_mode=ctm),
                 helper.make_node("ReorderOutput", ["t1"], ["y"], domain=NCHWC, channels=16)]
        cases.append(Case(f"nchwc-upsample-{mode}-{ctm}", "", [("x", f(1, 16, 5, 4), False)], nodes=chain, tol=1e-6))
    return cases


def _misc_cases():
    rng = np.random.default_rng(5)
    cases = []

    def f(*shape):
        return rng.standard_normal(shape).astype(F32)

    for k in (0, 2, -1):
        for upper in (0, 1):
            cases.append(Case(f"Trilu-k{k}-upper{upper}", "Trilu", [("x", f(2, 4, 5), False),
                                                                   ("k", np.array(k, I64), True)], {"upper": upper}))
    cases.append(Case("Range-int", "Range", [("a", np.array(2, I32), False), ("b", np.array(17, I32), False),
                                             ("d", np.array(3, I32), False)]))
    cases.append(Case("Range-float-nodelta", "Range", [("a", np.array(0.5, F32), False),
                                                       ("b", np.array(4.2, F32), False)]))
    cases.append(Case("GatherND", "GatherND", [("x", f(3, 4, 5), False),
                                               ("i", rng.integers(0, 3, (2, 2)).astype(I64), False)]))
    for mode in ("constant", "reflect", "edge"):
        cases.append(Case(f"Pad-{mode}", "Pad", [("x", f(2, 3, 4), False),
                                                 ("pads", np.array([0, 1, 2, 0, 1, 1], I64), True),
                                                 ("v", np.array(1.5, F32) if mode == "constant" else None, True)],
                          {"mode": mode}))
    cases.append(Case("GridSample", "GridSample", [("x", f(1, 2, 5, 6), False),
                                                   ("g", rng.uniform(-1.1, 1.1, (1, 3, 4, 2)).astype(F32), False)],
                      {"mode": "bilinear", "padding_mode": "zeros", "align_corners": 0}, tol=1e-5))
    cases.append(Case("Unique", "Unique", [("x", rng.integers(0, 6, 15).astype(F32), False)],
                      outputs=("y", "idx", "counts")))
    cases.append(Case("ExpandDims", "ExpandDims", [("x", f(2, 3), False), ("axis", np.array(-1, I32), True)]))
    cases.append(Case("Inverse", "Inverse", [("x", f(2, 4, 4) + 4 * np.eye(4, dtype=F32), False)], tol=1e-5))
    for metric in ("sqeuclidean", "euclidean"):
        cases.append(Case(f"CDist-{metric}", "CDist", [("a", f(5, 3), False), ("b", f(4, 3), False)],
                          {"metric": metric}, tol=1e-5))
    for dt, tag in ((np.int32, "int32"), (np.uint32, "uint32"), (np.int64, "int64")):
        for positive in (0, 1):
            cases.append(Case(f"MurmurHash3-{tag}-pos{positive}", "MurmurHash3",
                              [("x", rng.integers(0, 2 ** 31 - 1, 9).astype(dt), False)],
                              {"seed": 42, "positive": positive}))
    cases.append(Case("MurmurHash3-string", "MurmurHash3",
                      [("x", np.array(["", "a", "abcd", "hello world", "héllo"], dtype=object), False)],
                      {"seed": 0, "positive": 1}))
    for mode in ("bilinear", "nearest"):
        cases.append(Case(f"CropAndResize-{mode}", "CropAndResize", [
            ("x", f(2, 3, 8, 9), False),
            ("rois", np.array([[0.1, 0.2, 0.7, 0.9], [-0.2, 0.0, 0.5, 1.2], [0.3, 0.3, 0.3, 0.8]], F32), False),
            ("bi", np.array([0, 1, 1], I32), False), ("cs", np.array([4, 5], I32), True)],
            {"mode": mode, "extrapolation_value": 0.5}, tol=1e-5))
    cases.append(Case("UnfoldTensor", "UnfoldTensor", [("x", f(2, 11, 3), False)], {"dim": 1, "size": 4, "step": 3}))
    cases.append(Case("ScaledSiLU", "ScaledSiLU", [("x", f(3, 5), False)], {"alpha": 1.7}))
    ids = np.array([[1, 2, 3, 1, 2], [4, 4, 4, 4, 4]], I64)
    cases.append(Case("NGramRepeatBlock", "NGramRepeatBlock", [("ids", ids, False), ("scores", f(2, 6), False)],
                      {"ngram_size": 3}))
    cases.append(Case("ConvTransposeWithDynamicPads", "ConvTransposeWithDynamicPads", [
        ("x", f(1, 2, 4, 5), False), ("w", f(2, 3, 3, 3), True), ("pads", np.array([1, 0, 1, 1], I64), False),
        ("b", f(3), True)], {"strides": [2, 2]}, tol=1e-5))
    B, S, Hin, heads, Hh = 2, 3, 8, 2, 8
    for dt in (U8,):            # onnxruntime's CPU QAttention takes uint8 input only
        cases.append(Case(f"QAttention-{np.dtype(dt).name}", "QAttention", [
            ("x", _q(rng, (B, S, Hin), dt), False), ("w", _q(rng, (Hin, 3 * Hh), I8), True),
            ("bias", f(3 * Hh), True), ("sx", _s(0.02), True), ("sw", _s(0.01), True),
            ("mask", np.array([3, 2], I32), False), ("zx", _zp(3 if dt == I8 else 128, dt), True),
            ("zw", _zp(0, I8), True)], {"num_heads": heads}, tol=1e-5))
    V, P, H = 20, 8, 6
    qe = [("ids", rng.integers(0, V, (2, 4)).astype(I32), False),
          ("seg", rng.integers(0, 2, (2, 4)).astype(I32), False),
          ("we", _q(rng, (V, H), U8), True), ("pe", _q(rng, (P, H), U8), True), ("se", _q(rng, (2, H), U8), True),
          ("g", _q(rng, (H,), U8), True), ("bb", _q(rng, (H,), U8), True),
          ("mask", np.array([[1, 1, 1, 0], [1, 1, 1, 1]], I32), False)]
    qe += [(f"s{i}", _s(0.01 + 0.005 * i), True) for i in range(5)]
    qe += [(f"z{i}", _zp(120 + i, U8), True) for i in range(5)]
    cases.append(Case("QEmbedLayerNormalization", "QEmbedLayerNormalization", qe, {"epsilon": 1e-5},
                      outputs=("y", "mask_index"), tol=1e-5))
    cases += _gather_block_quantized_cases(rng)
    N, K, blk = 6, 40, 16
    for qt in (0, 1):
        # transB=1 only: onnxruntime's CPU kernel does not compute the documented A @ dequant(B) for
        # transB=0 (the backward-pass form); its output there has the first N columns filled, the rest zero
        for tb in (1,):
            ins = [("a", f(3, K if tb else N), False), ("b", rng.integers(0, 256, (N * K + 1) // 2).astype(U8), True),
                   ("absmax", rng.uniform(0.5, 2, (N * K + blk - 1) // blk).astype(F32), True)]
            cases.append(Case(f"MatMulBnb4-qt{qt}-transB{tb}", "MatMulBnb4", ins,
                              {"N": N, "K": K, "block_size": blk, "quant_type": qt, "transB": tb}, tol=1e-5))
    for shape in ((5, 7), (9, 4), (1, 6)):
        cases.append(Case(f"DynamicTimeWarping-{shape[0]}x{shape[1]}", "DynamicTimeWarping",
                          [("cost", rng.random(shape).astype(F32), False)]))
    return cases


def _gather_block_quantized_cases(rng):
    import ml_dtypes

    cases = []
    V, H, blk = 7, 64, 16
    ids = np.array([[0, 6, 3], [2, 2, 5]], I64)
    for bits in (4, 8):
        per = 8 // bits
        data = rng.integers(0, 256, (V, H // per)).astype(U8)
        for with_zp in (False, True):
            for sdt in (F32, np.float16):
                ins = [("data", data, True), ("ids", ids, False),
                       ("scales", rng.uniform(0.01, 0.05, (V, H // blk)).astype(sdt), True),
                       ("zp", rng.integers(0, 256, (V, H // blk // per)).astype(U8) if with_zp else None, True)]
                cases.append(Case(f"GatherBlockQuantized-u8-bits{bits}-zp{int(with_zp)}-{np.dtype(sdt).name}",
                                  "GatherBlockQuantized", ins,
                                  {"bits": bits, "block_size": blk, "gather_axis": 0, "quantize_axis": 1},
                                  tol=1e-3 if sdt == np.float16 else 1e-6))
    data4 = rng.integers(-8, 8, (V, H)).astype(ml_dtypes.int4)
    for g_axis, q_axis in ((0, 1), (1, 0), (0, 0)):
        sshape = (V, H // blk) if q_axis == 1 else ((V + blk - 1) // blk, H)
        cases.append(Case(f"GatherBlockQuantized-int4-g{g_axis}-q{q_axis}", "GatherBlockQuantized", [
            ("data", data4, True), ("ids", np.array([1, 0, 5], I32), False),
            ("scales", rng.uniform(0.01, 0.05, sshape).astype(F32), True)],
            {"block_size": blk, "gather_axis": g_axis, "quantize_axis": q_axis}))
    data8 = rng.standard_normal((V, H)).astype(ml_dtypes.float8_e4m3fn)
    for sshape in ((V, H // blk), (1, H // blk)):
        cases.append(Case(f"GatherBlockQuantized-fp8-scales{sshape[0]}", "GatherBlockQuantized", [
            ("data", data8, True), ("ids", np.array([[4, 1]], I64), False),
            ("scales", rng.uniform(0.5, 2, sshape).astype(F32), True)],
            {"block_size": blk, "gather_axis": 0, "quantize_axis": 1}))
    return cases


CASES = _quant_cases() + _lstm_cases() + _transformer_cases() + _text_cases() + _nchwc_cases() + _misc_cases()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_contrib_op_matches_onnxruntime(case):
    check(case)


def test_nchwc_filter_unblocking_inverts_mlas_layouts():
    """The two MLAS filter layouts, built here by their definition, come back to OIHW exactly."""
    from engineroom.providers.cpu.contrib_nchwc import unblock_filter

    rng = np.random.default_rng(4)
    B = 8
    w = rng.standard_normal((16, 16, 3, 3)).astype(F32)
    bibo = w.reshape(2, B, 2, B, 9).transpose(0, 2, 4, 3, 1).reshape(w.shape)     # [O/B][I/B][K][Bi][Bo]
    assert np.array_equal(unblock_filter(bibo, 1, B), w)
    d = rng.standard_normal((16, 1, 3, 3)).astype(F32)
    bo = d.reshape(2, B, 1, 9).transpose(0, 2, 3, 1).reshape(d.shape)             # [O/B][I][K][Bo]
    assert np.array_equal(unblock_filter(bo, 16, B), d)
    with pytest.raises(ValueError, match="blocks of 8"):
        unblock_filter(rng.standard_normal((12, 16, 1, 1)).astype(F32), 1, B)
