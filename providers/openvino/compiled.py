"""A group compiled by OpenVINO: the callable one plan step runs, ``fn(*inputs) -> tuple``."""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Callable

import numpy as np

from engineroom.plugin_sdk import GroupView

SIGNATURE_CACHE = 8   # compiled input signatures kept per group (untyped inputs, static shapes)


def compile_group(group: GroupView, core: Any, device: str, config: dict, static_shapes: bool,
                  model: Any = None) -> Callable:
    """Build ``group`` as an ONNX model, read it into OpenVINO from bytes (unless ``model`` is that
    already, converted while asking for support), and compile it: once with dynamic dimensions, or
    once per input signature where it must: per input shape with ``static_shapes``, and per input
    dtype and rank where the group has inputs of unknown type or rank."""
    if model is None:
        model = core.read_model(group.to_model().SerializeToString())
    _check_ports(model, group)
    params = model.get_parameters()
    untyped = tuple(i for i, p in enumerate(params)
                    if p.get_element_type().is_dynamic() or p.get_partial_shape().rank.is_dynamic)
    dynamic = any(p.get_partial_shape().is_dynamic for p in params)
    if untyped or (static_shapes and dynamic):
        return _PerSignature(model, core, device, config, untyped, static_shapes and dynamic)
    return _Compiled(core.compile_model(model, device, config))


def _check_ports(model, group: GroupView) -> None:
    """OpenVINO keeps the ONNX graph's input and output order; make sure, as the plan relies on it."""
    ins = [next(iter(p.get_names()), "") for p in model.inputs]
    if len(ins) != len(group.inputs) or any(a and a != b for a, b in zip(ins, group.inputs)):
        raise RuntimeError(f"OpenVINO reordered the group's inputs: {ins} for {group.inputs}")
    outs = [p.get_names() for p in model.outputs]
    if len(outs) != len(group.outputs) or any(names and b not in names for names, b in zip(outs, group.outputs)):
        raise RuntimeError(f"OpenVINO reordered the group's outputs: {outs} for {group.outputs}")


class _Compiled:
    """One compiled model; one infer request per calling thread (``run`` is thread-safe per session)."""

    def __init__(self, compiled):
        self.compiled = compiled
        self._local = threading.local()

    def __call__(self, *inputs) -> tuple:
        req = getattr(self._local, "request", None)
        if req is None:
            req = self._local.request = self.compiled.create_infer_request()
        # share_inputs: OpenVINO reads the NumPy buffers in place; outputs are copied out of the
        # request, whose buffers the next call overwrites.
        return req.infer(inputs, share_inputs=True).to_tuple()


class _PerSignature:
    """Compiled per input signature, a few kept (LRU): the model's untyped inputs get the dtype and
    rank they meet, and with ``static`` every input its exact shape (``disable_dynamic_shapes``)."""

    def __init__(self, model, core, device: str, config: dict, untyped: tuple[int, ...], static: bool):
        self.model = model
        self.core = core
        self.device = device
        self.config = config
        self.untyped = untyped
        self.static = static
        self._cache: OrderedDict[tuple, _Compiled] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, *inputs) -> tuple:
        if self.static:
            key = tuple(np.shape(x) for x in inputs) + tuple(np.asarray(inputs[i]).dtype.str for i in self.untyped)
        else:
            key = tuple((np.asarray(inputs[i]).dtype.str, np.ndim(inputs[i])) for i in self.untyped)
        with self._lock:
            fn = self._cache.get(key)
            if fn is not None:
                self._cache.move_to_end(key)
            else:
                fn = self._cache[key] = _Compiled(self.core.compile_model(self._specialize(inputs), self.device,
                                                                          self.config))
                if len(self._cache) > SIGNATURE_CACHE:
                    self._cache.popitem(last=False)
        return fn(*inputs)

    def _specialize(self, inputs):
        import openvino as ov

        m = self.model.clone()
        params = m.get_parameters()
        for i in self.untyped:
            x = np.asarray(inputs[i])
            params[i].set_element_type(ov.Type(x.dtype))
            params[i].set_partial_shape(ov.PartialShape.dynamic(x.ndim))
        if self.static:
            for p, x in zip(params, inputs):
                p.set_partial_shape(ov.PartialShape(list(np.shape(x))))
        m.validate_nodes_and_infer_types()
        return m
