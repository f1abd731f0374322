"""IOBinding: onnxruntime's ``IOBinding`` (inputs and outputs bound by name, on the host or on a device)
and the run it makes, ``InferenceSession.run_with_iobinding``.

:class:`IOBinding` is the user's object; it reaches its session through one attribute, the session's
:class:`SessionBinding` (``session._binding``, made anew whenever the session is, as onnxruntime's
IOBinding reads ``session._sess``). A :class:`SessionBinding` knows what a binding needs of one session:
its feed checks, its providers' devices, its plan (and the variants of it whose outputs end on devices)
and its run context.
"""
from __future__ import annotations

import ctypes
import threading
from typing import Any

import numpy as np

from engineroom.errors import Fail, InvalidArgument
from engineroom.executor import execute
from engineroom.feeds import Feeds, to_numpy
from engineroom.plan import Plan, type_string
from engineroom.plugin_sdk import Device
from engineroom.plugin_sdk.binding import bound_outputs
from engineroom.values import OrtValue, held_by, provider_for_device


class IOBinding:
    """onnxruntime's IOBinding: inputs and outputs bound by name, on the host or on a device, for
    ``InferenceSession.run_with_iobinding``. An input bound on the device that reads it is not copied;
    an output bound to a device is returned there (no round trip through the host).

    Inputs are checked when bound (name, element type, rank, fixed dimensions), with ``run``'s
    messages; a bound array is referenced, not copied, so in-place changes before a run are seen.
    """

    def __init__(self, session: Any):
        self._session = session
        self._inputs: dict[str, tuple[Any, Any]] = {}        # name -> (value, provider or None)
        self._outputs: dict[str, tuple[Any, Any]] = {}       # name -> (provider or None, OrtValue to fill)
        self._results: list[OrtValue] = []

    @property
    def _side(self) -> "SessionBinding":
        return self._session._binding   # read on each use: set_providers makes the session anew

    # -- inputs ---------------------------------------------------------------------------------
    def bind_cpu_input(self, name: str, arr_on_cpu: np.ndarray) -> None:
        self._inputs[name] = (self._side.feeds.check_bound(name, arr_on_cpu), None)

    def bind_input(self, name: str, device_type: str, device_id: int, element_type, shape, buffer_ptr: int) -> None:
        """Bind ``buffer_ptr`` (a dense C-order buffer of ``element_type`` and ``shape``, owned by the
        caller) without a copy: host memory, or device memory of a provider with ``from_pointer``."""
        side = self._side
        provider, value = side.wrap_pointer(device_type, device_id, element_type, shape, buffer_ptr)
        self._inputs[name] = (side.feeds.check_bound(name, value), provider)

    def bind_ortvalue_input(self, name: str, ortvalue: OrtValue) -> None:
        value, provider = held_by(ortvalue)
        self._inputs[name] = (self._side.feeds.check_bound(name, value), provider)

    def synchronize_inputs(self) -> None:
        for p in {id(p): p for _, p in self._inputs.values() if p is not None}.values():
            p.synchronize()

    def clear_binding_inputs(self) -> None:
        self._inputs.clear()

    # -- outputs --------------------------------------------------------------------------------
    def bind_output(self, name: str, device_type: str = "cpu", device_id: int = 0, element_type=None,
                    shape=None, buffer_ptr: int | None = None) -> None:
        """Return output ``name`` on a device (allocated by the session), or write it into
        ``buffer_ptr`` (then ``element_type`` and ``shape`` are required, as in onnxruntime)."""
        side = self._side
        side.feeds.output_index(name)
        if buffer_ptr is None:
            self._outputs[name] = (side.provider_on(device_type, device_id), None)
            return
        if element_type is None:
            raise ValueError("`element_type` argument is missing")
        if shape is None:
            raise ValueError("`shape` argument is missing")
        provider, value = side.wrap_pointer(device_type, device_id, element_type, shape, buffer_ptr)
        self._outputs[name] = (provider, OrtValue(value, provider))

    def bind_ortvalue_output(self, name: str, ortvalue: OrtValue) -> None:
        """Write output ``name`` into ``ortvalue`` (its shape and type must match the result)."""
        self._side.feeds.output_index(name)
        self._outputs[name] = (held_by(ortvalue)[1], ortvalue)

    def synchronize_outputs(self) -> None:
        for p in {id(p): p for p, _ in self._outputs.values() if p is not None}.values():
            p.synchronize()

    def get_outputs(self) -> list[OrtValue]:
        """The outputs of the last ``run_with_iobinding``, in the order they were bound."""
        return list(self._results)

    def get_outputs_as_ortvaluevector(self) -> list[OrtValue]:
        return self.get_outputs()

    def copy_outputs_to_cpu(self) -> list:
        return [v.numpy() for v in self._results]

    def clear_binding_outputs(self) -> None:
        self._outputs.clear()
        self._results = []


