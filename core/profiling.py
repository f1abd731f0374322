"""Session profiling (``SessionOptions.enable_profiling``): a Chrome-trace JSON in onnxruntime's layout.

The file is a JSON array of complete events (``"ph": "X"``, ``ts``/``dur`` in microseconds from the profiling
start), as onnxruntime writes it, so Perfetto, ``chrome://tracing`` and tools written for onnxruntime's profiles
read it:

- ``cat: "Session"``: ``model_loading_uri`` (or ``model_loading_array``) and ``session_initialization`` once, then
  ``SequentialExecutor::Execute`` and ``model_run`` per run;
- ``cat: "Node"``: one ``<node name>_kernel_time`` event per plan step per run, whose ``args`` hold ``op_name``,
  ``provider``, ``node_index``, ``input_type_shape`` / ``output_type_shape`` (``[{"float": [1, 3]}, ...]``),
  ``activation_size`` and ``output_size`` (bytes). Copy steps between devices appear as onnxruntime's
  ``MemcpyFromHost`` / ``MemcpyToHost`` nodes; a group compiled by a provider as one node named after it.

Profiling off costs nothing: the executor's ordinary loop runs; a profiled run takes its separate, timed loop
(``engineroom.executor``), which reports each step here.
"""
from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

import numpy as np


def _type_shape(v: Any) -> dict:
    dtype = getattr(v, "dtype", None)
    shape = getattr(v, "shape", None)
    if dtype is None or shape is None:
        kind = "none" if v is None else type(v).__name__
        return {kind: [len(v)] if isinstance(v, (list, dict)) else []}
    try:
        from engineroom.plugin_sdk import onnx_elem_type, ort_type_name

        name = ort_type_name(onnx_elem_type(np.dtype(dtype)))
    except Exception:  # noqa: BLE001 - an unusual element type keeps NumPy's name
        name = str(dtype)
    return {name: [int(d) for d in shape]}


def _nbytes(v: Any) -> int:
    n = getattr(v, "nbytes", None)
    return int(n) if n is not None else 0


class Profiler:
    """Collects one session's events from ``start()`` until ``end()`` writes them."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.events: list[dict] = []
        self.pid = os.getpid()
        self._lock = threading.Lock()
        self.start_ns = time.time_ns()
        self._t0 = time.perf_counter_ns()
        self.active = True

    def now_us(self) -> int:
        return (time.perf_counter_ns() - self._t0) // 1000

    def session_event(self, name: str, start_us: int, end_us: int) -> None:
        self._add({"cat": "Session", "pid": self.pid, "tid": threading.get_native_id(),
                   "dur": max(end_us - start_us, 0), "ts": start_us, "ph": "X", "name": name, "args": {}})

    def node_event(self, info: tuple, index: int, start_ns: int, end_ns: int, inputs, outputs) -> None:
        name, op_type, provider = info
        ts = (start_ns - self._t0) // 1000
        ins = [_type_shape(v) for v in inputs]
        outs = [_type_shape(v) for v in outputs]
        self._add({"cat": "Node", "pid": self.pid, "tid": threading.get_native_id(),
                   "dur": max((end_ns - start_ns) // 1000, 0), "ts": ts, "ph": "X", "name": f"{name}_kernel_time",
                   "args": {"op_name": op_type, "provider": provider, "node_index": str(index),
                            "activation_size": str(sum(_nbytes(v) for v in inputs)),
                            "output_size": str(sum(_nbytes(v) for v in outputs)),
                            "input_type_shape": ins, "output_type_shape": outs}})

    def _add(self, event: dict) -> None:
        with self._lock:
            self.events.append(event)

    def end(self) -> str:
        """Write the events to ``<prefix>_<date>_<time>.json`` and stop; returns the file name."""
        self.active = False
        stamp = time.strftime("%Y-%m-%d_%H-%M-%S", time.localtime(self.start_ns / 1e9))
        path = f"{self.prefix}_{stamp}_{(self.start_ns // 1_000_000) % 1000:03d}.json"
        with self._lock:
            events = list(self.events)
        with open(path, "w", encoding="utf-8") as f:
            f.write("[\n")
            f.write(",\n".join(json.dumps(e, separators=(",", " :")) for e in events))
            f.write("\n]\n")
        return path


class StepLogger:
    """Stands in for a Profiler when a run's ``log_severity_level`` is 0 (VERBOSE): each step is logged at
    DEBUG with its time and output shapes, through the same timed loop."""

    active = True

    def __init__(self, logid: str = "") -> None:
        import logging

        self._log = logging.getLogger("engineroom")
        self._prefix = f"[{logid}] " if logid else ""

    def node_event(self, info: tuple, index: int, start_ns: int, end_ns: int, inputs, outputs) -> None:
        name, op_type, provider = info
        self._log.debug("%sstep %d: %s (%s) on %s, %.3f ms, outputs %s", self._prefix, index, name, op_type, provider,
                        (end_ns - start_ns) / 1e6, [_type_shape(v) for v in outputs])

