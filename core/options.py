"""Session and run options with onnxruntime's names and spellings."""
from __future__ import annotations

import enum

from engineroom.errors import InvalidArgument


class GraphOptimizationLevel(enum.IntEnum):
    ORT_DISABLE_ALL = 0
    ORT_ENABLE_BASIC = 1
    ORT_ENABLE_EXTENDED = 2
    ORT_ENABLE_LAYOUT = 3
    ORT_ENABLE_ALL = 99


class SessionOptions:
    """Options of one session, as ``onnxruntime.SessionOptions`` spells them."""

    def __init__(self) -> None:
        self.graph_optimization_level = GraphOptimizationLevel.ORT_ENABLE_ALL
        self.intra_op_num_threads = 0
        self.log_severity_level = 2
        self.optimized_model_filepath = ""
        self._config: dict[str, str] = {}
        self._free_dims_by_name: dict[str, int] = {}

    def add_session_config_entry(self, key: str, value: str) -> None:
        self._config[str(key)] = str(value)

    def get_session_config_entry(self, key: str) -> str:
        if key not in self._config:
            raise InvalidArgument(f"SessionOptions has no config entry '{key}'")
        return self._config[key]

    def add_free_dimension_override_by_name(self, dim_name: str, dim_value: int) -> None:
        self._free_dims_by_name[str(dim_name)] = int(dim_value)

    def config(self, key: str, default: str = "") -> str:
        return self._config.get(key, default)


class RunOptions:
    """Options of one ``run`` call, as ``onnxruntime.RunOptions`` spells them."""

    def __init__(self) -> None:
        self.log_severity_level = 2
        self.run_tag = ""
        self.terminate = False
        self._config: dict[str, str] = {}

    def add_run_config_entry(self, key: str, value: str) -> None:
        self._config[str(key)] = str(value)

    def get_run_config_entry(self, key: str) -> str:
        if key not in self._config:
            raise InvalidArgument(f"RunOptions has no config entry '{key}'")
        return self._config[key]
