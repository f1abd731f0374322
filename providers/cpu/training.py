"""The training optimizers of ``ai.onnx.preview.training``: Adagrad, Adam, Momentum (NumPy-only: they
run on the host as every op of that domain)."""
from __future__ import annotations

import numpy as np

from engineroom.providers.cpu.registry import kernel

_TRAINING = "ai.onnx.preview.training"


def _scalar(v) -> float:
    return float(np.asarray(v).reshape(-1)[0])


@kernel("Adagrad", domain=_TRAINING, since=1)
def adagrad(info):
    decay = float(info.attrs.get("decay_factor", 0.0))
    eps = float(info.attrs.get("epsilon", 1e-6))
    norm = float(info.attrs.get("norm_coefficient", 0.0))
    xp = info.xp

    def run(R, T, *tensors):
        n = len(tensors) // 3
        r = _scalar(R) / (1 + _scalar(T) * decay)
        xs_new, hs_new = [], []
        for X, G, H in zip(tensors[:n], tensors[n:2 * n], tensors[2 * n:]):
            g = norm * X + G
            h_new = H + g * g
            xs_new.append((X - r * g / (xp.sqrt(h_new) + eps)).astype(X.dtype, copy=False))
            hs_new.append(h_new.astype(H.dtype, copy=False))
        return tuple(xs_new + hs_new)

    return run


@kernel("Adam", domain=_TRAINING, since=1)
def adam(info):
    alpha = float(info.attrs.get("alpha", 0.9))
    beta = float(info.attrs.get("beta", 0.999))
    eps = float(info.attrs.get("epsilon", 1e-6))
    norm = float(info.attrs.get("norm_coefficient", 0.0))
    norm_post = float(info.attrs.get("norm_coefficient_post", 0.0))
    xp = info.xp

    def run(R, T, *tensors):
        n = len(tensors) // 4
        r, t = _scalar(R), _scalar(T)
        r_adj = r * np.sqrt(1 - beta ** t) / (1 - alpha ** t) if t > 0 else r
        xs, vs, hs = [], [], []
        for X, G, V, H in zip(tensors[:n], tensors[n:2 * n], tensors[2 * n:3 * n], tensors[3 * n:]):
            g = norm * X + G
            v_new = alpha * V + (1 - alpha) * g
            h_new = beta * H + (1 - beta) * g * g
            x_new = (1 - norm_post) * (X - r_adj * v_new / (xp.sqrt(h_new) + eps))
            xs.append(x_new.astype(X.dtype, copy=False))
            vs.append(v_new.astype(V.dtype, copy=False))
            hs.append(h_new.astype(H.dtype, copy=False))
        return tuple(xs + vs + hs)

    return run


@kernel("Momentum", domain=_TRAINING, since=1)
def momentum(info):
    alpha = float(info.attrs["alpha"])
    beta = float(info.attrs["beta"])
    norm = float(info.attrs["norm_coefficient"])
    nesterov = info.attrs.get("mode", "standard") == "nesterov"

    def run(R, T, *tensors):
        n = len(tensors) // 3
        r = _scalar(R)
        b = beta if _scalar(T) > 0 else 1.0
        xs, vs = [], []
        for X, G, V in zip(tensors[:n], tensors[n:2 * n], tensors[2 * n:]):
            g = norm * X + G
            v_new = alpha * V + b * g
            x_new = X - r * (g + alpha * v_new) if nesterov else X - r * v_new
            xs.append(x_new.astype(X.dtype, copy=False))
            vs.append(v_new.astype(V.dtype, copy=False))
        return tuple(xs + vs)

    return run
