"""Which nodes OpenVINO takes, and in which groups.

1. Candidates: the unassigned nodes whose values are all tensors of types OpenVINO holds, without
   graph attributes (control flow stays with the kernel providers), not on the list of nodes
   OpenVINO converts but computes differently (``rules.py``), and not upstream of a dynamic quantizer
   (``plugin_sdk.dynamic_quantization``: OpenVINO's float arithmetic is not the CPU provider's to the ulp).
2. Support: the candidates are built into one ONNX model (boundary values as inputs, constants as
   initializers, values read outside as outputs) and handed to OpenVINO's ONNX frontend with
   ``convert_partially``; what it cannot convert comes back as framework nodes, which are traced to
   the ONNX nodes they came from and left out, and so are nodes whose input the frontend silently
   drops (a runtime ``axes`` it ignores); then ``Core.query_model`` says what the device runs. When
   the frontend fails outright, candidates are tried one by one (cached per op signature).
3. Groups: the supported nodes are cut into cycle-free runs exactly as the core will (Kahn waves over
   the whole graph), runs too small to pay for an OpenVINO call are declined with a note, and every
   run that is not the model already converted is converted on its own, as it will be compiled.
"""
from __future__ import annotations

import io
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from engineroom.plugin_sdk import Capability, GraphView, NodeView, dynamic_quantization
from engineroom.plugin_sdk.dynamic_quantization import upstream_of_dynamic_quantization
from engineroom.plugin_sdk.grouping import cycle_free_runs
from engineroom.providers.openvino import rules

# dtypes OpenVINO's ONNX frontend maps to its element types
_OV_DTYPES = {np.dtype(t) for t in (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16,
                                    np.uint32, np.uint64, np.float16, np.float32, np.float64)}
try:
    import ml_dtypes

    _OV_DTYPES.add(np.dtype(ml_dtypes.bfloat16))
except ImportError:  # pragma: no cover - ml_dtypes is a dependency of engineroom
    pass

# ops worth an OpenVINO call on their own: a group with none of these and fewer than
# ``MIN_LIGHT_GROUP`` nodes is declined (a call costs more than NumPy spends on a few light ops)
HEAVY_OPS = frozenset({
    "Conv", "ConvTranspose", "ConvInteger", "QLinearConv", "DeformConv", "MatMul", "MatMulInteger", "QLinearMatMul",
    "Gemm", "Einsum", "Attention", "MultiHeadAttention", "LSTM", "GRU", "RNN", "MaxPool", "AveragePool", "LpPool",
    "GlobalAveragePool", "GlobalMaxPool", "BatchNormalization", "InstanceNormalization", "LayerNormalization",
    "GroupNormalization", "RMSNormalization", "SkipLayerNormalization", "Softmax", "LogSoftmax", "Resize",
    "GridSample", "RoiAlign", "DFT", "STFT", "TopK", "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin",
    "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSumExp", "ReduceSumSquare", "CumSum", "NonMaxSuppression",
})
MIN_LIGHT_GROUP = 3

_UNSUPPORTED_TYPES = ("FrameworkNode", "NotSupported")
_signature_cache: dict[tuple, bool] = {}


@dataclass
class Support:
    """What OpenVINO said about one set of unassigned nodes (kept while the graph does not change)."""

    key: tuple
    supported: set[int]
    reasons: dict[int, str]
    ov_model: Any = None          # the converted candidate model, when every candidate is supported
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    runs: list[list[int]] = field(default_factory=list)   # the claimed groups, node indices
    declined: list[int] = field(default_factory=list)

    def matches(self, group) -> bool:
        """Whether ``group`` is exactly the converted candidate model (same nodes, same boundary)."""
        if self.ov_model is None or list(group.inputs) != self.inputs or list(group.outputs) != self.outputs:
            return False
        if len(group.nodes) != len(self.supported) or any(v.proto is None for v in group.nodes):
            return False
        # by the nodes themselves, not their indices: the core's level-2 fusions of other providers' nodes
        # renumber the graph after this answer (it does not ask again)
        mine = sorted(p for i, p, _ in self.key[0] if i in self.supported)
        return sorted(v.proto.SerializeToString(deterministic=True) for v in group.nodes) == mine


