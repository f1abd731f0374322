"""Which nodes only a provider with the reference float arithmetic may compute: those upstream of a
dynamic quantizer.

A dynamic quantizer (DynamicQuantizeLinear, and the com.microsoft ops that quantize their float input
themselves) takes its scale from the data at run time and rounds every element to an 8-bit step, so
the model's result is no continuous function of the float rounding before it: an ulp moved there flips
a rounding, that is a whole quantization step, and the layers after it grow it. Providers whose float
kernels differ from the CPU provider's by ulps (their own reduction orders, exp, tanh, fused
multiply-adds; the CPU provider follows onnxruntime's arithmetic) cannot compute those nodes to the
model's tolerance: a dynamic-int8 T5 encoder came out 0.25 off on OpenVINO (one ulp in its first
RMSNorm) and 0.24 off on OpenCL, a quantized BiLSTM 5e-2 and 0.1. Such providers decline these
nodes, with :data:`REASON` in the placement line; integer arithmetic on integers (shapes, indices,
MatMulInteger's sums) is exact everywhere and stays claimable.
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from engineroom.plugin_sdk.kernel import NodeView

DYNAMIC_QUANTIZERS = frozenset({("", "DynamicQuantizeLinear"), ("com.microsoft", "DynamicQuantizeMatMul"),
                                ("com.microsoft", "DynamicQuantizeLSTM")})
REASON = ("dynamic quantization re-rounds what these compute: a float result off by an ulp from the CPU "
          "provider's flips a rounding, which grows through the layers after it")
_SHAPE_ONLY = frozenset({"Shape", "Size"})   # read no values


def upstream_of_dynamic_quantization(nodes: list[NodeView]) -> set[int]:
    """The indices of the dynamic quantizers among ``nodes`` (a whole graph) and of every node upstream
    of one that computes with float values. A float-to-integer Cast rounds too (T5's relative-position
    buckets: Log, Div, Cast to int64), so the walk goes on through integer values; only nodes with no
    float input or output are left out, and Shape / Size, whose inputs are not walked."""
    producer = {o: v for v in nodes for o in v.output_names if o}
    out: set[int] = set()
    seen: set[int] = set()
    stack = [v for v in nodes if (v.domain, v.op_type) in DYNAMIC_QUANTIZERS]
    while stack:
        v = stack.pop()
        if v.index in seen or (v.op_type in _SHAPE_ONLY and not v.domain):
            continue
        seen.add(v.index)
        if any(dt is not None and np.dtype(dt).kind in "fc" for dt in (*v.input_dtypes, *v.output_dtypes)):
            out.add(v.index)
        stack.extend(producer[n] for n in v.input_names if n in producer)
    return out


def describe(nodes: list[NodeView]) -> str:
    """``cannot run Add x3, Mul (REASON)`` for the placement line."""
    ops = Counter(f"{v.domain + '::' if v.domain else ''}{v.op_type}" for v in nodes)
    return f"cannot run {', '.join(f'{op} x{n}' if n > 1 else op for op, n in ops.items())} ({REASON})"
