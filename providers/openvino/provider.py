"""The provider class: options as onnxruntime's OpenVINO EP spells them, availability, capability, compile."""
from __future__ import annotations

import functools
import importlib.util
import json
import os
import sys
import threading
from typing import Any, Callable, ClassVar

from engineroom.plugin_sdk import (
    CPU,
    Capability,
    CompilingProvider,
    GraphView,
    GroupView,
    ProviderOptionError,
)

# onnxruntime's OpenVINO EP: precision names -> OpenVINO's INFERENCE_PRECISION_HINT
_PRECISIONS = {"FP32": "f32", "FP16": "f16", "BF16": "bf16", "ACCURACY": None}
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off", ""}


def import_openvino():
    """``import openvino``, with its telemetry off unless ENGINEROOM_OPENVINO_TELEMETRY=1.

    On import, openvino's telemetry forks a process from a background thread to post an event. A fork
    while OpenBLAS is working in another thread can deadlock in OpenBLAS's fork handler (seen here:
    the session's constant folding runs matmuls right after the provider imported openvino), and a
    library should not post events for its user anyway. The telemetry package stays silent in CI
    (CI=true), so the import runs with that set, and the variable is restored right after.
    """
    if "openvino" in sys.modules or os.environ.get("ENGINEROOM_OPENVINO_TELEMETRY") == "1":
        import openvino

        return openvino
    with _IMPORT_LOCK:
        saved = os.environ.get("CI")
        os.environ["CI"] = "true"
        try:
            import openvino
        finally:
            if saved is None:
                os.environ.pop("CI", None)
            else:
                os.environ["CI"] = saved
    return openvino


_IMPORT_LOCK = threading.Lock()


@functools.lru_cache(maxsize=1)
def ov_core():
    """One ``openvino.Core`` per process (compile settings go per model, never on this shared object)."""
    return import_openvino().Core()


@functools.lru_cache(maxsize=1)
def _ov_devices() -> tuple[str, ...]:
    try:
        if importlib.util.find_spec("openvino") is None:
            return ()
        return tuple(ov_core().available_devices)
    except Exception:  # noqa: BLE001 - a broken openvino install just means "not available"
        return ()


def _device_present(device_type: str, devices: tuple[str, ...]) -> bool:
    """Whether OpenVINO lists the device ``device_type`` names ("GPU" matches "GPU.0"; AUTO, HETERO,
    MULTI and BATCH are OpenVINO's virtual devices, which pick among the real ones themselves)."""
    if ":" in device_type or device_type.split(".")[0] in ("AUTO", "HETERO", "MULTI", "BATCH"):
        return True
    return any(d == device_type or d.split(".")[0] == device_type for d in devices)


