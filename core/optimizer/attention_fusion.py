"""Level-2 attention fusion: the scaled dot-product attention that exporters spell out node by node
becomes one ``com.microsoft`` ``MultiHeadAttention`` over the 3-D (B, S, heads·D) projections.

The pattern, as PyTorch's exporter writes ``scaled_dot_product_attention`` (the zoo's BERT and GPT-2):

    Q4 = Transpose(Reshape(Q, (B, S, H, D)), perm=(0, 2, 1, 3))          likewise K4 and V4 from K and V
    Kᵀ = Transpose(K4, perm=(0, 1, 3, 2)), Transpose(Reshape(K, (B, S, H, D)), perm=(0, 2, 3, 1)) or
         Reshape(Transpose(Reshape(K4, (B·H, S, D)), (0, 2, 1)), (B, H, D, S))
    P  = Softmax(MatMul(Q4 [· c₁], Kᵀ [· c₂]) [· c₃] [+ mask], axis=-1)   [then Where(IsNaN(P), 0, P)]
    Y  = Reshape(Transpose(MatMul(P, V4), perm=(0, 2, 1, 3)), (..., H·D))

The scalar factors c multiply into the op's ``scale``; ``mask`` (B|1, H|1, S, T) becomes its
``attention_bias``. The IsNaN guard zeroes rows whose logits are all -inf: the kernel does that itself
(a row that is NaN for other reasons, a NaN input, stays NaN). The final Reshape stays and reads the
fused (B, S, H·Dv) output, which holds the same elements in the same order as the 4-D tensor it read;
its inferred output must end in H·Dv, which rules out a 0 ("copy this dim") where the rank changed.
Nodes the pattern shares with the rest of the graph (a Shape of K4, say) are kept.
"""
from __future__ import annotations

import onnx_ir as ir

from engineroom.optimizer.rewrite import only_use, producer, scalar

MS = "com.microsoft"
ER = "com.engineroom"


def _softmax_matches(f, match):
    """(Softmax node, what ``match(node, opset)`` found) for each ONNX Softmax still in ``f.graph`` that
    ``match`` accepts (a node fused away by an earlier match is skipped)."""
    for sm in f.each("Softmax"):
        got = match(sm, f.opsets.get("", 1))
        if got is not None:
            yield sm, got


def fuse_attention(f) -> int:
    """Fuse every match in ``f.graph`` (``f`` a fusion.Fuser); the number fused."""
    n = 0
    for sm, (ins, heads, scale, nodes, out) in _softmax_matches(f, _match):
        fused = ir.Node(MS, "MultiHeadAttention", ins,
                        [ir.AttrInt64("num_heads", heads), ir.AttrFloat32("scale", scale)],
                        num_outputs=1, name=(sm.name or "") + "_mha")
        q, v = ins[0], ins[2]
        y = fused.outputs[0]
        y.type = out.type
        y.shape = ir.Shape([q.shape[0], q.shape[1], v.shape[2]])
        order = {id(nd): i for i, nd in enumerate(sm.graph)}
        nodes = sorted(_removable(nodes, out), key=lambda nd: order[id(nd)])
        if nodes[-1] is not out.producer():
            continue
        if f._commit(nodes, fused, [(out, y)]):
            n += 1
    return n



