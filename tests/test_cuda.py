"""CUDAExecutionProvider: what can be checked without a GPU runs everywhere (registration, fallback,
options, lazy import, the kernel set, claims, and the overriding kernels' arithmetic run with NumPy
as their array module); what needs CuPy and a device skips with is_available()'s reason.
"""
from __future__ import annotations

import contextlib

import numpy as np
import pytest
from conftest import make_model, python_c, tensor_info
from onnx import TensorProto, helper, numpy_helper

import engineroom as ort
from engineroom.plan import PlanBuilder
from engineroom.plugin_sdk import CPU, Device, ExecutionProvider, ProviderOptionError
from engineroom.providers.cpu import CPUExecutionProvider
from engineroom.providers.cpu.registry import registry as cpu_registry
from engineroom.providers.cuda import CUDAExecutionProvider

CUDA = "CUDAExecutionProvider"
AVAILABLE = CUDAExecutionProvider.is_available()
needs_cuda = pytest.mark.skipif(not AVAILABLE, reason=f"no CUDA here: {CUDAExecutionProvider.unavailable_reason()}")
without_cuda = pytest.mark.skipif(AVAILABLE, reason="checks the behaviour of a machine without CUDA")
OVERRIDES = {("", "MatMul"), ("", "Gemm"), ("", "Conv"), ("com.microsoft", "FusedConv"), ("", "Softmax"),
             ("", "LogSoftmax"), ("", "LayerNormalization")}
_r = np.random.default_rng(11)


def f32(*shape):
    return _r.standard_normal(shape).astype(np.float32)


def _model(nodes, inputs, outputs, inits=(), opset=18, **kw):
    return make_model(nodes, inputs, outputs, inits, opset, **kw)


# -- registration, availability, fallback ---------------------------------------------------------
def test_listed_by_get_all_providers_and_available_only_with_a_device():
    assert CUDA in ort.get_all_providers()
    assert (CUDA in ort.get_available_providers()) == AVAILABLE
    assert ort.get_all_providers().index(CUDA) < ort.get_all_providers().index("CPUExecutionProvider")


def test_importing_the_package_does_not_import_cupy_and_is_available_never_raises():
    code = ("import sys, engineroom, engineroom.providers.cuda as c; from engineroom import discovery; "
            "discovery.provider_names(); assert 'cupy' not in sys.modules, 'cupy imported'; "
            "print(type(c.CUDAExecutionProvider.is_available()).__name__)")
    assert python_c(code).strip() == "bool"


@without_cuda
def test_the_reason_says_what_is_missing():
    reason = CUDAExecutionProvider.unavailable_reason()
    assert "CuPy is not installed" in reason or "no CUDA device" in reason
    assert CUDAExecutionProvider.available_devices() == []


