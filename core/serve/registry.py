"""The served models by name and version, and the one inference path every front end goes through.

REST and gRPC differ only in how tensors travel; both hand ``infer`` decoded arrays and get arrays
back, so checks, batching, errors and metrics are the same whichever protocol a client speaks.
"""
from __future__ import annotations

import time

import numpy as np

import engineroom
from engineroom.serve.errors import NotFound, ServeError, Unavailable
from engineroom.serve.model import ServedModel
from engineroom.serve.repository import scan

SERVER_NAME = "engineroom"
EXTENSIONS = ["binary_tensor_data", "metrics"]
PLATFORM = "onnxruntime_onnx"


class ModelRegistry:
    def __init__(self, repository: str, metrics=None):
        self.metrics = metrics
        self.models: dict[str, dict[str, ServedModel]] = {}
        for src in scan(repository):
            self.models.setdefault(src.name, {})[src.version] = ServedModel(src, metrics)

    async def start(self) -> None:
        for versions in self.models.values():
            for m in versions.values():
                await m.start()

    async def stop(self) -> None:
        for versions in self.models.values():
            for m in versions.values():
                await m.stop()

    @property
    def ready(self) -> bool:
        return all(m.ready for v in self.models.values() for m in v.values())

    def get(self, name: str, version: str = "") -> ServedModel:
        versions = self.models.get(name)
        if versions is None:
            raise NotFound(f"unknown model '{name}' (served: {', '.join(sorted(self.models))})")
        if not version:
            version = max(versions, key=int)     # the newest version by default
        m = versions.get(version)
        if m is None:
            raise NotFound(f"model '{name}' has no version '{version}' (served: "
                           f"{', '.join(sorted(versions, key=int))})")
        return m

    def server_metadata(self) -> dict:
        return {"name": SERVER_NAME, "version": engineroom.__version__, "extensions": EXTENSIONS}

    def model_metadata(self, name: str, version: str = "") -> dict:
        m = self.get(name, version)
        return {
            "name": m.name,
            "versions": sorted(self.models[name], key=int),
            "platform": PLATFORM,
            "inputs": [{"name": t.name, "datatype": t.datatype, "shape": t.shape} for t in m.inputs],
            "outputs": [{"name": t.name, "datatype": t.datatype, "shape": t.shape} for t in m.outputs],
        }

    def model_ready(self, name: str, version: str = "") -> bool:
        return self.get(name, version).ready

    async def infer(self, protocol: str, name: str, version: str, decode, read=None) -> tuple[
            ServedModel, list[str], list[np.ndarray]]:
        """Read the request (``await read()``, where given), resolve the model, decode and check the request
        (``decode(model) -> (inputs, outputs)``), run it.

        Counts the request, its failure (with the reason) and its latency; re-raises the error for the
        front end to answer in its protocol.
        """
        t0 = time.perf_counter()
        labels = (name if name in self.models else "", version)
        try:
            if read is not None:
                await read()
            m = self.get(name, version)
            labels = (m.name, m.version)
            if not m.ready:
                raise Unavailable(f"model '{name}' version {m.version} is not ready")
            inputs, outputs = decode(m)
            req = m.check(inputs, outputs)
            outs = await m.infer(req)
        except Exception as e:  # noqa: BLE001 - every failure is counted and answered, a bug as a 500
            err = e if isinstance(e, ServeError) else ServeError(f"internal error: {type(e).__name__}: {e}")
            if self.metrics is not None:
                self.metrics.requests.labels(*labels, protocol).inc()
                self.metrics.failures.labels(*labels, protocol, err.reason).inc()
            if err is e:
                raise
            raise err from e
        if self.metrics is not None:
            self.metrics.requests.labels(*labels, protocol).inc()
            self.metrics.latency.labels(*labels, protocol).observe(time.perf_counter() - t0)
        return m, req.outputs, outs
