"""Graph optimizations by onnxruntime's levels. Level 1 (basic) passes are provider-independent."""
from __future__ import annotations

import onnx_ir as ir

from engineroom.optimizer.constant_folding import fold_constants
from engineroom.optimizer.eliminate import eliminate_dropout, eliminate_identity


def optimize(model: ir.Model, level: int, cpu_provider) -> None:
    """Rewrite ``model`` in place with the passes of ``level`` and below."""
    if level >= 1:
        eliminate_identity(model.graph)
        eliminate_dropout(model.graph)
        if cpu_provider is not None:
            fold_constants(model, cpu_provider)
