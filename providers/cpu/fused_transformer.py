"""Fused transformer kernels the level-2 optimizer may use (onnxruntime's contrib names, domain
com.microsoft): BiasGelu = Gelu(x + bias), the bias added into a fresh buffer that Gelu reuses."""
from __future__ import annotations

import numpy as np

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

    return run
