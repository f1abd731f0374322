"""Facts about ONNX ops that several stages rely on (the optimizer's passes, the executor's Loop split)."""
from __future__ import annotations

# ops whose outputs differ between two calls with the same inputs: never folded, merged or hoisted
RANDOM_OPS = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Bernoulli",
                        "Multinomial"})
