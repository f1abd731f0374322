"""One served model version: its sessions (one per instance), request checks and the dynamic batcher.

Sessions are created once, at start-up, one per instance; each instance runs one batch at a time on
its own thread, so ``run`` never blocks the event loop. Requests wait in one queue per model version;
a dispatcher takes a free instance, then the oldest request, and — with dynamic batching — merges the
compatible requests that are waiting or arrive before the oldest one has waited
``max_queue_delay_microseconds`` (or until a preferred batch size is reached with nothing else waiting),
up to ``max_batch_size`` rows, concatenated along the first dim; the outputs are split back by rows.
"""
from __future__ import annotations

import asyncio
import collections
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from engineroom.serve import tensors
from engineroom.serve.errors import BadRequest, ConfigError, ServeError, Unavailable
from engineroom.serve.repository import ModelVersionSource


@dataclass
class TensorSpec:
    name: str
    datatype: str
    shape: list[int]          # -1 for a dimension the model leaves free (the batch dim included)


@dataclass
class Request:
    """A checked inference request: its inputs as arrays and the outputs it asks for, in order."""

    inputs: dict[str, np.ndarray]
    outputs: list[str]
    rows: int                                    # batch rows (1 where the model has no batch dim)
    signature: tuple                             # requests merge only with equal signatures
    enqueued: float = 0.0
    future: asyncio.Future | None = None
    queue_s: float = field(default=0.0)


def _session_options(ort, opts: dict, where: str):
    so = ort.SessionOptions()
    public = {k for k in vars(so) if not k.startswith("_")}
    for key, val in opts.items():
        if key == "config_entries":
            for k, v in dict(val).items():
                so.add_session_config_entry(str(k), str(v))
        elif key == "free_dimension_overrides":
            for k, v in dict(val).items():
                so.add_free_dimension_override_by_name(str(k), int(v))
        elif key == "graph_optimization_level" and isinstance(val, str):
            try:
                so.graph_optimization_level = ort.GraphOptimizationLevel[val]
            except KeyError:
                raise ConfigError(f"{where}: graph_optimization_level {val!r} is not one of "
                                  f"{[m.name for m in ort.GraphOptimizationLevel]}") from None
        elif key in public:
            setattr(so, key, val)
        else:
            raise ConfigError(f"{where}: unknown session option {key!r} (known: "
                              f"{', '.join(sorted(public | {'config_entries', 'free_dimension_overrides'}))})")
    return so


def _spec(arg) -> TensorSpec:
    return TensorSpec(arg.name, tensors.datatype_of_type_string(arg.type),
                      [d if isinstance(d, int) and d >= 0 else -1 for d in arg.shape])


