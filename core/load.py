"""Stages 1–2 of a session: load the model (path, bytes or ModelProto), check it, infer shapes.

External data is resolved only inside the model's folder. Local functions are inlined here (as
onnxruntime does); schema function ops are expanded later, only where no provider claims them.
"""
from __future__ import annotations

import math
import os
from typing import Any

import onnx
import onnx_ir as ir

from engineroom.autodiff import expand_gradients
from engineroom.errors import InvalidArgument, InvalidGraph, InvalidProtobuf, NoModel, NoSuchFile

_SKIPPED_CHECKS = ("No Op registered", "No opset import for domain", "is not a registered function/op",
                   "Unrecognized attribute", "Field 'shape' of 'type' is required but missing")


def load_proto(model: Any) -> tuple[onnx.ModelProto, str | None]:
    """The ModelProto for a path, bytes or ModelProto, and the folder external data may come from."""
    if isinstance(model, onnx.ModelProto):
        return model, None
    if isinstance(model, (bytes, bytearray, memoryview)):
        proto = onnx.ModelProto()
        try:
            proto.ParseFromString(bytes(model))
        except Exception as e:  # noqa: BLE001 - protobuf raises several kinds
            raise InvalidProtobuf(f"Load model from bytes failed: protobuf parsing failed ({e})") from None
        if not proto.HasField("graph"):
            raise InvalidProtobuf("Load model from bytes failed: the bytes hold no ONNX graph")
        return proto, None
    if isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        if not os.path.isfile(path):
            raise NoSuchFile(f"Load model from {path} failed: file doesn't exist")
        try:
            proto = onnx.load(path, load_external_data=False)
        except Exception as e:  # noqa: BLE001
            raise InvalidProtobuf(f"Load model from {path} failed: protobuf parsing failed ({e})") from None
        if not proto.HasField("graph"):
            raise InvalidProtobuf(f"Load model from {path} failed: the file holds no ONNX graph")
        return proto, os.path.dirname(os.path.abspath(path))
    raise NoModel(f"a model must be a path, bytes or onnx.ModelProto, got {type(model).__name__}")


def _resolve_external_data(proto: onnx.ModelProto, base_dir: str | None) -> None:
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    tensors = [t for t in _get_all_tensors(proto) if uses_external_data(t)]
    if not tensors:
        return
    if base_dir is None:
        raise InvalidArgument("the model refers to external data but was given as bytes/ModelProto: load it from "
                              "its path so external data can be found beside it")
    root = os.path.realpath(base_dir)
    for t in tensors:
        loc = next((e.value for e in t.external_data if e.key == "location"), "")
        full = os.path.realpath(os.path.join(root, loc))
        if os.path.isabs(loc) or os.path.commonpath([root, full]) != root:
            raise InvalidGraph(f"external data '{loc}' of tensor '{t.name}' lies outside the model's folder {root}")
        if not os.path.isfile(full):
            raise NoSuchFile(f"external data file '{loc}' of tensor '{t.name}' not found in {root}")
    onnx.external_data_helper.load_external_data_for_model(proto, root)


# Initializers above this many bytes travel by name only through checking and shape inference
# (both would copy the whole model otherwise), and become NumPy arrays once, at the end.
_LIGHT_BYTES = 1024


def _heavy(t: onnx.TensorProto) -> bool:
    if t.data_location == onnx.TensorProto.EXTERNAL or not t.HasField("raw_data") or t.ByteSize() <= _LIGHT_BYTES:
        return False
    try:
        return onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize >= 1 and t.data_type not in _PACKED
    except Exception:  # noqa: BLE001 - unknown element types travel whole
        return False


_PACKED = {getattr(onnx.TensorProto, n) for n in ("INT4", "UINT4", "INT2", "UINT2", "FLOAT4E2M1")
           if hasattr(onnx.TensorProto, n)}


def _light(proto: onnx.ModelProto, placeholders: bool) -> onnx.ModelProto:
    """The model without the payload of its heavy initializers: dims and types kept (for shape
    inference), or each replaced by a one-element placeholder (for the checker, which wants data)."""
    light = onnx.ModelProto()
    _copy_fields(light, proto, skip="graph")
    g, lg = proto.graph, light.graph
    _copy_fields(lg, g, skip="initializer")
    for t in g.initializer:
        if not _heavy(t):
            lg.initializer.add().CopyFrom(t)
            continue
        _check_payload(t)
        h = lg.initializer.add(name=t.name, data_type=t.data_type)
        if placeholders:
            h.raw_data = b"\0" * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
        else:
            h.dims.extend(t.dims)
    return light


