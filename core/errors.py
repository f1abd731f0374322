"""engineroom's error kinds (``engineroom.errors``): the classes are defined in the plugin SDK
(``engineroom.plugin_sdk.errors``), so that providers, which import only the SDK, raise the very
classes the core raises and users catch."""
from __future__ import annotations

from engineroom.plugin_sdk.errors import (  # noqa: F401 - re-exported: this is the public module
    DeviceReset,
    EngineError,
    EngineroomError,
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
