"""The level-3 DepthwiseSeparableBlock fusion (conv -> depthwise conv -> 1x1 conv, channels-last inside):
where it forms, where it does not, and its numbers against onnxruntime on both kernel paths."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import optimized_ops as _session
from jit_paths import JIT_PATHS, choose_path
from onnx import TensorProto, helper, numpy_helper

import engineroom as ort

RNG = np.random.default_rng(7)
BLOCK = ("com.engineroom", "DepthwiseSeparableBlock")
LEVELS = ort.GraphOptimizationLevel


@pytest.fixture(params=JIT_PATHS)
def path(request, monkeypatch):
    return choose_path(request, monkeypatch, "nhwc")


def _act(name, x, y, k):
    if name == "relu":
        return [helper.make_node("Relu", [x], [y])], []
    if name == "relu6":
        return [helper.make_node("Clip", [x, f"lo{k}", f"hi{k}"], [y])], [(f"lo{k}", np.float32(0)),
                                                                         (f"hi{k}", np.float32(6))]
    return [helper.make_node("Identity", [x], [y])], []


def block_model(C=8, M=24, M2=8, H=14, W=14, first="pw", dw_k=3, dw_stride=1, acts=("relu6", "relu6", None),
                bias=(True, True, True), residual=False, batch=1, dtype=np.float32):
    """x -> conv (1x1, or 3x3 stride 2 'stem') -> act -> depthwise k x k -> act -> 1x1 conv [-> + x] -> act."""
    k1, s1, p1 = (1, 1, 0) if first == "pw" else (3, 2, 1)
    inits = [("w1", RNG.standard_normal((M, C, k1, k1)) * 0.3), ("wd", RNG.standard_normal((M, 1, dw_k, dw_k)) * 0.3),
             ("w2", RNG.standard_normal((M2, M, 1, 1)) * 0.3)]
    for name, n, on in zip(("b1", "bd", "b2"), (M, M, M2), bias):
        if on:
            inits.append((name, RNG.standard_normal(n)))
    convs = [(["x", "w1"] + (["b1"] if bias[0] else []), dict(kernel_shape=[k1, k1], strides=[s1, s1], pads=[p1] * 4)),
             (["a1", "wd"] + (["bd"] if bias[1] else []),
              dict(kernel_shape=[dw_k, dw_k], strides=[dw_stride] * 2, pads=[dw_k // 2] * 4, group=M)),
             (["a2", "w2"] + (["b2"] if bias[2] else []), dict(kernel_shape=[1, 1]))]
    nodes = []
    for k, ((ins, attrs), act) in enumerate(zip(convs, acts)):
        out = f"c{k + 1}"
        nodes.append(helper.make_node("Conv", ins, [out], **attrs))
        if k == 2 and residual:
            nodes.append(helper.make_node("Add", [out, "x"], ["sum"]))
            out = "sum"
        more, consts = _act(act, out, f"a{k + 1}" if k < 2 else "y", k)
        nodes += more
        inits += consts
    tt = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    g = helper.make_graph(nodes, "block", [helper.make_tensor_value_info("x", tt, [batch, C, H, W])],
                          [helper.make_tensor_value_info("y", tt, None)],
                          [numpy_helper.from_array(np.asarray(a, dtype=dtype), n) for n, a in inits])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _reference(model, feed):
    import onnxruntime
    sess = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feed)[0]


CASES = {
    "expand_clip_s1": dict(),
    "stride2": dict(dw_stride=2, H=15, W=13),
    "residual": dict(C=8, M2=8, residual=True),
    "stem_relu": dict(C=3, first="stem", H=28, W=30, acts=("relu", "relu", None)),
    "no_bias_no_act": dict(bias=(False, False, False), acts=(None, None, None)),
    "dw5x5_batch2": dict(dw_k=5, batch=2, H=9, W=11),
    "output_relu": dict(acts=("relu6", None, "relu"), bias=(True, False, True)),
    "7x7_wide": dict(C=16, M=64, M2=24, H=7, W=7),
    # large enough that the depthwise loop splits over the worker pool's threads (from 8M multiply-adds)
    "split_over_threads": dict(C=24, M=192, M2=64, H=144, W=144, dw_stride=2),
}


@pytest.mark.parametrize("case", list(CASES))
def test_block_forms_and_matches_onnxruntime(case, path, tmp_path):
    kw = CASES[case]
    m = block_model(**kw)
    shape = [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]
    feed = {"x": RNG.standard_normal(shape).astype(np.float32)}
    ref = _reference(m, feed)
    s, ops = _session(m, LEVELS.ORT_ENABLE_ALL, tmp_path)
    assert ops.count(BLOCK) == 1 and ("", "Conv") not in ops and ("com.microsoft", "FusedConv") not in ops, ops
    got = s.run(None, feed)[0]
    path.expect("depthwise_nhwc")
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
    # the session keeps working, with other numbers
    feed2 = {"x": RNG.standard_normal(shape).astype(np.float32)}
    np.testing.assert_allclose(s.run(None, feed2)[0], _reference(m, feed2), rtol=1e-4, atol=1e-5)


def test_mobile_sized_block_stays_on_the_callers_thread(monkeypatch, tmp_path):
    """A MobileNetV2-sized block at 2 threads in the steady mode (another process busy): no loop split over
    the pool (split, with its GEMMs through the pool's chunks, mobilenet_v2 ran 14.1 ms against 9.1 at 2
    threads); the numbers are onnxruntime's."""
    threadpoolctl = pytest.importorskip("threadpoolctl", reason="threadpoolctl sets the pool's thread count")
    from conftest import steady_mode

    from engineroom.providers.cpu import _threadpool as tp

    calls = []
    monkeypatch.setattr(tp.WorkerPool, "run", lambda self, fn, args: calls.append(len(args)))
    monkeypatch.setattr(tp._Load, "contended", lambda self: True)
    m = block_model(C=16, M=96, M2=24, H=112, W=112, dw_stride=2)
    feed = {"x": RNG.standard_normal((1, 16, 112, 112)).astype(np.float32)}
    s, ops = _session(m, LEVELS.ORT_ENABLE_ALL, tmp_path)
    assert ops.count(BLOCK) == 1, ops
    with threadpoolctl.threadpool_limits(2, user_api="blas"), steady_mode():
        got = s.run(None, feed)[0]
    assert calls == [], calls
    np.testing.assert_allclose(got, _reference(m, feed), rtol=1e-4, atol=1e-5)


