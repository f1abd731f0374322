"""Nodes OpenVINO converts but computes differently from ONNX: never claimed, each with its reason.

Found by running the ONNX backend node tests through the provider (``python -m
engineroom.plugin_sdk.testing OpenVINOExecutionProvider``) with OpenVINO 2026.4; each rule names what
goes wrong, so a rule can be dropped once a newer OpenVINO gets it right.
"""
from __future__ import annotations

import math

import numpy as np

from engineroom.plugin_sdk import NodeView

_REDUCE = {"ReduceMax", "ReduceMin", "ReduceSum", "ReduceMean", "ReduceProd", "ReduceL1", "ReduceL2",
           "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare", "ArgMax", "ArgMin"}


def why_not(v: NodeView) -> str | None:
    """None when OpenVINO computes ``v`` as ONNX does (as far as the node tests show), else why not."""
    if v.domain not in ("", "ai.onnx"):
        return None
    rule = _RULES.get(v.op_type)
    return rule(v) if rule is not None else None


def _attr(v: NodeView, name: str, default=None):
    return v.attrs.get(name, default)


def _dft(v: NodeView) -> str | None:
    return "OpenVINO's DFT ignores a runtime axis and gets one-sided (rfft/irfft) shapes wrong"


def _attention(v: NodeView) -> str | None:
    if _attr(v, "left_window_size", -1) >= 0 or _attr(v, "right_window_size", -1) >= 0:
        return "OpenVINO's Attention ignores left/right_window_size"
    if _attr(v, "is_causal", 0) and v.has_input(3) and v.has_input(4):
        return "OpenVINO's Attention misplaces the causal mask beside an attn_mask and a past key"
    return None


def _recurrent(v: NodeView) -> str | None:
    if _attr(v, "layout", 0) != 0:
        return f"OpenVINO's {v.op_type} ignores layout=1 (batch-first)"
    if v.op_type == "LSTM" and v.has_input(7):
        p = v.const_inputs[7] if len(v.const_inputs) > 7 else None
        if p is None or np.any(p):
            return "OpenVINO's LSTM has no peepholes (input P)"
    return None


def _pool(v: NodeView) -> str | None:
    """ceil_mode: ONNX drops a last window that would start in the end padding; OpenVINO keeps it."""
    if not _attr(v, "ceil_mode", 0):
        return None
    shape = v.input_shapes[0] if v.input_shapes else None
    kernel = _attr(v, "kernel_shape")
    if shape is None or kernel is None or any(not isinstance(d, int) for d in shape[2:]):
        return "ceil_mode=1 on unknown spatial sizes (OpenVINO keeps a last window ONNX drops)"
    if _attr(v, "auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        return None
    n = len(kernel)
    strides = _attr(v, "strides") or [1] * n
    dil = _attr(v, "dilations") or [1] * n
    pads = _attr(v, "pads") or [0] * (2 * n)
    for i, size in enumerate(shape[2:]):
        span = (kernel[i] - 1) * dil[i] + 1
        total = size + pads[i] + pads[i + n]
        out = math.ceil((total - span) / strides[i]) + 1
        if (out - 1) * strides[i] >= size + pads[i]:
            return "ceil_mode=1 where ONNX drops the last window (OpenVINO keeps it)"
    return None


def _reduce(v: NodeView) -> str | None:
    shape = v.input_shapes[0] if v.input_shapes else None
    if shape is not None and any(d == 0 for d in shape):
        return f"{v.op_type} over an empty tensor (OpenVINO returns the dtype's limit, ONNX the identity)"
    return None


def _resize(v: NodeView) -> str | None:
    if _attr(v, "antialias", 0):
        return "OpenVINO's Resize ignores antialias"
    if _attr(v, "keep_aspect_ratio_policy", "stretch") != "stretch":
        return "OpenVINO's Resize ignores keep_aspect_ratio_policy"
    if _attr(v, "exclude_outside", 0):
        return "OpenVINO's Resize ignores exclude_outside"
    if _attr(v, "mode", "nearest") != "nearest" and _attr(v, "coordinate_transformation_mode") == "align_corners":
        return "OpenVINO's linear/cubic Resize with align_corners differs from ONNX"
    return None


def _roi_align(v: NodeView) -> str | None:
    if _attr(v, "mode", "avg") == "max":
        return "OpenVINO's RoiAlign max mode pools differently from ONNX"
    return None


def _top_k(v: NodeView) -> str | None:
    return "OpenVINO's TopK orders equal values differently (ONNX: lower index first)"


_RULES = {
    "DFT": _dft,
    "Attention": _attention,
    "RNN": _recurrent, "GRU": _recurrent, "LSTM": _recurrent,
    "MaxPool": _pool, "AveragePool": _pool, "LpPool": _pool,
    "Resize": _resize,
    "RoiAlign": _roi_align,
    "TopK": _top_k,
    **{op: _reduce for op in _REDUCE},
}
