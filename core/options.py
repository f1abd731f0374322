"""Session and run options with onnxruntime's names, spellings, defaults and type checks.

Both classes have exactly onnxruntime's attributes: setting an unknown one raises AttributeError, a value of
the wrong type raises TypeError (as onnxruntime's bindings do). What each attribute does in engineroom, and
which are accepted with no effect and why, is tabled in ``docs/onnxruntime-compatibility.md``.
"""
from __future__ import annotations

import enum
import operator
import os
from typing import Any, Callable

from engineroom.errors import Fail, InvalidArgument, NoSuchFile


class GraphOptimizationLevel(enum.IntEnum):
    ORT_DISABLE_ALL = 0
    ORT_ENABLE_BASIC = 1
    ORT_ENABLE_EXTENDED = 2
    ORT_ENABLE_LAYOUT = 3
    ORT_ENABLE_ALL = 99


class ExecutionMode(enum.IntEnum):
    """onnxruntime's executor choice: engineroom's executor is sequential (ORT_PARALLEL is accepted, logged, and
    runs sequentially: see the compatibility table)."""

    ORT_SEQUENTIAL = 0
    ORT_PARALLEL = 1


class ExecutionOrder(enum.IntEnum):
    """onnxruntime's node order: engineroom's plan runs in the graph's topological order (DEFAULT)."""

    DEFAULT = 0
    PRIORITY_BASED = 1
    MEMORY_EFFICIENT = 2


def _as_bool(owner: str, name: str, value: Any) -> bool:
    # as onnxruntime's bindings: anything with a truth value that is a number (bool, int, float, NumPy scalars)
    if value is None or isinstance(value, (bool, int, float)) or type(value).__module__ == "numpy":
        return bool(value)
    raise TypeError(f"{owner}.{name} must be a bool, got {type(value).__name__} {value!r}")


def _as_int(owner: str, name: str, value: Any) -> int:
    if not isinstance(value, float):
        try:
            return operator.index(value)
        except TypeError:
            pass
    raise TypeError(f"{owner}.{name} must be an int, got {type(value).__name__} {value!r}")


def _as_str(owner: str, name: str, value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8")
    raise TypeError(f"{owner}.{name} must be a str, got {type(value).__name__} {value!r}")


def _as_enum(enum_cls):
    def convert(owner: str, name: str, value: Any):
        if isinstance(value, enum_cls):
            return value
        if isinstance(value, int) and not isinstance(value, bool):  # an int with the enum's value is taken too
            try:
                return enum_cls(value)
            except ValueError:
                pass
        elif isinstance(getattr(value, "name", None), str) and value.name in enum_cls.__members__:
            return enum_cls[value.name]   # onnxruntime's own enum (a pybind11 enum: not a Python Enum)
        raise TypeError(f"{owner}.{name} must be an {enum_cls.__name__} "
                        f"({', '.join(m.name for m in enum_cls)}), got {type(value).__name__} {value!r}")
    return convert


class _Typed:
    """Attributes from ``_ATTRS`` (name -> (converter, default)) only, each converted or refused on assignment.
    Values live in the instance ``__dict__``, so reading one (``run_options.terminate`` on the hot path) is a plain
    attribute read."""

    _ATTRS: dict[str, tuple[Callable, Any]] = {}

    def __init__(self) -> None:
        for name, (_, default) in self._ATTRS.items():
            object.__setattr__(self, name, default)

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            object.__setattr__(self, name, value)
            return
        spec = self._ATTRS.get(name)
        owner = type(self).__name__
        if spec is None:
            if hasattr(type(self), name):
                raise AttributeError(f"'{owner}' object attribute '{name}' is read-only")
            raise AttributeError(f"'{owner}' object has no attribute '{name}'")
        object.__setattr__(self, name, spec[0](owner, name, value))

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"'{type(self).__name__}' object attribute '{name}' cannot be deleted")


