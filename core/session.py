"""InferenceSession: the onnxruntime-compatible front door that drives a session's life, in order:
load → check & infer → optimize → partition → group & copy → plan → run."""
from __future__ import annotations

import logging
import os
import re
import threading
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import onnx_ir as ir

from engineroom import logger as _logger
from engineroom.errors import (
    EPFail,
    Fail,
    InvalidArgument,
    InvalidProtobuf,
    ModelLoadCanceled,
    RuntimeException,
)
from engineroom.executor import RUN_TIMEOUT_KEY, Deadline, execute
from engineroom.feeds import Feeds, to_numpy
from engineroom.host_memory import keep_freed_memory
from engineroom.iobinding import IOBinding, SessionBinding
from engineroom.load import load_model, save_model
from engineroom.optimizer import optimize_basic
from engineroom.options import RunOptions, SessionOptions
from engineroom.pipeline import build_plan, collector_paused, placement
from engineroom.plan import type_string
from engineroom.plugin_sdk import ExecutionProvider
from engineroom.plugin_sdk.limits import DEFAULT_MAX_TENSOR_BYTES, MAX_TENSOR_BYTES_KEY
from engineroom.provider_setup import cpu_for_folding, create_providers, retry_on_cpu
from engineroom.values import OrtValue
from engineroom.views import type_proto_string, value_dtype, value_shape, value_type_proto

log = logging.getLogger("engineroom")
_SEVERITY = {0: logging.DEBUG, 1: logging.INFO, 2: logging.WARNING, 3: logging.ERROR, 4: logging.CRITICAL}


@dataclass
class NodeArg:
    """An input or output of the model as onnxruntime describes it."""

    name: str
    type: str
    shape: list = field(default_factory=list)

    def __repr__(self) -> str:
        return f"NodeArg(name='{self.name}', type='{self.type}', shape={self.shape})"


@dataclass
class ModelMetadata:
    producer_name: str = ""
    graph_name: str = ""
    domain: str = ""
    description: str = ""
    graph_description: str = ""
    version: int = 0
    custom_metadata_map: dict = field(default_factory=dict)


def _type_string(v: ir.Value) -> str:
    t = v.type
    if t is None:
        return type_proto_string(value_type_proto(v))  # "unknown", or a map type onnx_ir cannot hold
    if isinstance(t, ir.TensorType):
        return type_string(value_dtype(v)) if value_dtype(v) is not None else f"tensor({t.dtype.name.lower()})"
    if isinstance(t, ir.SequenceType):
        return f"seq({_elem_type_string(t.elem_type)})"
    if isinstance(t, ir.OptionalType):
        return f"optional({_elem_type_string(t.elem_type)})"
    return str(t)


def _elem_type_string(t) -> str:
    if isinstance(t, ir.TensorType):
        try:
            return type_string(np.dtype(t.dtype.numpy()))
        except Exception:  # noqa: BLE001
            return f"tensor({t.dtype.name.lower()})"
    if isinstance(t, ir.SequenceType):
        return f"seq({_elem_type_string(t.elem_type)})"
    if isinstance(t, ir.OptionalType):
        return f"optional({_elem_type_string(t.elem_type)})"
    return str(t)


_INFERRED_DIM = re.compile(r"unk__\d+")   # onnx shape inference's name for a dimension it cannot name


def _node_arg(v: ir.Value) -> NodeArg:
    shape = value_shape(v)
    dims = [] if shape is None else [None if isinstance(d, str) and _INFERRED_DIM.fullmatch(d) else d for d in shape]
    return NodeArg(v.name, _type_string(v), dims)


_blas_threads: list[int] = []   # what intra_op_num_threads last set the BLAS pool to


def _config_int(options, key: str, default: int) -> int:
    """A config entry that must be an integer (>= 0; 0 for no limit), or ``default`` where it is unset."""
    raw = options._config.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = int(float(raw)) if raw.strip().lower() not in ("inf", "nan") else -1
    except ValueError:
        value = -1
    if value < 0:
        raise InvalidArgument(f"config entry '{key}' must be a number >= 0 (0: no limit), got '{raw}'")
    return value


