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
    feed = _feed_order(model, group)
    params = model.get_parameters()
    untyped = tuple(i for i, p in enumerate(params)
                    if p.get_element_type().is_dynamic() or p.get_partial_shape().rank.is_dynamic)
    dynamic = any(p.get_partial_shape().is_dynamic for p in params)
    if untyped or (static_shapes and dynamic):
        fn = _PerSignature(model, core, device, config, untyped, static_shapes and dynamic)
    else:
        fn = _Compiled(core.compile_model(model, device, config))
    if feed is None:
        return fn
    return lambda *inputs: fn(*[inputs[i] for i in feed])


def _feed_order(model, group: GroupView) -> list[int] | None:
    """Which of the group's inputs OpenVINO's model takes, in its order (None: all, in the group's).
    OpenVINO keeps the ONNX graph's order but drops inputs nothing reads; outputs must all be there."""
    names = [set(p.get_names()) for p in model.inputs]
    if len(names) == len(group.inputs) and all(not n or g in n for n, g in zip(names, group.inputs)):
        feed = None
    else:
        where = {g: i for i, g in enumerate(group.inputs)}
        feed = []
        for n in names:
            hit = [where[x] for x in n if x in where]
            if not hit:
                raise RuntimeError(f"OpenVINO's model has an input {sorted(n)} the group does not: {group.inputs}")
            feed.append(hit[0])
    outs = [p.get_names() for p in model.outputs]
    if len(outs) != len(group.outputs) or any(n and g not in n for n, g in zip(outs, group.outputs)):
        raise RuntimeError(f"OpenVINO reordered the group's outputs: {outs} for {group.outputs}")
    return feed


class _Compiled:
    """One compiled model; one infer request per calling thread (``run`` is thread-safe per session)."""

    def __init__(self, compiled):
        import openvino as ov

        self.compiled = compiled
        self._local = threading.local()
        # OpenVINO hands bfloat16 results out as float16 arrays holding bfloat16 bits, and takes
        # bfloat16 inputs only as its own tensors
        self._bf16 = [i for i, p in enumerate(compiled.outputs) if p.get_element_type() == ov.Type.bf16]
        self._bf16_in = [i for i, p in enumerate(compiled.inputs) if p.get_element_type() == ov.Type.bf16]

    def __call__(self, *inputs) -> tuple:
        req = getattr(self._local, "request", None)
        if req is None:
            req = self._local.request = self.compiled.create_infer_request()
        # share_inputs: OpenVINO reads the NumPy buffers in place (it refuses read-only ones, such as
        # broadcast views); outputs are copied out of the request, whose buffers the next call overwrites.
        if not all(x.flags.writeable for x in inputs if isinstance(x, np.ndarray)) or self._bf16_in:
            inputs = self._prepare(inputs)
        out = req.infer(inputs, share_inputs=True).to_tuple()
        if self._bf16:
            import ml_dtypes

            out = list(out)
            for i in self._bf16:
                out[i] = out[i].view(ml_dtypes.bfloat16)
            out = tuple(out)
        return out

    def _prepare(self, inputs) -> list:
        import openvino as ov

        xs = [x if not isinstance(x, np.ndarray) or x.flags.writeable else np.array(x) for x in inputs]
        for i in self._bf16_in:
            x = np.asarray(xs[i])
            x = x if x.flags.c_contiguous else x.copy(order="C")   # (ascontiguousarray makes 0-d 1-d)
            t = ov.Tensor(ov.Type.bf16, ov.Shape(list(x.shape)))
            t.data[...] = x.view(np.float16)
            xs[i] = t
        return xs


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
