"""onnxruntime's memory descriptions: ``OrtDevice``, ``OrtMemoryInfo`` and their enums, over engineroom's
``Device`` (a device type and id), plus ``OrtValueVector`` (a list of OrtValues) and ``OrtArenaCfg``."""
from __future__ import annotations

import enum
import operator

from engineroom.plugin_sdk import CPU, Device


class OrtAllocatorType(enum.IntEnum):
    INVALID = -1
    ORT_DEVICE_ALLOCATOR = 0
    ORT_ARENA_ALLOCATOR = 1


class OrtMemType(enum.IntEnum):
    CPU_INPUT = -2
    CPU_OUTPUT = -1
    CPU = -1
    DEFAULT = 0


class OrtDeviceMemoryType(enum.IntEnum):
    DEFAULT = 0
    HOST_ACCESSIBLE = 5


class OrtMemoryInfoDeviceType(enum.IntEnum):
    CPU = 0
    GPU = 1
    FPGA = 2
    NPU = 3


class OrtDeviceVendorId(enum.IntEnum):
    NONE = 0
    AMD = 0x1002
    NVIDIA = 0x10DE
    ARM = 0x13B5
    MICROSOFT = 0x1414
    HUAWEI = 0x19E5
    QUALCOMM = 0x5143
    INTEL = 0x8086


# engineroom device types -> onnxruntime's OrtDevice type numbers (CPU 0, GPU 1, FPGA 2, NPU 3)
_DEVICE_TYPE = {"cpu": 0, "cuda": 1, "gpu": 1, "opencl": 1, "openvino": 0, "fpga": 2, "npu": 3}
_VENDOR = {"cuda": OrtDeviceVendorId.NVIDIA}


class OrtDevice:
    """A device as onnxruntime names it: ``OrtDevice.make("cuda", 0)``; ``device_type()`` is onnxruntime's number
    (``OrtDevice.cpu()`` 0, ``OrtDevice.gpu()`` 1, ...)."""

    def __init__(self, device: Device, mem_type: int = 0, vendor_id: int | None = None):
        self._device = device
        self._mem_type = int(mem_type)
        self._vendor = int(_VENDOR.get(device.type, 0) if vendor_id is None or vendor_id == -1 else vendor_id)

    @staticmethod
    def make(ort_device_name: str, device_id: int, vendor_id=-1) -> "OrtDevice":
        name = str(ort_device_name).lower()
        if name not in _DEVICE_TYPE:
            raise ValueError(f"Unsupported device type: {ort_device_name}")
        return OrtDevice(Device(name, operator.index(device_id)), 0, None if vendor_id == -1 else int(vendor_id))

    def device_id(self) -> int:
        return self._device.id

    def device_type(self) -> int:
        return _DEVICE_TYPE.get(self._device.type, 1)

    def device_mem_type(self) -> int:
        return self._mem_type

    def device_vendor_id(self) -> int:
        return self._vendor

    # the capi class's constants
    @staticmethod
    def cpu() -> int:
        return 0

    @staticmethod
    def gpu() -> int:
        return 1

    @staticmethod
    def cuda() -> int:
        return 1

    @staticmethod
    def fpga() -> int:
        return 2

    @staticmethod
    def npu() -> int:
        return 3

    @staticmethod
    def default_memory() -> int:
        return 0

    def __repr__(self) -> str:
        return f"OrtDevice({self._device})"


class OrtMemoryInfo:
    """``OrtMemoryInfo(name, allocator_type, device_id, mem_type)``: where a value lives, as onnxruntime says it."""

    def __init__(self, name: str, allocator_type, device_id: int, mem_type):
        self.name = str(name)
        self.allocator_type = OrtAllocatorType(allocator_type)
        self.device_id = operator.index(device_id)
        self.mem_type = OrtMemType(mem_type)
        self.device_mem_type = OrtDeviceMemoryType.DEFAULT
        self.device_vendor_id = int(_VENDOR.get(self.name.lower(), 0))

    @staticmethod
    def create_v2(name: str, device_type, vendor_id: int, device_id: int, mem_type, alignment: int,
                  allocator_type) -> "OrtMemoryInfo":
        info = OrtMemoryInfo(name, allocator_type, device_id, OrtMemType.DEFAULT)
        info.device_mem_type = OrtDeviceMemoryType(mem_type)
        info.device_vendor_id = int(vendor_id)
        return info

    @staticmethod
    def for_devices(devices) -> "OrtMemoryInfo":
        """Where the plan reads a value: the first device off the host, else the CPU."""
        dev = next((d for d in devices if not d.is_host), CPU)
        name = "Cpu" if dev.is_host else {"cuda": "Cuda"}.get(dev.type, dev.type)
        return OrtMemoryInfo(name, OrtAllocatorType.ORT_DEVICE_ALLOCATOR, dev.id, OrtMemType.DEFAULT)

    def __repr__(self) -> str:
        return f"OrtMemoryInfo(name='{self.name}', device_id={self.device_id}, mem_type={self.mem_type.name})"


class OrtValueVector(list):
    """onnxruntime's vector of OrtValues (``run_with_ortvaluevector``'s fetches): a list with ``push_back``."""

    def push_back(self, value) -> None:
        self.append(value)


class OrtArenaCfg:
    """onnxruntime's memory-arena settings. engineroom has no arena (tensors come from NumPy / CuPy's
    allocators), so a config is kept as given and changes nothing (see the compatibility table)."""

    def __init__(self, max_mem: int = 0, arena_extend_strategy: int = -1, initial_chunk_size_bytes: int = -1,
                 max_dead_bytes_per_chunk: int = -1, initial_growth_chunk_size_bytes: int = -1,
                 max_power_of_two_extend_bytes: int = -1):
        if isinstance(max_mem, dict):   # onnxruntime also takes a dict of these names
            cfg = {k: int(v) for k, v in max_mem.items()}
            max_mem = cfg.pop("max_mem", 0)
            arena_extend_strategy = cfg.pop("arena_extend_strategy", -1)
            initial_chunk_size_bytes = cfg.pop("initial_chunk_size_bytes", -1)
            max_dead_bytes_per_chunk = cfg.pop("max_dead_bytes_per_chunk", -1)
            initial_growth_chunk_size_bytes = cfg.pop("initial_growth_chunk_size_bytes", -1)
            max_power_of_two_extend_bytes = cfg.pop("max_power_of_two_extend_bytes", -1)
            if cfg:
                raise ValueError(f"OrtArenaCfg: unknown keys {sorted(cfg)}")
        self.max_mem = int(max_mem)
        self.arena_extend_strategy = int(arena_extend_strategy)
        self.initial_chunk_size_bytes = int(initial_chunk_size_bytes)
        self.max_dead_bytes_per_chunk = int(max_dead_bytes_per_chunk)
        self.initial_growth_chunk_size_bytes = int(initial_growth_chunk_size_bytes)
        self.max_power_of_two_extend_bytes = int(max_power_of_two_extend_bytes)