def _with_deadline(run_options):
    """The run options the plan reads ``terminate`` from: with a deadline when ``run.timeout_ms`` is set."""
    if run_options is None or RUN_TIMEOUT_KEY not in run_options._config:
        return run_options
    ms = _config_int(run_options, RUN_TIMEOUT_KEY, 0)
    return Deadline(run_options, ms) if ms > 0 else run_options


def _set_blas_threads(threads: int) -> None:
    """intra_op_num_threads > 0 sets the BLAS thread pool's size (threadpoolctl). The pool is the
    process's, so this holds process-wide from session creation on; setting it around each run
    instead would make OpenBLAS tear down and respawn its threads every run (10-30x slower)."""
    if threads <= 0 or _blas_threads[-1:] == [threads]:
        return
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads, user_api="blas")
    _blas_threads.append(threads)


class InferenceSession:
    """``onnxruntime.InferenceSession`` over engineroom's providers."""

    def __init__(self, path_or_bytes: Any, sess_options: SessionOptions | None = None,
                 providers: Sequence | None = None, provider_options: Sequence[dict] | None = None, **kwargs):
        with collector_paused():
            self._create(path_or_bytes, sess_options, providers, provider_options, **kwargs)

    def _create(self, path_or_bytes: Any, sess_options: SessionOptions | None, providers: Sequence | None,
                provider_options: Sequence[dict] | None, **kwargs):
        self._sess_options = sess_options or SessionOptions()
        so = self._sess_options
        self._model_source = path_or_bytes
        self._fallback = int(kwargs.pop("enable_fallback", 1)) == 1   # onnxruntime's keyword arguments
        self._log_level = _logger.logging_level(so.log_severity_level)
        if kwargs and self._log_level <= logging.INFO:
            log.info("InferenceSession keyword arguments accepted with no effect in engineroom: %s (onnxruntime's "
                     "disabled_optimizers names its own optimizers; read_config_from_model reads onnxruntime's "
                     "session config from model metadata, which engineroom does not)", ", ".join(sorted(kwargs)))
        self._profiler = None
        if so.enable_profiling:
            from engineroom.profiling import Profiler

            self._profiler = Profiler(so.profile_file_prefix)
        t_load = self._profiler.now_us() if self._profiler else 0
        if so._load_cancelled:
            raise ModelLoadCanceled("Model loading was canceled (SessionOptions.set_load_cancellation_flag)")
        if isinstance(path_or_bytes, (str, os.PathLike)) and os.path.isdir(path_or_bytes):
            raise InvalidProtobuf(f"Load model from {os.fspath(path_or_bytes)} failed: it is a directory, not an "
                                  f"ONNX model file")
        self._providers = create_providers(so, providers, provider_options, self._log_level)
        self._model = load_model(path_or_bytes, so._free_dims_by_name,
                                 so.config("session.model_external_initializers_file_folder_path") or None,
                                 frozenset(so._initializers))
        if so._initializers or so._free_dims_by_denotation:
            from engineroom.compat.session_options import apply_to_model

            apply_to_model(self._model, so)
        if self._profiler:
            t_init = self._profiler.now_us()
            self._profiler.session_event(
                "model_loading_uri" if isinstance(path_or_bytes, (str, os.PathLike)) else "model_loading_array",
                t_load, t_init)
        graph = self._model.graph
        init_names = set(graph.initializers)
        self._inputs_all = list(graph.inputs)
        self._inputs = [v for v in self._inputs_all if v.name not in init_names]
        self._overridable = [v for v in self._inputs_all if v.name in init_names]
        self._cpu = next((p for p in self._providers if p.name == "CPUExecutionProvider"), None)
        if int(so.graph_optimization_level) >= 1:
            optimize_basic(self._model, cpu_for_folding(self._cpu))
        self._plan = build_plan(self._model, self._providers, int(so.graph_optimization_level),
                                self._cpu or ExecutionProvider(),
                                _config_int(so, MAX_TENSOR_BYTES_KEY, DEFAULT_MAX_TENSOR_BYTES),
                                so.config("session.disable_cpu_ep_fallback") == "1")
        # after the level-2 fusions, which replace the values of the outputs they rewrite
        self._outputs = list(self._model.graph.outputs)
        if so.optimized_model_filepath:
            save_model(self._model, so.optimized_model_filepath)
        self._feeds = Feeds(self._inputs_all, {v.name: v.const_value for v in self._overridable},
                            self._plan.output_names)
        self._binding = SessionBinding(self._feeds, self._providers, self._plan, self._profiler, so.logid)
        self._placement_line, level = placement(self._plan, self._providers)
        if level >= self._log_level:
            log.log(level, "%s%s", f"[{so.logid}] " if so.logid else "", self._placement_line)
        _set_blas_threads(int(so.intra_op_num_threads))
        keep_freed_memory(bool(so.enable_cpu_mem_arena))
        config = dict(so._config)
        self._plan.run_scopes = tuple(sc for p in self._providers if (sc := p.run_scope(config)) is not None)
        from engineroom.compat.session_options import log_no_effect

        log_no_effect(so, self._log_level)
        if self._profiler:
            self._profiler.session_event("session_initialization", t_init, self._profiler.now_us())

    # -- onnxruntime's API ----------------------------------------------------------------------
    def get_inputs(self) -> list[NodeArg]:
        return [_node_arg(v) for v in self._inputs]

    def get_outputs(self) -> list[NodeArg]:
        return [_node_arg(v) for v in self._outputs]

    def get_overridable_initializers(self) -> list[NodeArg]:
        return [_node_arg(v) for v in self._overridable]

    def get_modelmeta(self) -> ModelMetadata:
        m = self._model
        return ModelMetadata(producer_name=m.producer_name or "", graph_name=m.graph.name or "",
                             domain=m.domain or "", description=m.doc_string or "",
                             graph_description=m.graph.doc_string or "",
                             version=m.model_version if m.model_version is not None else 2**63 - 1,  # ORT's "unset"
                             custom_metadata_map=dict(m.metadata_props))

    def get_providers(self) -> list[str]:
        return [p.name for p in self._providers]

    def get_provider_options(self) -> dict[str, dict[str, str]]:
        return {p.name: dict(p.provider_options) for p in self._providers}

    def get_session_options(self) -> SessionOptions:
        return self._sess_options

    def get_provider_graph_assignment_info(self):
        return list(self._plan.partitions)

    @property
    def placement(self) -> str:
        """The placement line logged after partitioning."""
        return self._placement_line

    def run(self, output_names, input_feed: dict, run_options: RunOptions | None = None) -> list:
        try:
            outs = self._run(output_names, input_feed, run_options)
        except (EPFail, RuntimeException) as e:   # a provider's failure (EPFail), raised or as a step's cause
            if not (isinstance(e, EPFail) or isinstance(e.__cause__, EPFail)) or not retry_on_cpu(self):
                raise
            outs = self._run(output_names, input_feed, run_options)
        return [to_numpy(v) for v in outs]

    # -- onnxruntime's session API beyond run (profiling, fallback, providers, async) --------------------------
    def end_profiling(self) -> str:
        """Stop profiling and write the profile; its file name, or "" when profiling is off (as onnxruntime)."""
        if self._profiler is None or not self._profiler.active:
            return ""
        return self._profiler.end()

    def get_profiling_start_time_ns(self) -> int:
        return self._profiler.start_ns if self._profiler is not None else 0

    def set_providers(self, providers=None, provider_options=None) -> None:
        """Re-create the session on other providers (onnxruntime rebuilds it the same way)."""
        self.__init__(self._model_source, self._sess_options, providers, provider_options,
                      enable_fallback=int(self._fallback))

    def disable_fallback(self) -> None:
        self._fallback = False

    def enable_fallback(self) -> None:
        self._fallback = True

    def run_async(self, output_names, input_feed: dict, callback, user_data, run_options=None) -> None:
        """Run on another thread, then call ``callback(outputs, user_data, error_text)`` ("" on success)."""
        def work():
            try:
                outs = self.run(output_names, input_feed, run_options)
            except Exception as e:  # noqa: BLE001 - reported to the callback, as onnxruntime does
                callback([], user_data, str(e))
                return
            callback(outs, user_data, "")

        threading.Thread(target=work, name="engineroom-run-async", daemon=True).start()

    def run_with_ortvaluevector(self, run_options, feed_names, feeds, fetch_names, fetches, fetch_devices) -> None:
        """onnxruntime's low-level run: ``feeds`` OrtValues in ``feed_names`` order; results appended to
        ``fetches`` (an OrtValueVector or list)."""
        if len(feed_names) != len(feeds):
            raise InvalidArgument(f"{len(feed_names)} feed names for {len(feeds)} feeds")
        outs = self.run_with_ort_values(list(fetch_names), dict(zip(feed_names, feeds)), run_options)
        for v in outs:
            fetches.append(v)

    def get_input_memory_infos(self) -> list:
        from engineroom.memory_info import OrtMemoryInfo

        reads = dict(zip(self._feeds.order, self._plan.input_devices))
        return [OrtMemoryInfo.for_devices(reads[v.name]) for v in self._inputs]

    def get_output_memory_infos(self) -> list:
        from engineroom.memory_info import OrtMemoryInfo

        return [OrtMemoryInfo.for_devices({d}) for d in self._plan.output_devices]

    def get_input_epdevices(self) -> list:
        """Per input (``get_inputs()`` order), the OrtEpDevice of the provider that reads it."""
        from engineroom.devices import get_ep_devices

        eps = get_ep_devices()
        reads = dict(zip(self._feeds.order, self._plan.input_devices))
        out = []
        for v in self._inputs:
            dev = next((d for d in reads[v.name] if not d.is_host), None)
            prov = self._plan.devices.get(dev) if dev is not None else self._cpu
            out.append(next((e for e in eps if prov is not None and e.ep_name == prov.name
                             and (dev is None or e._device == dev)), None))
        return out

    def create_ortvalue_from_shape_and_type(self, shape, element_type, device_type: str, device_id: int = 0,
                                            vendor_id: int = -1) -> OrtValue:
        """An uninitialised OrtValue on one of this session's devices (the host, or a provider's device)."""
        prov = self._binding.provider_on(device_type, device_id)
        if isinstance(element_type, int) and not isinstance(element_type, bool):
            from engineroom.plugin_sdk import np_dtype

            element_type = np_dtype(element_type)
        arr = np.empty(tuple(int(d) for d in shape), dtype=element_type)
        return OrtValue(arr) if prov is None else OrtValue(prov.to_device(arr), prov)

    def release_captured_graph(self, graph_annotation_id: int = 0) -> None:
        """onnxruntime frees a captured CUDA graph here; "EPs without captured-graph release support treat this
        as a no-op" - engineroom's CUDA provider keeps its graphs with the plan, freed with the session."""

    def get_tuning_results(self) -> list:
        """onnxruntime's TunableOp results: engineroom's kernels are not tuned per run, so there are none."""
        return []

    def set_tuning_results(self, results, error_on_invalid: bool = False) -> None:
        """Accepted with no effect: no engineroom kernel is a TunableOp (see the compatibility table)."""
        if error_on_invalid and results:
            raise InvalidArgument("engineroom has no TunableOp kernels to apply tuning results to")

    def run_with_ort_values(self, output_names, input_dict_ort_values: dict,
                            run_options: RunOptions | None = None) -> list[OrtValue]:
        outs = self._run(output_names, input_dict_ort_values, run_options)
        return [OrtValue(to_numpy(v)) for v in outs]

    def io_binding(self) -> IOBinding:
        return IOBinding(self)

    def run_with_iobinding(self, iobinding: IOBinding, run_options: RunOptions | None = None) -> None:
        """Run with ``iobinding``'s inputs; its outputs (``get_outputs()``) end where they were bound
        (``iobinding.SessionBinding.run``)."""
        self._binding.run(iobinding, _with_deadline(run_options))

    # -- running --------------------------------------------------------------------------------
    def _run(self, output_names, input_feed, run_options) -> list:
        if run_options is not None and run_options.terminate:
            raise Fail("Exiting due to terminate flag being set to true.")
        feeds, idx = self._feeds.prepare(input_feed, output_names)
        if run_options is None and self._profiler is None:
            outs = self._plan.run(feeds)
        else:
            outs = execute(self._plan, feeds, _with_deadline(run_options), self._profiler, self._sess_options.logid)
        return outs if idx is None else [outs[i] for i in idx]