@without_cuda
def test_asking_for_cuda_falls_back_to_cpu_with_a_warning_naming_it(caplog):
    m = _model([helper.make_node("Relu", ["x"], ["y"])], [tensor_info("x", f32(2, 3))],
               [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    with caplog.at_level("WARNING", logger="engineroom"):
        s = ort.InferenceSession(m.SerializeToString(), providers=[CUDA, "CPUExecutionProvider"])
    assert s.get_providers() == ["CPUExecutionProvider"]
    assert CUDA in caplog.text and CUDAExecutionProvider.unavailable_reason() in caplog.text
    x = f32(2, 3)
    np.testing.assert_array_equal(s.run(None, {"x": x})[0], np.maximum(x, 0))
    so = ort.SessionOptions()
    so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    with pytest.raises(ort.EPFail, match=CUDA):
        ort.InferenceSession(m.SerializeToString(), so, providers=[CUDA])


@pytest.mark.parametrize("opts, message", [
    ({"bogus": "1"}, "unknown provider option.*'bogus'"),
    ({"device_id": "x"}, "device_id must be an integer"),
    ({"device_id": "-1"}, "device_id must be >= 0"),
    ({"gpu_mem_limit": "lots"}, "gpu_mem_limit must be an integer"),
    ({"arena_extend_strategy": "kDouble"}, "arena_extend_strategy must be one of kNextPowerOfTwo, kSameAsRequested"),
    ({"enable_cuda_graph": "2"}, "enable_cuda_graph must be"),
    ({"cudnn_conv_algo_search": "FAST"}, "cudnn_conv_algo_search must be one of EXHAUSTIVE, HEURISTIC, DEFAULT"),
])
def test_bad_options_are_rejected_before_cupy_is_needed(opts, message):
    with pytest.raises(ProviderOptionError, match=message):
        CUDAExecutionProvider(**opts)


@without_cuda
def test_good_options_without_a_device_fail_to_start_with_the_reason():
    with pytest.raises(RuntimeError, match="CuPy is not installed|no CUDA device"):
        CUDAExecutionProvider(device_id="0", gpu_mem_limit=str(2 << 30), arena_extend_strategy="kSameAsRequested",
                              enable_cuda_graph="1", cudnn_conv_algo_search="HEURISTIC")


# -- the kernel set ---------------------------------------------------------------------------------
def test_registry_is_the_declared_kernel_set_plus_the_overrides():
    reg = CUDAExecutionProvider.registry
    for dom, op in cpu_registry.ops():
        for since in cpu_registry.versions(dom, op):
            ours = reg.lookup(dom, op, since)
            if (dom, op) in OVERRIDES:
                assert ours.factory.__module__.startswith("engineroom.providers.cuda."), (dom, op, since)
            elif cpu_registry.runs_on_any_array_module(dom, op, since):
                assert ours.factory is cpu_registry.lookup(dom, op, since).factory, (dom, op, since)
            else:
                assert ours is None or ours.since != since, (dom, op, since)
    assert cpu_registry.lookup("", "MatMul", 13).factory.__module__.startswith("engineroom.providers.cpu")


# Ops whose CPU kernels are NumPy-only (reviewed: Python or compiled loops over host arrays, NumPy's random
# generators, host lists and strings, Pillow, np functions CuPy lacks): the CUDA provider must leave them.
NUMPY_ONLY = {
    ("", op) for op in (
        "If", "Loop", "Scan", "ConcatFromSequence", "Optional", "OptionalGetElement", "OptionalHasElement",
        "SequenceAt", "SequenceConstruct", "SequenceEmpty", "SequenceErase", "SequenceInsert", "SequenceLength",
        "SequenceMap", "SplitToSequence", "StringNormalizer", "StringSplit", "StringConcat", "RegexFullMatch",
        "ImageDecoder", "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Bernoulli",
        "Multinomial", "Dropout", "NonMaxSuppression", "TfIdfVectorizer", "Unique", "HannWindow", "HammingWindow",
        "BlackmanWindow", "MelWeightMatrix", "ConvTranspose", "ConvInteger", "QLinearConv", "DeformConv",
        "MaxRoiPool", "RoiAlign")} | {
    ("com.engineroom", "DepthwiseSeparableBlock"), ("com.microsoft", "QLinearConv"), ("com.microsoft", "QGemm"),
    ("com.microsoft", "DynamicQuantizeMatMul"), ("com.microsoft", "Attention"), ("com.microsoft", "FusedGemm")}
NUMPY_ONLY_DOMAINS = {"ai.onnx.ml", "ai.onnx.preview.training", "com.microsoft.nchwc"}


def test_claims_come_from_the_declarations_and_leave_every_numpy_only_kernel():
    """Without CuPy: the ops the CUDA provider would claim, computed from the kernels' declarations
    (its registry and kernel_for on a NumPy-backed instance), exclude every NumPy-only kernel."""
    reg = CUDAExecutionProvider.registry
    claimed = {(dom, op) for dom, op in reg.ops()}
    assert not claimed & NUMPY_ONLY
    assert not {dom for dom, _ in claimed} & NUMPY_ONLY_DOMAINS
    p = _numpy_cuda()
    for dom, op in cpu_registry.ops():
        for since in cpu_registry.versions(dom, op):
            view = _view(dom, op, since)
            declared = cpu_registry.runs_on_any_array_module(dom, op, since) or (dom, op) in OVERRIDES
            assert (p.registry.lookup(dom, op, since) is not None and
                    p.registry.lookup(dom, op, since).since == since) == declared, (dom, op, since)
            if not declared and reg.lookup(dom, op, since) is None:
                assert p.kernel_for(view) is None, (dom, op, since)
                assert "NumPy-only" in p.why_not_on_cuda(view), (dom, op, since)
    # every kernel that calls the compiled loops or a NumPy-only path reaches them through the shim only
    # (``arrays(xp)``), which offers them for NumPy arrays alone; nothing under providers/cpu names CuPy
    import pathlib

    import engineroom.providers.cpu as cpu_pkg

    root = pathlib.Path(cpu_pkg.__file__).parent
    for f in root.rglob("*.py"):
        text = f.read_text()
        assert "cupy" not in text.lower(), f
        assert "xp is np" not in text and "xp is not np" not in text, f
        if f.parent == root and f.name not in ("array_module.py", "__init__.py"):
            assert "compiled import jit" not in text and "_jit.load" not in text, f


def test_a_new_kernel_is_numpy_only_until_it_says_otherwise():
    from engineroom.providers.cpu.registry import KernelSet

    ks = KernelSet()
    ks.kernel("Plain")(lambda x: x)
    ks.array_kernel("Generic")(lambda x, *, xp: xp.negative(x))
    ks.array_kernel("Both", since=1)(lambda x: x)
    ks.kernel("Both", since=1)(lambda x: x)             # re-registered without the declaration
    assert ks.array_kernels().ops() == [("", "Generic")]


def test_numpy_shim_and_a_registered_shim():
    from engineroom.providers.cpu.array_module import NUMPY, ArrayModule, arrays, register

    assert arrays(np) is NUMPY and NUMPY.host and NUMPY.special.erf(0.0) == 0.0
    fake = type("fake_xp", (), {"__name__": "fake_xp", "matmul": staticmethod(np.matmul)})()
    with pytest.raises(LookupError, match="fake_xp"):
        arrays(fake)
    register(ArrayModule(fake, host=False, special="scipy.special"))
    assert arrays(fake).compiled("conv") is None and not arrays(fake).host


def _numpy_init(p, graphs: bool = False, **options) -> None:
    ExecutionProvider.__init__(p, **options)
    p.xp = np
    p.device = Device("cuda", 0)
    p._cuda_device = contextlib.nullcontext()
    p._ndarray = np.ndarray
    p.cuda_graphs = graphs
    p.stream = None
    p.holds = lambda v: isinstance(v, np.ndarray)


def _numpy_cuda(graphs: bool = False) -> CUDAExecutionProvider:
    """A CUDAExecutionProvider whose array module is NumPy: its claims and its overriding kernels'
    arithmetic (everything but the CUDA C code and CuPy itself) can be checked on any machine."""
    p = CUDAExecutionProvider.__new__(CUDAExecutionProvider)
    _numpy_init(p, graphs)
    return p


def test_node_tests_with_numpy_as_the_array_module(monkeypatch):
    """The ONNX node tests of the ops this provider overrides, with the NumPy-backed provider first:
    its claims, host inputs and overriding kernels against the expected outputs (not CuPy's)."""
    from engineroom.plugin_sdk.testing import run_node_tests

    monkeypatch.setattr(CUDAExecutionProvider, "__init__", _numpy_init)
    monkeypatch.setattr(CUDAExecutionProvider, "is_available", classmethod(lambda cls: True))
    report = run_node_tests(CUDA, only=["test_conv", "test_gemm", "test_matmul", "softmax", "layer_norm",
                                        "test_attention_4d", "test_shape", "test_reshape"])
    assert report.ok, report.format()
    for op in ("Conv", "Gemm", "MatMul", "Softmax", "LogSoftmax", "LayerNormalization"):
        assert report.ops[op].claimed > 0 and report.ops[op].passed == report.ops[op].claimed, op


def _load(model):
    """The model as a session sees it: loaded, checked and shape-inferred."""
    from engineroom.load import load_model

    return load_model(model.SerializeToString(), {})


def _owners(model, graphs=False):
    cpu = CPUExecutionProvider()
    m = _load(model)
    opsets = {("" if d == "ai.onnx" else d): v for d, v in m.opset_imports.items()}
    builder = PlanBuilder([_numpy_cuda(graphs), cpu], opsets, m.ir_version or 10, cpu)
    _, _, nodes, _, _, owner, group_of, *_ = builder._assign(m.graph, ())
    return {n.name: ("cuda" if o == 0 else "cpu") for n, o in zip(nodes, owner)}, group_of


def test_claims_leave_control_flow_strings_and_shape_arithmetic_to_the_cpu():
    then_g = helper.make_graph([helper.make_node("Relu", ["r"], ["t"], name="then_relu")], "then", [],
                               [helper.make_tensor_value_info("t", TensorProto.FLOAT, [2, 3])])
    else_g = helper.make_graph([helper.make_node("Neg", ["r"], ["e"], name="else_neg")], "else", [],
                               [helper.make_tensor_value_info("e", TensorProto.FLOAT, [2, 3])])
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("Softmax", ["r"], ["sm"], name="softmax"),
        helper.make_node("Shape", ["x"], ["sx"], name="shape_of_input"),     # input not produced on CUDA
        helper.make_node("Shape", ["r"], ["sr"], name="shape_of_relu"),      # produced on CUDA
        helper.make_node("Add", ["sx", "sr"], ["ss"], name="int_add"),       # shape arithmetic
        helper.make_node("If", ["c"], ["iy"], name="if", then_branch=then_g, else_branch=else_g),
        helper.make_node("StringNormalizer", ["s"], ["so"], name="strings", case_change_action="UPPER"),
        helper.make_node("Cast", ["r"], ["rb"], name="to_bfloat16", to=TensorProto.BFLOAT16),
    ]
    m = _model(nodes, [tensor_info("x", f32(2, 3)), helper.make_tensor_value_info("c", TensorProto.BOOL, []),
                       helper.make_tensor_value_info("s", TensorProto.STRING, [2])],
               [helper.make_tensor_value_info(n, t, None) for n, t in (
                   ("sm", TensorProto.FLOAT), ("ss", TensorProto.INT64), ("iy", TensorProto.FLOAT),
                   ("so", TensorProto.STRING), ("rb", TensorProto.BFLOAT16))])
    owners, group_of = _owners(m)
    assert owners == {"relu": "cuda", "softmax": "cuda", "shape_of_input": "cpu", "shape_of_relu": "cuda",
                      "int_add": "cpu", "if": "cpu", "strings": "cpu", "to_bfloat16": "cpu"}
    assert group_of == {}
    _, group_of = _owners(m, graphs=True)                     # CUDA graphs: claimed as a group
    assert set(group_of) == {0, 1, 3}


def test_ml_domain_and_random_ops_stay_on_the_cpu():
    p = _numpy_cuda()
    assert "NumPy-only" in p.why_not_on_cuda(_view("ai.onnx.ml", "Scaler"))
    assert "NumPy-only" in p.why_not_on_cuda(_view("", "RandomNormal"))
    assert p.why_not_on_cuda(_view("", "Relu")) is None


def _view(domain, op, opset=18):
    from engineroom.plugin_sdk import NodeView

    return NodeView(0, op, domain, opset, "n", ("x",), ("y",), (np.dtype(np.float32),), (np.dtype(np.float32),),
                    ((2,),), ((2,),), {}, (None,))


# -- the overriding kernels' arithmetic, with NumPy as the array module -----------------------------
def _run_both(model, feed):
    """Outputs of the plan with the NumPy-backed CUDA provider first, and of the CPU provider alone."""
    cpu = CPUExecutionProvider()
    m = _load(model)
    opsets = {("" if d == "ai.onnx" else d): v for d, v in m.opset_imports.items()}
    names = [v.name for v in m.graph.inputs]
    cuda_plan = PlanBuilder([_numpy_cuda(), cpu], opsets, m.ir_version or 10, cpu).build(m.graph)
    assert {p.ep_name for p in cuda_plan.partitions} == {CUDA}
    cpu_plan = PlanBuilder([cpu], opsets, m.ir_version or 10, cpu).build(m.graph)
    return cuda_plan.run([feed[n] for n in names]), cpu_plan.run([feed[n] for n in names])


def _check(model, feed, rtol=1e-5, atol=1e-5):
    got, want = _run_both(model, feed)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)


