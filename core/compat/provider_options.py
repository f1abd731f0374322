"""Provider options onnxruntime's CPU and CUDA providers accept that engineroom's providers do not use.

Code written for onnxruntime passes them (``("CPUExecutionProvider", {"arena_extend_strategy": "kSameAsRequested"})``,
``("CUDAExecutionProvider", {"do_copy_in_default_stream": "1"})``); engineroom takes them, drops the ones its
provider does not declare, and logs one INFO line naming each and why. A name onnxruntime itself would reject
still reaches the provider, which rejects it. onnxruntime's CPU provider ignores every option it is given, so
every option is taken for it.
"""
from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("engineroom")

_ARENA = "engineroom allocates through NumPy / CuPy's memory pool, not a BFC arena"
# onnxruntime's CUDA provider options (its provider_option_names), with why engineroom's CUDA provider has no use
# for those it does not declare itself
CUDA_OPTIONS = {
    "device_id": "",
    "gpu_mem_limit": "",
    "arena_extend_strategy": _ARENA,
    "cudnn_conv_algo_search": "convolutions use CuPy's cuDNN / cuBLAS defaults",
    "do_copy_in_default_stream": "copies and kernels already run on the provider's one stream",
    "has_user_compute_stream": "the provider runs on its own CuPy stream",
    "user_compute_stream": "the provider runs on its own CuPy stream",
    "gpu_external_alloc": _ARENA,
    "gpu_external_free": _ARENA,
    "gpu_external_empty_cache": _ARENA,
    "cudnn_conv_use_max_workspace": "convolutions use CuPy's cuDNN workspace defaults",
    "enable_cuda_graph": "",
    "cudnn_conv1d_pad_to_nc1d": "1-D convolutions are not routed through cuDNN's 2-D path",
    "tunable_op_enable": "engineroom has no TunableOp kernels",
    "tunable_op_tuning_enable": "engineroom has no TunableOp kernels",
    "tunable_op_max_tuning_duration_ms": "engineroom has no TunableOp kernels",
    "enable_skip_layer_norm_strict_mode": "SkipLayerNormalization always accumulates in float32",
    "prefer_nhwc": "the CUDA provider keeps onnxruntime's NCHW layout",
    "use_ep_level_unified_stream": "the provider has one stream",
    "use_tf32": "matrix products follow CuPy's default math mode",
    "sdpa_kernel": "attention runs as the provider's own kernels",
    "fuse_conv_bias": "Conv+bias fusion is decided by the graph optimizer",
    "default_memory_arena_cfg": _ARENA,
}
_ANY = None   # every option is accepted (onnxruntime's CPU provider ignores what it does not know)
ORT_OPTIONS: dict[str, dict[str, str] | None] = {
    "CPUExecutionProvider": _ANY,
    "CUDAExecutionProvider": CUDA_OPTIONS,
}
_CPU_REASON = ("onnxruntime's CPU provider takes any option; its arena settings have no counterpart "
               "(engineroom allocates through NumPy)")


def without_ignored(provider: str, declared: dict[str, Any], options: dict[str, Any], level: int) -> dict[str, Any]:
    """``options`` less those onnxruntime's provider of that name accepts and engineroom's does not declare
    (logged once, at INFO, with why)."""
    known = ORT_OPTIONS.get(provider, {})
    if known == {}:
        return options
    kept, ignored = {}, {}
    for k, v in options.items():
        if k in declared:
            kept[k] = v
        elif known is _ANY:
            ignored[k] = _CPU_REASON
        elif k in known:
            ignored[k] = known[k] or "not used by engineroom's provider"
        else:
            kept[k] = v   # onnxruntime rejects it too: the provider names it in its error
    if ignored and level <= logging.INFO:
        by_reason: dict[str, list[str]] = {}
        for k, why in ignored.items():
            by_reason.setdefault(why, []).append(f"{k}={options[k]!s}")
        log.info("%s: provider options accepted as onnxruntime does, with no effect in engineroom: %s", provider,
                 "; ".join(f"{', '.join(names)} ({why})" for why, names in by_reason.items()))
    return kept
