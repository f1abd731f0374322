"""The engine whose sessions the SDK's conformance kit (``plugin_sdk.testing``) drives.

The SDK imports nothing from the core: the core registers its public API here when it is imported
(``engineroom/__init__.py`` calls :func:`register`). Importing any part of the SDK imports the
``engineroom`` package first, so the engine is always registered by the time the kit asks for it.
"""
from __future__ import annotations

from typing import Any

_engine: Any = None


def register(api: Any) -> None:
    """Record the engine's public API: a module with ``InferenceSession``, ``SessionOptions`` and
    ``GraphOptimizationLevel`` as onnxruntime names them."""
    global _engine
    _engine = api


def engine() -> Any:
    """The registered engine's public API (RuntimeError if none registered)."""
    if _engine is None:
        raise RuntimeError("no engine registered with engineroom.plugin_sdk.engine (import engineroom first)")
    return _engine
