"""``engineroom.backend``: an ``onnx.backend.base.Backend`` over InferenceSession, as onnxruntime ships."""
from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx.backend.base import Backend, BackendRep

from engineroom.options import SessionOptions
from engineroom.session import InferenceSession


class EngineroomBackendRep(BackendRep):
    """A prepared model: ``run(inputs)`` takes a list (graph-input order) or a dict."""

    def __init__(self, session: InferenceSession):
        self.session = session
        self._names = [a.name for a in session.get_inputs()] + [
            a.name for a in session.get_overridable_initializers()]

    def run(self, inputs: Any, **kwargs) -> list:
        if isinstance(inputs, dict):
            feed = dict(inputs)
        else:
            if isinstance(inputs, np.ndarray):
                inputs = [inputs]
            feed = dict(zip(self._names, inputs))
        # the ONNX backend API hands scalar inputs as NumPy scalars (np.float32(-1) for Clip's min), which
        # InferenceSession.run refuses as onnxruntime's does: here they are the 0-d tensors they stand for
        for k, v in feed.items():
            if isinstance(v, np.generic):
                feed[k] = np.asarray(v)
        return self.session.run(None, feed)


class EngineroomBackend(Backend):
    @classmethod
    def is_compatible(cls, model, device: str = "CPU", **kwargs) -> bool:
        return cls.supports_device(device)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return device.upper().split(":")[0] == "CPU"

    @classmethod
    def prepare(cls, model, device: str = "CPU", providers=None, **kwargs) -> EngineroomBackendRep:
        so = SessionOptions()
        for k, v in kwargs.items():
            if hasattr(so, k):
                setattr(so, k, v)
        if isinstance(model, onnx.ModelProto) or isinstance(model, (bytes, str)):
            return EngineroomBackendRep(InferenceSession(model, so, providers=providers))
        raise TypeError(f"cannot prepare a {type(model).__name__}")

    @classmethod
    def run_model(cls, model, inputs, device: str = "CPU", **kwargs) -> list:
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def run_node(cls, node, inputs, device: str = "CPU", outputs_info=None, **kwargs) -> list:
        raise NotImplementedError("run_node is not supported: build a model around the node and use run_model")


prepare = EngineroomBackend.prepare
run_model = EngineroomBackend.run_model
is_compatible = EngineroomBackend.is_compatible
supports_device = EngineroomBackend.supports_device
