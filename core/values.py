"""OrtValue: a tensor (or sequence/optional) owned by engineroom, on the host or a provider's device
(IOBinding is in ``engineroom.iobinding``)."""
from __future__ import annotations

from typing import Any

import numpy as np

from engineroom.errors import InvalidArgument
from engineroom.plugin_sdk import np_dtype, onnx_elem_type, ort_type_name


class OrtValue:
    """onnxruntime's OrtValue: wraps a value and the provider whose device holds it (None: host)."""

    def __init__(self, value: Any, provider: Any = None):
        self._value = value
        self._provider = provider

    @staticmethod
    def ortvalue_from_numpy(numpy_obj: np.ndarray, device_type: str = "cpu", device_id: int = 0,
                            vendor_id: int = -1) -> "OrtValue":
        """A copy of ``numpy_obj`` on the device (a NumPy array itself on "cpu"). An array the device's
        provider already holds (a CuPy array for "cuda") is wrapped without a copy."""
        if device_type.lower() == "cpu":
            return OrtValue(np.asarray(numpy_obj))
        provider = provider_for_device(device_type.lower(), device_id)
        if provider.holds(numpy_obj):
            return OrtValue(numpy_obj, provider)
        return OrtValue(provider.to_device(np.asarray(numpy_obj)), provider)

    @staticmethod
    def ortvalue_from_shape_and_type(shape, element_type=np.float32, device_type: str = "cpu",
                                     device_id: int = 0, vendor_id: int = -1, memory_info=None) -> "OrtValue":
        if memory_info is not None:   # an OrtMemoryInfo names the device instead
            device_type = "cpu" if memory_info.name.lower() in ("cpu", "cpu_input", "cpu_output") else \
                memory_info.name.lower()
            device_id = memory_info.device_id
        if isinstance(element_type, int) and not isinstance(element_type, bool):  # an ONNX element type number
            element_type = np_dtype(element_type)
        return OrtValue.ortvalue_from_numpy(np.empty(tuple(shape), dtype=element_type), device_type, device_id)

    @staticmethod
    def ortvalue_from_numpy_with_onnx_type(data: np.ndarray, onnx_element_type: int) -> "OrtValue":
        """A host OrtValue over ``data``'s bytes taken as ONNX element type ``onnx_element_type`` (e.g. uint8 bytes
        as float8 / float4), as onnxruntime does; the item sizes must agree."""
        dtype = np.dtype(np_dtype(int(onnx_element_type)))
        data = np.ascontiguousarray(data)
        if dtype.itemsize != data.dtype.itemsize:
            raise InvalidArgument(f"ortvalue_from_numpy_with_onnx_type: {data.dtype} items are {data.dtype.itemsize} "
                                  f"bytes, ONNX type {onnx_element_type} ({dtype}) needs {dtype.itemsize}")
        return OrtValue(data.view(dtype))

    @staticmethod
    def from_dlpack(data, is_bool_tensor: bool = False) -> "OrtValue":
        """An OrtValue over a DLPack capsule or an object with ``__dlpack__`` (host memory)."""
        if not hasattr(data, "__dlpack__"):
            raise InvalidArgument("from_dlpack expects an object with __dlpack__ (a NumPy or DLPack array)")
        arr = np.from_dlpack(data)
        return OrtValue(arr.astype(np.bool_) if is_bool_tensor else arr)

    def update_inplace(self, data: np.ndarray) -> None:
        """Copy ``data`` into this value's buffer (same shape and element type), on whatever device holds it."""
        src = np.asarray(data)
        if tuple(src.shape) != tuple(self._value.shape) or src.dtype != np.dtype(self._value.dtype):
            raise InvalidArgument(f"update_inplace: got {src.dtype} {list(src.shape)}, the OrtValue is "
                                  f"{np.dtype(self._value.dtype)} {list(self._value.shape)}")
        if self._provider is None:
            self._value[...] = src
        else:
            self._value[...] = self._provider.to_device(src)

    def tensor_size_in_bytes(self) -> int:
        return int(np.prod(self._value.shape, dtype=np.int64)) * np.dtype(self._value.dtype).itemsize

    def is_tensor_sequence(self) -> bool:
        return isinstance(self._value, list)

    def is_sparse_tensor(self) -> bool:
        return False

    def numpy(self) -> np.ndarray:
        v = self._provider.to_host(self._value) if self._provider is not None else self._value
        return np.asarray(v) if not isinstance(v, (list, dict)) and v is not None else v

    def is_tensor(self) -> bool:
        return self._value is not None and not isinstance(self._value, (list, dict))

    def has_value(self) -> bool:
        return self._value is not None

    def shape(self) -> list[int]:
        return list(self._value.shape)

    def element_type(self) -> int:
        """The ONNX element type number (1 for float32), as onnxruntime returns it."""
        return int(onnx_elem_type(self._value.dtype))

    def data_type(self) -> str:
        if isinstance(self._value, list):
            inner = self._value[0] if self._value else np.zeros(0, np.float32)
            return f"seq({OrtValue(inner).data_type()})"
        if isinstance(self._value, dict):  # a map of Python scalars (ZipMap's: int or str keys, float values)
            names = {str: "string", int: "int64", float: "float"}
            key = names.get(type(next(iter(self._value), 0)), "int64")
            val = names.get(type(next(iter(self._value.values()), 0.0)), "float")
            return f"map({key},tensor({val}))"
        return f"tensor({ort_type_name(onnx_elem_type(self._value.dtype))})"

    def device_name(self) -> str:
        return "cpu" if self._provider is None else self._provider.device.type

    def data_ptr(self) -> int:
        """The address of the tensor's data (host, or device memory that exposes its address)."""
        v = self._value
        iface = getattr(v, "__cuda_array_interface__", None) or getattr(v, "__array_interface__", None)
        if iface is None:
            raise InvalidArgument(f"the data of an {self!r} has no address engineroom can read")
        return int(iface["data"][0])

    def __repr__(self) -> str:
        return f"OrtValue({self.data_type() if self._value is not None else 'None'} on {self.device_name()})"


def held_by(value: OrtValue) -> tuple[Any, Any]:
    """(the value an OrtValue wraps, the provider whose device holds it or None for the host)."""
    return value._value, value._provider


def provider_for_device(device_type: str, device_id: int):
    from engineroom import discovery

    for name in discovery.available_provider_names():
        cls = discovery.provider_class(name)
        for dev in cls.available_devices():
            if dev.type == device_type and dev.id == device_id:
                return cls(device_id=device_id) if "device_id" in cls.options else cls()
    raise InvalidArgument(f"no available provider has a device '{device_type}:{device_id}'; available providers: "
                          f"{', '.join(discovery.available_provider_names())}")