class SessionBinding:
    """What IOBinding needs of one session, and its ``run_with_iobinding``."""

    def __init__(self, feeds: Feeds, providers: list, plan: Plan, profiler=None, logid: str = ""):
        self.feeds = feeds
        self._providers = providers
        self._plan = plan
        self._profiler = profiler
        self._logid = logid
        self.variants: dict[tuple, Plan] = {}   # plans whose outputs end on devices, by output devices
        self._lock = threading.Lock()

    def provider_on(self, device_type: str, device_id: int, session_only: bool = True):
        """This session's provider on a device (None for the host), or InvalidArgument."""
        dev = Device(str(device_type).lower(), int(device_id))
        if dev.is_host:
            return None
        for p in self._providers:
            if p.device == dev:
                return p
        if not session_only:
            return provider_for_device(dev.type, dev.id)
        have = ", ".join(dict.fromkeys(str(p.device) for p in self._providers))
        raise InvalidArgument(f"no provider of this session runs on device '{dev}'; its devices: {have}")

    def wrap_pointer(self, device_type: str, device_id: int, element_type, shape, pointer) -> tuple:
        """(provider or None, a value over ``pointer``) for IOBinding's ``buffer_ptr``, without a copy."""
        dtype = np.dtype(element_type)
        shape = tuple(int(d) for d in shape)
        provider = self.provider_on(device_type, device_id, session_only=False)
        if provider is None:
            n = int(np.prod(shape, dtype=np.int64))
            if n == 0:
                return None, np.empty(shape, dtype)
            buf = (ctypes.c_char * (n * dtype.itemsize)).from_address(int(pointer))
            return None, np.frombuffer(buf, dtype=dtype, count=n).reshape(shape)
        try:
            return provider, provider.from_pointer(int(pointer), shape, dtype)
        except NotImplementedError as e:
            raise InvalidArgument(str(e)) from None

    def run(self, iobinding: IOBinding, run_options=None) -> None:
        """Run with ``iobinding``'s inputs; its outputs (``get_outputs()``) end where they were bound.
        ``run_options`` come with their deadline (``executor.Deadline``) where they set one.

        A device-bound input read only on its device passes the plan's copy step untouched; one read
        elsewhere too is brought to the host once. Outputs bound to a device run a variant of the plan
        whose outputs stay there (built once per set of output devices, sharing the kernels); outputs
        not bound are not copied anywhere.
        """
        if run_options is not None and run_options.terminate:
            raise Fail("Exiting due to terminate flag being set to true.")
        bound_out = iobinding._outputs
        if not bound_out:
            raise InvalidArgument("At least one output should be requested.")
        idx = [self.feeds.out_index[nm] for nm in bound_out]
        # outputs bound to a device end there; outputs not bound stay where they are produced
        on_device = {i: home for i, home in enumerate(self._plan.output_homes) if not home.is_host}
        for i, (p, _) in zip(idx, bound_out.values()):
            if p is not None and p.device in self._plan.devices and not p.device.is_host:
                on_device[i] = p.device
            else:
                on_device.pop(i, None)
        plan = self._plan_with_outputs_on(on_device) if on_device else self._plan
        feeds = self.feeds.from_bound(iobinding._inputs, plan)
        # host buffers bound to outputs are shown to the kernels, which may write them in place
        # (GroupQueryAttention's KV cache shared by past and present: plugin_sdk.binding)
        in_place = {}
        for nm, (p, t) in bound_out.items():
            if t is not None and (p is None or p.device.is_host):
                buf = held_by(t)[0]
                if isinstance(buf, np.ndarray):
                    in_place[nm] = buf
        with bound_outputs(in_place):
            outs = execute(plan, feeds, run_options, self._profiler, self._logid) if (
                run_options is not None or self._profiler is not None) else plan.run(feeds)
        results = []
        for i, (nm, (prov, target)) in zip(idx, bound_out.items()):
            v = outs[i]
            if prov is None or prov.device.is_host:
                v = to_numpy(self._on_host(v))
            elif not prov.holds(v):
                v = prov.to_device(self._on_host(v))
            if target is None:
                results.append(OrtValue(v, None if prov is None or prov.device.is_host else prov))
                continue
            dst = held_by(target)[0]
            if tuple(dst.shape) != tuple(v.shape) or np.dtype(dst.dtype) != np.dtype(v.dtype):
                raise InvalidArgument(f"output '{nm}' is {type_string(v.dtype)} of shape {list(v.shape)}; the "
                                      f"bound buffer is {type_string(dst.dtype)} of shape {list(dst.shape)}")
            if not _same_memory(dst, v):       # a kernel that wrote the bound buffer left nothing to copy
                dst[...] = v
            results.append(target)
        if run_options is None or run_options._config.get("disable_synchronize_execution_providers") != "1":
            for p in {id(p): p for p, _ in bound_out.values() if p is not None}.values():
                p.synchronize()
        iobinding._results = results

    def _plan_with_outputs_on(self, devices: dict[int, Any]) -> Plan:
        key = tuple(sorted(devices.items(), key=lambda kv: kv[0]))
        plan = self.variants.get(key)
        if plan is None:
            with self._lock:
                plan = self.variants.get(key)
                if plan is None:
                    plan = self.variants[key] = self._plan.with_output_devices(devices)
        return plan

    def _on_host(self, v: Any) -> Any:
        if v is None or isinstance(v, (np.ndarray, list, dict)):
            return v
        for p in self._plan.devices.values():
            if not p.device.is_host and p.holds(v):
                return p.to_host(v)
        return np.asarray(v)


def _same_memory(a: Any, b: Any) -> bool:
    """True when ``a`` and ``b`` are one array's memory (same start, shape, dtype, strides)."""
    if a is b:
        return True
    return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.shape == b.shape and a.dtype == b.dtype
            and a.strides == b.strides and a.__array_interface__["data"][0] == b.__array_interface__["data"][0])
