"""Models that onnxruntime's own tools write load here and match onnxruntime on them.

- ``onnxruntime.quantization`` on the zoo's resnet18 and bert_mini: ``quantize_dynamic``, and
  ``quantize_static`` in the QDQ and the QOperator format (a small calibration reader of random data).
  Each runs here and matches onnxruntime within what onnxruntime's own levels 0 and 99 differ by on
  that model (with a floor of 2e-6 of the output's range for float32 rounding).
- The quantized models saved by onnxruntime at ORT_ENABLE_ALL load here and match within the same bound.
- Models onnxruntime saved with ``SessionOptions.optimized_model_filepath`` at levels 1, 2 and 99
  (ORT_ENABLE_BASIC / _EXTENDED / _ALL: FusedConv, FusedMatMul, FusedGemm, BiasGelu, FastGelu,
  SkipLayerNormalization and, at 99, the com.microsoft.nchwc layout ops with blocked filters) for
  resnet18, mobilenet_v2, bert_mini and gpt2_tiny load here and match within the same bound.

Skips with its reason where ``../shared/models`` (the zoo) is absent.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import engineroom

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is the oracle of these tests")
quantization = pytest.importorskip("onnxruntime.quantization", reason="onnxruntime.quantization writes the models")

ZOO = Path(__file__).resolve().parent.parent.parent / "shared" / "models"
pytestmark = pytest.mark.skipif(not (ZOO / "resnet18.onnx").exists(),
                                reason=f"the model zoo is not at {ZOO} (../shared/models)")
FLOOR = 2e-6
LEVELS = {1: "ORT_ENABLE_BASIC", 2: "ORT_ENABLE_EXTENDED", 99: "ORT_ENABLE_ALL"}


def _feeds(path, seed=1):
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    feeds = {}
    for i in s.get_inputs():
        shape = [d if isinstance(d, int) else (1 if "batch" in str(d).lower() else 8) for d in i.shape]
        if "int" in i.type:
            feeds[i.name] = (np.ones(shape, np.int64) if "mask" in i.name
                             else rng.integers(0, 100, shape).astype(np.int64))
        else:
            feeds[i.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def _ort(path, feeds, level):
    so = ort.SessionOptions()
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    so.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, feeds)


def _rel(a, b):
    return max(float(np.abs(np.asarray(x, np.float64) - y).max(initial=0)) / max(float(np.abs(y).max(initial=0)), 1e-12)
               for x, y in zip(a, b))


def check(path, original=None):
    """engineroom (its default level) against onnxruntime (default level) on ``path``; the bound is what
    onnxruntime's level 0 and level 99 differ by on ``original`` (default: ``path`` itself)."""
    feeds = _feeds(path)
    want = _ort(path, feeds, "ORT_ENABLE_ALL")
    ref = original or path
    ref_feeds = feeds if original is None else _feeds(original)
    own = _rel(_ort(ref, ref_feeds, "ORT_DISABLE_ALL"), _ort(ref, ref_feeds, "ORT_ENABLE_ALL"))
    got = engineroom.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)
    err = _rel(got, want)
    bound = max(own, FLOOR)
    assert err <= bound, f"{path.name}: {err:.2e} off onnxruntime; its own levels 0 and 99 differ by {own:.2e}"
    return err, own


class _RandomReader(quantization.CalibrationDataReader):
    def __init__(self, path, n=2):
        self.data = iter([_feeds(path, seed=10 + k) for k in range(n)])

    def get_next(self):
        return next(self.data, None)


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("ort_written")


def _quantized(model, method, out_dir):
    """The zoo model quantized by onnxruntime.quantization (written once per test module)."""
    src = ZOO / f"{model}.onnx"
    dst = out_dir / f"{model}_{method}.onnx"
    if dst.exists():
        return dst
    if method == "dynamic":
        quantization.quantize_dynamic(str(src), str(dst))
    else:
        fmt = quantization.QuantFormat.QDQ if method == "static_qdq" else quantization.QuantFormat.QOperator
        quantization.quantize_static(str(src), str(dst), _RandomReader(src), quant_format=fmt)
    return dst


def _save_optimized(src, dst, level):
    so = ort.SessionOptions()
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, LEVELS[level])
    so.optimized_model_filepath = str(dst)
    ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
    return dst


@pytest.mark.parametrize("model", ["resnet18", "bert_mini"])
@pytest.mark.parametrize("method", ["dynamic", "static_qdq", "static_qoperator"])
def test_onnxruntime_quantized_model_matches(model, method, out_dir):
    check(_quantized(model, method, out_dir))


@pytest.mark.parametrize("model", ["resnet18", "bert_mini"])
@pytest.mark.parametrize("method", ["dynamic", "static_qdq", "static_qoperator"])
def test_quantized_model_saved_by_onnxruntime_matches(model, method, out_dir):
    """The quantized model saved at ORT_ENABLE_ALL: onnxruntime's QDQ fusions, its NHWC transformer
    (com.microsoft QLinearConv with channels_last, NhwcMaxPool), its nchwc ops and DynamicQuantizeMatMul /
    MatMulIntegerToFloat. The bound is onnxruntime's own level spread on the quantized model: on the
    saved file its two levels run the same kernels, and where a float Conv sits between DequantizeLinear
    and QuantizeLinear (resnet18 QDQ) a different summation order moves an output by one step, as it does
    between onnxruntime's own levels on the unsaved model."""
    src = _quantized(model, method, out_dir)
    check(_save_optimized(src, out_dir / f"{model}_{method}_saved_L99.onnx", 99), original=src)


@pytest.mark.parametrize("model", ["resnet18", "mobilenet_v2", "bert_mini", "gpt2_tiny"])
@pytest.mark.parametrize("level", sorted(LEVELS))
def test_model_saved_by_onnxruntime_matches(model, level, out_dir):
    src = ZOO / f"{model}.onnx"
    check(_save_optimized(src, out_dir / f"{model}_saved_L{level}.onnx", level), original=src)
