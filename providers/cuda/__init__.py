"""CUDAExecutionProvider: the CPU provider's kernel set on an NVIDIA GPU through CuPy, with cuBLAS
GEMMs, im2col + GEMM convolutions, single-kernel softmax and layer normalization, and CUDA graphs.

**Kernel set.** The shared kernel set (``engineroom.providers.cpu.registry``) declares which of its kernels
are written against the array module they are handed (``xp``) rather than NumPy itself (``array_kernel``);
CuPy mirrors NumPy's API, and what differs (``scipy.special``, no host fast paths or compiled loops) is
answered by CuPy's shim (``array_module.cupy_arrays``), which this provider registers when it starts.
This provider's registry is those declared kernels (``registry.array_kernels()``), with this package's
kernels registered over it: MatMul and Gemm (``matmul``: cuBLAS through ``cupy.matmul``, constant
weights uploaded and transposed once), Conv and com.microsoft FusedConv (``conv``: im2col + one
batched GEMM, bias/residual/activation in one fused elementwise kernel), Softmax, LogSoftmax and
LayerNormalization (``fused``: one kernel per op). Kernels run with ``xp = cupy``; inputs a kernel
declares host-resident (shapes, axes, sizes) stay on the host, as on every provider.

**Not claimed** (left to the CPU provider, copies at the boundary): nodes with a tensor CuPy cannot
hold (strings, bfloat16, float8, int4) or a non-tensor value (sequences, optionals); ops whose shared
kernel is NumPy-only (control flow, sequences, strings, random draws, the traditional-ML and training
domains, the contrib kernels, ...: every kernel not declared ``array_kernel``); and shape arithmetic (nodes
whose tensors are all int32/int64/bool, which feed host-resident inputs) — Shape and Size are
claimed when their input is produced here, so a tensor is never copied back only to read its shape.

**Options** (strings, onnxruntime's CUDA EP names):

* ``device_id`` — the CUDA device (default "0");
* ``gpu_mem_limit`` — bytes CuPy's memory pool of that device may hold (default: no limit). CuPy's
  pool is per device and per process, so the limit applies to every user of that pool;
* ``arena_extend_strategy`` — "kNextPowerOfTwo" or "kSameAsRequested": accepted for compatibility;
  CuPy's pool always rounds requests up to its own bins, so both behave alike;
* ``enable_cuda_graph`` — "1" captures the provider's stretches of work into CUDA graphs on the
  second run and replays them later (fixed input shapes; limits in :mod:`.graphs`);
* ``cudnn_conv_algo_search`` — "EXHAUSTIVE", "HEURISTIC" or "DEFAULT": accepted for compatibility;
  CuPy 14 has no cuDNN module, so convolutions are im2col + cuBLAS whatever the value.

CuPy is imported lazily: importing this package (which the entry point does) needs only NumPy;
``is_available()`` looks for CuPy with ``importlib.util.find_spec`` before importing it, asks for
the device count once, and caches the answer and the reason.

Status: written without a GPU; none of the device code has run yet (bench/cuda_zoo.py is the script
for a session on a GPU machine).
"""
from __future__ import annotations

import importlib
from typing import Any, ClassVar

import numpy as np

from engineroom.plugin_sdk import (
    Capability,
    CompilingProvider,
    Device,
    GraphView,
    GroupView,
    KernelInfo,
    KernelProvider,
    KernelRegistry,
    NodeView,
    ProviderOptionError,
)
from engineroom.plugin_sdk.errors import InvalidArgument
from engineroom.providers.cpu.array_module import register as _register_arrays
from engineroom.providers.cpu.registry import registry as _cpu_registry
from engineroom.providers.cuda import runtime
from engineroom.providers.cuda.array_module import cupy_arrays
from engineroom.providers.cuda.registry import registry as _overrides

for _m in ("matmul", "conv", "fused"):
    importlib.import_module(f"{__name__}.{_m}")