def claim(view: GraphView, core: Any, device: str, previous: Support | None = None) -> tuple[list[Capability], Support]:
    """The capabilities of one OpenVINO device over ``view``'s unassigned nodes. ``previous`` is the last
    answer; it is reused when the nodes are the same."""
    key = _key(view)
    if previous is not None and previous.key == key:
        sup = previous
    else:
        sup = _analyze(view, core, device, key)
    by_index = {v.index: v for v in view.all_nodes or view.nodes}
    caps = [Capability([by_index[i] for i in run], kind="group") for run in sup.runs]
    if sup.declined:
        ops = ", ".join(dict.fromkeys(by_index[i].op_type for i in sup.declined))
        view.add_note(f"declined {len(sup.declined)} node(s) ({ops}) in groups of fewer than {MIN_LIGHT_GROUP} "
                      "light ops: an OpenVINO call there costs more than it saves")
    left = [v for v in view.nodes if v.index in sup.reasons]
    if left:
        ops = Counter(f"{v.domain + '::' if v.domain else ''}{v.op_type}" for v in left)
        why = dict.fromkeys(sup.reasons[v.index] for v in left)
        view.add_note(f"cannot run {', '.join(f'{op} x{n}' if n > 1 else op for op, n in ops.items())} "
                      f"({'; '.join(list(why)[:3])})")
    return caps, sup


def _key(view: GraphView) -> tuple:
    free = tuple((v.index, v.proto.SerializeToString(deterministic=True) if v.proto is not None else v.op_type,
                  tuple(str(d) for d in v.input_dtypes)) for v in view.nodes)
    rest = tuple((v.index, v.input_names) for v in view.all_nodes)
    return free, rest, tuple(view.graph_outputs), tuple(sorted(view.initializers))


def _analyze(view: GraphView, core: Any, device: str, key: tuple) -> Support:
    reasons: dict[int, str] = {}
    cands = []
    near_dq = upstream_of_dynamic_quantization(view.all_nodes or view.nodes)
    for v in view.nodes:
        why = _why_not_candidate(v) or (dynamic_quantization.REASON if v.index in near_dq else None)
        if why:
            reasons[v.index] = why
        else:
            cands.append(v)
    by_index = {v.index: v for v in view.all_nodes or view.nodes}
    reads = {i: _reads(v) for i, v in by_index.items()}
    for _ in range(8):
        sup = _supported(cands, view, core, device, reasons, key, reads)
        supported = set(sup.supported)
        declined: list[int] = []
        while True:
            runs = _runs(by_index, supported, reads)
            small = [r for r in runs if _too_small([by_index[i] for i in r])]
            if not small:
                break
            for r in small:
                declined.extend(r)
                supported -= set(r)
        # each run is compiled on its own: convert it as such unless it is the model converted already
        bad: dict[int, str] = {}
        for r in runs:
            if set(r) != sup.supported or sup.ov_model is None:
                bad.update(_run_problems([by_index[i] for i in r], view, reads))
        if not bad:
            sup.runs, sup.declined = runs, declined
            return sup
        reasons.update(bad)
        cands = [v for v in cands if v.index not in bad]
    sup = Support(key, set(), reasons)
    for v in cands:
        reasons.setdefault(v.index, "support query did not settle")
    return sup


