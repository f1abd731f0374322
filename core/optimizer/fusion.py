"""Level-2 fusions, provider-aware: a pattern is fused only where one provider owns all its nodes
and has a kernel for the fused op. Fused ops use onnxruntime's contrib names (domain
``com.microsoft``), so an optimized model saved with ``optimized_model_filepath`` reads the same way.

- Conv + activation (+ a residual Add before it) → ``FusedConv`` (activation, activation_params, Z)
- the tanh form of GELU (x·0.5·(1+tanh(√(2/π)(x+0.044715x³))), or with (√(2/π)x)(1+0.044715x·x) inside,
  the two forms onnxruntime fuses) → ``FastGelu``, computed as onnxruntime's kernel computes it
- the erf form of GELU → ``com.microsoft`` ``Gelu`` (gelu_fusion.py)
- Add(x, constant bias) + Gelu (ONNX's, approximate="none", or com.microsoft's) → ``BiasGelu``
- RMS normalization [+ a residual Add] → ``SimplifiedLayerNormalization`` /
  ``SkipSimplifiedLayerNormalization`` (rms_norm_fusion.py)
- MatMul(2-D, constant) + Add(constant bias) → ONNX ``Gemm``
- the decomposed layer norm (ReduceMean, Sub, Pow/Mul, ReduceMean, Add ε, Sqrt, Div, Mul γ, Add β)
  → ONNX ``LayerNormalization`` (opset ≥ 17)
- [Add(x, constant bias) +] Add(·, skip of the same shape) + LayerNormalization over the last axis →
  ``SkipLayerNormalization`` (BERT's residual blocks: one pass, not three); where the sum is read
  elsewhere too (GPT-2's residual stream), from the fused op's 4th output
- Mul(x, Sigmoid(x)), i.e. SiLU / Swish → ``QuickGelu`` with alpha = 1
- scaled dot-product attention over (B, S, heads·D) projections → ``MultiHeadAttention``
  (attention_fusion.py)
- a 2x nearest upsample + 3x3 Conv → one ONNX ``ConvTranspose`` over the small image (upsample_conv.py)

Level 3 (ORT_ENABLE_ALL) adds a layout fusion: conv → depthwise conv → 1x1 conv →
``com.engineroom::DepthwiseSeparableBlock``, channels-last inside (depthwise_block.py).
"""
from __future__ import annotations

import math

import onnx_ir as ir

from engineroom.optimizer.attention_fusion import fuse_attention, fuse_heads_attention, fuse_transposed_matmul
from engineroom.optimizer.conv_hardswish import fuse_conv_hardswish
from engineroom.optimizer.depthwise_block import fuse_depthwise_blocks
from engineroom.optimizer.float16_compute import compute_float16_in_float32
from engineroom.optimizer.gelu_fusion import fuse_erf_gelu
from engineroom.optimizer.rms_norm_fusion import fuse_rms_norm, fuse_skip_rms_norm
from engineroom.optimizer.rewrite import const, only_use, other_input, producer, replace, scalar
from engineroom.optimizer.upsample_conv import fuse_upsample_conv
from engineroom.plugin_sdk.activations import FUSED_ACTIVATIONS
from engineroom.views import node_view

MS = "com.microsoft"
_ACTIVATIONS = set(FUSED_ACTIVATIONS) - {"Identity"}