# The shared kernels declared for any array module, then this package's kernels over them.
_registry = KernelRegistry()
_registry.update(_cpu_registry.array_kernels())
_registry.update(_overrides)

# What CuPy arrays can hold (no strings, bfloat16, float8 or int4).
DEVICE_DTYPES = frozenset(np.dtype(t) for t in (
    np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
    np.float16, np.float32, np.float64))
_TRUE, _FALSE = ("1", "true"), ("0", "false")
_MAX_SIZE = str(2**64 - 1)     # onnxruntime's default gpu_mem_limit (SIZE_MAX): no limit


def _parse_options(name: str, opts: dict[str, str]) -> dict[str, Any]:
    """The options as values, or ProviderOptionError naming the bad one (no CuPy needed)."""
    def integer(key: str, lo: int = 0) -> int:
        try:
            v = int(opts[key])
        except ValueError:
            raise ProviderOptionError(f"{name}: {key} must be an integer, got {opts[key]!r}") from None
        if v < lo:
            raise ProviderOptionError(f"{name}: {key} must be >= {lo}, got {v}")
        return v

    def choice(key: str, allowed: tuple[str, ...]) -> str:
        if opts[key] not in allowed:
            raise ProviderOptionError(f"{name}: {key} must be one of {', '.join(allowed)}; got {opts[key]!r}")
        return opts[key]

    graph = opts["enable_cuda_graph"].strip().lower()
    if graph not in _TRUE + _FALSE:
        raise ProviderOptionError(f"{name}: enable_cuda_graph must be \"0\" or \"1\"; "
                                  f"got {opts['enable_cuda_graph']!r}")
    return {"device_id": integer("device_id"), "gpu_mem_limit": integer("gpu_mem_limit"),
            "arena_extend_strategy": choice("arena_extend_strategy", ("kNextPowerOfTwo", "kSameAsRequested")),
            "cudnn_conv_algo_search": choice("cudnn_conv_algo_search", ("EXHAUSTIVE", "HEURISTIC", "DEFAULT")),
            "enable_cuda_graph": graph in _TRUE}


