"""Level-1 constant folding: nodes whose inputs are all constants run once, with the CPU kernels,
at session creation, and their outputs become initializers. Shape of a static shape folds too."""
from __future__ import annotations

import numpy as np
import onnx_ir as ir

from engineroom.op_facts import RANDOM_OPS
from engineroom.plugin_sdk import KernelInfo
from engineroom.views import node_view, normalize_domain, tensor_to_numpy

_NONDETERMINISTIC = RANDOM_OPS
_MAX_ELEMENTS = 1 << 22   # don't bloat the model with huge folded tensors


def fold_constants(model: ir.Model, cpu, graph: ir.Graph | None = None) -> int:
    """Fold the constant nodes of ``graph`` (the main graph by default, else a control-flow body)."""
    graph = model.graph if graph is None else graph
    opsets = {normalize_domain(d): v for d, v in model.opset_imports.items()}
    inputs = {v.name for v in graph.inputs}
    consts: dict[str, np.ndarray] = {n: tensor_to_numpy(v.const_value) for n, v in graph.initializers.items()
                                     if v.const_value is not None and n not in inputs}
    folded = 0
    for node in list(graph):
        if normalize_domain(node.domain) != "" or node.op_type in _NONDETERMINISTIC:
            continue
        if any(a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for a in node.attributes.values()):
            continue
        outs = _evaluate(node, opsets, consts, cpu)
        if outs is None:
            continue
        if any(o is None or not isinstance(o, np.ndarray) or o.size > _MAX_ELEMENTS for o in outs):
            continue
        _replace_with_constants(graph, node, outs, consts)
        folded += 1
    return folded


def _evaluate(node, opsets, consts, cpu):
    if node.op_type == "Shape":
        return _static_shape(node, opsets, consts)
    if node.op_type == "Constant":
        value = _constant_tensor(node)
        if value is not None:
            return [value]
    if not all(v is None or v.name in consts for v in node.inputs):
        return None
    view = node_view(node, 0, opsets, consts, protos=False)   # the CPU kernels read no protos
    if cpu.kernel_for(view) is None:
        return None
    try:
        # a kernel asked for more than folding keeps refuses before allocating (plugin_sdk.limits)
        fn = cpu.create_kernel(KernelInfo.from_view(view, max_tensor_bytes=_MAX_ELEMENTS * 16, xp=cpu.xp,
                                                    provider=cpu))
        res = fn(*[consts[v.name] if v is not None else None for v in node.inputs])
    except Exception:  # noqa: BLE001 - a node that fails now fails at run time with a proper message
        return None
    res = list(res)[: len(node.outputs)]
    return res if len(res) == len(node.outputs) else None


def _constant_tensor(node):
    """A Constant's ``value`` tensor as the CPU Constant kernel returns it (a read-only view; strings as
    objects), read straight from the attribute: most exporters hold every weight in one (picodet: 878),
    and a view and a kernel per weight cost more than the rest of the folding. None for other forms."""
    a = node.attributes.get("value")
    if a is None or len(node.attributes) != 1 or a.type != ir.AttributeType.TENSOR or node.inputs:
        return None
    try:
        arr = tensor_to_numpy(a.value)
    except Exception:  # noqa: BLE001 - left to the kernel, which reports it as before
        return None
    if arr.dtype != object:
        arr = arr.view()
        arr.flags.writeable = False
    return arr


def _static_shape(node, opsets, consts):
    v = node.inputs[0]
    if v is not None and v.name in consts:
        shape = consts[v.name].shape
    elif v is not None and v.shape is not None and all(isinstance(d, int) for d in v.shape):
        shape = tuple(v.shape)
    else:
        return None
    view = node_view(node, 0, opsets, consts, protos=False)   # the CPU kernels read no protos
    start, end = view.attrs.get("start", 0), view.attrs.get("end", None)
    if not all(v is None or isinstance(v, (int, np.integer)) for v in (start, end)):
        return None   # an attribute of the wrong type is the Shape kernel's to report, naming the node
    return [np.array(shape[slice(start, end)], dtype=np.int64)]


def _replace_with_constants(graph: ir.Graph, node: ir.Node, outs: list[np.ndarray], consts: dict) -> None:
    olds = list(node.outputs)
    news = []
    for old, arr in zip(olds, outs):
        name = old.name
        # ir.Tensor directly for numbers: ir.tensor's protocol checks cost more than the fold itself
        t = ir.Tensor(arr) if arr.dtype.kind in "biufc" else ir.tensor(arr)
        new = ir.Value(name=None, type=old.type, shape=ir.Shape(arr.shape), const_value=t)
        ir.convenience.replace_all_uses_with(old, new, replace_graph_outputs=True)
        news.append((old, new, name, arr))
    graph.remove(node, safe=True)
    for old, new, name, arr in news:
        old.name = None
        new.name = name
        new.const_value.name = name
        graph.register_initializer(new)
        consts[name] = arr