def fuse_transposed_matmul(f) -> int:
    """MatMul(A, Transpose(B)) whose Transpose swaps only the last two axes and feeds nothing else (the
    keys' Kᵀ in attention the fusion above did not take: a decoder's cache grown by Concat) becomes
    ``com.microsoft`` ``FusedMatMul(A, B, transB=1)``, likewise transA, as onnxruntime's MatMul-Transpose
    fusion: the kernel hands BLAS the strided view, no transposed copy (gpt2_kv batch 4: 4 x 44 us a
    token)."""
    n = 0
    for mm in f.each("MatMul"):
        if len(mm.inputs) != 2:
            continue
        ins, flags, trs = list(mm.inputs), [0, 0], []
        for i in (0, 1):
            t = ins[i].producer() if ins[i] is not None else None
            x = t.inputs[0] if t is not None and t.inputs else None
            if x is None or x.shape is None or only_use(ins[i]) is not mm or ins[i] is (ins[1 - i]):
                continue
            r = len(x.shape)
            if r >= 2 and _transpose(t, tuple(range(r - 2)) + (r - 1, r - 2)):
                ins[i], flags[i] = x, 1
                trs.append(t)
        if not trs:
            continue
        fused = ir.Node(MS, "FusedMatMul", ins, [ir.AttrInt64("transA", flags[0]), ir.AttrInt64("transB", flags[1])],
                        num_outputs=1, name=(mm.name or "") + "_transposed")
        if f._commit(trs + [mm], fused, [(mm.outputs[0], fused.outputs[0])]):
            n += 1
    return n


def fuse_heads_attention(f) -> int:
    """Attention already in heads (B, H, S, D), as a decoder with a growing cache computes it, after
    ``fuse_transposed_matmul`` (Hugging Face's GPT-2 exports; what the fusion above does not take, its
    K coming from a Concat with the past rather than from a projection):

        S = FusedMatMul(Q4, K4, transB=1) [/ c or · c]  [Where(mask, S, fill)]  [+ bias]
        Y = MatMul(Softmax(S, axis=-1), V4)

    becomes one ``com.engineroom::ScaledDotProductAttention`` (the mask's and the bias's producers
    stay): five nodes a layer less, each with its own pass and allocation (GPT-2 decoding: 152 -> 132
    steps). Every intermediate must feed only the next node of the pattern."""
    n = 0
    for sm, (ins, attrs, nodes, out) in _softmax_matches(f, _match_heads):
        fused = ir.Node(ER, "ScaledDotProductAttention", ins, attrs, num_outputs=1, name=(sm.name or "") + "_sdpa")
        if f._commit(nodes, fused, [(out, fused.outputs[0])]):
            n += 1
    return n


def _match_heads(sm: ir.Node, opset: int):
    """(inputs, attributes, pattern nodes in order, the output replaced) of the pattern above, or None."""
    axis = sm.attributes.get("axis")
    axis = axis.value if axis is not None else (-1 if opset >= 13 else 1)
    x = sm.inputs[0]
    if x is None or x.shape is None or len(x.shape) != 4 or axis not in (-1, 3):
        return None
    mm2 = only_use(sm.outputs[0])
    if mm2 is None or mm2.op_type != "MatMul" or mm2.domain not in ("", "ai.onnx") \
            or mm2.inputs[0] is not sm.outputs[0]:
        return None
    v4 = mm2.inputs[1]
    if v4 is None or v4.shape is None or len(v4.shape) != 4:
        return None
    bias = None
    before = [sm, mm2]
    add = producer(x, "Add")
    if add is not None and len(add.inputs) == 2 and only_use(x) is sm:
        for k in (0, 1):
            if _heads_scores(add.inputs[k]) is not None:
                x, bias = add.inputs[k], add.inputs[1 - k]
                before.insert(0, add)
                break
    got = _heads_scores(x)
    if got is None or only_use(x) is None or only_use(sm.inputs[0]) is not sm:
        return None
    q4, k4, scale, divides, mask, fill, nodes = got
    attrs = [ir.AttrFloat32("scale", scale), ir.AttrInt64("scale_divides", divides),
             ir.AttrFloat32("mask_fill", fill)]
    ins = [q4, k4, v4, mask, bias]
    while ins[-1] is None:
        ins.pop()
    return ins, attrs, nodes + before, mm2.outputs[0]