# -- 1. candidates --------------------------------------------------------------------------------------------
def _why_not_candidate(v: NodeView) -> str | None:
    if v.proto is None:
        return "no node proto"
    if any(a.type in (5, 10) for a in v.proto.attribute):   # GRAPH, GRAPHS
        return "control flow stays on the kernel providers"
    for names, dtypes, types in ((v.input_names, v.input_dtypes, v.input_types),
                                 (v.output_names, v.output_dtypes, v.output_types)):
        for j, nm in enumerate(names):
            if not nm:
                continue
            tp = types[j] if j < len(types) else None
            if tp is not None and tp.WhichOneof("value") not in (None, "tensor_type"):
                return "non-tensor values"
            dt = dtypes[j] if j < len(dtypes) else None
            if dt is not None and np.dtype(dt) not in _OV_DTYPES:
                return f"{np.dtype(dt)} values"
    return rules.why_not(v)


def _reads(v: NodeView) -> tuple[str, ...]:
    """The values ``v`` reads: its inputs, and what its subgraphs read from the enclosing scope."""
    names = [n for n in v.input_names if n]
    if v.proto is not None:
        stack = _subgraphs(v.proto)
        while stack:
            g = stack.pop()
            for n in g.node:
                names.extend(x for x in n.input if x)
                stack.extend(_subgraphs(n))
    return tuple(dict.fromkeys(names))


def _subgraphs(node) -> list:
    return [g for a in node.attribute for g in ([a.g] if a.type == 5 else list(a.graphs) if a.type == 10 else [])]


# -- 2. support ----------------------------------------------------------------------------------------------
def _supported(cands: list[NodeView], view: GraphView, core: Any, device: str, reasons: dict[int, str],
               key: tuple, reads: dict[int, tuple[str, ...]]) -> Support:
    """Which candidates OpenVINO converts and ``device`` runs; the others get a reason in ``reasons``."""
    todo = list(cands)
    for _ in range(8):
        if not todo:
            return Support(key, set(), reasons)
        model, untyped = _candidate_model(todo, view, reads)
        if untyped:
            # No device places an input of unknown type or rank (the core's shape inference stopped
            # short of it, e.g. after an op that has none): what depends on one is not claimed.
            for i in _downstream(todo, untyped):
                reasons[i] = "input of unknown type or rank"
            todo = [v for v in todo if v.index not in reasons]
            continue
        try:
            bad, ov_model = _convert(model, todo)
        except Exception:  # noqa: BLE001 - the frontend failed on the whole; find the culprits one by one
            bad = {v.index: "OpenVINO's ONNX frontend fails on it" for v in todo if not _node_converts(v, view)}
            if not bad:
                raise
            ov_model = None
        if not bad:
            bad = _dropped_inputs(ov_model, model, todo)
        if bad:
            reasons.update(bad)
            todo = [v for v in todo if v.index not in bad]
            continue
        try:
            _frontend().normalize(ov_model)
            answer = core.query_model(ov_model, device)
        except Exception as e:  # noqa: BLE001 - the device refuses the whole model: claim nothing, say why
            for v in todo:
                reasons[v.index] = f"query_model failed on {device}: {str(e).splitlines()[0][:120]}"
            return Support(key, set(), reasons)
        off = _not_on_device(ov_model, todo, set(answer))
        if off:
            for i in off:
                reasons[i] = f"not supported on {device}"
            todo = [v for v in todo if v.index not in off]
            continue
        return Support(key, {v.index for v in todo}, reasons, ov_model,
                       [i.name for i in model.graph.input], [o.name for o in model.graph.output])
    for v in todo:
        reasons[v.index] = "support query did not settle"
    return Support(key, set(), reasons)


