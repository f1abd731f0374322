"""Fused transformer kernels the level-2 optimizer may use (onnxruntime's contrib names, domain
com.microsoft): BiasGelu = Gelu(x + bias), FastGelu = Gelu-tanh(x + bias) and SkipLayerNormalization
= LayerNormalization(x + bias + skip).

For float32 on NumPy with numba installed each runs as one compiled pass (``_jit_transformer``): the
adds and the Gelu or the normalization in the same loop. Otherwise BiasGelu adds the bias into a fresh buffer that the
Gelu kernel reuses, and FastGelu runs its NumPy formula.
"""
from __future__ import annotations

import numpy as np

from engineroom.providers.cpu import _jit
from engineroom.providers.cpu.activation import gelu_compiled
from engineroom.providers.cpu.norm import _normalize
from engineroom.providers.cpu.registry import kernel, registry

MS = "com.microsoft"
_F32 = np.dtype(np.float32)


@kernel("BiasGelu", domain=MS, since=1, types=(np.float32, np.float64))
def bias_gelu(info):
    gelu_info = info.with_(op_type="Gelu", domain="", opset=20, attrs={"approximate": "none"},
                           input_names=info.input_names[:1], input_dtypes=info.input_dtypes[:1],
                           input_shapes=info.input_shapes[:1], const_inputs=(None,),
                           input_types=info.input_types[:1])
    gelu = registry.lookup("", "Gelu", 20).factory(gelu_info)
    xp = info.xp

    def run(x, bias):
        return gelu(xp.add(x, bias))

    if xp is not np:
        return run

    def run_compiled(x, bias):
        y = gelu_compiled(x, bias)
        return (y,) if y is not None else run(x, bias)

    return run_compiled


def _fast_gelu_numpy(info):
    """FastGelu in NumPy passes (any xp): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    xp = info.xp
    c = np.sqrt(2 / np.pi)

    def run(x, bias=None):
        if bias is not None:
            x = x + bias
        dt = x.dtype
        xf = x.astype(np.float32) if dt == np.float16 else x
        t = xf * xf
        t *= 0.044715 * c
        t += c
        t *= xf
        xp.tanh(t, out=t)
        t += 1
        t *= xf
        t *= 0.5
        return (t.astype(dt, copy=False),)

    return run


@kernel("FastGelu", domain=MS, since=1, types=(np.float32, np.float64, np.float16))
def fast_gelu(info):
    run = _fast_gelu_numpy(info)
    if info.xp is not np:
        return run

    def run_compiled(x, bias=None):
        y = gelu_compiled(x, bias, tanh=True)
        return (y,) if y is not None else run(x, bias)

    return run_compiled


@kernel("SkipLayerNormalization", domain=MS, since=1, types=(np.float32, np.float64))
def skip_layer_normalization(info):
    """LayerNorm(input + skip + bias) * gamma + beta over the last axis; outputs: y, then (if asked) mean,
    1/std and the sum input + skip + bias. The sum is (input + bias) + skip, the order of the Adds the
    level-2 fusion replaces, so the fused graph rounds as the unfused one did."""
    xp = info.xp
    eps = float(info.attrs.get("epsilon", 1e-12))
    n_out = max(1, len(info.output_names))
    jit = _jit.load("transformer") if xp is np and n_out < 4 else None
    none = np.empty(0, np.float32)

    def run_numpy(x, skip, gamma, beta=None, bias=None):
        s = xp.add(x, bias) if bias is not None else x
        s = xp.add(s, skip)
        y, mean, inv = _normalize(xp, s, (s.ndim - 1,), eps)
        y *= gamma
        if beta is not None:
            y += beta
        return (y, mean, inv, s)[:n_out]

    def run(x, skip, gamma, beta=None, bias=None):
        h = x.shape[-1] if x.ndim else 0
        if (jit is None or x.dtype != _F32 or not x.size or skip.shape != x.shape or skip.dtype != _F32
                or any(v is not None and (v.dtype != _F32 or v.shape != (h,)) for v in (gamma, beta, bias))):
            return run_numpy(x, skip, gamma, beta, bias)
        x = np.ascontiguousarray(x)
        R = x.size // h
        y = np.empty(x.shape, _F32)
        mean = np.empty(x.shape[:-1] + (1,), _F32)
        inv = np.empty(mean.shape, _F32)
        jit.skip_layer_norm(x.reshape(R, h), np.ascontiguousarray(skip).reshape(R, h),
                            none if bias is None else np.ascontiguousarray(bias), np.ascontiguousarray(gamma),
                            none if beta is None else np.ascontiguousarray(beta), np.float32(eps),
                            y.reshape(R, h), mean.reshape(R), inv.reshape(R))
        return (y, mean, inv)[:n_out]

    return run
