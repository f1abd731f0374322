"""Function ops that no provider of the session has a kernel for are expanded into their ONNX function
body (schema functions, context-dependent ones included) before partitioning, so the providers are
asked once, about the expanded graph. Whether a provider takes an op is a registry lookup
(``KernelProvider.kernel_for``); a compiling provider (OpenVINO) sees the function's body."""
from __future__ import annotations

import onnx
import onnx_ir as ir
from onnx import inliner

from engineroom.load import deserialize_model, serialize_model
from engineroom.plugin_sdk import KernelProvider
from engineroom.views import node_view, normalize_domain, schema, tensor_to_numpy

_ROUNDS = 8    # a function body may use function ops no provider takes either: expanded in the next round


def expand_unclaimed_functions(model: ir.Model, providers: list, opsets: dict[str, int]) -> bool:
    """Expand, in the main graph, each function op none of ``providers`` has a kernel for. True if any was."""
    expanded = False
    tried: set[str] = set()
    for _ in range(_ROUNDS):
        nodes = unclaimed_functions(model.graph, providers, opsets)
        key = ",".join(sorted(f"{n.domain}::{n.op_type}" for n in nodes))
        if not nodes or key in tried or not expand_functions(model, nodes, opsets):
            break
        tried.add(key)
        expanded = True
        opsets = {("" if d == "ai.onnx" else d): v for d, v in model.opset_imports.items()}
    return expanded


def unclaimed_functions(graph: ir.Graph, providers: list, opsets: dict[str, int]) -> list[ir.Node]:
    """The nodes of ``graph`` whose op has a function body and that no kernel provider has a kernel for."""
    kernels = [p for p in providers if isinstance(p, KernelProvider)]
    out = []
    consts: dict | None = None
    for i, node in enumerate(graph):
        dom = normalize_domain(node.domain)
        s = schema(node.op_type, dom, opsets.get(dom, 1))
        if s is None or not (s.has_function or s.has_context_dependent_function):
            continue
        if consts is None:
            consts = {nm: tensor_to_numpy(v.const_value) for nm, v in graph.initializers.items()
                      if v.const_value is not None and not v.is_graph_input()}
        view = node_view(node, i, opsets, consts, protos=False)
        if not any(p.kernel_for(view) is not None for p in kernels):
            out.append(node)
    return out

_DOMAIN = "engineroom.expand"


def _function_body(node: ir.Node, opset: int) -> onnx.FunctionProto | None:
    s = schema(node.op_type, normalize_domain(node.domain), opset)
    if s is None:
        return None
    if s.has_function:
        fn = s.get_function_with_opset_version(opset) if hasattr(s, "get_function_with_opset_version") else None
        if isinstance(fn, bytes):
            proto = onnx.FunctionProto()
            proto.ParseFromString(fn)
            fn = proto
        return fn or s.function_body
    if s.has_context_dependent_function:
        node_proto = ir.serde.serialize_node(node)
        types = [ir.serde.serialize_type(v.type).SerializeToString() if v is not None and v.type is not None
                 else onnx.TypeProto().SerializeToString() for v in node.inputs]
        try:
            raw = s.get_context_dependent_function_with_opset_version(
                opset, node_proto.SerializeToString(), types)
        except Exception:  # noqa: BLE001 - missing type info: no body
            try:
                raw = s.get_context_dependent_function(node_proto.SerializeToString(), types)
            except Exception:  # noqa: BLE001
                return None
        fn = onnx.FunctionProto()
        fn.ParseFromString(raw)
        return fn
    return None


def expand_functions(model: ir.Model, nodes: list[ir.Node], opsets: dict[str, int]) -> bool:
    """Replace each of ``nodes`` that has a function body by that body. True if any was expanded."""
    bodies = []
    for k, node in enumerate(nodes):
        dom = normalize_domain(node.domain)
        fn = _function_body(node, opsets.get(dom, 1))
        if fn is None or not fn.node:
            continue
        fn.name = f"{node.op_type}__{k}"
        fn.domain = _DOMAIN
        node.op_type = fn.name
        node.domain = _DOMAIN
        bodies.append(fn)
    if not bodies:
        return False
    proto = serialize_model(model)
    proto.functions.extend(bodies)
    proto.opset_import.append(onnx.helper.make_opsetid(_DOMAIN, 1))
    for fn in bodies:  # the body may use a domain the model does not import yet
        have = {o.domain for o in proto.opset_import}
        for o in fn.opset_import:
            if o.domain not in have:
                proto.opset_import.append(o)
                have.add(o.domain)
    proto = inliner.inline_local_functions(proto)
    del proto.opset_import[:]
    for d, v in model.opset_imports.items():
        if d != _DOMAIN:
            proto.opset_import.append(onnx.helper.make_opsetid(d, v))
    for fn in bodies:
        have = {o.domain for o in proto.opset_import}
        for o in fn.opset_import:
            if o.domain not in have and o.domain != _DOMAIN:
                proto.opset_import.append(o)
    try:
        proto = onnx.shape_inference.infer_shapes(proto, check_type=False, strict_mode=False, data_prop=True)
    except Exception:  # noqa: BLE001 - shapes are a help, not a requirement
        pass
    new = deserialize_model(proto)
    model.graph = new.graph  # an ir.Model's opset imports are its graph's: they come along
    return True
