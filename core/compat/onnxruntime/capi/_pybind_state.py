"""``onnxruntime.capi._pybind_state`` as engineroom presents it: the classes, functions and exception classes
that onnxruntime's binding module holds (``Fail``, ``InvalidArgument``, ``NoSuchFile``, ``RuntimeException``, ...,
engineroom's own error kinds, so ``except`` clauses written for onnxruntime catch engineroom's errors)."""
from __future__ import annotations

from engineroom import *  # noqa: F403
from engineroom.errors import (  # noqa: F401
    DeviceReset,
    EngineError,
    EPFail,
    Fail,
    InvalidArgument,
    InvalidGraph,
    InvalidProtobuf,
    ModelLoadCanceled,
    ModelLoaded,
    ModelRequiresCompilation,
    NoModel,
    NoSuchFile,
    NotFound,
    NotImplemented,
    RuntimeException,
)
from engineroom.memory_info import OrtValueVector  # noqa: F401
from engineroom.options import ExecutionMode, ExecutionOrder  # noqa: F401
from engineroom.session import InferenceSession  # noqa: F401


def get_default_session_options():
    from engineroom.options import SessionOptions

    return SessionOptions()


def get_hardware_devices() -> list:
    """The hardware devices of the available providers (each once)."""
    from engineroom import get_ep_devices

    return list(dict.fromkeys(d.device for d in get_ep_devices()))


def get_version_string() -> str:
    from engineroom.compat import ORT_API_VERSION

    return ORT_API_VERSION


class ArenaExtendStrategy:
    """onnxruntime's arena growth strategies (engineroom has no arena: see OrtArenaCfg)."""

    kNextPowerOfTwo = 0
    kSameAsRequested = 1


kNextPowerOfTwo = ArenaExtendStrategy.kNextPowerOfTwo
kSameAsRequested = ArenaExtendStrategy.kSameAsRequested
