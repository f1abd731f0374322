"""Graph optimizations by onnxruntime's levels.

Level 1 (basic) passes are provider-independent and run before partitioning; level 2 (extended)
fusions run after a first assignment, only where the owning provider has the fused kernel; level 3
(all, 99) adds layout fusions the same way."""
from __future__ import annotations

from typing import Callable

import onnx_ir as ir

from engineroom.optimizer.constant_folding import fold_constants
from engineroom.optimizer.conv_folding import fold_conv_affine
from engineroom.optimizer.cse import eliminate_common_subexpressions
from engineroom.optimizer.eliminate import (
    eliminate_dropout,
    eliminate_identity,
    eliminate_redundant_cast,
    eliminate_transpose_pairs,
)
from engineroom.optimizer.fusion import fuse


def optimize_basic(model: ir.Model, cpu_provider) -> None:
    """Level 1: rewrite ``model`` in place with the provider-independent passes."""
    g = model.graph
    eliminate_identity(g)
    eliminate_dropout(g)
    eliminate_redundant_cast(g)
    eliminate_transpose_pairs(g)
    if cpu_provider is not None:
        fold_constants(model, cpu_provider)
    eliminate_common_subexpressions(g)
    fold_conv_affine(g)


def optimize_extended(model: ir.Model, owner: Callable[[ir.Node], object], level: int = 2) -> dict[str, int]:
    """Level 2: fusions where the provider that owns the nodes has the fused kernel; level 3 (99) adds
    the layout fusions."""
    return fuse(model, owner, level)