def _heads_scores(v: ir.Value):
    """v = [Where(mask, ] FusedMatMul(Q4, K4, transB=1) [/ c | · c] [, fill)], each step read only by
    the next: (Q4, K4, c, divides, mask, fill, nodes in order), or None."""
    nodes, mask, fill = [], None, 0.0
    w = producer(v, "Where")
    if w is not None and len(w.inputs) == 3 and w.inputs[0] is not None and w.inputs[0].dtype == ir.DataType.BOOL:
        c = scalar(w.inputs[2])
        if c is None or only_use(w.inputs[1]) is not w or w.inputs[1] is w.inputs[0]:
            return None
        mask, fill, v = w.inputs[0], c, w.inputs[1]
        nodes.append(w)
    scale, divides = 1.0, 0
    s = v.producer() if v is not None else None
    if s is not None and s.domain in ("", "ai.onnx") and s.op_type in ("Div", "Mul") and len(s.inputs) == 2:
        sides = (1,) if s.op_type == "Div" else (0, 1)
        k = next((k for k in sides if scalar(s.inputs[k]) is not None and scalar(s.inputs[k]) != 0.0), None)
        if k is None or (nodes and only_use(v) is not nodes[0]):
            return None
        scale, divides, v = scalar(s.inputs[k]), int(s.op_type == "Div"), s.inputs[1 - k]
        nodes.insert(0, s)
    mm = v.producer() if v is not None else None
    if mm is None or mm.op_type != "FusedMatMul" or mm.domain != MS or len(mm.inputs) != 2 or \
            (nodes and only_use(v) is not nodes[0]):
        return None
    at = {k: a.value for k, a in mm.attributes.items()}
    if at.get("transB", 0) != 1 or at.get("transA", 0) or at.get("transBatchA", 0) or at.get("transBatchB", 0) \
            or float(at.get("alpha", 1.0)) != 1.0:
        return None
    q4, k4 = mm.inputs
    if any(t is None or t.shape is None or len(t.shape) != 4 for t in (q4, k4)):
        return None
    return q4, k4, scale, divides, mask, fill, [mm] + nodes

def _match(sm: ir.Node, opset: int):
    """(inputs of the fused node, heads, scale, pattern nodes, the 4-D output it replaces)."""
    axis = sm.attributes.get("axis")
    axis = axis.value if axis is not None else (-1 if opset >= 13 else 1)     # before 13: 2-D from axis 1
    x = sm.inputs[0]
    if x is None or x.shape is None or len(x.shape) != 4 or axis not in (-1, 3):
        return None
    nodes = [sm]
    scores, mask = x, None
    add = producer(x, "Add")
    if add is not None and len(add.inputs) == 2 and only_use(x) is sm:
        for k in (0, 1):
            if _scores_root(add.inputs[k]) is not None:
                scores, mask = add.inputs[k], add.inputs[1 - k]
                nodes.append(add)
                break
    root = _scores_root(scores)
    if root is None:
        return None
    mm1, scale, scale_nodes = root
    nodes += scale_nodes + [mm1]
    q4, c_q, q_nodes = _unscaled(mm1.inputs[0])
    kt, c_k, k_nodes = _unscaled(mm1.inputs[1])
    scale *= c_q * c_k
    if scale == 0.0:            # the op's scale 0 means its default, 1/sqrt(D)
        return None
    nodes += q_nodes + k_nodes
    q = _heads(q4)
    k = _keys_transposed(kt)
    if q is None or k is None:
        return None
    (q3, heads, d, qn), (k3, kheads, kd, kn) = q, k
    if heads != kheads or d != kd:
        return None
    nodes += qn + kn
    # forward: [IsNaN/Where guard], MatMul with V4, Transpose back, then a Reshape
    p = sm.outputs[0]
    guard = _nan_guard(p)
    if guard is not None:
        p, gnodes = guard
        nodes += gnodes
    mm2 = only_use(p)
    if mm2 is None or mm2.op_type != "MatMul" or mm2.domain not in ("", "ai.onnx") or mm2.inputs[0] is not p:
        return None
    v = _heads(mm2.inputs[1])
    if v is None or v[1] != heads:
        return None
    v3, _, dv, vn = v
    tr = only_use(mm2.outputs[0])
    if not _transpose(tr, (0, 2, 1, 3)):
        return None
    out = tr.outputs[0]
    readers = [u.node for u in out.uses() if not _reads_batch_and_sequence(u.node)]
    reshape = readers[0] if len(readers) == 1 and not out.is_graph_output() else None
    hdv = heads * dv
    if (reshape is None or reshape.op_type != "Reshape" or reshape.domain not in ("", "ai.onnx")
            or reshape.inputs[0] is not out or reshape.outputs[0].shape is None
            or len(reshape.outputs[0].shape) not in (2, 3) or reshape.outputs[0].shape[-1] != hdv):
        return None
    nodes += [mm2, tr] + vn
    if not _same_dims(q3.shape[0], k3.shape[0]) or not _same_dims(k3.shape[0], v3.shape[0]) \
            or not _same_dims(k3.shape[1], v3.shape[1]) or not _mask_fits(mask, q3, k3, heads):
        return None
    return [q3, k3, v3, None, None, mask] if mask is not None else [q3, k3, v3], heads, scale, nodes, out