def test_saved_level3_model_runs_here(tmp_path):
    """The model saved with optimized_model_filepath holds the block; a new session runs it as it is."""
    m = block_model(residual=True)
    feed = {"x": RNG.standard_normal((1, 8, 14, 14)).astype(np.float32)}
    _, ops = _session(m, LEVELS.ORT_ENABLE_ALL, tmp_path)
    assert BLOCK in ops
    saved = tmp_path / f"opt{int(LEVELS.ORT_ENABLE_ALL)}.onnx"
    so = ort.SessionOptions()
    so.graph_optimization_level = LEVELS.ORT_DISABLE_ALL
    again = ort.InferenceSession(str(saved), so)
    np.testing.assert_allclose(again.run(None, feed)[0], _reference(m, feed), rtol=1e-4, atol=1e-5)


def test_block_only_at_level_all(tmp_path):
    m = block_model()
    _, ops = _session(m, LEVELS.ORT_ENABLE_EXTENDED, tmp_path)
    assert BLOCK not in ops and ops.count(("com.microsoft", "FusedConv")) == 2


def test_float64_block_matches_unoptimized(path, tmp_path):
    m = block_model(dtype=np.float64, residual=True)
    feed = {"x": RNG.standard_normal((1, 8, 14, 14))}
    s, ops = _session(m, LEVELS.ORT_ENABLE_ALL, tmp_path)
    assert BLOCK in ops
    plain, _ = _session(m, LEVELS.ORT_DISABLE_ALL, tmp_path)
    got = s.run(None, feed)[0]
    path.expect("depthwise_nhwc")
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, plain.run(None, feed)[0], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("why", ["large_stride1", "dw_output_read_twice", "project_is_3x3", "dilated_dw"])
def test_no_block_where_it_does_not_pay_or_apply(why, tmp_path):
    """Large stride-1 images stay channels-first (as fast there); other shapes are not the pattern."""
    if why == "large_stride1":
        m = block_model(H=56, W=56)
    else:
        m = block_model()
        nodes = m.graph.node
        if why == "dw_output_read_twice":
            m.graph.output.append(helper.make_tensor_value_info("a2", TensorProto.FLOAT, None))
        elif why == "project_is_3x3":
            w2 = next(i for i in m.graph.initializer if i.name == "w2")
            w2.CopyFrom(numpy_helper.from_array(RNG.standard_normal((8, 24, 3, 3)).astype(np.float32), "w2"))
            conv = [n for n in nodes if n.op_type == "Conv"][2]
            conv.attribute[0].CopyFrom(helper.make_attribute("kernel_shape", [3, 3]))
            conv.attribute.append(helper.make_attribute("pads", [1, 1, 1, 1]))
        else:
            conv = [n for n in nodes if n.op_type == "Conv"][1]
            conv.attribute.append(helper.make_attribute("dilations", [2, 2]))
            next(a for a in conv.attribute if a.name == "pads").CopyFrom(helper.make_attribute("pads", [2, 2, 2, 2]))
    shape = [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]
    feed = {"x": RNG.standard_normal(shape).astype(np.float32)}
    s, ops = _session(m, LEVELS.ORT_ENABLE_ALL, tmp_path)
    assert BLOCK not in ops
    np.testing.assert_allclose(s.run(None, feed)[0], _reference(m, feed), rtol=1e-4, atol=1e-5)


