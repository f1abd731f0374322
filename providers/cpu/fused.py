"""FusedConv, a fused kernel the level-2 optimizer may use (onnxruntime's contrib name, domain com.microsoft):
Conv + optional residual Z + activation, fused into the conv's last pass where it can (see ``_ConvPlan``)."""
from __future__ import annotations

import numpy as np

from engineroom.providers.cpu.registry import array_kernel, registry

MS = "com.microsoft"
_CONV_ATTRS = ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")


def activation_inplace(xp, name: str, params: list[float]):
    """A function applying the activation to an array in place (returns it)."""
    if name in ("", "Identity"):
        return lambda y: y
    if name == "Relu":
        # clip, not maximum: NumPy's maximum against a scalar runs 4x slower than clip (both keep NaN)
        return lambda y: xp.clip(y, 0.0, float("inf"), out=y)
    if name == "Clip":
        lo, hi = params
        return lambda y: xp.clip(y, lo, hi, out=y)
    if name == "Sigmoid":
        def sigmoid(y):
            xp.negative(y, out=y)
            xp.exp(y, out=y)
            y += 1
            return xp.reciprocal(y, out=y)
        return sigmoid
    if name == "Tanh":
        return lambda y: xp.tanh(y, out=y)
    if name == "LeakyRelu":
        alpha = params[0] if params else 0.01
        return lambda y: xp.multiply(y, xp.where(y < 0, y.dtype.type(alpha), y.dtype.type(1)), out=y)
    if name == "HardSigmoid":
        alpha, beta = params
        def hard_sigmoid(y):
            y *= alpha
            y += beta
            return xp.clip(y, 0, 1, out=y)
        return hard_sigmoid
    raise ValueError(f"FusedConv: unsupported activation '{name}'")


def _supports_activation(view) -> str | None:
    act = view.attrs.get("activation", "Identity")
    ok = {"", "Identity", "Relu", "Clip", "Sigmoid", "Tanh", "LeakyRelu", "HardSigmoid"}
    if act not in ok:
        return f"activation {act} not supported"
    if view.input_dtypes and view.input_dtypes[0] not in (np.dtype(np.float32), np.dtype(np.float64)):
        return "FusedConv is float32/float64 only"
    return None


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
    act_name = info.attrs.get("activation", "Identity")
    params = list(info.attrs.get("activation_params", []))
    act = activation_inplace(info.xp, act_name, params)
    has_z = len(info.input_names) > 3 and info.input_names[3] != ""
    plan = getattr(conv, "plan", None)
    clip = (0.0, float("inf")) if act_name == "Relu" else tuple(params) if act_name == "Clip" else None
    if plan is not None:
        # the conv adds z and applies a Relu/Clip itself, in its last pass where it can
        if clip is not None or act_name in ("", "Identity"):
            def run_fused(x, w, b=None, z=None):
                return (plan(x, b, clip, z),)
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