class Fuser:
    """Applies fusions where the provider that takes the nodes (``owners``, the partitioner's assignment)
    agrees. The assignment is updated here: a fused node takes its nodes' provider."""

    def __init__(self, model: ir.Model, owners: dict[ir.Node, object]):
        self.model = model
        self.graph = model.graph
        self._owners = owners
        self.opsets = {("" if d == "ai.onnx" else d): v for d, v in model.opset_imports.items()}
        self.opsets.setdefault(MS, 1)

    def each(self, *ops: str):
        """The graph's nodes of the default-domain ``ops``, in order, each still in the graph when its turn
        comes (a snapshot walked lazily: fusing one node may take later ones out)."""
        for node in list(self.graph):
            if node.op_type in ops and node.domain in ("", "ai.onnx") and node.graph is not None:
                yield node

    def owner(self, node: ir.Node):
        """The provider of a node: as assigned, or for a node fused here, its nodes' provider."""
        return self._owners.get(node)

    def _accepts(self, nodes: list[ir.Node], fused: ir.Node) -> bool:
        provs = {id(self.owner(n)) for n in nodes}
        prov = self.owner(nodes[0])
        if len(provs) != 1 or prov is None:
            return False
        self.opsets.setdefault(fused.domain, 1)
        # the fused node's view without ONNX protos unless the provider reads them (~3x cheaper)
        view = node_view(fused, 0, self.opsets, {}, getattr(prov, "reads_node_protos", True))
        return prov.kernel_for(view) is not None

    def _commit(self, nodes: list[ir.Node], fused: ir.Node, outputs) -> bool:
        if not self._accepts(nodes, fused):
            return False
        if fused.domain not in ("", "ai.onnx"):
            self.model.opset_imports.setdefault(fused.domain, 1)
        self._owners[fused] = self.owner(nodes[0])
        replace(self.graph, nodes, fused, outputs)
        return True

    def commit_in_order(self, nodes: list[ir.Node], fused: ir.Node, outputs) -> bool:
        """``_commit`` of a match whose nodes were collected out of the graph's order."""
        order = {id(nd): i for i, nd in enumerate(self.graph)}
        return self._commit(sorted(nodes, key=lambda nd: order[id(nd)]), fused, outputs)

    # -- Conv + [Add] + activation ---------------------------------------------------------------
    def conv_activation(self) -> int:
        n = 0
        for conv in self.each("Conv"):
            chain = [conv]
            y = conv.outputs[0]
            z = None
            nxt = only_use(y)
            if nxt is not None and nxt.op_type == "Add" and nxt.domain in ("", "ai.onnx"):
                other = other_input(nxt, y)
                if other is not None and _same_shape(other, y):
                    z, y = other, nxt.outputs[0]
                    chain.append(nxt)
                    nxt = only_use(y)
            act = None
            params: list[float] = []
            if nxt is not None and nxt.op_type in _ACTIVATIONS and nxt.domain in ("", "ai.onnx"):
                act, params = _activation(nxt)
                if act is not None:
                    chain.append(nxt)
                    y = nxt.outputs[0]
            if act is None and z is None:
                continue
            attrs = [a for a in conv.attributes.values()]
            if act is not None:     # none written for a bare residual: onnxruntime refuses "Identity"
                attrs.append(ir.AttrString("activation", act))
            if params:
                attrs.append(ir.AttrFloat32s("activation_params", params))
            ins = list(conv.inputs) + [None] * (3 - len(conv.inputs))
            if z is not None:
                ins.append(z)
            fused = ir.Node(MS, "FusedConv", ins, attrs, num_outputs=1, name=(conv.name or "") + "_fused")
            if self._commit(chain, fused, [(y, fused.outputs[0])]):
                n += 1
        return n

    # -- tanh GELU -------------------------------------------------------------------------------
    def fast_gelu(self) -> int:
        n = 0
        for tanh in self.each("Tanh"):
            got = _match_tanh_gelu(tanh)
            if got is None:
                continue
            x, nodes, y = got
            fused = ir.Node(MS, "FastGelu", [x], num_outputs=1, name=(tanh.name or "") + "_fastgelu")
            if self._commit(nodes, fused, [(y, fused.outputs[0])]):
                n += 1
        return n


