"""Stages 1–2 of a session: load the model (path, bytes or ModelProto), check it, infer shapes.

External data is resolved only inside the model's folder. Local functions are inlined here (as
onnxruntime does); schema function ops are expanded later, only where no provider claims them.
"""
from __future__ import annotations

import functools
import math
import os
import sys
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from engineroom.autodiff import expand_gradients
from engineroom.errors import Fail, InvalidArgument, InvalidGraph, InvalidProtobuf, NoModel, NoSuchFile

# Checker complaints onnxruntime does not make: unknown ops (reported by the partitioner, which names
# the providers asked) and values declared without a type or shape (inference supplies them)
_SKIPPED_CHECKS = ("No Op registered", "No opset import for domain", "is not a registered function/op",
                   "Unrecognized attribute", "Field 'shape' of 'type' is required but missing",
                   "Field 'type' of 'value_info' is required but missing")


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


def _resolve_external_data(proto: onnx.ModelProto, base_dir: str | None, supplied=frozenset()) -> None:
    """Load external data from ``base_dir``; tensors named in ``supplied`` (SessionOptions.add_external_initializers)
    are not read: they become zeros here and the session puts the supplied arrays in their place."""
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    tensors = []
    for t in _get_all_tensors(proto):
        if uses_external_data(t) and t.name in supplied:
            t.data_location = onnx.TensorProto.DEFAULT
            del t.external_data[:]
            t.raw_data = bytes(math.prod(t.dims) * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize)
        elif uses_external_data(t):
            tensors.append(t)
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
    try:
        onnx.external_data_helper.load_external_data_for_model(proto, root)
    except (ValueError, OSError) as e:   # offset/length outside the file, a bad offset, ...
        raise InvalidGraph(f"This is an invalid model: external data cannot be read: {e}") from None


# Initializers above this many bytes travel by name only through checking and shape inference
# (both would copy the whole model otherwise), and become NumPy arrays once, at the end.
_LIGHT_BYTES = 1024


def _heavy(t: onnx.TensorProto) -> bool:
    # by the declared size: ByteSize() walks the payload (~0.1 s per load of an 80 MB model)
    if t.data_location == onnx.TensorProto.EXTERNAL or not t.HasField("raw_data") or t.data_type in _PACKED:
        return False
    try:
        size = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    except Exception:  # noqa: BLE001 - unknown element types travel whole
        return False
    return size >= 1 and math.prod(t.dims) * size > _LIGHT_BYTES


_PACKED = {getattr(onnx.TensorProto, n) for n in ("INT4", "UINT4", "INT2", "UINT2", "FLOAT4E2M1")
           if hasattr(onnx.TensorProto, n)}


def _light(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, bytes], dict[str, onnx.TensorProto]]:
    """The model without the payload of its heavy initializers (dims and types kept, for shape inference),
    those initializers' names -> their raw data (read once: protobuf copies it on every read, and
    ``_attach_weights`` makes the arrays from it), and the main graph's Constant nodes that hold a tensor
    turned into initializers of their output's name, as onnxruntime's graph does at load at every
    optimization level: exporters that hold every weight in a Constant (Paddle: 878 of picodet_layout's
    1,493 nodes) cost a node, its deserialization and a constant fold each otherwise. The third: those
    constants' names -> their tensors in ``proto``, for ``_attach_weights``."""
    light = onnx.ModelProto()
    _copy_fields(light, proto, skip="graph")
    g, lg = proto.graph, light.graph
    _copy_fields(lg, g, skip=("initializer", "node"))
    taken = {v.name for v in g.input} | {t.name for t in g.initializer}
    held, nodes = {}, []
    # before IR version 4 every initializer must also be a graph input: Constants stay nodes there
    hold = proto.ir_version >= 4
    for n in g.node:
        t = _held_tensor(n) if hold else None
        if t is not None and n.output[0] not in taken and n.output[0] not in held:
            held[n.output[0]] = t
        else:
            nodes.append(n)
    lg.node.extend(nodes)
    heavy = {}
    for name, t in (*((t.name, t) for t in g.initializer), *held.items()):
        # int32/int64 constants travel whole: shape inference reads their data (they may be shapes)
        if not _heavy(t) or (name in held and t.data_type in _SHAPE_TYPES):
            lg.initializer.add().CopyFrom(t)
            lg.initializer[-1].name = name
            continue
        raw = _check_payload(t)
        lg.initializer.add(name=name, data_type=t.data_type).dims.extend(t.dims)
        heavy[name] = raw
    return light, heavy, held


