"""FusedConv's activations (onnxruntime's contrib op, ``com.microsoft::FusedConv``): their names, the
parameters each takes with the defaults of the standalone op, and the activation applied in place to an
array of any NumPy-like module. The level-2 fuser writes ``activation``/``activation_params`` from these,
and every provider's FusedConv reads them back with :func:`fused_activation`.
"""
from __future__ import annotations

from typing import Any, Callable

# name -> (the standalone op's parameter names, their defaults). Clip's bounds are attributes before opset
# 11 and inputs after; without one, the fuser and the kernels use +-3.4e38 (as onnxruntime's fusion writes).
FUSED_ACTIVATIONS: dict[str, tuple[tuple[str, ...], tuple[float, ...]]] = {
    "Identity": ((), ()),
    "Relu": ((), ()),
    "Sigmoid": ((), ()),
    "Tanh": ((), ()),
    "LeakyRelu": (("alpha",), (0.01,)),
    "HardSigmoid": (("alpha", "beta"), (0.2, 0.5)),
    "Clip": (("min", "max"), (-3.4e38, 3.4e38)),
}


def activation_name(attrs: dict[str, Any]) -> str:
    """FusedConv's ``activation`` attribute as a name ("" and absent mean Identity)."""
    name = attrs.get("activation", "Identity")
    if isinstance(name, bytes):
        name = name.decode()
    return name or "Identity"


def unsupported_activation(view: Any) -> str | None:
    """Why a FusedConv node's activation is not one of :data:`FUSED_ACTIVATIONS`, or None (a ``supports``)."""
    name = activation_name(view.attrs)
    return None if name in FUSED_ACTIVATIONS else f"activation {name!r} not supported"


def fused_activation(attrs: dict[str, Any]) -> tuple[str, tuple[float, ...]]:
    """(name, parameters) of a FusedConv node: ``activation_params`` where given, else the op's defaults.
    ValueError names an unknown activation."""
    name = activation_name(attrs)
    if name not in FUSED_ACTIVATIONS:
        raise ValueError(f"FusedConv: unsupported activation {name!r}")
    defaults = FUSED_ACTIVATIONS[name][1]
    given = [float(p) for p in (attrs.get("activation_params") or ())]
    return name, tuple(given[:len(defaults)] + list(defaults[len(given):]))


def activation_inplace(xp: Any, name: str, params: tuple[float, ...] | list[float] = ()) -> Callable:
    """A function applying the activation to a float array of ``xp`` in place (and returning it);
    missing parameters take the op's defaults."""
    name = name or "Identity"
    if name not in FUSED_ACTIVATIONS:
        raise ValueError(f"FusedConv: unsupported activation {name!r}")
    defaults = FUSED_ACTIVATIONS[name][1]
    p = list(params[:len(defaults)]) + list(defaults[len(params):])
    if name == "Identity":
        return lambda y: y
    if name == "Relu":
        # clip, not maximum: NumPy's maximum against a scalar runs 4x slower than clip (both keep NaN)
        return lambda y: xp.clip(y, 0.0, float("inf"), out=y)
    if name == "Clip":
        lo, hi = p
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
        alpha = p[0]
        return lambda y: xp.multiply(y, xp.where(y < 0, y.dtype.type(alpha), y.dtype.type(1)), out=y)
    alpha, beta = p    # HardSigmoid

    def hard_sigmoid(y):
        y *= alpha
        y += beta
        return xp.clip(y, 0, 1, out=y)
    return hard_sigmoid