def test_the_size_limit_is_the_owning_providers(monkeypatch, tmp_path):
    """The stride-1 size limit is what the CPU provider states (its fusion_limits), not the optimizer's."""
    from engineroom.providers.cpu import CPUExecutionProvider

    assert CPUExecutionProvider.fusion_limits["DepthwiseSeparableBlock.max_stride1_pixels"] == 28 * 28
    m = block_model(H=56, W=56)
    feed = {"x": RNG.standard_normal((1, 8, 56, 56)).astype(np.float32)}
    monkeypatch.setattr(CPUExecutionProvider, "fusion_limits",
                        {"DepthwiseSeparableBlock.max_stride1_pixels": 56 * 56})
    s, ops = _session(m, LEVELS.ORT_ENABLE_ALL, tmp_path)
    assert BLOCK in ops
    np.testing.assert_allclose(s.run(None, feed)[0], _reference(m, feed), rtol=1e-4, atol=1e-5)
    monkeypatch.setattr(CPUExecutionProvider, "fusion_limits",
                        {"DepthwiseSeparableBlock.max_stride1_pixels": 14 * 14})
    _, ops = _session(block_model(), LEVELS.ORT_ENABLE_ALL, tmp_path)      # 14x14 depthwise output still forms
    assert BLOCK in ops


def test_bad_feed_names_the_input_and_the_session_recovers(tmp_path):
    s, _ = _session(block_model(), LEVELS.ORT_ENABLE_ALL, tmp_path)
    with pytest.raises(ort.InvalidArgument, match="x"):
        s.run(None, {"x": np.zeros((1, 5, 14, 14), np.float32)})
    assert s.run(None, {"x": np.zeros((1, 8, 14, 14), np.float32)})[0].shape == (1, 8, 14, 14)
