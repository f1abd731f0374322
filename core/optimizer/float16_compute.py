"""Level-2 pass: float16 regions computed in float32, for providers that ask for it.

A provider whose kernels compute float16 ops in float32 anyway (the CPU provider: NumPy and BLAS have no
float16 arithmetic) would otherwise widen every input and round every output of every node, which cost
most of a float16 model's time (73% in ``astype`` on PP-LCNet). A provider asks for this pass with the
class attribute ``computes_float16_in_float32 = True``; the pass then rewrites the graph, once at session
creation:

- the float16 nodes the provider owns (it must be the session's first provider: a provider before it
  would have float32 kernels for widened nodes it had left, as OpenCL does), of the ops
  listed in ``_WIDENABLE`` (ops whose float32 form
  computes the same function: arithmetic, convolutions, GEMMs, pools, normalizations, data movement),
  form the region; their float16 values become float32;
- float16 initializers read only inside the region are converted once (a float32 copy where they are
  read outside too);
- a ``Cast`` to float32 is inserted where a float16 value enters the region (a graph input, the output of
  a node outside it), and a ``Cast`` back to float16 where a region value leaves it (a graph output, an
  input of a node outside it), one per value.

Why a graph rewrite rather than float32 kernels with float16 storage: after it the region *is* a float32
graph, so every float32 fast path applies unchanged (Conv + BatchNorm folding happened at level 1,
Conv + activation fusions, Winograd, the compiled loops), and the casts are plan steps like any other,
visible in profiles and in ``optimized_model_filepath``.

Rounding: onnxruntime rounds to float16 after every op that it runs in float16; here values are rounded
where they leave the region: graph outputs, explicit ``Cast`` nodes, and the inputs of ops kept out of it.
Intermediate values are therefore more precise than onnxruntime's (each of its ops adds at most half an
float16 ulp). Ops whose result is discrete (comparisons, ArgMax, TopK, MaxPool's indices, NonZero) are
not widened, so they read float16-rounded values as onnxruntime's kernels do. Level 0/1 sessions keep
per-op float16 semantics (each kernel rounds its outputs).
"""
from __future__ import annotations

import numpy as np
import onnx_ir as ir

_F16 = ir.DataType.FLOAT16
_F32 = ir.DataType.FLOAT

# ops (default domain) whose float32 form computes the same function as their float16 form
_WIDENABLE = frozenset("""
Abs Acos Acosh Add Asin Asinh Atan Atanh AveragePool BatchNormalization Ceil Celu Clip Concat Conv ConvTranspose
Cos Cosh DepthToSpace Div Dropout Einsum Elu Erf Exp Expand Flatten Floor Gather GatherElements GatherND Gelu Gemm
GlobalAveragePool GlobalLpPool GlobalMaxPool GroupNormalization HardSigmoid HardSwish Identity
InstanceNormalization LayerNormalization LeakyRelu Log LogSoftmax LpNormalization LpPool LRN MatMul Max
MaxPool Mean Min Mish Mul Neg Pad Pow PRelu Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax
ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize Round Selu Shape Sigmoid Sign Sin
Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh Tile Transpose
Unsqueeze Upsample Where
""".split())


def _is_f16(v: ir.Value | None) -> bool:
    return v is not None and v.dtype == _F16


def _widenable(node: ir.Node) -> bool:
    if node.domain not in ("", "ai.onnx") or node.op_type not in _WIDENABLE:
        return False
    if node.op_type == "MaxPool" and len(node.outputs) > 1 and node.outputs[1].uses():
        return False            # its indices are a discrete result: keep it on float16 values
    if any(a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for a in node.attributes.values()):
        return False
    values = [v for v in list(node.inputs) + list(node.outputs) if v is not None]
    # every type known: an output of unknown type would leave the region as float32 unnoticed
    return all(v.dtype is not None for v in values) and any(_is_f16(v) for v in values)


def _cast(value: ir.Value, to: ir.DataType, name: str) -> ir.Node:
    return ir.Node("", "Cast", [value], [ir.AttrInt64("to", int(to))], num_outputs=1, name=name)


def compute_float16_in_float32(model: ir.Model, owners: dict, providers: list | None = None) -> int:
    """Rewrite the float16 regions of providers that ask for it (see the module docstring); the number
    of nodes widened. ``owners``: node -> provider, the assignment (the casts made here are added to it,
    on the region's provider); ``providers``: the session's in priority order; unknown (None), nothing is done."""
    # the widened nodes stay with their provider (the assignment is kept, not asked again); a provider
    # before the asking one with float32 kernels but no float16 ones (OpenCL) would have taken them as
    # float32 nodes. So the pass runs only for the provider of highest priority.
    if not providers or not getattr(providers[0], "computes_float16_in_float32", False):
        return 0
    first = providers[0]
    graph = model.graph
    region = [n for n in graph if _widenable(n) and owners.get(n) is first]
    if not region:
        return 0
    inside = set(region)
    # the float16 values the region reads or writes
    values: dict[ir.Value, None] = {}
    for n in region:
        for v in list(n.inputs) + list(n.outputs):
            if _is_f16(v):
                values[v] = None
    made: list[tuple[ir.Node, ir.Node | None]] = []      # (cast node, insert after: a node, or None = first)
    for v in values:
        prod = v.producer()
        readers = [(u.node, u.idx) for u in v.uses()]
        outside_readers = [(n, i) for n, i in readers if n not in inside]
        if prod is not None and prod in inside:
            # made in the region: float32 from now on; outside readers and graph outputs get it rounded
            if outside_readers or v.is_graph_output():
                cast = _cast(v, _F16, f"{v.name}/to_float16")
                out = cast.outputs[0]
                out.dtype, out.shape = _F16, v.shape
                for n, i in outside_readers:
                    n.replace_input_with(i, out)
                if v.is_graph_output():
                    outs = graph.outputs
                    for k, o in enumerate(outs):
                        if o is v:
                            outs[k] = out
                    name = v.name
                    v.name = f"{name}/float32"
                    out.name = name
                else:
                    out.name = f"{v.name}/float16"
                made.append((cast, prod))
            v.dtype = _F32
            continue
        inside_readers = [(n, i) for n, i in readers if n in inside]
        if v.const_value is not None and not v.is_graph_input():
            # a float16 initializer: converted once
            arr = v.const_value.numpy().astype(np.float32)
            if not outside_readers and not v.is_graph_output():
                v.const_value = ir.Tensor(arr, name=v.name)
                v.dtype = _F32
            else:
                from engineroom.optimizer.rewrite import new_constant

                w = new_constant(graph, f"{v.name}/float32", arr)
                for n, i in inside_readers:
                    n.replace_input_with(i, w)
            continue
        # entering the region: one cast to float32
        cast = _cast(v, _F32, f"{v.name}/to_float32")
        out = cast.outputs[0]
        out.dtype, out.shape, out.name = _F32, v.shape, f"{v.name}/float32"
        for n, i in inside_readers:
            n.replace_input_with(i, out)
        made.append((cast, prod))
    first = next(iter(graph), None)
    for cast, after in made:
        owners[cast] = first
        if after is not None:
            graph.insert_after(after, cast)
        elif first is not None:
            graph.insert_before(first, cast)
        else:
            graph.append(cast)
    return len(region)