_CONV_CASES = [
    dict(x=(2, 4, 9, 9), w=(6, 4, 3, 3), attrs={}),
    dict(x=(1, 4, 9, 8), w=(6, 2, 3, 3), attrs=dict(group=2, pads=[1, 2, 1, 0], strides=[2, 1])),
    dict(x=(1, 6, 10, 10), w=(6, 1, 3, 3), attrs=dict(group=6, dilations=[2, 2], pads=[2, 2, 2, 2])),
    dict(x=(2, 3, 7, 7), w=(5, 3, 2, 2), attrs=dict(auto_pad="SAME_UPPER", strides=[2, 2])),
    dict(x=(2, 3, 7, 7), w=(5, 3, 2, 2), attrs=dict(auto_pad="SAME_LOWER")),
    dict(x=(2, 3, 7, 7), w=(5, 3, 3, 3), attrs=dict(auto_pad="VALID", strides=[3, 2])),
    dict(x=(2, 8, 5, 5), w=(4, 8, 1, 1), attrs={}),                                    # pointwise
    dict(x=(2, 8, 6, 6), w=(4, 8, 1, 1), attrs=dict(strides=[2, 2])),
    dict(x=(2, 3, 11), w=(4, 3, 3), attrs=dict(pads=[1, 1])),                           # 1-D
    dict(x=(1, 2, 5, 6, 4), w=(3, 2, 3, 3, 2), attrs=dict(pads=[1, 1, 0, 1, 1, 1])),    # 3-D
]