class SessionOptions(_Typed):
    """Options of one session, as ``onnxruntime.SessionOptions`` spells them (same attributes, defaults, types)."""

    _ATTRS = {
        "enable_cpu_mem_arena": (_as_bool, True),
        "enable_mem_pattern": (_as_bool, True),
        "enable_mem_reuse": (_as_bool, True),
        "enable_profiling": (_as_bool, False),
        "execution_mode": (_as_enum(ExecutionMode), ExecutionMode.ORT_SEQUENTIAL),
        "execution_order": (_as_enum(ExecutionOrder), ExecutionOrder.DEFAULT),
        "graph_optimization_level": (_as_enum(GraphOptimizationLevel), GraphOptimizationLevel.ORT_ENABLE_ALL),
        "inter_op_num_threads": (_as_int, 0),
        "intra_op_num_threads": (_as_int, 0),
        "log_severity_level": (_as_int, -1),
        "log_verbosity_level": (_as_int, 0),
        "logid": (_as_str, ""),
        "optimized_model_filepath": (_as_str, ""),
        "profile_file_prefix": (_as_str, "onnxruntime_profile_"),
        "use_deterministic_compute": (_as_bool, False),
        "use_per_session_threads": (_as_bool, True),
    }

    def __init__(self) -> None:
        super().__init__()
        self._config: dict[str, str] = {}
        self._free_dims_by_name: dict[str, int] = {}
        self._free_dims_by_denotation: dict[str, int] = {}
        self._initializers: dict[str, Any] = {}                   # add_initializer / add_external_initializers
        self._custom_op_libraries: list[str] = []
        self._ep_devices: list[tuple[str, dict[str, str]]] = []   # from add_provider_for_devices
        self._providers: list[tuple[str, dict[str, str]]] = []    # from add_provider
        self._policy = None                                       # an OrtExecutionProviderDevicePolicy
        self._policy_delegate = None
        self._load_cancelled = False
        self._ep_context_read_func = None

    def add_session_config_entry(self, key: str, value: str) -> None:
        self._config[str(key)] = str(value)

    def get_session_config_entry(self, key: str) -> str:
        if key not in self._config:
            raise Fail(f"SessionOptions does not have configuration with key: {key}")
        return self._config[key]

    def add_free_dimension_override_by_name(self, dim_name: str, dim_value: int) -> None:
        self._free_dims_by_name[str(dim_name)] = int(dim_value)

    def add_free_dimension_override_by_denotation(self, dim_denotation: str, dim_value: int) -> None:
        """Fix every free input dimension whose denotation is ``dim_denotation`` (e.g. "DATA_BATCH")."""
        self._free_dims_by_denotation[str(dim_denotation)] = int(dim_value)

    def add_initializer(self, name: str, val) -> None:
        """Use ``val`` (an OrtValue on the host) for the model's initializer ``name``; the session keeps a
        reference, so the array must stay alive (as in onnxruntime)."""
        from engineroom.values import OrtValue

        if not isinstance(val, OrtValue):
            raise TypeError(f"add_initializer expects an OrtValue, got {type(val).__name__}")
        if val._provider is not None:
            raise InvalidArgument(f"initializer '{name}' must be an OrtValue on the CPU, not on "
                                  f"{val.device_name()}")
        self._initializers[str(name)] = val

    def add_external_initializers(self, names: list, ort_values: list) -> None:
        """Supply initializers the model stores as external data, by name (OrtValues on the host)."""
        if len(names) != len(ort_values):
            raise InvalidArgument(f"add_external_initializers got {len(names)} names and {len(ort_values)} values")
        for name, val in zip(names, ort_values):
            self.add_initializer(name, val)

    def add_provider(self, provider_name: str, provider_options: dict) -> None:
        """Append a provider by name with its options (used when a session is given no ``providers``)."""
        self._providers.append((str(provider_name), {str(k): str(v) for k, v in dict(provider_options).items()}))

    def register_custom_ops_library(self, library_path: str) -> None:
        """onnxruntime loads a shared library of C/C++ custom ops here. engineroom cannot run native onnxruntime
        kernels: the path is checked and recorded, and a session whose nodes only that library implemented names
        it in its error (an engineroom provider with those ops can serve them)."""
        path = os.fspath(library_path)
        if not os.path.isfile(path):
            raise NoSuchFile(f"Failed to load library {path}: no such file")
        self._custom_op_libraries.append(path)

    def set_load_cancellation_flag(self, value: bool) -> None:
        """True cancels the loading of sessions created with these options (ModelLoadCanceled)."""
        self._load_cancelled = bool(value)

    def set_ep_context_data_read_func(self, func) -> None:
        """onnxruntime's reader for compiled EP-context blobs; engineroom's providers write none, so it is
        kept but never called (see the compatibility table)."""
        if func is not None and not callable(func):
            raise TypeError("set_ep_context_data_read_func expects a callable")
        self._ep_context_read_func = func

    def clear_ep_context_data_read_func(self) -> None:
        self._ep_context_read_func = None

    def config(self, key: str, default: str = "") -> str:
        return self._config.get(key, default)

    # onnxruntime's device-based provider selection (used when a session is given no ``providers``)
    def add_provider_for_devices(self, ep_devices, provider_options: dict) -> None:
        """Add the provider of ``ep_devices`` (OrtEpDevice values of one provider, from get_ep_devices())."""
        from engineroom.devices import provider_for_devices

        self._ep_devices.append(provider_for_devices(ep_devices, provider_options))

    def set_provider_selection_policy(self, policy) -> None:
        """Pick providers by an ``OrtExecutionProviderDevicePolicy`` (GPU before CPU, CPU fallback last)."""
        from engineroom.devices import OrtExecutionProviderDevicePolicy

        self._policy = OrtExecutionProviderDevicePolicy(policy)

    def set_provider_selection_policy_delegate(self, delegate) -> None:
        """Pick providers with ``delegate(ep_devices, model_metadata, runtime_metadata, max_selections)``."""
        if not callable(delegate):
            raise InvalidArgument("the provider selection policy delegate must be callable")
        self._policy_delegate = delegate

    def has_providers(self) -> bool:
        """True when providers were given by name, device or policy."""
        return (bool(self._ep_devices) or bool(self._providers) or self._policy is not None
                or self._policy_delegate is not None)


class RunOptions(_Typed):
    """Options of one ``run`` call, as ``onnxruntime.RunOptions`` spells them.

    ``terminate`` may be set from another thread while a run is in progress: the run stops before its next plan
    step (also inside Loop / Scan / If bodies) with onnxruntime's error."""

    _ATTRS = {
        "log_severity_level": (_as_int, -1),
        "log_verbosity_level": (_as_int, 0),
        "logid": (_as_str, ""),
        "only_execute_path_to_fetches": (_as_bool, False),
        "terminate": (_as_bool, False),
    }

    def __init__(self) -> None:
        super().__init__()
        self._config: dict[str, str] = {}

    def add_run_config_entry(self, key: str, value: str) -> None:
        self._config[str(key)] = str(value)

    def get_run_config_entry(self, key: str) -> str:
        if key not in self._config:
            raise Fail(f"RunOptions does not have configuration with key: {key}")
        return self._config[key]
