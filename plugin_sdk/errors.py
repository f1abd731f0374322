"""engineroom's error kinds, mirroring onnxruntime's status codes (and its Python exception names).

Each also derives from the closest built-in exception, so ``except ValueError`` or
``except FileNotFoundError`` work as a Python user expects. They live in the SDK so that providers
raise the same classes the core does (``engineroom.errors`` re-exports them): a provider that raises
``InvalidArgument`` for a bad option reaches the user as that error, not as a start-up failure the
session falls back from.
"""
from __future__ import annotations


class EngineroomError(Exception):
    """Base of every error engineroom raises; ``code`` is onnxruntime's status code name."""

    code = "FAIL"

    def __str__(self) -> str:
        return f"[engineroom] {self.code} : {super().__str__()}"


class Fail(EngineroomError, RuntimeError):
    code = "FAIL"


class InvalidArgument(EngineroomError, ValueError):
    code = "INVALID_ARGUMENT"


class NoSuchFile(EngineroomError, FileNotFoundError):
    code = "NO_SUCHFILE"


class NoModel(EngineroomError, ValueError):
    code = "NO_MODEL"


class InvalidProtobuf(EngineroomError, ValueError):
    code = "INVALID_PROTOBUF"


class InvalidGraph(EngineroomError, ValueError):
    code = "INVALID_GRAPH"


class NotImplemented(EngineroomError, NotImplementedError):  # noqa: A001 - onnxruntime's name
    code = "NOT_IMPLEMENTED"


class RuntimeException(EngineroomError, RuntimeError):
    code = "RUNTIME_EXCEPTION"


class EPFail(EngineroomError, RuntimeError):
    code = "EP_FAIL"


class EngineError(EngineroomError, RuntimeError):
    code = "ENGINE_ERROR"


class ModelLoaded(EngineroomError, RuntimeError):
    code = "MODEL_LOADED"


class NotFound(EngineroomError, LookupError):
    code = "NOT_FOUND"


class DeviceReset(EngineroomError, RuntimeError):
    code = "DEVICE_RESET"


class ModelLoadCanceled(EngineroomError, RuntimeError):
    code = "MODEL_LOAD_CANCELED"


class ModelRequiresCompilation(EngineroomError, RuntimeError):
    code = "MODEL_REQUIRES_COMPILATION"


__all__ = [
    "DeviceReset", "EPFail", "EngineError", "EngineroomError", "Fail", "InvalidArgument", "InvalidGraph",
    "InvalidProtobuf", "ModelLoadCanceled", "ModelLoaded", "ModelRequiresCompilation", "NoModel", "NoSuchFile",
    "NotFound", "NotImplemented", "RuntimeException",
]