@pytest.mark.parametrize("case", _CONV_CASES, ids=lambda c: f"{c['x']}x{c['w']}-{c['attrs']}")
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("const_w", [True, False])
def test_conv_im2col_matches_the_cpu_provider(case, bias, const_w):
    x, w = f32(*case["x"]), f32(*case["w"])
    b = f32(case["w"][0])
    inits = [numpy_helper.from_array(w, "w")] if const_w else []
    inputs = [tensor_info("x", x)] + ([] if const_w else [tensor_info("w", w)])
    names = ["x", "w"] + (["b"] if bias else [])
    if bias:
        inits.append(numpy_helper.from_array(b, "b"))
    node = helper.make_node("Conv", names, ["y"], **case["attrs"])
    m = _model([node], inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    _check(m, {"x": x, "w": w}, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("act, params", [("Relu", []), ("Clip", [-0.5, 0.5]), ("Sigmoid", []), ("Tanh", []),
                                         ("LeakyRelu", [0.2]), ("HardSigmoid", [0.3, 0.4]), ("Identity", [])])
def test_fused_conv_epilogue_matches_the_cpu_provider(act, params):
    x, w, b, z = f32(2, 4, 6, 6), f32(5, 4, 3, 3), f32(5), f32(2, 5, 6, 6)
    node = helper.make_node("FusedConv", ["x", "w", "b", "z"], ["y"], domain="com.microsoft", pads=[1, 1, 1, 1],
                            activation=act, **({"activation_params": params} if params else {}))
    m = _model([node], [tensor_info("x", x), tensor_info("z", z)], [tensor_info("y", TensorProto.FLOAT, None)],
               [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
               opsets=[("com.microsoft", 1)])
    _check(m, {"x": x, "z": z}, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("ta, tb, alpha, beta, c_shape, const_b, const_c", [
    (0, 0, 1.0, 1.0, None, True, True),
    (1, 0, 0.5, 1.0, (4,), True, True),
    (0, 1, 2.0, 0.5, (3, 4), False, False),
    (1, 1, 1.0, 2.0, (1, 4), True, False),
    (0, 0, 1.5, 0.0, (3, 4), False, True),
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gemm_matches_the_cpu_provider(ta, tb, alpha, beta, c_shape, const_b, const_c, dtype):
    a = f32(5, 3).astype(dtype) if ta else f32(3, 5).astype(dtype)
    b = f32(4, 5).astype(dtype) if tb else f32(5, 4).astype(dtype)
    c = None if c_shape is None else f32(*c_shape).astype(dtype)
    inits, inputs, feed = [], [tensor_info("a", a)], {"a": a}
    for nm, v, const in (("b", b, const_b), ("c", c, const_c)):
        if v is None:
            continue
        if const:
            inits.append(numpy_helper.from_array(v, nm))
        else:
            inputs.append(tensor_info(nm, v))
            feed[nm] = v
    node = helper.make_node("Gemm", ["a", "b"] + ([] if c is None else ["c"]), ["y"], transA=ta, transB=tb,
                            alpha=alpha, beta=beta)
    m = _model([node], inputs, [helper.make_tensor_value_info("y", helper.np_dtype_to_tensor_dtype(np.dtype(dtype)),
                                                              None)], inits)
    _check(m, feed)


@pytest.mark.parametrize("a_shape, b_shape, const_b", [((3, 5), (5, 4), True), ((2, 3, 5), (5, 4), False),
                                                       ((2, 3, 5), (2, 5, 4), False), ((5,), (5, 4), True)])
def test_matmul_matches_the_cpu_provider(a_shape, b_shape, const_b):
    a, b = f32(*a_shape), f32(*b_shape)
    inits = [numpy_helper.from_array(b, "b")] if const_b else []
    inputs = [tensor_info("a", a)] + ([] if const_b else [tensor_info("b", b)])
    m = _model([helper.make_node("MatMul", ["a", "b"], ["y"])], inputs,
               [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    _check(m, {"a": a, "b": b})


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("opset, axis", [(13, -1), (13, 1), (13, 0), (11, 1), (11, 2), (11, 0)])
@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
def test_softmax_matches_the_cpu_provider(op, opset, axis, dtype):
    x = (f32(2, 3, 5) * 3).astype(dtype)
    m = _model([helper.make_node(op, ["x"], ["y"], axis=axis)], [tensor_info("x", x)],
               [helper.make_tensor_value_info("y", helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), None)],
               opset=opset)
    tol = 2e-3 if dtype == np.float16 else 1e-5
    _check(m, {"x": x}, rtol=tol, atol=tol)


@pytest.mark.parametrize("axis, bias, stats", [(-1, True, True), (1, False, True), (-2, True, False)])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_layer_normalization_matches_the_cpu_provider(axis, bias, stats, dtype):
    x = f32(2, 3, 4).astype(dtype)
    norm = x.shape[axis:]
    scale, b = f32(*norm).astype(dtype), f32(*norm).astype(dtype)
    inits = [numpy_helper.from_array(scale, "scale")] + ([numpy_helper.from_array(b, "b")] if bias else [])
    outs = ["y", "mean", "inv"] if stats else ["y"]
    node = helper.make_node("LayerNormalization", ["x", "scale"] + (["b"] if bias else []), outs, axis=axis,
                            epsilon=1e-3)
    m = _model([node], [tensor_info("x", x)], [tensor_info(o, TensorProto.UNDEFINED, None) for o in outs],
               inits)
    tol = 2e-3 if dtype == np.float16 else 1e-5
    _check(m, {"x": x}, rtol=tol, atol=tol)


def test_conv_geometry_follows_onnx():
    from engineroom.providers.cuda.conv import conv_geometry

    assert conv_geometry([7, 7], [2, 2], [2, 2], [], [], "SAME_UPPER") == ([4, 4], [0, 0], [1, 1])
    assert conv_geometry([7, 7], [2, 2], [2, 2], [], [], "SAME_LOWER") == ([4, 4], [1, 1], [0, 0])
    assert conv_geometry([10], [3], [1], [2], [2, 2], "NOTSET") == ([10], [2], [2])
    assert conv_geometry([9], [3], [3], [], [], "VALID") == ([3], [0], [0])


# -- on a GPU -------------------------------------------------------------------------------------
def _relu_add_model():
    b = numpy_helper.from_array(np.arange(3, dtype=np.float32), "b")
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Add", ["r", "b"], ["y"])]
    return _model(nodes, [tensor_info("x", f32(2, 3))], [tensor_info("y", TensorProto.FLOAT, [2, 3])], [b])


@needs_cuda
def test_cuda_session_matches_the_cpu_provider():
    m = _relu_add_model()
    x = f32(2, 3)
    s = ort.InferenceSession(m.SerializeToString(), providers=[CUDA, "CPUExecutionProvider"])
    assert {p.ep_name for p in s.get_provider_graph_assignment_info()} == {CUDA}
    np.testing.assert_allclose(s.run(None, {"x": x})[0], np.maximum(x, 0) + np.arange(3, dtype=np.float32))


@needs_cuda
def test_cuda_iobinding_keeps_inputs_and_outputs_on_the_gpu(monkeypatch):
    import cupy

    m = _relu_add_model()
    s = ort.InferenceSession(m.SerializeToString(), providers=[CUDA, "CPUExecutionProvider"])
    x = f32(2, 3)
    want = s.run(None, {"x": x})[0]
    n = {"to_host": 0, "to_device": 0}
    real_asnumpy, real_asarray = cupy.asnumpy, cupy.asarray

    def asnumpy(a, *args, **kw):
        n["to_host"] += 1
        return real_asnumpy(a, *args, **kw)

    def asarray(a, *args, **kw):
        if isinstance(a, np.ndarray):
            n["to_device"] += 1
        return real_asarray(a, *args, **kw)

    xd = cupy.asarray(x)
    io = s.io_binding()
    io.bind_input("x", "cuda", 0, np.float32, x.shape, xd.data.ptr)
    io.bind_output("y", "cuda", 0)
    monkeypatch.setattr(cupy, "asnumpy", asnumpy)
    monkeypatch.setattr(cupy, "asarray", asarray)
    s.run_with_iobinding(io)
    monkeypatch.undo()
    assert n == {"to_host": 0, "to_device": 0}
    out = io.get_outputs()[0]
    assert out.device_name() == "cuda" and isinstance(out._value, cupy.ndarray)
    np.testing.assert_allclose(io.copy_outputs_to_cpu()[0], want)


@needs_cuda
def test_cuda_graphs_replay_the_same_results():
    m = _relu_add_model()
    s = ort.InferenceSession(m.SerializeToString(), providers=[(CUDA, {"enable_cuda_graph": "1"}),
                                                               "CPUExecutionProvider"])
    x = f32(2, 3)
    want = np.maximum(x, 0) + np.arange(3, dtype=np.float32)
    for _ in range(4):                        # warm-up, capture, replays
        np.testing.assert_allclose(s.run(None, {"x": x})[0], want)
    x2 = f32(2, 3)
    np.testing.assert_allclose(s.run(None, {"x": x2})[0], np.maximum(x2, 0) + np.arange(3, dtype=np.float32))


def test_cpu_device_is_the_host():
    assert CPU.is_host and not Device("cuda", 0).is_host