_SHAPE_TYPES = frozenset((onnx.TensorProto.INT32, onnx.TensorProto.INT64))


def _held_tensor(n: onnx.NodeProto) -> onnx.TensorProto | None:
    """The tensor a main-graph Constant node holds in its ``value`` attribute (the form exporters write
    weights in), else None (other forms stay nodes and are folded at level 1)."""
    if n.op_type != "Constant" or n.domain not in ("", "ai.onnx") or len(n.attribute) != 1 or n.input \
            or len(n.output) != 1 or not n.output[0]:
        return None
    a = n.attribute[0]
    if a.name != "value" or a.type != onnx.AttributeProto.TENSOR or a.ref_attr_name:
        return None
    return a.t


def _copy_fields(dst, src, skip) -> None:
    """Copy every set field of message ``src`` into ``dst`` but the one(s) named ``skip``."""
    skip = (skip,) if isinstance(skip, str) else skip
    for field, value in src.ListFields():
        if field.name in skip:
            continue
        if hasattr(value, "extend"):        # repeated
            getattr(dst, field.name).extend(value)
        elif hasattr(value, "CopyFrom"):    # message
            getattr(dst, field.name).CopyFrom(value)
        else:
            setattr(dst, field.name, value)


def _check_payload(t: onnx.TensorProto) -> bytes:
    """What the checker would say of a heavy tensor it does not see: data too short for its shape. Returns
    the raw data."""
    raw = t.raw_data
    need = math.prod(t.dims) * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    if len(raw) < need:
        raise InvalidGraph(f"This is an invalid model: TensorProto (tensor name: {t.name}) raw_data is too small "
                           f"for the declared shape {list(t.dims)} ({need} bytes required)")
    return raw


def _check(light: onnx.ModelProto, heavy) -> None:
    """onnx.checker on a copy of ``light`` (repaired) whose ``heavy`` initializers are one-element
    placeholders: the checker wants data, and copying the stripped model costs less than stripping twice."""
    checked = onnx.ModelProto()
    checked.CopyFrom(light)
    placeholders = [t for t in checked.graph.initializer if t.name in heavy]
    for t in placeholders:
        del t.dims[:]
        t.raw_data = b"\0" * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    try:
        onnx.checker.check_model(checked)
    except onnx.checker.ValidationError as e:
        msg = str(e)
        # Unknown ops are reported by the partitioner, which names the providers that were asked.
        if any(s in msg for s in _SKIPPED_CHECKS):
            return
        raise InvalidGraph(f"This is an invalid model: {msg.strip()}") from None
    except ValueError as e:  # e.g. models over 2 GB handed in as protos
        raise InvalidGraph(f"This is an invalid model: {e}") from None


def _subgraphs(node: onnx.NodeProto):
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            yield a.g
        elif a.type == onnx.AttributeProto.GRAPHS:
            yield from a.graphs


def _graphs(g: onnx.GraphProto):
    """``g`` and every graph nested in its nodes' attributes, outer first."""
    yield g
    for n in g.node:
        for sg in _subgraphs(n):
            yield from _graphs(sg)


def _repair(proto: onnx.ModelProto) -> None:
    """What onnxruntime accepts and the checker or our IR would not, made standard in our own copy:
    nodes put in topological order (some converters write them otherwise; onnxruntime sorts them),
    and negative dims made unknown (Paddle exports declare ``-1`` for a free dim; onnxruntime reads
    any negative dim as symbolic, and so does shape inference once it is unset)."""
    for g in _graphs(proto.graph):
        for vi in (*g.input, *g.output, *g.value_info):
            for d in _tensor_dims(vi.type):
                if d.HasField("dim_value") and d.dim_value < 0:
                    d.ClearField("dim_value")
    _sort_nodes(proto.graph)


def _tensor_dims(tp: onnx.TypeProto):
    while True:
        kind = tp.WhichOneof("value")
        if kind in ("tensor_type", "sparse_tensor_type"):
            t = getattr(tp, kind)
            return t.shape.dim if t.HasField("shape") else ()
        if kind in ("sequence_type", "optional_type"):
            tp = getattr(tp, kind).elem_type
        elif kind == "map_type":
            tp = tp.map_type.value_type
        else:
            return ()