def _reads_batch_and_sequence(node: ir.Node) -> bool:
    """A Shape of the attention output whose every reader Gathers dim 0 or 1 (B, S): the same of the
    4-D (B, S, H, Dv) output and of the fused 3-D one, so it may read the latter (ViT's export builds
    its final Reshape's shape so)."""
    if node.op_type != "Shape" or node.domain not in ("", "ai.onnx") or node.attributes \
            or node.outputs[0].is_graph_output():
        return False
    for u in node.outputs[0].uses():
        g = u.node
        axis = g.attributes.get("axis")
        if g.op_type != "Gather" or u.idx != 0 or (axis is not None and axis.value != 0) \
                or scalar(g.inputs[1]) not in (0.0, 1.0):
            return False
    return True


def _scores_root(v: ir.Value):
    """Q·Kᵀ, Q·Kᵀ · c or Q·Kᵀ / c (c a scalar constant): (the MatMul, the factor, the scaling nodes)."""
    scale, nodes = 1.0, []
    s = v.producer() if v is not None else None
    if s is not None and s.domain in ("", "ai.onnx") and s.op_type in ("Mul", "Div") and len(s.inputs) == 2 \
            and only_use(v) is not None:
        sides = (0, 1) if s.op_type == "Mul" else (1,)
        for k in sides:
            c = scalar(s.inputs[k])
            if c is not None and c != 0.0:
                scale, v = (c if s.op_type == "Mul" else 1.0 / c), s.inputs[1 - k]
                nodes.append(s)
                break
    mm = producer(v, "MatMul")
    if mm is None or only_use(v) is None:
        return None
    return mm, scale, nodes


def _unscaled(v: ir.Value):
    """v = Mul(u, c) with a scalar constant c used only here: (u, c, [Mul]); else (v, 1, [])."""
    m = producer(v, "Mul")
    if m is not None and len(m.inputs) == 2 and only_use(v) is not None:
        for k in (0, 1):
            c = scalar(m.inputs[k])
            if c is not None:
                return m.inputs[1 - k], c, [m]
    return v, 1.0, []


def _transpose(node: ir.Node | None, perm: tuple) -> bool:
    if node is None or node.op_type != "Transpose" or node.domain not in ("", "ai.onnx"):
        return False
    p = node.attributes.get("perm")
    return p is not None and tuple(p.value) == perm


def _heads(v4: ir.Value, perm: tuple = (0, 2, 1, 3)):
    """v4 = Transpose(Reshape(x3, (B, S, H, D)), perm): (x3, H, D, [Transpose, Reshape]); perm (0, 2, 1, 3)
    gives the heads (B, H, S, D), (0, 2, 3, 1) their transposes (B, H, D, S)."""
    tr = v4.producer() if v4 is not None else None
    if not _transpose(tr, perm):
        return None
    r = producer(tr.inputs[0], "Reshape")
    if r is None:
        return None
    x3, r4 = r.inputs[0], r.outputs[0]
    if x3 is None or x3.shape is None or r4.shape is None or len(x3.shape) != 3 or len(r4.shape) != 4:
        return None
    h, d, hd = r4.shape[2], r4.shape[3], x3.shape[2]
    if not all(isinstance(i, int) for i in (h, d, hd)) or h * d != hd or \
            not _same_dims(r4.shape[0], x3.shape[0]) or not _same_dims(r4.shape[1], x3.shape[1]):
        return None
    return x3, h, d, [tr, r]