def _candidate_model(nodes: list[NodeView], view: GraphView, reads: dict[int, tuple[str, ...]] | None,
                     outputs: Iterable[str] | None = None):
    """``nodes`` as one ONNX model: boundary values become inputs, constants initializers, and values
    read outside (or graph outputs) outputs, as the core builds a group. Returns the model and the
    boundary inputs of unknown type or rank (left untyped in the model)."""
    from onnx import helper, numpy_helper

    inside = {o for v in nodes for o in v.output_names if o}
    idx = {v.index for v in nodes}
    inputs: dict[str, Any] = {}
    inits: dict[str, np.ndarray] = {}
    untyped: set[str] = set()
    for v in nodes:
        for j, nm in enumerate(v.input_names):
            if not nm or nm in inside:
                continue
            if nm in view.initializers:
                inits[nm] = view.initializers[nm]
                continue
            if nm in inputs:
                continue
            tp = v.input_types[j] if j < len(v.input_types) else None
            if (tp is None or not tp.HasField("tensor_type") or not tp.tensor_type.elem_type
                    or not tp.tensor_type.HasField("shape")):
                untyped.add(nm)
            inputs[nm] = tp
    if outputs is None:
        read_outside = {nm for i, names in (reads or {}).items() if i not in idx for nm in names}
        read_outside |= set(view.graph_outputs)
        outputs = [o for v in nodes for o in v.output_names if o and o in read_outside]
        if not outputs:   # nothing leaves: keep the last node's outputs so the model is not empty
            outputs = [o for o in nodes[-1].output_names if o]
    types = {o: tp for v in nodes for o, tp in zip(v.output_names, v.output_types) if o}
    outs = []
    for o in outputs:
        tp = types.get(o)
        outs.append(helper.make_value_info(o, tp) if tp is not None else helper.make_empty_tensor_value_info(o))
    graph = helper.make_graph([v.proto for v in nodes], "candidates",
                              [helper.make_value_info(n, t) if t is not None else helper.make_empty_tensor_value_info(n)
                               for n, t in inputs.items()], outs,
                              [numpy_helper.from_array(np.asarray(a), n) for n, a in inits.items()])
    model = helper.make_model(graph, ir_version=view.ir_version,
                              opset_imports=[helper.make_opsetid(d, v) for d, v in view.opsets.items()])
    return model, untyped


def _frontend():
    import openvino as ov

    return ov.frontend.FrontEndManager().load_by_framework("onnx")


def _convert(model, nodes: list[NodeView]):
    """Partial conversion: (ONNX nodes the frontend left unconverted -> reason, converted model)."""
    fe = _frontend()
    ov_model = fe.convert_partially(fe.load(io.BytesIO(model.SerializeToString())))
    owner = _owners(ov_model, nodes)
    bad: dict[int, str] = {}
    for op in ov_model.get_ordered_ops():
        tname = op.get_type_name()
        if any(s in tname for s in _UNSUPPORTED_TYPES):
            i = owner.get(op.get_friendly_name())
            if i is None:   # cannot tell which node it came from: name every node by its own friendly name
                i = next((v.index for v in nodes if v.name and v.name == op.get_friendly_name()), None)
            if i is None:
                raise RuntimeError(f"unconverted OpenVINO op {op.get_friendly_name()} not traced to a node")
            bad[i] = "no OpenVINO conversion rule"
    return bad, ov_model


def _dropped_inputs(ov_model, model, nodes: list[NodeView]) -> dict[int, str]:
    """Nodes reading a model input the frontend dropped: it ignored that input (a runtime ``axes`` of a
    reduction, a DFT ``axis``), so the node would compute something else."""
    kept = {n for p in ov_model.inputs for n in p.get_names()}
    gone = [i.name for i in model.graph.input if i.name not in kept]
    bad: dict[int, str] = {}
    for nm in gone:
        for v in nodes:
            if nm in v.input_names:
                bad[v.index] = f"OpenVINO ignores its runtime input '{nm}'"
    return bad