class CUDAExecutionProvider(KernelProvider, CompilingProvider):
    """Runs the nodes its kernels handle on one CUDA device through CuPy (module docstring)."""

    name: ClassVar[str] = "CUDAExecutionProvider"
    vendor: ClassVar[str] = "engineroom"
    device_kind: ClassVar[str] = "GPU"
    options: ClassVar[dict[str, Any]] = {
        "device_id": "0", "gpu_mem_limit": _MAX_SIZE, "arena_extend_strategy": "kNextPowerOfTwo",
        "enable_cuda_graph": "0", "cudnn_conv_algo_search": "EXHAUSTIVE"}
    registry: ClassVar[KernelRegistry] = _registry

    def __init__(self, **provider_options: Any) -> None:
        super().__init__(**provider_options)
        opts = _parse_options(self.name, self.provider_options)
        count, reason = runtime.probe()
        if not count:
            raise RuntimeError(reason)
        dev_id = opts["device_id"]
        if dev_id >= count:
            raise InvalidArgument(f"{self.name}: no CUDA device {dev_id}: this machine has {count}")
        cp = runtime.cupy_module()
        _register_arrays(cupy_arrays(cp))
        self.xp = cp
        self.device = Device("cuda", dev_id)
        self._cuda_device = cp.cuda.Device(dev_id)
        self._ndarray = cp.ndarray
        self.cuda_graphs = opts["enable_cuda_graph"]
        if opts["gpu_mem_limit"] < 2**64 - 1:
            with self._cuda_device:
                cp.get_default_memory_pool().set_limit(size=opts["gpu_mem_limit"])
        self.stream = None
        if self.cuda_graphs:
            with self._cuda_device:
                self.stream = cp.cuda.Stream(non_blocking=True)

    # -- availability and devices --------------------------------------------------------------
    @classmethod
    def is_available(cls) -> bool:
        return runtime.probe()[0] > 0

    @classmethod
    def unavailable_reason(cls) -> str:
        """Why ``is_available()`` is False ("" when it is True)."""
        return runtime.probe()[1]

    @classmethod
    def available_devices(cls) -> list[Device]:
        return [Device("cuda", i) for i in range(runtime.probe()[0])]

    @classmethod
    def describe_device(cls, device: Device) -> dict:
        return runtime.describe(device.id)

    # -- capability ----------------------------------------------------------------------------
    @staticmethod
    def why_not_on_cuda(view: NodeView) -> str | None:
        """Why this provider leaves ``view`` to another, or None (before kernel lookup)."""
        if _registry.lookup(view.domain, view.op_type, view.opset) is None and \
                _cpu_registry.lookup(view.domain, view.op_type, view.opset) is not None:
            return "the shared kernel is NumPy-only (not declared for other array modules)"
        present = [d for i, d in enumerate(view.input_dtypes) if view.has_input(i)]
        present += [d for i, d in enumerate(view.output_dtypes) if view.output_names[i]]
        for dt in present:
            if dt is None:
                return "a value of unknown type or not a tensor"
            if np.dtype(dt) not in DEVICE_DTYPES:
                return f"CuPy has no {np.dtype(dt)} arrays"
        return None

    def kernel_for(self, view: NodeView):
        if self.why_not_on_cuda(view) is not None:
            return None
        return super().kernel_for(view)

    def get_capability(self, view: GraphView) -> list[Capability]:
        """Every node a kernel handles, except shape arithmetic (all-integer nodes, which feed
        host-resident inputs) and Shape/Size of values not produced here. With CUDA graphs, the nodes
        are claimed as one group (the core splits it into cycle-free partitions, each compiled into a
        :class:`~.graphs.CapturedGroup`), except nodes reading a computed host input, claimed alone."""
        take = self.device_claims(view)
        self.note_dynamic_quantization(view)
        if not self.cuda_graphs:
            return [Capability([v]) for v in take]
        alone = [v for v in take if self._reads_computed_host_input(v)]
        grouped = [v for v in take if not self._reads_computed_host_input(v)]
        caps = [Capability([v]) for v in alone]
        if grouped:
            caps.append(Capability(grouped, kind="group", note="CUDA graphs"))
        return caps

    def _reads_computed_host_input(self, v: NodeView) -> bool:
        const = v.const_inputs or ()
        return any(v.has_input(i) and (i >= len(const) or const[i] is None) for i in self.host_input_indices(v))

    # -- kernels and groups --------------------------------------------------------------------
    def create_kernel(self, info: KernelInfo):
        with self._cuda_device:                      # factories upload constants to this device
            fn = super().create_kernel(info)
        if self.device.id == 0:
            return fn
        dev = self._cuda_device

        def on_device(*inputs):
            with dev:
                return fn(*inputs)

        return on_device

    def compile(self, group: GroupView):
        from engineroom.providers.cuda.graphs import CapturedGroup

        with self._cuda_device:
            return CapturedGroup(self, group)

    # -- data transfer -------------------------------------------------------------------------
    def to_device(self, array: np.ndarray) -> Any:
        with self._cuda_device:
            return self.xp.asarray(array)

    def to_host(self, value: Any) -> np.ndarray:
        if value is None or isinstance(value, (np.ndarray, list, dict)):
            return value
        return self.xp.asnumpy(value)

    def holds(self, value: Any) -> bool:
        """A CuPy array on this provider's device."""
        return type(value) is self._ndarray and value.device.id == self.device.id

    def from_pointer(self, pointer: int, shape: tuple[int, ...], dtype: np.dtype) -> Any:
        return runtime.wrap_pointer(self.xp, pointer, shape, dtype, self.device.id)

    def synchronize(self) -> None:
        self._cuda_device.synchronize()


__all__ = ["CUDAExecutionProvider", "DEVICE_DTYPES"]
