"""Stages 1–2 of a session: load the model (path, bytes or ModelProto), check it, infer shapes.

External data is resolved only inside the model's folder. Local functions are inlined here (as
onnxruntime does); schema function ops are expanded later, only where no provider claims them.
"""
from __future__ import annotations

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


def _check(proto: onnx.ModelProto) -> None:
    try:
        onnx.checker.check_model(proto)
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
    """Load, resolve external data, check, inline local functions and infer shapes: an ``ir.Model``."""
    proto, base_dir = load_proto(model)
    if isinstance(model, onnx.ModelProto):
        proto = onnx.ModelProto()
        proto.CopyFrom(model)  # never mutate the caller's proto
    _resolve_external_data(proto, base_dir)
    _check(proto)
    if proto.functions:
        from onnx import inliner

        proto = inliner.inline_local_functions(proto)
    if free_dims:
        _override_free_dims(proto, free_dims)
    try:
        proto = onnx.shape_inference.infer_shapes(proto, check_type=False, strict_mode=False, data_prop=True)
    except Exception as e:  # noqa: BLE001 - non-strict inference should not raise; if it does, the model is bad
        raise InvalidGraph(f"shape inference failed: {e}") from None
    try:
        model = ir.serde.deserialize_model(proto)
    except Exception as e:  # noqa: BLE001
        raise InvalidGraph(f"cannot read the model's graph: {e}") from None
    expand_gradients(model)
    return model