def _copy_fields(dst, src, skip: str) -> None:
    """Copy every set field of message ``src`` into ``dst`` but the one named ``skip``."""
    for field, value in src.ListFields():
        if field.name == skip:
            continue
        if hasattr(value, "extend"):        # repeated
            getattr(dst, field.name).extend(value)
        elif hasattr(value, "CopyFrom"):    # message
            getattr(dst, field.name).CopyFrom(value)
        else:
            setattr(dst, field.name, value)


def _check_payload(t: onnx.TensorProto) -> None:
    """What the checker would say of a heavy tensor it does not see: data too short for its shape."""
    need = math.prod(t.dims) * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    if t.ByteSize() < need:
        raise InvalidGraph(f"This is an invalid model: TensorProto (tensor name: {t.name}) raw_data is too small "
                           f"for the declared shape {list(t.dims)} ({need} bytes required)")


def _check(proto: onnx.ModelProto) -> None:
    try:
        onnx.checker.check_model(_light(proto, placeholders=True))
    except onnx.checker.ValidationError as e:
        msg = str(e)
        # Unknown ops are reported by the partitioner, which names the providers that were asked.
        if any(s in msg for s in _SKIPPED_CHECKS):
            return
        raise InvalidGraph(f"This is an invalid model: {msg.strip()}") from None
    except ValueError as e:  # e.g. models over 2 GB handed in as protos
        raise InvalidGraph(f"This is an invalid model: {e}") from None


def _override_free_dims(proto: onnx.ModelProto, dims: dict[str, int]) -> None:
    for vi in proto.graph.input:
        if vi.type.HasField("tensor_type"):
            for d in vi.type.tensor_type.shape.dim:
                if d.HasField("dim_param") and d.dim_param in dims:
                    d.dim_value = dims[d.dim_param]


def load_model(model: Any, free_dims: dict[str, int] | None = None) -> ir.Model:
    """Load, resolve external data, check, inline local functions and infer shapes: an ``ir.Model``
    whose initializers are NumPy arrays (one copy of the weights; the proto is not kept)."""
    proto, base_dir = load_proto(model)
    if isinstance(model, onnx.ModelProto) and any(
            t.data_location == onnx.TensorProto.EXTERNAL for t in _all_tensors(proto)):
        proto = onnx.ModelProto()
        proto.CopyFrom(model)  # external data is loaded into it: never into the caller's proto
    _resolve_external_data(proto, base_dir)
    _check(proto)
    light = _light(proto, placeholders=False)  # what follows rewrites this copy, never the caller's
    if light.functions:
        from onnx import inliner

        light = inliner.inline_local_functions(light)
    if free_dims:
        _override_free_dims(light, free_dims)
    try:
        light = onnx.shape_inference.infer_shapes(light, check_type=False, strict_mode=False, data_prop=True)
    except Exception as e:  # noqa: BLE001 - non-strict inference should not raise; if it does, the model is bad
        raise InvalidGraph(f"shape inference failed: {e}") from None
    try:
        model_ir = ir.serde.deserialize_model(light)
    except Exception as e:  # noqa: BLE001
        raise InvalidGraph(f"cannot read the model's graph: {e}") from None
    _attach_weights(model_ir, proto)
    expand_gradients(model_ir)
    return model_ir


def _all_tensors(proto: onnx.ModelProto):
    from onnx.external_data_helper import _get_all_tensors

    return _get_all_tensors(proto)


def _attach_weights(model: ir.Model, proto: onnx.ModelProto) -> None:
    """Main-graph initializers become NumPy-backed tensors, read once from the full proto."""
    full = {t.name: t for t in proto.graph.initializer}
    for name, v in model.graph.initializers.items():
        t = full.get(name)
        if t is None:
            continue
        try:
            arr = onnx.numpy_helper.to_array(t)
        except Exception as e:  # noqa: BLE001 - a tensor whose data does not fit its type
            raise InvalidGraph(f"This is an invalid model: initializer '{name}' cannot be read: {e}") from None
        if arr.dtype.kind in "SU":
            arr = arr.astype(object)
        v.const_value = ir.tensor(arr, name=name) if arr.dtype != object else v.const_value