def _outer_names(g: onnx.GraphProto) -> set[str]:
    """Names ``g``'s nodes (nested graphs included) read from an enclosing scope."""
    defined = {v.name for v in g.input} | {t.name for t in g.initializer}
    defined |= {t.values.name for t in g.sparse_initializer}
    used: set[str] = set()
    for n in g.node:   # in any order: the subgraph may be unsorted yet
        used.update(x for x in n.input if x)
        for sg in _subgraphs(n):
            used |= _outer_names(sg)
        defined.update(n.output)
    return used - defined


def _sort_nodes(g: onnx.GraphProto) -> None:
    """Put ``g``'s nodes, and those of its subgraphs, in topological order, keeping the written order
    where it is free (Kahn's algorithm, lowest index first). A node depends on the producers of its
    inputs and of the outer-scope names its subgraphs read. A real cycle is refused, naming its nodes."""
    nodes = list(g.node)
    subs = [list(_subgraphs(n)) for n in nodes]     # one walk of the attributes (most nodes have none)
    for sgs in subs:
        for sg in sgs:
            _sort_nodes(sg)
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    deps = []
    for n, sgs in zip(nodes, subs):
        names = {x for x in n.input if x}
        for sg in sgs:
            names |= _outer_names(sg)
        deps.append({producer[x] for x in names if x in producer})
    if all(d < i for i, ds in enumerate(deps) for d in ds):
        return
    import heapq

    users: list[list[int]] = [[] for _ in nodes]
    waiting = [len(ds) for ds in deps]
    for i, ds in enumerate(deps):
        for d in ds:
            users[d].append(i)
    ready = [i for i, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for u in users[i]:
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(ready, u)
    if len(order) < len(nodes):
        # onnxruntime's kind and words, and the cycle it does not name
        raise Fail(f"This is an invalid model. Error: the graph{_graph_name(g)} is not acyclic: it has the cycle "
                   f"{_cycle(nodes, deps, waiting)}")
    del g.node[:]
    g.node.extend(nodes[i] for i in order)


def _graph_name(g: onnx.GraphProto) -> str:
    return f" '{g.name}'" if g.name else ""


def _cycle(nodes: list, deps: list[set[int]], waiting: list[int]) -> str:
    """One cycle among the nodes left unsorted, written producer first: every such node waits on
    another left unsorted, so following those waits from any of them comes back round."""
    def label(i):
        n = nodes[i]
        return f"'{n.name}' ({n.op_type})" if n.name else f"#{i} ({n.op_type}, output '{n.output[0]}')"

    seen: dict[int, int] = {}
    path = []
    i = next(k for k, w in enumerate(waiting) if w > 0)
    while i not in seen:
        seen[i] = len(path)
        path.append(i)
        i = min(d for d in deps[i] if waiting[d] > 0)
    loop = path[seen[i]:][::-1]
    first = loop.index(min(loop))   # begin at the node written first
    loop = loop[first:] + loop[:first]
    return " -> ".join(label(k) for k in [*loop, loop[0]])


# Graphs nested in graphs (If/Loop/Scan bodies) are walked recursively here and in the planner; protobuf's
# parser stops at 100 message levels (~32 graph levels), and a ModelProto built in Python is held to the same.
MAX_GRAPH_DEPTH = 32


def _check_depth(g: onnx.GraphProto) -> None:
    todo = [(g, 1)]
    while todo:
        g, depth = todo.pop()
        if depth > MAX_GRAPH_DEPTH:
            raise InvalidGraph(f"This is an invalid model: subgraphs are nested more than {MAX_GRAPH_DEPTH} levels "
                               f"deep (graph '{g.name}')")
        todo.extend((sg, depth + 1) for n in g.node for sg in _subgraphs(n))


def _check_fields(proto: onnx.ModelProto) -> None:
    """What protobuf and the checker let through and the IR cannot hold: a name that is not valid UTF-8
    (protobuf hands a repeated string over as bytes) and an attribute of no type."""
    nodes = [n for g in _graphs(proto.graph) for n in g.node] + [n for f in proto.functions for n in f.node]
    opsets = {imp.domain if imp.domain != "ai.onnx" else "": imp.version for imp in proto.opset_import}
    for dom, version in opsets.items():
        if not 0 <= version < 2 ** 31:
            raise InvalidGraph(f"This is an invalid model: opset import of domain '{dom or 'ai.onnx'}' has version "
                               f"{version}")
    for n in nodes:
        for nm in (n.op_type, n.domain, n.name, *n.input, *n.output):
            if not isinstance(nm, str):
                raise InvalidProtobuf(f"Load model failed: the name {nm!r} of a node, its op type, domain, input or "
                                      f"output is not valid UTF-8")
        for a in n.attribute:
            if a.type == onnx.AttributeProto.UNDEFINED:
                raise InvalidGraph(f"This is an invalid model: attribute '{a.name}' of node '{n.name}' ({n.op_type}) "
                                   f"has no type")
            for t in (a.t,) if a.type == onnx.AttributeProto.TENSOR else a.tensors:
                if _raw_fits(t):
                    continue    # to_array would succeed: decoding every weight of a Constant-held model costs
                try:   # data that disagrees with its dims fails here, not in a pass that reads it later
                    onnx.numpy_helper.to_array(t)
                except Exception as e:  # noqa: BLE001 - numpy_helper raises several kinds
                    raise InvalidGraph(f"This is an invalid model: tensor attribute '{a.name}' of node '{n.name}' "
                                       f"({n.op_type}) cannot be read: {e}") from None
        _check_attribute_types(n, opsets)
        if n.op_type == "Split" and n.domain in ("", "ai.onnx"):
            # onnx's shape inference indexes past the outputs (an assertion that aborts the process)
            k = next((a.i for a in n.attribute if a.name == "num_outputs"), None)
            if k is not None and k != len(n.output):
                raise InvalidGraph(f"This is an invalid model: Split node '{n.name}' has num_outputs {k} but "
                                   f"{len(n.output)} outputs")


# element types whose raw data ``numpy_helper.to_array`` reads as one ``frombuffer(...).reshape(dims)``
_PLAIN_ITEMSIZE = {getattr(onnx.TensorProto, n): k for n, k in (
    ("FLOAT", 4), ("DOUBLE", 8), ("FLOAT16", 2), ("BOOL", 1), ("INT8", 1), ("UINT8", 1), ("INT16", 2),
    ("UINT16", 2), ("INT32", 4), ("UINT32", 4), ("INT64", 8), ("UINT64", 8))}


def _raw_fits(t: onnx.TensorProto) -> bool:
    """``t`` holds in-file raw data of a plain type, exactly as long as its dims say (so ``to_array`` reads it)."""
    size = _PLAIN_ITEMSIZE.get(t.data_type)
    if size is None or t.data_location != onnx.TensorProto.DEFAULT or not t.HasField("raw_data") \
            or t.HasField("segment") or any(d < 0 for d in t.dims):
        return False
    need = math.prod(t.dims) * size
    return need > 0 and len(t.raw_data) == need


@functools.lru_cache(maxsize=4096)
def _schema_facts(op_type: str, version: int, domain: str):
    """(since_version, min/max inputs, min/max outputs, {attribute: its type}) of the op's schema, or None
    where it has none: read once per op, not per node (``OpSchema.attributes`` builds a dict a call)."""
    try:
        sc = onnx.defs.get_schema(op_type, version, domain)
    except onnx.defs.SchemaError:
        return None
    return (sc.since_version, sc.min_input, sc.max_input, sc.min_output, sc.max_output,
            {name: (int(a.type.value), a.type.name) for name, a in sc.attributes.items()})


def _check_arity(proto: onnx.ModelProto) -> None:
    """Each node of a known op has as many inputs and outputs as its schema allows, as onnxruntime checks.
    The checker says so too, but stops at its first complaint, which may be one we skip (an output with
    no shape), and a pass that trusts the arity (a fusion unpacking MatMul's two inputs) then fails."""
    opsets = {imp.domain if imp.domain != "ai.onnx" else "": imp.version for imp in proto.opset_import}
    for g in _graphs(proto.graph):
        for n in g.node:
            domain = n.domain if n.domain != "ai.onnx" else ""
            if domain not in opsets:
                continue
            sc = _schema_facts(n.op_type, opsets[domain], domain)
            if sc is None:
                continue        # an unknown op: the partitioner names it and the providers asked
            since, min_in, max_in, min_out, max_out, _ = sc
            for what, k, lo, hi in (("input", len(n.input), min_in, max_in),
                                    ("output", len(n.output), min_out, max_out)):
                if not lo <= k <= hi:
                    raise InvalidGraph(f"This is an invalid model: node '{n.name}' ({n.op_type}) has {k} {what}s, "
                                       f"its schema ({domain or 'ai.onnx'} opset {since}) allows "
                                       f"{lo} to {hi}")


def _check_attribute_types(n: onnx.NodeProto, opsets: dict[str, int]) -> None:
    """Each attribute of the type the op's schema declares. The checker says so too, but its first complaint
    about an unknown op or attribute (which the partitioner reports better) hides the rest."""
    domain = n.domain if n.domain != "ai.onnx" else ""
    if domain not in opsets or not n.attribute:
        return
    sc = _schema_facts(n.op_type, opsets[domain], domain)
    if sc is None:
        return
    spec = sc[5]
    for a in n.attribute:
        want = spec.get(a.name)
        if want is not None and a.type != want[0] and not a.ref_attr_name:
            raise InvalidGraph(f"This is an invalid model: attribute '{a.name}' of node '{n.name}' ({n.op_type}) must "
                               f"be {want[1]}, got {onnx.AttributeProto.AttributeType.Name(a.type)}")


def _unknown_output_dims(proto: onnx.ModelProto) -> list[tuple[int, int]]:
    return [(k, j) for k, o in enumerate(proto.graph.output) for j, d in enumerate(_tensor_dims(o.type))
            if not d.HasField("dim_value") and not d.HasField("dim_param")]


def _forget_generated_names(proto: onnx.ModelProto, unknown: list[tuple[int, int]]) -> None:
    """Shape inference names the unknown dims of graph outputs ``unk__N``; onnxruntime's NodeArg shows
    them as None, so a name inference made up for an output dim the model left unknown is dropped."""
    for k, j in unknown:
        dims = _tensor_dims(proto.graph.output[k].type)
        if j < len(dims) and dims[j].dim_param.startswith("unk__"):
            dims[j].ClearField("dim_param")


def _override_free_dims(proto: onnx.ModelProto, dims: dict[str, int]) -> None:
    for vi in proto.graph.input:
        if vi.type.HasField("tensor_type"):
            for d in vi.type.tensor_type.shape.dim:
                if d.HasField("dim_param") and d.dim_param in dims:
                    d.dim_value = dims[d.dim_param]


def load_model(model: Any, free_dims: dict[str, int] | None = None, external_data_dir: str | None = None,
               supplied=frozenset()) -> ir.Model:
    """Load, resolve external data, check, inline local functions and infer shapes: an ``ir.Model``
    whose initializers are NumPy arrays (one copy of the weights; the proto is not kept). External data of a
    model given as bytes is read from ``external_data_dir`` (onnxruntime's
    ``session.model_external_initializers_file_folder_path``); tensors named in ``supplied`` are not read."""
    try:
        return _load_model(model, free_dims, external_data_dir, supplied)
    except UnicodeDecodeError as e:   # protobuf reads string fields lazily: a damaged one fails when read
        raise InvalidProtobuf(f"Load model failed: a string field of the model is not valid UTF-8 ({e})") from None


def _load_model(model: Any, free_dims: dict[str, int] | None, external_data_dir: str | None,
                supplied) -> ir.Model:
    proto, base_dir = load_proto(model)
    if base_dir is None and external_data_dir:
        base_dir = external_data_dir
    if isinstance(model, onnx.ModelProto) and any(
            t.data_location == onnx.TensorProto.EXTERNAL for t in _all_tensors(proto)):
        proto = onnx.ModelProto()
        proto.CopyFrom(model)  # external data is loaded into it: never into the caller's proto
    _check_depth(proto.graph)
    _check_fields(proto)
    _check_arity(proto)
    _resolve_external_data(proto, base_dir, supplied)
    light, heavy, held = _light(proto)  # what follows rewrites this copy, never the caller's
    _repair(light)
    _check(light, heavy)
    if light.functions:
        from onnx import inliner

        light = inliner.inline_local_functions(light)
    if free_dims:
        _override_free_dims(light, free_dims)
    unknown = _unknown_output_dims(light)
    try:
        light = onnx.shape_inference.infer_shapes(light, check_type=False, strict_mode=False, data_prop=True)
    except Exception as e:  # noqa: BLE001 - non-strict inference should not raise; if it does, the model is bad
        raise InvalidGraph(f"shape inference failed: {e}") from e
    _forget_generated_names(light, unknown)
    model_ir = deserialize_model(light)
    _attach_weights(model_ir, proto, heavy, held)
    expand_gradients(model_ir)
    return model_ir


# onnx_ir (1.1) cannot represent map types: its serde raises "NotImplementedError: Map types are not
# supported yet" on any value typed map(...) or seq(map(...)) — ZipMap's output, skl2onnx's default for
# every classifier, and DictVectorizer's input. This is the one place that works around it: such a
# value reaches the IR untyped, its TypeProto kept (serialized) under MAP_TYPE_KEY in its metadata
# props, where ``views.value_type_proto`` reads it, and put back whenever the IR is serialized here.
MAP_TYPE_KEY = "engineroom.map_type"


def _has_map(tp: onnx.TypeProto) -> bool:
    kind = tp.WhichOneof("value")
    if kind == "map_type":
        return True
    if kind in ("sequence_type", "optional_type"):
        return _has_map(getattr(tp, kind).elem_type)
    return False


def _hide_map_types(proto: onnx.ModelProto) -> None:
    for g in _graphs(proto.graph):
        for vi in (*g.input, *g.output, *g.value_info):
            if vi.HasField("type") and _has_map(vi.type):
                vi.metadata_props.add(key=MAP_TYPE_KEY, value=vi.type.SerializeToString().hex())
                vi.ClearField("type")


def _restore_map_types(proto: onnx.ModelProto) -> None:
    for g in _graphs(proto.graph):
        for vi in (*g.input, *g.output, *g.value_info):
            keep = [p for p in vi.metadata_props if p.key != MAP_TYPE_KEY]
            if len(keep) == len(vi.metadata_props):
                continue
            hidden = next(p.value for p in vi.metadata_props if p.key == MAP_TYPE_KEY)
            vi.type.ParseFromString(bytes.fromhex(hidden))
            del vi.metadata_props[:]
            vi.metadata_props.extend(keep)


def deserialize_model(proto: onnx.ModelProto) -> ir.Model:
    """``ir.serde.deserialize_model`` of a proto of our own (map types are taken out of it first);
    a failure names its root cause, which onnx_ir wraps in one "Error calling ..." per level."""
    _hide_map_types(proto)
    try:
        return ir.serde.deserialize_model(proto)
    except Exception as e:  # noqa: BLE001 - onnx_ir raises several kinds, each wrapped in SerdeError
        root = e
        while root.__cause__ is not None:
            root = root.__cause__
        raise InvalidGraph(f"cannot read the model's graph: {type(root).__name__}: {root}") from e


def serialize_model(model: ir.Model) -> onnx.ModelProto:
    """``ir.serde.serialize_model`` with the map types ``deserialize_model`` took out put back."""
    proto = ir.serde.serialize_model(model)
    _restore_map_types(proto)
    return proto


def save_model(model: ir.Model, path: str) -> None:
    """The IR written to ``path`` (``optimized_model_filepath``), map types included."""
    if not any(MAP_TYPE_KEY in v.metadata_props for g in (model.graph, *model.graph.subgraphs())
               for v in (*g.inputs, *g.outputs, *(o for n in g for o in n.outputs))):
        ir.save(model, path)
        return
    onnx.save_model(serialize_model(model), path)


def _all_tensors(proto: onnx.ModelProto):
    from onnx.external_data_helper import _get_all_tensors

    return _get_all_tensors(proto)


def _attach_weights(model: ir.Model, proto: onnx.ModelProto, raws: dict[str, bytes],
                    held: dict[str, onnx.TensorProto]) -> None:
    """Main-graph initializers become NumPy-backed tensors, read once from the full proto (``raws``: the raw
    data ``_light`` read already, by name; ``held``: the Constant-held ones' tensors, by output name)."""
    full = {t.name: t for t in proto.graph.initializer}
    full.update(held)
    for name, v in model.graph.initializers.items():
        t = full.get(name)
        if t is None:
            continue
        raw = raws.get(name)
        try:
            if raw is not None and t.data_type in _PLAIN_ITEMSIZE and sys.byteorder == "little" \
                    and not t.HasField("segment"):
                # what numpy_helper.to_array does with raw data of these types, without reading it again
                arr = np.frombuffer(raw, dtype=onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).reshape(t.dims)
            else:
                arr = onnx.numpy_helper.to_array(t)
        except Exception as e:  # noqa: BLE001 - a tensor whose data does not fit its type
            raise InvalidGraph(f"This is an invalid model: initializer '{name}' cannot be read: {e}") from None
        if arr.dtype.kind in "SU":
            arr = arr.astype(object)
        # ir.Tensor, not ir.tensor: the same tensor for an array, without three protocol checks (~0.1 ms each)
        v.const_value = ir.Tensor(arr, name=name) if arr.dtype != object else v.const_value
