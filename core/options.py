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
        self._ep_devices: list[tuple[str, dict[str, str]]] = []   # from add_provider_for_devices
        self._policy = None                                       # an OrtExecutionProviderDevicePolicy
        self._policy_delegate = None

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
        """True when providers were given by device or policy."""
        return bool(self._ep_devices) or self._policy is not None or self._policy_delegate is not None


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
