"""FusedConv, a fused kernel the level-2 optimizer may use (onnxruntime's contrib name, domain com.microsoft):
Conv + optional residual Z + activation, fused into the conv's last pass where it can (see ``_ConvPlan``).

The same kernel in this engine's domain (com.engineroom::FusedConv) also takes ``activation="HardSwish"``,
which onnxruntime's FusedConv does not: the level-3 fusion (``optimizer/conv_hardswish.py``) makes it, so
models optimized at levels 1-2 stay runnable by onnxruntime."""
from __future__ import annotations

import numpy as np

from engineroom.plugin_sdk.activations import (activation_inplace, activation_name, fused_activation,
                                                unsupported_activation)
from engineroom.providers.cpu.conv import _hard_activation
from engineroom.providers.cpu.registry import array_kernel, registry

MS = "com.microsoft"
ER = "com.engineroom"
_CONV_ATTRS = ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")
# HardSwish(y) = y * HardSigmoid(y) with alpha 1/6, beta 1/2 (the ONNX op has no parameters)
_HARDSWISH = (1.0 / 6.0, 0.5, 1)


def _supports_activation(view) -> str | None:
    why = unsupported_activation(view)
    if why:
        return why
    if view.input_dtypes and view.input_dtypes[0] not in (np.dtype(np.float32), np.dtype(np.float64)):
        return "FusedConv is float32/float64 only"
    return None


def _supports_engine_activation(view) -> str | None:
    """com.engineroom::FusedConv: onnxruntime's activations and HardSwish."""
    if activation_name(view.attrs) != "HardSwish":
        return _supports_activation(view)
    if view.input_dtypes and view.input_dtypes[0] not in (np.dtype(np.float32), np.dtype(np.float64)):
        return "FusedConv is float32/float64 only"
    return None


@array_kernel("FusedConv", domain=ER, since=1, supports=_supports_engine_activation)
@array_kernel("FusedConv", domain=MS, since=1, supports=_supports_activation)
def fused_conv(info):
    conv_def = registry.lookup("", "Conv", 11)
    n_conv = min(3, len(info.input_names))
    conv_info = info.with_(
        op_type="Conv", domain="", opset=max(11, info.opset),
        attrs={k: v for k, v in info.attrs.items() if k in _CONV_ATTRS},
        input_names=info.input_names[:n_conv], input_dtypes=info.input_dtypes[:n_conv],
        input_shapes=info.input_shapes[:n_conv], const_inputs=info.const_inputs[:n_conv],
        input_types=info.input_types[:n_conv])
    conv = conv_def.factory(conv_info)
    xp = info.xp
    if info.domain == ER and activation_name(info.attrs) == "HardSwish":
        act_name, params, hard = "HardSwish", (), _HARDSWISH

        def act(y):
            _hard_activation(xp, y, hard)
            return y
    else:
        act_name, params = fused_activation(info.attrs)
        act = activation_inplace(xp, act_name, params)
        hard = (params[0], params[1], 0) if act_name == "HardSigmoid" else None
    has_z = len(info.input_names) > 3 and info.input_names[3] != ""
    plan = getattr(conv, "plan", None)
    clip = (0.0, float("inf")) if act_name == "Relu" else params if act_name == "Clip" else None
    if plan is not None:
        # the conv adds z and applies a Relu/Clip/HardSigmoid/HardSwish itself, in its last pass where it can
        if clip is not None or hard is not None or act_name == "Identity":
            def run_fused(x, w, b=None, z=None):
                return (plan(x, b, clip, z, hard),)
            return run_fused

        def run_plan(x, w, b=None, z=None):
            return (act(plan(x, b, None, z)),)
        return run_plan

    def run(x, w, b=None, z=None):
        (y,) = conv(x, w, b)
        if not y.flags.writeable:  # Conv hands back a fresh array; never write into a shared one
            y = y.copy()
        if has_z:
            y += z
        return (act(y),)

    return run
