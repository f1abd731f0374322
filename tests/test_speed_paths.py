"""The CPU provider's fast paths for real-world models (issue 16) against onnxruntime: 1-D and wide-stride
convolutions, integer GEMMs (MatMulInteger, ConvInteger, QLinearMatMul, QLinearConv) with prepared
weights, fp16 graphs computed in float32 inside, and the recurrent layers' compiled recurrence. Kernels
with a compiled loop are checked on both paths (``jit_paths``)."""
from __future__ import annotations

import numpy as np
import pytest
from jit_paths import JIT_PATHS, choose_path

import engineroom as er

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is the oracle of these tests")
onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402 - after the importorskip

RNG = np.random.default_rng(16)


def model(nodes, inputs, outputs, inits=(), opset=21):
    g = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(a, n) for n, a in inits])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)]).SerializeToString()


def both(m, feed, **er_kw):
    """(onnxruntime's outputs, engineroom's outputs) of model bytes ``m`` on ``feed``."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    ref = ort.InferenceSession(m, so, providers=["CPUExecutionProvider"]).run(None, feed)
    got = er.InferenceSession(m, providers=["CPUExecutionProvider"], **er_kw).run(None, feed)
    return ref, got


def rel_err(ref, got):
    ref, got = np.asarray(ref, np.float64), np.asarray(got, np.float64)
    return np.abs(ref - got).max() / max(np.abs(ref).max(), 1e-30)


@pytest.fixture(params=JIT_PATHS)
def conv_path(request, monkeypatch):
    return choose_path(request, monkeypatch, "conv")


def vi(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


# ---------------------------------------------------------------------------------------------
# 1-D and wide-stride convolutions


@pytest.mark.parametrize("C,L,M,K,stride,group,dil,pads", [
    (1, 16000, 257, 512, 160, 1, 1, (0, 0)),      # an STFT as a conv (openwakeword's mel front end)
    (1, 4000, 64, 256, 128, 1, 1, (128, 128)),    # the same, padded
    (3, 1000, 16, 7, 3, 1, 2, (2, 1)),            # strided and dilated
    (8, 300, 16, 5, 1, 2, 1, (2, 2)),             # grouped
    (16, 128, 32, 1, 1, 1, 1, (0, 0)),            # pointwise
])
def test_conv1d(conv_path, C, L, M, K, stride, group, dil, pads):
    w = RNG.standard_normal((M, C // group, K)).astype(np.float32)
    b = RNG.standard_normal(M).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], strides=[stride], dilations=[dil], group=group,
                            pads=list(pads))
    m = model([node], [vi("x", TensorProto.FLOAT, [2, C, L])], [vi("y", TensorProto.FLOAT, None)],
              [("w", w), ("b", b)])
    x = RNG.standard_normal((2, C, L)).astype(np.float32)
    ref, got = both(m, {"x": x})
    assert got[0].shape == ref[0].shape and got[0].dtype == np.float32
    assert rel_err(ref[0], got[0]) < 1e-5
    if K > 1:
        conv_path.expect("im2col2d")


@pytest.mark.parametrize("C,L,K,stride,pads", [(128, 128, 9, 1, (4, 4)), (32, 301, 5, 2, (2, 2)),
                                               (16, 50, 3, 1, (0, 0))])
def test_conv1d_depthwise(conv_path, C, L, K, stride, pads):
    w = RNG.standard_normal((C, 1, K)).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], strides=[stride], group=C, pads=list(pads))
    m = model([node], [vi("x", TensorProto.FLOAT, [1, C, L])], [vi("y", TensorProto.FLOAT, None)], [("w", w)])
    x = RNG.standard_normal((1, C, L)).astype(np.float32)
    ref, got = both(m, {"x": x})
    assert rel_err(ref[0], got[0]) < 1e-5
    conv_path.expect("depthwise2d")


def test_conv1d_fused_relu_residual(conv_path):
    """Conv + Add + Relu fused (FusedConv with a residual) on a 1-D conv."""
    w = RNG.standard_normal((24, 24, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1]), helper.make_node("Add", ["c", "x"], ["s"]),
             helper.make_node("Relu", ["s"], ["y"])]
    m = model(nodes, [vi("x", TensorProto.FLOAT, [2, 24, 70])], [vi("y", TensorProto.FLOAT, None)], [("w", w)])
    x = RNG.standard_normal((2, 24, 70)).astype(np.float32)
    ref, got = both(m, {"x": x})
    assert rel_err(ref[0], got[0]) < 1e-5


@pytest.mark.parametrize("k,s", [(16, 16), (8, 6)])
def test_conv2d_wide_stride(conv_path, k, s):
    """A patch embedding (kernel = stride) and an overlapping wide stride: many stride phases."""
    w = RNG.standard_normal((32, 3, k, k)).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], strides=[s, s])
    m = model([node], [vi("x", TensorProto.FLOAT, [1, 3, 64, 80])], [vi("y", TensorProto.FLOAT, None)], [("w", w)])
    x = RNG.standard_normal((1, 3, 64, 80)).astype(np.float32)
    ref, got = both(m, {"x": x})
    assert rel_err(ref[0], got[0]) < 1e-5
    conv_path.expect("im2col2d")
