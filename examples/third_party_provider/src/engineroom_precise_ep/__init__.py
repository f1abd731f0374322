"""engineroom-precise-ep: an example third-party execution provider for engineroom.

``PreciseExecutionProvider`` runs MatMul, Gemm, Conv, ReduceSum, ReduceMean, Softmax and
LogSoftmax on floating-point tensors with every sum accumulated in float64 (or ``long double``),
and rounds once to the output type. engineroom finds it through the ``engineroom.providers`` entry
point declared in pyproject.toml; nothing in engineroom names this package.
"""
from __future__ import annotations

from engineroom_precise_ep.provider import PreciseExecutionProvider

__all__ = ["PreciseExecutionProvider"]