class ServedModel:
    def __init__(self, source: ModelVersionSource, metrics=None):
        import engineroom as ort

        self.name, self.version, self.config = source.name, source.version, source.config
        where = f"model '{self.name}' version {self.version}"
        cfg = self.config
        self.sessions = []
        for _ in range(cfg.instance_count):
            so = _session_options(ort, cfg.session_options, where)
            try:
                self.sessions.append(ort.InferenceSession(source.path, so, providers=cfg.providers))
            except ort.EngineroomError as e:
                raise ConfigError(f"{where}: the session could not be created: {e}") from e
        s = self.sessions[0]
        try:
            self.inputs = [_spec(a) for a in s.get_inputs()]
            self.outputs = [_spec(a) for a in s.get_outputs()]
        except ValueError as e:
            raise ConfigError(f"{where}: {e}") from None
        self.batchable = cfg.max_batch_size > 0
        if self.batchable:
            fixed = [t.name for t in self.inputs + self.outputs if not t.shape or t.shape[0] != -1]
            if fixed:
                raise ConfigError(f"{where}: max_batch_size {cfg.max_batch_size} needs a free first (batch) dim, "
                                  f"but {', '.join(fixed)} has none; set max_batch_size 0")
        self._in = {t.name: t for t in self.inputs}
        self._out_names = [t.name for t in self.outputs]
        self.metrics = metrics
        self.ready = False
        self.providers = s.get_providers()

    # -- request checks (before queueing, so a bad request never reaches a batch) -----------------
    def check(self, inputs: dict[str, np.ndarray], outputs: list[str] | None) -> Request:
        missing = [n for n in self._in if n not in inputs]
        unknown = [n for n in inputs if n not in self._in]
        if unknown:
            raise BadRequest(f"model '{self.name}' has no input named {', '.join(map(repr, unknown))} "
                             f"(inputs: {', '.join(self._in)})")
        if missing:
            raise BadRequest(f"model '{self.name}' expects input(s) {', '.join(map(repr, missing))}, not given")
        rows = None
        sig = []
        for name, spec in self._in.items():
            a = inputs[name]
            dt = tensors.datatype_of_array(a)
            if dt != spec.datatype:
                raise BadRequest(f"input '{name}': datatype {dt}, model '{self.name}' expects {spec.datatype}")
            if a.ndim != len(spec.shape) or any(w != -1 and w != d for w, d in zip(spec.shape, a.shape)):
                raise BadRequest(f"input '{name}': shape {list(a.shape)} does not match model '{self.name}''s "
                                 f"{spec.shape} (-1 is any size)")
            if self.batchable:
                r = a.shape[0]
                if r < 1 or r > self.config.max_batch_size:
                    raise BadRequest(f"input '{name}': batch size {r} is outside 1..{self.config.max_batch_size} "
                                     f"(max_batch_size of model '{self.name}')")
                if rows is not None and r != rows:
                    raise BadRequest(f"input '{name}': batch size {r} differs from the other inputs' {rows}")
                rows = r
            sig.append(a.shape[1:] if self.batchable else a.shape)
        if outputs:
            bad = [o for o in outputs if o not in self._out_names]
            if bad:
                raise BadRequest(f"model '{self.name}' has no output named {', '.join(map(repr, bad))} "
                                 f"(outputs: {', '.join(self._out_names)})")
            if len(set(outputs)) != len(outputs):
                raise BadRequest("an output is requested twice")
        outs = list(outputs) if outputs else list(self._out_names)
        return Request(inputs, outs, rows or 1, (tuple(sig), tuple(outs)))

    # -- the queue and its dispatcher ------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._waiting: collections.deque[Request] = collections.deque()
        self._arrived = asyncio.Event()
        self._free: asyncio.Queue = asyncio.Queue()
        for s in self.sessions:
            self._free.put_nowait(s)
        self._executor = ThreadPoolExecutor(len(self.sessions), thread_name_prefix=f"serve-{self.name}")
        self._tasks: set[asyncio.Task] = set()
        self._dispatcher = asyncio.create_task(self._dispatch_loop(), name=f"batcher-{self.name}-{self.version}")
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        self._dispatcher.cancel()
        for t in list(self._tasks):
            await asyncio.gather(t, return_exceptions=True)
        while self._waiting:                      # nothing will run them now: say so rather than hang
            r = self._waiting.popleft()
            if not r.future.done():
                r.future.set_exception(Unavailable(f"model '{self.name}' is stopping"))
        self._executor.shutdown(wait=True)

    async def infer(self, req: Request) -> list[np.ndarray]:
        """Queue a checked request and wait for its outputs (in ``req.outputs`` order)."""
        req.future = self._loop.create_future()
        req.enqueued = time.perf_counter()
        self._waiting.append(req)
        self._arrived.set()
        return await req.future

    async def _next(self, deadline: float | None) -> Request | None:
        while not self._waiting:
            self._arrived.clear()
            if deadline is None:
                await self._arrived.wait()
                continue
            left = deadline - time.perf_counter()
            if left <= 0:
                return None
            try:
                await asyncio.wait_for(self._arrived.wait(), left)
            except asyncio.TimeoutError:
                return None
        return self._waiting.popleft()

    async def _dispatch_loop(self) -> None:
        cfg = self.config
        preferred = set(cfg.preferred_batch_size)
        target = max(preferred) if preferred else cfg.max_batch_size
        delay = cfg.max_queue_delay_us / 1e6
        while True:
            inst = await self._free.get()
            first = await self._next(None)
            while first.future.done():            # its client went away while it waited
                first = await self._next(None)
            batch, rows = [first], first.rows
            if cfg.dynamic_batching:
                deadline = first.enqueued + delay
                while rows < target:
                    nothing_waiting = not self._waiting
                    if nothing_waiting and rows in preferred:
                        break
                    req = await self._next(deadline)
                    if req is None:
                        break
                    if req.future.done():
                        continue
                    if req.signature != first.signature or rows + req.rows > cfg.max_batch_size:
                        self._waiting.appendleft(req)     # it starts the next batch
                        break
                    batch.append(req)
                    rows += req.rows
            t = asyncio.create_task(self._run(inst, batch, rows))
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)

    async def _run(self, inst, batch: list[Request], rows: int) -> None:
        start = time.perf_counter()
        try:
            names = batch[0].outputs
            if len(batch) == 1:
                feed = batch[0].inputs
            else:
                feed = {n: np.concatenate([r.inputs[n] for r in batch], axis=0) for n in self._in}
            if self.metrics is not None:
                for r in batch:
                    self.metrics.queue.labels(self.name, self.version).observe(start - r.enqueued)
            try:
                outs = await self._loop.run_in_executor(self._executor, inst.run, names, feed)
            except ValueError as e:               # InvalidArgument and friends: the request's fault
                raise BadRequest(str(e)) from e
            except Exception as e:                # noqa: BLE001 - reported to every client of the batch
                raise ServeError(f"model '{self.name}' failed: {e}") from e
            if self.metrics is not None:
                self.metrics.batch.labels(self.name, self.version).observe(rows)
                self.metrics.runs.labels(self.name, self.version).inc()
            for n, o in zip(names, outs):
                if not isinstance(o, np.ndarray):
                    raise ServeError(f"output '{n}' is a {type(o).__name__}, not a tensor the protocol can carry")
                if self.batchable and (o.ndim == 0 or o.shape[0] != rows):
                    raise ServeError(f"output '{n}' has shape {list(o.shape)}, whose first dim is not the batch "
                                     f"size {rows}: model '{self.name}' has no batch dim; set max_batch_size 0")
            off = 0
            for r in batch:
                part = outs if len(batch) == 1 else [o[off:off + r.rows] for o in outs]
                off += r.rows
                r.queue_s = start - r.enqueued
                if not r.future.done():
                    r.future.set_result(part)
        except Exception as e:                    # noqa: BLE001 - every waiting client gets the cause
            for r in batch:
                if not r.future.done():
                    r.future.set_exception(e)
        finally:
            self._free.put_nowait(inst)
