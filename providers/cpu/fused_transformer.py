"""Fused transformer kernels the level-2 optimizer may use (onnxruntime's contrib names, domain
com.microsoft): BiasGelu = Gelu(x + bias) and FastGelu = Gelu-tanh(x + bias).

For float32 on NumPy with numba installed both run as one compiled pass (``_jit_transformer``): the
bias add and the Gelu in the same loop. Otherwise BiasGelu adds the bias into a fresh buffer that the
Gelu kernel reuses, and FastGelu runs ``fused.fast_gelu``'s NumPy formula.
"""
from __future__ import annotations

import numpy as np

from engineroom.providers.cpu import fused
from engineroom.providers.cpu.activation import gelu_compiled
from engineroom.providers.cpu.registry import kernel, registry

MS = "com.microsoft"


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


# Registered here, over fused.py's NumPy-only FastGelu (same op and version; this module imports after
# it), so that the transformer kernels' compiled paths live in one place.
@kernel("FastGelu", domain=MS, since=1, types=(np.float32, np.float64, np.float16))
def fast_gelu(info):
    run = fused.fast_gelu(info)
    if info.xp is not np:
        return run

    def run_compiled(x, bias=None):
        y = gelu_compiled(x, bias, tanh=True)
        return (y,) if y is not None else run(x, bias)

    return run_compiled
