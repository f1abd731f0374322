"""Scaling engineroom out on Ray: a predictor for Ray Data's ``map_batches`` and a Ray Serve deployment.

- ``SessionPredictor``: pass the class to ``Dataset.map_batches(SessionPredictor, concurrency=N,
  fn_constructor_kwargs={"model": PATH, ...})``; each of the N actors creates its session once and runs
  every batch it is given.
- ``deployment(model, ...)``: a Ray Serve application whose replicas each hold one ``ServedModel`` (the
  server's session, request checks and dynamic batcher) and answer the Open Inference Protocol's REST
  infer request (JSON or binary extension) at the route prefix, and its model metadata on GET.

Needs the ``[ray]`` extra (``ray[serve,data]``); this module imports Ray only when used.
"""
from __future__ import annotations

import numpy as np


def _load_session(model, providers, session_options: dict | None):
    import engineroom as ort
    from engineroom.serve.model import _session_options

    so = _session_options(ort, session_options or {}, "SessionPredictor")
    return ort.InferenceSession(model, so, providers=providers)


class SessionPredictor:
    """A callable class for ``map_batches``: maps input columns to the model's inputs, outputs to columns.

    ``input_columns`` maps model input name -> column (default: the same name); ``output_columns`` maps
    model output name -> column (default: every output under its own name); ``keep_columns`` also
    returns the batch's own columns (e.g. an id), which Ray Data otherwise drops.
    """

    def __init__(self, model, providers=None, session_options: dict | None = None,
                 input_columns: dict | None = None, output_columns: dict | None = None, keep_columns: bool = False):
        self.session = _load_session(model, providers, session_options)
        names = [a.name for a in self.session.get_inputs()]
        self.input_columns = dict(input_columns) if input_columns else {n: n for n in names}
        unknown = [n for n in self.input_columns if n not in names]
        if unknown:
            raise ValueError(f"input_columns names {unknown}, which are not inputs of the model ({names})")
        outs = [a.name for a in self.session.get_outputs()]
        self.output_columns = dict(output_columns) if output_columns else {n: n for n in outs}
        unknown = [n for n in self.output_columns if n not in outs]
        if unknown:
            raise ValueError(f"output_columns names {unknown}, which are not outputs of the model ({outs})")
        self.keep_columns = keep_columns

    def __call__(self, batch: dict) -> dict:
        missing = [c for c in self.input_columns.values() if c not in batch]
        if missing:
            raise ValueError(f"the batch has no column {missing} (columns: {list(batch)})")
        feed = {n: np.asarray(batch[c]) for n, c in self.input_columns.items()}
        names = list(self.output_columns)
        outs = self.session.run(names, feed)
        result = dict(batch) if self.keep_columns else {}
        for n, o in zip(names, outs):
            result[self.output_columns[n]] = o
        return result


class ModelDeployment:
    """A Ray Serve replica: one session (``ServedModel``) answering Open Inference Protocol REST requests."""

    def __init__(self, model_path: str, name: str = "model", providers=None, session_options: dict | None = None,
                 max_batch_size: int = 0, max_queue_delay_microseconds: int = 0):
        from engineroom.serve.model import ServedModel
        from engineroom.serve.repository import ModelConfig, ModelVersionSource

        cfg = ModelConfig(name=name, max_batch_size=max_batch_size, providers=providers,
                          session_options=dict(session_options or {}),
                          dynamic_batching=max_batch_size > 0,
                          max_queue_delay_us=max_queue_delay_microseconds)
        self.model = ServedModel(ModelVersionSource(name, "1", model_path, cfg))
        self._started = None

    async def _start(self):
        import asyncio

        if self._started is None:
            self._started = asyncio.ensure_future(self.model.start())
        await self._started

    async def __call__(self, request):
        from starlette.responses import JSONResponse

        from engineroom.serve import rest
        from engineroom.serve.errors import ServeError

        await self._start()
        m = self.model
        if request.method == "GET":
            return JSONResponse({
                "name": m.name, "versions": [m.version], "platform": "onnxruntime_onnx",
                "inputs": [{"name": t.name, "datatype": t.datatype, "shape": t.shape} for t in m.inputs],
                "outputs": [{"name": t.name, "datatype": t.datatype, "shape": t.shape} for t in m.outputs]})
        try:
            body = await request.body()
            doc, arrays, outputs, binary_out, all_binary = rest.parse_infer_request(
                body, request.headers.get(rest.HEADER_LENGTH))
            req = m.check(arrays, outputs)
            outs = await m.infer(req)
            return rest.encode_infer_response(m, doc, req.outputs, outs, binary_out, all_binary)
        except ServeError as e:
            return JSONResponse({"error": str(e)}, status_code=e.http_status)


def deployment(model_path: str, name: str = "model", num_replicas: int = 1, providers=None,
               session_options: dict | None = None, max_batch_size: int = 0, max_queue_delay_microseconds: int = 0,
               ray_actor_options: dict | None = None):
    """A bound Ray Serve application for ``serve.run(app, route_prefix=...)``: ``num_replicas`` replicas,
    each creating its session once with ``providers`` and ``session_options``."""
    from ray import serve

    dep = serve.deployment(ModelDeployment, name=name, num_replicas=num_replicas,
                           ray_actor_options=ray_actor_options or {"num_cpus": 1})
    return dep.bind(model_path, name, providers, session_options, max_batch_size, max_queue_delay_microseconds)