def _fuse_more(f: "Fuser") -> dict[str, int]:
    done = {"Gelu": fuse_erf_gelu(f)}                        # before BiasGelu, which takes these too
    done.update({"BiasGelu": _bias_gelu(f), "Gemm": _matmul_add(f), "LayerNormalization": _layer_norm(f)})
    done["SkipLayerNormalization"] = _skip_layer_norm(f)     # after _layer_norm: fuses what that made too
    done["SimplifiedLayerNormalization"] = fuse_rms_norm(f)
    done["SkipSimplifiedLayerNormalization"] = fuse_skip_rms_norm(f)
    done["QuickGelu"] = _silu(f)
    done["MultiHeadAttention"] = fuse_attention(f)
    done["FusedMatMul"] = fuse_transposed_matmul(f)     # the Kᵀ the attention fusion left
    done["ScaledDotProductAttention"] = fuse_heads_attention(f)    # reads the FusedMatMuls just made
    return done


def _onnx_op(node: ir.Node | None, op: str) -> bool:
    return node is not None and node.op_type == op and node.domain in ("", "ai.onnx")


def _bias_gelu(f: "Fuser") -> int:
    n = 0
    for gelu in list(f.graph):
        if not (_onnx_op(gelu, "Gelu") or (gelu.op_type == "Gelu" and gelu.domain == MS)) or gelu.graph is None:
            continue
        approx = gelu.attributes.get("approximate")
        if approx is not None and approx.value != "none":
            continue
        add = producer(gelu.inputs[0], "Add")
        if add is None or only_use(add.outputs[0]) is not gelu or len(add.inputs) != 2:
            continue
        k = next((k for k in (0, 1) if const(add.inputs[k]) is not None and const(add.inputs[k]).ndim == 1), None)
        if k is None:
            continue
        fused = ir.Node(MS, "BiasGelu", [add.inputs[1 - k], add.inputs[k]], num_outputs=1,
                        name=(gelu.name or "") + "_biasgelu")
        if f._commit([add, gelu], fused, [(gelu.outputs[0], fused.outputs[0])]):
            n += 1
    return n


def _silu(f: "Fuser") -> int:
    """Mul(x, Sigmoid(x)) -> QuickGelu(x, alpha=1): one pass instead of two, the sigmoid never stored."""
    n = 0
    for sig in f.each("Sigmoid"):
        x, s = sig.inputs[0], sig.outputs[0]
        mul = only_use(s)
        if not _onnx_op(mul, "Mul") or len(mul.inputs) != 2 or other_input(mul, s) is not x or s.is_graph_output():
            continue
        fused = ir.Node(MS, "QuickGelu", [x], [ir.AttrFloat32("alpha", 1.0)], num_outputs=1,
                        name=(sig.name or "") + "_silu")
        if f._commit([sig, mul], fused, [(mul.outputs[0], fused.outputs[0])]):
            n += 1
    return n


def _matmul_add(f: "Fuser") -> int:
    n = 0
    for mm in f.each("MatMul"):
        a, b = mm.inputs
        bc = const(b)
        if a is None or a.shape is None or len(a.shape) != 2 or bc is None or bc.ndim != 2:
            continue
        add = only_use(mm.outputs[0])
        if not _onnx_op(add, "Add") or len(add.inputs) != 2:
            continue
        c = other_input(add, mm.outputs[0])
        cc = const(c)
        if cc is None or cc.ndim > 2 or (cc.ndim >= 1 and cc.shape[-1] not in (1, bc.shape[1])):
            continue
        fused = ir.Node("", "Gemm", [a, b, c], num_outputs=1, name=(mm.name or "") + "_gemm")
        if f._commit([mm, add], fused, [(add.outputs[0], fused.outputs[0])]):
            n += 1
    return n


def _last_axis_mean(node: ir.Node | None, rank: int | None) -> bool:
    if not _onnx_op(node, "ReduceMean"):
        return False
    keep = node.attributes.get("keepdims")
    if keep is not None and keep.value == 0:
        return False
    axes = node.attributes.get("axes")
    ax = list(axes.value) if axes is not None else (
        list(const(node.inputs[1]).reshape(-1)) if len(node.inputs) > 1 and const(node.inputs[1]) is not None
        else None)
    return ax is not None and len(ax) == 1 and (ax[0] == -1 or (rank is not None and ax[0] == rank - 1))


