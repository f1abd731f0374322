"""What providers see of a graph: ``NodeView``s built from ``onnx_ir`` nodes (types, shapes,
attributes with ONNX defaults applied, constant inputs)."""
from __future__ import annotations

import functools
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from engineroom.load import MAP_TYPE_KEY
from engineroom.plugin_sdk import NodeView


def normalize_domain(domain: str) -> str:
    return "" if domain in ("", "ai.onnx") else domain


@functools.lru_cache(maxsize=4096)
def schema(op_type: str, domain: str, opset: int):
    try:
        return onnx.defs.get_schema(op_type, opset, domain)
    except onnx.defs.SchemaError:
        return None


@functools.lru_cache(maxsize=4096)
def _attr_defaults(op_type: str, domain: str, opset: int) -> dict[str, Any]:
    s = schema(op_type, domain, opset)
    if s is None:
        return {}
    out = {}
    for name, a in s.attributes.items():
        d = a.default_value
        if d is not None and d.type != onnx.AttributeProto.UNDEFINED:
            out[name] = _plain(onnx.helper.get_attribute_value(d))
    return out


def _plain(v: Any) -> Any:
    """Attribute values as plain Python/NumPy: str for strings, list for repeated, ndarray for tensors."""
    if isinstance(v, bytes):
        return v.decode("utf-8", errors="replace")
    if isinstance(v, onnx.TensorProto):
        return onnx.numpy_helper.to_array(v)
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def attr_value(a: ir.Attr) -> Any:
    t = a.type
    v = a.value
    if t == ir.AttributeType.TENSOR:
        return tensor_to_numpy(v)
    if t == ir.AttributeType.TENSORS:
        return [tensor_to_numpy(x) for x in v]
    if t == ir.AttributeType.SPARSE_TENSOR:
        return _sparse_to_dense(a)
    if t in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS, ir.AttributeType.TYPE_PROTO,
             ir.AttributeType.TYPE_PROTOS):
        return v
    if isinstance(v, tuple):
        return list(v)
    return v


def _sparse_to_dense(a: ir.Attr) -> np.ndarray:
    proto = ir.serde.serialize_attribute(a)
    sp = proto.sparse_tensor
    values = onnx.numpy_helper.to_array(sp.values)
    idx = onnx.numpy_helper.to_array(sp.indices)
    dense = np.zeros(int(np.prod(sp.dims)), dtype=values.dtype)
    if idx.ndim == 2:
        idx = np.ravel_multi_index(tuple(idx.T), tuple(sp.dims))
    dense[idx] = values
    return dense.reshape(tuple(sp.dims))


def tensor_to_numpy(t) -> np.ndarray:
    if t is None:
        return None
    arr = t.numpy()
    if isinstance(arr, np.ndarray) and arr.dtype.kind in "SUO":
        # ONNX strings are UTF-8 bytes; onnxruntime hands them out (and its kernels read them) as str
        arr = np.array([x.decode("utf-8", "surrogateescape") if isinstance(x, bytes) else x for x in arr.ravel()],
                       dtype=object).reshape(arr.shape)
    return arr


_NP_DTYPES: dict = {}     # ir.DataType -> NumPy dtype or None (DataType.numpy() costs ~20 us a call)


def value_dtype(v: ir.Value | None):
    if v is None or v.type is None or not isinstance(v.type, ir.TensorType):
        return None
    dt = v.dtype
    if dt not in _NP_DTYPES:
        try:
            _NP_DTYPES[dt] = np.dtype(dt.numpy())
        except Exception:  # noqa: BLE001 - types NumPy cannot hold
            _NP_DTYPES[dt] = None
    return _NP_DTYPES[dt]


def value_shape(v: ir.Value | None):
    if v is None or v.shape is None:
        return None
    return tuple(d if isinstance(d, int) else (str(d.value) if d.value is not None else None) for d in v.shape)


def value_type_proto(v: ir.Value | None):
    if v is not None and v.type is None and MAP_TYPE_KEY in v.metadata_props:
        tp = onnx.TypeProto()  # a map type onnx_ir cannot hold (see engineroom.load)
        tp.ParseFromString(bytes.fromhex(v.metadata_props[MAP_TYPE_KEY]))
        return tp
    if v is None or v.type is None:
        return None
    try:
        tp = ir.serde.serialize_type(v.type)
        if v.shape is not None and tp.HasField("tensor_type"):
            ir.serde.serialize_shape_into(tp, v.shape)
        return tp
    except Exception:  # noqa: BLE001
        return None


def type_proto_string(tp: onnx.TypeProto | None) -> str:
    """onnxruntime's spelling of a type: ``tensor(float)``, ``seq(map(int64,tensor(float)))``."""
    kind = tp.WhichOneof("value") if tp is not None else None
    if kind in ("tensor_type", "sparse_tensor_type"):
        name = onnx.helper.tensor_dtype_to_string(getattr(tp, kind).elem_type)[len("TensorProto."):].lower()
        return f"{'sparse_tensor' if kind == 'sparse_tensor_type' else 'tensor'}({name})"
    if kind == "sequence_type":
        return f"seq({type_proto_string(tp.sequence_type.elem_type)})"
    if kind == "optional_type":
        return f"optional({type_proto_string(tp.optional_type.elem_type)})"
    if kind == "map_type":
        key = onnx.helper.tensor_dtype_to_string(tp.map_type.key_type)[len("TensorProto."):].lower()
        return f"map({key},{type_proto_string(tp.map_type.value_type)})"
    return "unknown"


def node_view(node: ir.Node, index: int, opsets: dict[str, int], consts: dict[str, np.ndarray],
              protos: bool = True) -> NodeView:
    """The provider-facing view of ``node``; ``protos`` False leaves out the ONNX protos of its types
    and of the node (``input_types``, ``output_types``, ``proto``), which only some providers read."""
    domain = normalize_domain(node.domain)
    opset = opsets.get(domain, opsets.get("ai.onnx", 1) if domain == "" else 1)
    attrs = dict(_attr_defaults(node.op_type, domain, opset))
    for name, a in node.attributes.items():
        attrs[name] = attr_value(a)
    ins = node.inputs
    outs = node.outputs
    in_dtypes = tuple(value_dtype(v) for v in ins)
    # a value with no tensor dtype (a map, a sequence) is described only by its type proto: kernels taking
    # one (DictVectorizer, CastMap, the sequence ops) read it even where the provider needs no protos
    in_types = protos or any(d is None and v is not None for d, v in zip(in_dtypes, ins))
    return NodeView(
        index=index, op_type=node.op_type, domain=domain, opset=opset, name=node.name or "",
        input_names=tuple(v.name if v is not None else "" for v in ins),
        output_names=tuple(v.name for v in outs),
        input_dtypes=in_dtypes,
        output_dtypes=tuple(value_dtype(v) for v in outs),
        input_shapes=tuple(value_shape(v) for v in ins),
        output_shapes=tuple(value_shape(v) for v in outs),
        attrs=attrs,
        const_inputs=tuple(consts.get(v.name) if v is not None else None for v in ins),
        input_types=tuple(value_type_proto(v) for v in ins) if in_types else (),
        output_types=tuple(value_type_proto(v) for v in outs) if protos else (),
        # what GroupView.to_model() builds compiled groups from
        proto=ir.serde.serialize_node(node) if protos else None,
    )