class OpenVINOExecutionProvider(CompilingProvider):
    """Runs groups of nodes through OpenVINO, compiled once per session.

    Options (onnxruntime's OpenVINO EP names): ``device_type`` ("CPU", "GPU", "GPU.1", "NPU",
    "AUTO:GPU,CPU", ...), ``precision`` ("FP32", "FP16", "BF16" or "ACCURACY"; default FP32 on CPU
    so results match the CPU provider, FP16 elsewhere, as onnxruntime), ``num_of_threads``,
    ``num_streams``, ``cache_dir`` (OpenVINO's model cache), ``disable_dynamic_shapes`` ("True":
    recompile per new input shape, a few shapes cached, instead of one dynamic-shape compile) and
    ``load_config`` (a JSON file ``{"CPU": {"PROPERTY": value}}`` passed to ``compile_model``).

    Values stay in host memory on every device type: OpenVINO's Python API takes and returns NumPy
    arrays and moves them to its device itself, so the core inserts no copies between this provider
    and the CPU provider.
    """

    name: ClassVar[str] = "OpenVINOExecutionProvider"
    vendor: ClassVar[str] = "Intel"
    device_kind: ClassVar[str] = "CPU"
    options: ClassVar[dict[str, Any]] = {
        "device_type": "CPU",
        "precision": "",
        "num_of_threads": "0",
        "num_streams": "",
        "cache_dir": "",
        "disable_dynamic_shapes": "False",
        "load_config": "",
    }

    def __init__(self, **provider_options: Any) -> None:
        super().__init__(**provider_options)
        o = self.provider_options
        self.device_type = o["device_type"].strip().upper() or "CPU"
        self.device = CPU
        prec = o["precision"].strip().upper()
        if prec == "":
            prec = "FP32" if self.device_type == "CPU" else "FP16"
        if prec not in _PRECISIONS:
            raise ProviderOptionError(f"{self.name}: precision must be one of {', '.join(_PRECISIONS)}, "
                                      f"got {o['precision']!r}")
        self.precision = prec
        self.num_threads = _int_option(self.name, "num_of_threads", o["num_of_threads"], minimum=0)
        self.num_streams = (_int_option(self.name, "num_streams", o["num_streams"], minimum=1)
                            if o["num_streams"].strip() else None)
        dds = o["disable_dynamic_shapes"].strip().lower()
        if dds not in _TRUE | _FALSE:
            raise ProviderOptionError(f"{self.name}: disable_dynamic_shapes must be True or False, "
                                      f"got {o['disable_dynamic_shapes']!r}")
        self.static_shapes = dds in _TRUE
        self.cache_dir = o["cache_dir"]
        self.extra_config = _load_config(self.name, o["load_config"])
        devices = _ov_devices()
        if not _device_present(self.device_type, devices):
            raise RuntimeError(f"OpenVINO device {self.device_type!r} is not available here "
                               f"(OpenVINO lists: {', '.join(devices) or 'none'})")
        self.compiled_groups = 0   # how many groups this provider compiled (tests and diagnostics)
        # OpenVINO's answer on support per graph asked (capability.Support; the main graph and each
        # If/Loop/Scan body are asked once each): compile reuses the model converted for its group
        self._supports: list = []

    @classmethod
    def is_available(cls) -> bool:
        return bool(_ov_devices())

    @classmethod
    def describe_device(cls, device) -> dict:
        try:
            return {"vendor": "Intel", "ov_device": "CPU",
                    "name": str(ov_core().get_property("CPU", "FULL_DEVICE_NAME"))}
        except Exception:  # noqa: BLE001 - a description is optional
            return {}

    def compile_config(self) -> dict[str, Any]:
        """The properties every ``compile_model`` of this provider gets."""
        cfg: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
        hint = _PRECISIONS[self.precision]
        if hint is None:
            cfg["EXECUTION_MODE_HINT"] = "ACCURACY"
        else:
            cfg["INFERENCE_PRECISION_HINT"] = hint
        if self.num_threads:
            cfg["INFERENCE_NUM_THREADS"] = self.num_threads
        if self.num_streams is not None:
            cfg["NUM_STREAMS"] = self.num_streams
        if self.cache_dir:
            cfg["CACHE_DIR"] = self.cache_dir
        base = self.device_type.split(":")[0].split(".")[0]
        cfg.update(self.extra_config.get(self.device_type, self.extra_config.get(base, {})))
        return cfg

    def get_capability(self, view: GraphView) -> list[Capability]:
        from engineroom.providers.openvino.capability import claim

        caps, sup = claim(view, ov_core(), self.device_type, self._supports[-1] if self._supports else None)
        self._supports.append(sup)
        return caps

    def compile(self, group: GroupView) -> Callable:
        from engineroom.providers.openvino.compiled import compile_group

        ov_model = None
        for sup in self._supports:
            if sup.ov_model is not None and sup.matches(group):
                ov_model, sup.ov_model = sup.ov_model, None   # the model get_capability converted is this group
                break
        fn = compile_group(group, ov_core(), self.device_type, self.compile_config(), self.static_shapes,
                           ov_model)
        self.compiled_groups += 1
        return fn


def _int_option(provider: str, name: str, value: str, minimum: int) -> int:
    try:
        n = int(str(value).strip())
    except ValueError:
        raise ProviderOptionError(f"{provider}: {name} must be an integer, got {value!r}") from None
    if n < minimum:
        raise ProviderOptionError(f"{provider}: {name} must be >= {minimum}, got {n}")
    return n


def _load_config(provider: str, value: str) -> dict[str, dict[str, Any]]:
    """onnxruntime's ``load_config``: a JSON file (or JSON text) mapping device -> properties."""
    value = value.strip()
    if not value:
        return {}
    try:
        if os.path.isfile(value):
            with open(value, encoding="utf-8") as f:
                data = json.load(f)
        else:
            data = json.loads(value)
    except (OSError, ValueError) as e:
        raise ProviderOptionError(f"{provider}: load_config must be a JSON file or JSON text "
                                  f"{{\"DEVICE\": {{\"PROPERTY\": value}}}}: {e}") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ProviderOptionError(f"{provider}: load_config must map device names to property dicts")
    return {str(k).upper(): dict(v) for k, v in data.items()}