def _keys_transposed(kt: ir.Value):
    """Kᵀ (B, H, D, S) from K4 (B, H, S, D): (k3, H, D, nodes) of the K4 it transposes."""
    tr = kt.producer() if kt is not None else None
    if _transpose(tr, (0, 2, 3, 1)):           # the two Transposes composed (level 1 does that)
        return _heads(kt, (0, 2, 3, 1))
    if _transpose(tr, (0, 1, 3, 2)):
        k = _heads(tr.inputs[0])
        return None if k is None else (*k[:3], k[3] + [tr])
    r2 = producer(kt, "Reshape")
    t = r2.inputs[0].producer() if r2 is not None else None
    r1 = producer(t.inputs[0], "Reshape") if _transpose(t, (0, 2, 1)) else None
    if r1 is None:
        return None
    k4 = r1.inputs[0]
    s4, s3, o4 = k4.shape, r1.outputs[0].shape, kt.shape
    if s4 is None or s3 is None or o4 is None or len(s4) != 4 or len(s3) != 3 or len(o4) != 4:
        return None
    # (B, H, S, D) -> (B·H, S, D) -> (B·H, D, S) -> (B, H, D, S): only the last two axes swap
    if not (_same_dims(s3[1], s4[2]) and _same_dims(s3[2], s4[3]) and _same_dims(o4[0], s4[0])
            and _same_dims(o4[1], s4[1]) and _same_dims(o4[2], s4[3]) and _same_dims(o4[3], s4[2])):
        return None
    k = _heads(k4)
    return None if k is None else (*k[:3], k[3] + [r1, t, r2])


def _nan_guard(p: ir.Value):
    """Where(IsNaN(p), 0, p) reading p and nothing else: (its output, [IsNaN, Where])."""
    uses = {id(u.node): u.node for u in p.uses()}
    if len(uses) != 2 or p.is_graph_output():
        return None
    isnan = next((nd for nd in uses.values() if nd.op_type == "IsNaN"), None)
    where = next((nd for nd in uses.values() if nd.op_type == "Where"), None)
    if isnan is None or where is None or only_use(isnan.outputs[0]) is not where:
        return None
    if where.inputs[0] is not isnan.outputs[0] or scalar(where.inputs[1]) != 0.0 or where.inputs[2] is not p:
        return None
    return where.outputs[0], [isnan, where]


def _mask_fits(mask: ir.Value | None, q3: ir.Value, k3: ir.Value, heads: int) -> bool:
    """The additive mask has the kernel's (B|1, H|1, Sq, Sk) form (a symbolic batch is checked at run time)."""
    if mask is None:
        return True
    s = mask.shape
    if s is None or len(s) != 4:
        return False
    return (s[0] == 1 or not isinstance(s[0], int) or _same_dims(s[0], q3.shape[0])) and s[1] in (1, heads) \
        and _same_dims(s[2], q3.shape[1]) and _same_dims(s[3], k3.shape[1])


def _same_dims(a, b) -> bool:
    """Known equal: the same number, or the same named symbol."""
    if isinstance(a, int) or isinstance(b, int):
        return a == b
    return a is not None and b is not None and a.value is not None and str(a.value) == str(b.value)


def _removable(nodes: list[ir.Node], out: ir.Value) -> list[ir.Node]:
    """The pattern nodes whose outputs only pattern nodes read (``out`` aside, which is rewired)."""
    keep = {id(nd): nd for nd in nodes}
    changed = True
    while changed:
        changed = False
        for nd in list(keep.values()):
            for o in nd.outputs:
                if o is out:
                    continue
                if o.is_graph_output() or any(id(u.node) not in keep for u in o.uses()):
                    del keep[id(nd)]
                    changed = True
                    break
    return list(keep.values())