def _owners(ov_model, nodes: list[NodeView]) -> dict[str, int]:
    """OpenVINO op friendly name -> index of the ONNX node it came from. The ops an ONNX node becomes
    end in ops whose outputs carry its output names; ops in between are traced forward to them."""
    producer = {o: v.index for v in nodes for o in v.output_names if o}
    ops = ov_model.get_ordered_ops()
    owner: dict[str, int] = {}
    consumers: dict[str, list] = {}
    for op in ops:
        for inp in op.inputs():
            src = inp.get_source_output().get_node()
            consumers.setdefault(src.get_friendly_name(), []).append(op)
    for op in reversed(ops):   # consumers first, so in-between ops inherit their consumer's owner
        fname = op.get_friendly_name()
        tname = op.get_type_name()
        if tname in ("Parameter", "Result"):
            continue
        found = None
        for out in op.outputs():
            for nm in out.get_names():
                if nm in producer:
                    found = producer[nm]
                    break
            if found is not None:
                break
        if found is None:
            for c in consumers.get(fname, ()):
                found = owner.get(c.get_friendly_name())
                if found is not None:
                    break
        if found is not None:
            owner[fname] = found
    return owner


def _not_on_device(ov_model, nodes: list[NodeView], on_device: set[str]) -> set[int]:
    owner = _owners(ov_model, nodes)
    off: set[int] = set()
    for op in ov_model.get_ordered_ops():
        if op.get_type_name() in ("Parameter", "Result", "Constant"):
            continue
        fname = op.get_friendly_name()
        if fname not in on_device and fname in owner:
            off.add(owner[fname])
    return off


def _downstream(nodes: list[NodeView], names: set[str]) -> set[int]:
    """Indices of ``nodes`` (in topological order) that depend on any value in ``names``."""
    reached = set(names)
    out: set[int] = set()
    for v in nodes:
        if any(nm in reached for nm in v.input_names):
            out.add(v.index)
            reached.update(o for o in v.output_names if o)
    return out


def _node_converts(v: NodeView, view: GraphView) -> bool:
    """Whether the frontend converts ``v`` alone (cached per op, domain, opset, attributes and types)."""
    key = (v.domain, v.op_type, v.opset,
           tuple(sorted((a.name, a.SerializeToString(deterministic=True)) for a in v.proto.attribute)),
           tuple(str(d) for d in v.input_dtypes), tuple(str(s) for s in v.input_shapes),
           tuple(n in view.initializers for n in v.input_names))
    if key not in _signature_cache:
        try:
            model, _ = _candidate_model([v], view, None, [o for o in v.output_names if o])
            bad, ov_model = _convert(model, [v])
            _signature_cache[key] = not bad and not _dropped_inputs(ov_model, model, [v])
        except Exception:  # noqa: BLE001 - failing to convert is the answer
            _signature_cache[key] = False
    return _signature_cache[key]


def _run_problems(run: list[NodeView], view: GraphView, reads: dict[int, tuple[str, ...]]) -> dict[int, str]:
    """Nodes of ``run`` that keep it from converting as the group the core will compile."""
    model, _ = _candidate_model(run, view, reads)
    try:
        bad, ov_model = _convert(model, run)
    except Exception:  # noqa: BLE001 - find the culprits one by one
        bad = {v.index: "OpenVINO's ONNX frontend fails on it" for v in run if not _node_converts(v, view)}
        if not bad:   # every node converts alone, but not together: give the group up
            bad = {v.index: "OpenVINO's ONNX frontend fails on the group it would be in" for v in run}
        return bad
    return bad or _dropped_inputs(ov_model, model, run)


# -- 3. groups -----------------------------------------------------------------------------------------------
def _runs(by_index: dict[int, NodeView], mine: set[int], reads: dict[int, tuple[str, ...]]) -> list[list[int]]:
    """``mine`` cut into cycle-free runs over the whole graph by the function the core cuts partitions with."""
    if not mine:
        return []
    runs = cycle_free_runs(list(by_index.values()), lambda i: i in mine, lambda v: reads[v.index])
    return [run for is_mine, run in runs if is_mine]


def _too_small(run: list[NodeView]) -> bool:
    return len(run) < MIN_LIGHT_GROUP and not any(v.op_type in HEAVY_OPS for v in run)