def _layer_norm(f: "Fuser") -> int:
    # at any opset, as onnxruntime's fusion: the fused node is kept only where the owning provider
    # serves LayerNormalization at the model's opset (the CPU provider does from opset 1, as onnxruntime)
    n = 0
    for mean in list(f.graph):
        x = mean.inputs[0] if _onnx_op(mean, "ReduceMean") else None
        rank = len(x.shape) if x is not None and x.shape is not None else None
        if x is None or not _last_axis_mean(mean, rank) or mean.graph is None:
            continue
        sub = only_use(mean.outputs[0])
        if not _onnx_op(sub, "Sub") or sub.inputs[0] is not x or sub.inputs[1] is not mean.outputs[0]:
            continue
        d = sub.outputs[0]
        uses = list(dict.fromkeys(u.node for u in d.uses()))  # Mul(d, d) uses d twice
        sq = next((u for u in uses if (_onnx_op(u, "Pow") and scalar(u.inputs[1]) == 2.0)
                   or (_onnx_op(u, "Mul") and u.inputs[0] is d and u.inputs[1] is d)), None)
        div = next((u for u in uses if _onnx_op(u, "Div") and u.inputs[0] is d), None)
        if sq is None or div is None or len(uses) != 2 or d.is_graph_output():
            continue
        var = only_use(sq.outputs[0])
        if not _last_axis_mean(var, rank):
            continue
        add_eps = only_use(var.outputs[0])
        eps = scalar(other_input(add_eps, var.outputs[0])) if _onnx_op(add_eps, "Add") else None
        sqrt = only_use(add_eps.outputs[0]) if eps is not None else None
        if not _onnx_op(sqrt, "Sqrt") or div.inputs[1] is not sqrt.outputs[0] or only_use(sqrt.outputs[0]) is not div:
            continue
        mul = only_use(div.outputs[0])
        gamma = other_input(mul, div.outputs[0]) if _onnx_op(mul, "Mul") else None
        if const(gamma) is None or const(gamma).ndim != 1:
            continue
        nodes = [mean, sub, sq, var, add_eps, sqrt, div, mul]
        y = mul.outputs[0]
        beta = None
        add_b = only_use(y)
        if _onnx_op(add_b, "Add"):
            cand = other_input(add_b, y)
            if const(cand) is not None and const(cand).ndim == 1:
                beta, y = cand, add_b.outputs[0]
                nodes.append(add_b)
        fused = ir.Node("", "LayerNormalization", [x, gamma] + ([beta] if beta is not None else []),
                        [ir.AttrInt64("axis", -1), ir.AttrFloat32("epsilon", float(eps))], num_outputs=1,
                        name=(mean.name or "") + "_layernorm")
        if f._commit(nodes, fused, [(y, fused.outputs[0])]):
            n += 1
    return n


