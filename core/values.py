"""OrtValue: a tensor (or sequence/optional) owned by engineroom, on the host or a provider's device."""
from __future__ import annotations

from typing import Any

import numpy as np

from engineroom.errors import InvalidArgument
from engineroom.plugin_sdk import onnx_elem_type, ort_type_name


class OrtValue:
    """onnxruntime's OrtValue: wraps a value and the provider whose device holds it (None: host)."""

    def __init__(self, value: Any, provider: Any = None):
        self._value = value
        self._provider = provider

    @staticmethod
    def ortvalue_from_numpy(numpy_obj: np.ndarray, device_type: str = "cpu", device_id: int = 0) -> "OrtValue":
        arr = np.asarray(numpy_obj)
        if device_type.lower() == "cpu":
            return OrtValue(arr)
        provider = _provider_for_device(device_type.lower(), device_id)
        return OrtValue(provider.to_device(arr), provider)

    @staticmethod
    def ortvalue_from_shape_and_type(shape, element_type=np.float32, device_type: str = "cpu",
                                     device_id: int = 0) -> "OrtValue":
        return OrtValue.ortvalue_from_numpy(np.empty(tuple(shape), dtype=element_type), device_type, device_id)

    def numpy(self) -> np.ndarray:
        v = self._provider.to_host(self._value) if self._provider is not None else self._value
        return np.asarray(v) if not isinstance(v, (list, dict)) and v is not None else v

    def is_tensor(self) -> bool:
        return self._value is not None and not isinstance(self._value, (list, dict))

    def has_value(self) -> bool:
        return self._value is not None

    def shape(self) -> list[int]:
        return list(self._value.shape)

    def element_type(self):
        return np.dtype(self._value.dtype).type

    def data_type(self) -> str:
        if isinstance(self._value, list):
            inner = self._value[0] if self._value else np.zeros(0, np.float32)
            return f"seq({OrtValue(inner).data_type()})"
        return f"tensor({ort_type_name(onnx_elem_type(self._value.dtype))})"

    def device_name(self) -> str:
        return "cpu" if self._provider is None else self._provider.device.type

    def __repr__(self) -> str:
        return f"OrtValue({self.data_type() if self._value is not None else 'None'} on {self.device_name()})"


def _provider_for_device(device_type: str, device_id: int):
    from engineroom import discovery

    for name in discovery.available_provider_names():
        cls = discovery.provider_class(name)
        for dev in cls.available_devices():
            if dev.type == device_type and dev.id == device_id:
                return cls(device_id=device_id) if "device_id" in cls.options else cls()
    raise InvalidArgument(f"no available provider has a device '{device_type}:{device_id}'; available providers: "
                          f"{', '.join(discovery.available_provider_names())}")
