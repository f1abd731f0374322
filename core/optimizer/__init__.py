"""Graph optimizations by onnxruntime's levels.

Level 1 (basic) passes are provider-independent and run before partitioning; level 2 (extended)
fusions run after the assignment, only where the owning provider has the fused kernel, and update that
assignment (providers are not asked again); level 3 (all, 99) adds layout fusions the same way."""
from __future__ import annotations

import onnx_ir as ir

from engineroom.optimizer.cast_chains import fold_cast_chains
from engineroom.optimizer.constant_folding import fold_constants
from engineroom.optimizer.conv_folding import fold_conv_affine
from engineroom.optimizer.cse import eliminate_common_subexpressions
from engineroom.optimizer.eliminate import (
    eliminate_dropout,
    eliminate_identity,
    eliminate_redundant_cast,
    eliminate_transpose_pairs,
    eliminate_unused_initializers,
)
from engineroom.optimizer.dynamic_quant_matmul import fuse_dynamic_quant_matmul
from engineroom.optimizer.fusion import Fuser, fuse, fuse_body
from engineroom.optimizer.gather_first import gather_before_elementwise
from engineroom.optimizer.subgraphs import all_bodies, optimize_bodies


def optimize_basic(model: ir.Model, cpu_provider) -> None:
    """Level 1: rewrite ``model`` in place with the provider-independent passes."""
    g = model.graph
    eliminate_identity(g)
    eliminate_dropout(g)
    fold_cast_chains(g)
    eliminate_redundant_cast(g)
    eliminate_transpose_pairs(g)
    if cpu_provider is not None:
        fold_constants(model, cpu_provider)
    gather_before_elementwise(g)           # after folding: the tables it declined as too big
    eliminate_common_subexpressions(g)
    fold_conv_affine(g)

    def in_body(body: ir.Graph) -> None:
        eliminate_identity(body)
        eliminate_dropout(body)
        fold_cast_chains(body)
        eliminate_redundant_cast(body)
        eliminate_transpose_pairs(body)
        if cpu_provider is not None:
            fold_constants(model, cpu_provider, body)
        gather_before_elementwise(body)
        eliminate_common_subexpressions(body)
        fold_conv_affine(body)

    optimize_bodies(model, g, in_body)   # If/Loop/Scan bodies, with the constants they read made theirs
    eliminate_unused_initializers(g)      # last: the bodies' copies of outer constants free some too


def optimize_extended(model: ir.Model, owners: dict[ir.Node, object], level: int = 2,
                      body_owners: dict[ir.Graph, dict[ir.Node, object]] | None = None,
                      providers: list | None = None) -> dict[str, int]:
    """Level 2: fusions where the provider that owns the nodes has the fused kernel; level 3 (99) adds
    the layout fusions. ``owners`` is the partitioner's assignment (node -> provider), which the passes
    update with the nodes they make; ``body_owners`` has the same for If/Loop/Scan bodies (a body not
    in it is left as it is), where the level-2 fusions run too.
    ``providers``: the session's, in priority order (passes that change which provider could claim a
    node run only where that cannot move it, see ``float16_compute``)."""
    done = fuse(model, owners, level, providers)
    done["MatMulIntegerToFloat"] = fuse_dynamic_quant_matmul(Fuser(model, owners))
    for body in list(all_bodies(model.graph)) if body_owners else ():
        assigned = body_owners.get(body)
        if assigned:
            for k, v in fuse_body(model, body, assigned).items():
                done[k] = done.get(k, 0) + v
    return done