def _skip_layer_norm(f: "Fuser") -> int:
    n = 0
    for ln in f.each("LayerNormalization"):
        if len(ln.inputs) < 2:
            continue
        if any(o.uses() or o.is_graph_output() for o in ln.outputs[1:]):    # mean / inv std wanted
            continue
        x = ln.inputs[0]
        axis = ln.attributes.get("axis")
        rank = len(x.shape) if x is not None and x.shape is not None else None
        if rank is None or (axis is not None and axis.value not in (-1, rank - 1)):
            continue
        gamma, beta = ln.inputs[1], ln.inputs[2] if len(ln.inputs) > 2 else None
        if const(gamma) is None or const(gamma).ndim != 1 or (beta is not None and (const(beta) is None
                                                                                   or const(beta).ndim != 1)):
            continue
        add = producer(x, "Add")
        if not _onnx_op(add, "Add") or len(add.inputs) != 2 or not _same_shape(add.inputs[0], add.inputs[1]):
            continue
        # the sum read elsewhere too (a residual stream, GPT-2's): the fused op's 4th output supplies it
        sum_used = x.is_graph_output() or any(u.node is not ln for u in x.uses())
        nodes = [add, ln]
        inp, skip, bias = add.inputs[0], add.inputs[1], None
        for k in (0, 1):        # one side may be Add(y, bias): folded in, (y + bias) + skip as before
            ba = producer(add.inputs[k], "Add")
            if not _onnx_op(ba, "Add") or only_use(ba.outputs[0]) is not add or ba.outputs[0].is_graph_output():
                continue
            for j in (0, 1):
                c = const(ba.inputs[j])
                if c is not None and c.ndim == 1 and c.shape[0] == const(gamma).shape[0] and _same_shape(
                        ba.inputs[1 - j], add.inputs[k]):
                    inp, skip, bias = ba.inputs[1 - j], add.inputs[1 - k], ba.inputs[j]
                    nodes.insert(0, ba)
                    break
            if bias is not None:
                break
        eps = ln.attributes.get("epsilon")
        ins = [inp, skip, gamma, beta, bias]
        while ins[-1] is None:
            ins.pop()
        fused = ir.Node(MS, "SkipLayerNormalization", ins,
                        [ir.AttrFloat32("epsilon", float(eps.value) if eps is not None else 1e-5)],
                        num_outputs=4 if sum_used else 1, name=(ln.name or "") + "_skiplayernorm")
        outputs = [(ln.outputs[0], fused.outputs[0])] + ([(x, fused.outputs[3])] if sum_used else [])
        if f._commit(nodes, fused, outputs):
            n += 1
    return n


def _same_shape(a: ir.Value, b: ir.Value) -> bool:
    """Known to be equal: every dim the same number or the same named symbol (so no broadcasting)."""
    if a.shape is None or b.shape is None or len(a.shape) != len(b.shape):
        return False
    for x, y in zip(a.shape, b.shape):
        if isinstance(x, int) or isinstance(y, int):
            if x != y:
                return False
        elif x.value is None or str(x.value) != str(y.value):
            return False
    return True


def _activation(node: ir.Node):
    """(FusedConv activation, its parameters) for an activation node (plugin_sdk.activations), or (None, [])
    when a parameter is not a constant."""
    op = node.op_type
    if op not in _ACTIVATIONS:
        return None, []
    names, defaults = FUSED_ACTIVATIONS[op]
    if op == "Clip" and "min" not in node.attributes and "max" not in node.attributes:   # opset 11+: inputs
        ins = list(node.inputs) + [None, None]
        params = [scalar(x) if x is not None else d for x, d in zip(ins[1:3], defaults)]
        return (None, []) if any(p is None for p in params) else (op, params)
    attrs = [node.attributes.get(n) for n in names]
    return op, [a.value if a is not None else d for a, d in zip(attrs, defaults)]


def _mul_by(node: ir.Node | None, value: float, tol: float = 1e-4):
    """If ``node`` is Mul(v, c) with scalar constant c ≈ value, return v."""
    if node is None or node.op_type != "Mul" or node.domain not in ("", "ai.onnx") or len(node.inputs) != 2:
        return None
    for k in (0, 1):
        c = scalar(node.inputs[k])
        if c is not None and abs(c - value) <= tol * max(1.0, abs(value)):
            return node.inputs[1 - k]
    return None


def _match_tanh_gelu(tanh: ir.Node):
    """x·0.5·(1 + tanh(u)) with u written as onnxruntime's FastGeluFusion knows it: c·(x + k·Pow(x, 3))
    (GPT-2's and T5's export) or (c·x)·(1 + (k·x)·x) (Hugging Face's FastGELUActivation). Where
    onnxruntime fuses it, its FastGelu kernel computes the model's output; so must ours. Returns
    (x, nodes, y)."""
    m1 = producer(tanh.inputs[0], "Mul")
    got = _pow_form(m1) or _product_form(m1)
    if got is None:
        return None
    x, arg_nodes = got
    a1 = only_use(tanh.outputs[0])
    if a1 is None or a1.op_type != "Add" or (scalar(other_input(a1, tanh.outputs[0])) or 0) != 1.0:
        return None
    out = only_use(a1.outputs[0])
    if out is None or out.op_type != "Mul":
        return None
    half = other_input(out, a1.outputs[0])
    hm = producer(half, "Mul")
    if hm is None or _mul_by(hm, 0.5) is not x or len(half.uses()) != 1:
        return None
    for nd in arg_nodes:
        if len(nd.outputs[0].uses()) != 1 or nd.outputs[0].is_graph_output():
            return None
    fused = {*arg_nodes, tanh, a1, hm, out}
    return x, [nd for nd in tanh.graph if nd in fused], out.outputs[0]


def _pow_form(m1: ir.Node | None):
    """m1 = c·(x + k·Pow(x, 3)): (x, the nodes computing it)."""
    inner = _mul_by(m1, math.sqrt(2 / math.pi))
    add = producer(inner, "Add")
    if add is None or len(add.inputs) != 2:
        return None
    for k in (0, 1):
        x, cube_term = add.inputs[k], add.inputs[1 - k]
        m2 = producer(cube_term, "Mul")
        pw = producer(_mul_by(m2, 0.044715), "Pow")
        if pw is not None and pw.inputs[0] is x and scalar(pw.inputs[1]) == 3.0:
            return x, [pw, m2, add, m1]
    return None


def _product_form(m1: ir.Node | None):
    """m1 = (c·x)·(1 + (k·x)·x): (x, the nodes computing it)."""
    if m1 is None or m1.op_type != "Mul" or len(m1.inputs) != 2:
        return None
    for k in (0, 1):
        cx, poly = producer(m1.inputs[k], "Mul"), producer(m1.inputs[1 - k], "Add")
        x = _mul_by(cx, math.sqrt(2 / math.pi))
        if x is None or poly is None or len(poly.inputs) != 2:
            continue
        for j in (0, 1):
            if scalar(poly.inputs[j]) != 1.0:
                continue
            kxx = producer(poly.inputs[1 - j], "Mul")
            if kxx is None or len(kxx.inputs) != 2:
                continue
            for i in (0, 1):
                kx = producer(kxx.inputs[i], "Mul")
                if kxx.inputs[1 - i] is x and kx is not None and _mul_by(kx, 0.044715) is x:
                    return x, [kx, kxx, poly, cx, m1]
    return None


def fuse_body(model: ir.Model, body: ir.Graph, owners: dict[ir.Node, object]) -> dict[str, int]:
    """The level-2 fusions inside one If/Loop/Scan body (``owners``: the provider of each of its nodes,
    updated with the nodes fused here)."""
    f = Fuser(model, owners)
    f.graph = body
    done = {"ConvTranspose": fuse_upsample_conv(f), "FusedConv": f.conv_activation(), "FastGelu": f.fast_gelu()}
    done.update(_fuse_more(f))
    return done


def fuse(model: ir.Model, owners: dict[ir.Node, object], level: int = 2,
         providers: list | None = None) -> dict[str, int]:
    """The level-2 fusions, and at level 3 (ORT_ENABLE_ALL, 99) the layout fusions after them. ``owners``
    (node -> provider) is updated with the nodes made here."""
    # the float16 form of RMSNorm (casts to float32 and back around it) before the pass below moves casts
    rms16 = fuse_rms_norm(Fuser(model, owners), narrow_only=True)
    # float16 regions become float32 first, so the float32 fusions below apply to them
    done = {"Float16InFloat32": compute_float16_in_float32(model, owners, providers)}
    f = Fuser(model, owners)
    done["ConvTranspose"] = fuse_upsample_conv(f)          # before FusedConv takes the Conv
    done.update({"FusedConv": f.conv_activation(), "FastGelu": f.fast_gelu()})
    done.update(_fuse_more(f))
    done["SimplifiedLayerNormalization"] += rms16
    if level >= 99:
        done["DepthwiseSeparableBlock"] = fuse_depthwise_blocks(f)   # reads the FusedConvs made above
        done["FusedConvHardSwish"] = fuse_conv_hardswish(f)
    return done
