"""The fuzzer: seeded mutations of real models and their feeds, each case run in a worker process with a
time limit, and its outcome classed.

Seeds are the small graphs built here, the models of the ONNX node tests (a folder written by
``../shared/tools/gen_node_tests.py``, ``../nt`` beside the checkout or ``ENGINEROOM_NODE_TESTS``) and,
optionally, the zoo's models. Case ``i`` of seed ``s`` is built from ``numpy.random.default_rng([s, i])``
alone, so any case replays (``python bench/fuzz.py --seed S --case I``).

A case mutates the model at the protobuf level (bit flips, truncation, attributes of the wrong type or
out of range, out-of-range axes, negative and huge dims, dangling or duplicated names, cycles,
initializers whose data disagrees with their dims, external data with odd paths, opsets that do not
exist, ...) or its feed (wrong dtypes, NaN/Inf, empty tensors, odd and broadcast-hostile shapes,
non-contiguous arrays, extreme integers). engineroom must run it or raise one of its own errors. The
outcomes: ``ran``, ``error:<Kind>`` (an engineroom error), and the findings ``crash`` (the worker died,
a signal), ``hang`` (past the time limit), ``foreign:<Type>`` (an exception that is not engineroom's) and
``mismatch`` (it ran, onnxruntime ran the same case, the outputs differ).
"""

from __future__ import annotations

import glob
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
CHECKOUT = os.path.abspath(os.path.join(HERE, "..", ".."))
NODE_TESTS = os.environ.get("ENGINEROOM_NODE_TESTS", os.path.join(CHECKOUT, "..", "nt"))
ZOO = os.path.join(CHECKOUT, "..", "shared", "models")
FINDINGS = ("crash", "hang", "foreign", "mismatch")
# outputs of these are random, or depend on what onnxruntime leaves unspecified: run, not compared
_NOT_COMPARED = {
    "RandomNormal",
    "RandomUniform",
    "RandomNormalLike",
    "RandomUniformLike",
    "Bernoulli",
    "Multinomial",
    "Dropout",
}


# --- seeds ------------------------------------------------------------------------------------------


@dataclass
class Seed:
    name: str
    model: onnx.ModelProto
    feeds: dict


def _vi(name, et, shape):
    return helper.make_tensor_value_info(name, et, shape)


def _built_seeds() -> list[Seed]:
    """Small graphs of the kinds the tests build: conv net, attention-ish block, control flow, shapes."""
    rng = np.random.default_rng(1234)
    f = TensorProto.FLOAT
    out = []

    def add(name, nodes, inputs, outputs, inits, feeds, opset=17):
        g = helper.make_graph(nodes, name, inputs, outputs, inits)
        out.append(Seed(name, helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)]), feeds))

    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    add(
        "conv_relu_pool",
        [
            helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["r"]),
            helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
            helper.make_node("ReduceMean", ["p"], ["y"], axes=[2, 3], keepdims=0),
        ],
        [_vi("x", f, ["n", 3, 8, 8])],
        [_vi("y", f, None)],
        [w],
        {"x": rng.standard_normal((2, 3, 8, 8)).astype(np.float32)},
    )
    wq = numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "wq")
    b = numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b")
    add(
        "matmul_softmax_ln",
        [
            helper.make_node("MatMul", ["x", "wq"], ["m"]),
            helper.make_node("Add", ["m", "b"], ["a"]),
            helper.make_node("Softmax", ["a"], ["s"], axis=-1),
            helper.make_node("LayerNormalization", ["s", "g", "b"], ["y"], axis=-1),
        ],
        [_vi("x", f, ["n", 5, 8])],
        [_vi("y", f, None)],
        [wq, b, numpy_helper.from_array(np.ones(8, np.float32), "g")],
        {"x": rng.standard_normal((2, 5, 8)).astype(np.float32)},
    )
    body = helper.make_graph(
        [helper.make_node("Add", ["v", "x"], ["v2"]), helper.make_node("Mul", ["v2", "v2"], ["sq"])],
        "body",
        [_vi("i", TensorProto.INT64, []), _vi("c", TensorProto.BOOL, []), _vi("v", f, [3])],
        [_vi("c", TensorProto.BOOL, []), _vi("v2", f, [3]), _vi("sq", f, [3])],
    )
    add(
        "loop_scan",
        [helper.make_node("Loop", ["m", "", "v0"], ["y", "s"], body=body)],
        [_vi("m", TensorProto.INT64, []), _vi("v0", f, [3]), _vi("x", f, [3])],
        [_vi("y", f, None), _vi("s", f, None)],
        [],
        {"m": np.array(4, np.int64), "v0": np.zeros(3, np.float32), "x": np.array([1, 2, 3], np.float32)},
    )
    then_g = helper.make_graph([helper.make_node("Neg", ["x"], ["t"])], "then", [], [_vi("t", f, None)])
    else_g = helper.make_graph([helper.make_node("Abs", ["x"], ["e"])], "else", [], [_vi("e", f, None)])
    add(
        "if_branches",
        [
            helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
            helper.make_node("Greater", ["s", "zero"], ["c"]),
            helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g),
        ],
        [_vi("x", f, ["n"])],
        [_vi("y", f, None)],
        [numpy_helper.from_array(np.array(0, np.float32), "zero")],
        {"x": rng.standard_normal(6).astype(np.float32)},
    )
    add(
        "shape_ops",
        [
            helper.make_node("Shape", ["x"], ["sh"]),
            helper.make_node("Reshape", ["x", "r"], ["xr"]),
            helper.make_node("Transpose", ["xr"], ["t"], perm=[1, 0]),
            helper.make_node("Gather", ["t", "idx"], ["g"], axis=0),
            helper.make_node("Slice", ["g", "st", "en"], ["sl"]),
            helper.make_node("Concat", ["sl", "sl"], ["cc"], axis=1),
            helper.make_node("Expand", ["cc", "es"], ["y"]),
        ],
        [_vi("x", f, [2, 3, 4]), _vi("idx", TensorProto.INT64, [2])],
        [_vi("y", f, None)],
        [
            numpy_helper.from_array(np.array([6, 4], np.int64), "r"),
            numpy_helper.from_array(np.array([0, 1], np.int64), "st"),
            numpy_helper.from_array(np.array([2, 5], np.int64), "en"),
            numpy_helper.from_array(np.array([2, 1, 1], np.int64), "es"),
        ],
        {"x": rng.standard_normal((2, 3, 4)).astype(np.float32), "idx": np.array([3, -1], np.int64)},
    )
    add(
        "resize_pad",
        [
            helper.make_node("Resize", ["x", "", "sc"], ["r"], mode="linear"),
            helper.make_node("Pad", ["r", "p"], ["y"], mode="reflect"),
        ],
        [_vi("x", f, [1, 2, 4, 4])],
        [_vi("y", f, None)],
        [
            numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "sc"),
            numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "p"),
        ],
        {"x": rng.standard_normal((1, 2, 4, 4)).astype(np.float32)},
    )
    wl = numpy_helper.from_array(rng.standard_normal((1, 16, 3)).astype(np.float32), "W")
    rl = numpy_helper.from_array(rng.standard_normal((1, 16, 4)).astype(np.float32), "R")
    add(
        "lstm",
        [helper.make_node("LSTM", ["x", "W", "R"], ["y", "h"], hidden_size=4)],
        [_vi("x", f, [5, 2, 3])],
        [_vi("y", f, None), _vi("h", f, None)],
        [wl, rl],
        {"x": rng.standard_normal((5, 2, 3)).astype(np.float32)},
    )
    add(
        "topk_cumsum_where",
        [
            helper.make_node("TopK", ["x", "k"], ["v", "i"], axis=-1),
            helper.make_node("CumSum", ["v", "ax"], ["cs"]),
            helper.make_node("Cast", ["i"], ["fi"], to=TensorProto.FLOAT),
            helper.make_node("Where", ["cnd", "cs", "fi"], ["y"]),
        ],
        [_vi("x", f, [3, 6]), _vi("cnd", TensorProto.BOOL, [3, 3])],
        [_vi("y", f, None), _vi("i", TensorProto.INT64, None)],
        [numpy_helper.from_array(np.array([3], np.int64), "k"), numpy_helper.from_array(np.array(1, np.int64), "ax")],
        {"x": rng.standard_normal((3, 6)).astype(np.float32), "cnd": rng.random((3, 3)) > 0.5},
    )
    return out


def _read_tensor(path: str):
    t = onnx.TensorProto()
    with open(path, "rb") as fh:
        t.ParseFromString(fh.read())
    return numpy_helper.to_array(t)


def _node_test_seeds(folder: str, only: int | None = None) -> list[Seed]:
    """The node tests' models and first data sets (tensor inputs only), sorted by name."""
    seeds = []
    dirs = sorted(glob.glob(os.path.join(folder, "test_*")))
    if only is not None and len(dirs) > only:  # evenly spread over the ops
        dirs = [dirs[int(k * len(dirs) / only)] for k in range(only)]
    for d in dirs:
        mp = os.path.join(d, "model.onnx")
        if not os.path.isfile(mp):
            continue
        try:
            m = onnx.load(mp)
            inputs = [vi for vi in m.graph.input if vi.name not in {t.name for t in m.graph.initializer}]
            if any(vi.type.WhichOneof("value") != "tensor_type" for vi in inputs):
                continue
            feeds = {
                vi.name: _read_tensor(os.path.join(d, "test_data_set_0", f"input_{k}.pb"))
                for k, vi in enumerate(inputs)
            }
        except Exception:  # noqa: BLE001 - a seed that does not read is left out
            continue
        seeds.append(Seed(os.path.basename(d), m, feeds))
    return seeds


def _zoo_seeds(names) -> list[Seed]:
    seeds = []
    for nm in names:
        p = os.path.join(ZOO, nm + ".onnx")
        if not os.path.exists(p):
            continue
        m = onnx.load(p)
        z = np.load(p[:-5] + ".io.npz", allow_pickle=False)
        ins = [vi.name for vi in m.graph.input if vi.name not in {t.name for t in m.graph.initializer}]
        seeds.append(Seed("zoo_" + nm, m, {n: z[f"in_{k}"] for k, n in enumerate(ins)}))
    return seeds


def load_corpus(node_tests: int | None = None, zoo=()) -> list[Seed]:
    """Built seeds, then (when the folder exists) ``node_tests`` node-test seeds (None: all), then zoo models."""
    seeds = _built_seeds()
    if node_tests != 0 and os.path.isdir(NODE_TESTS):
        seeds += _node_test_seeds(NODE_TESTS, node_tests)
    return seeds + _zoo_seeds(zoo)


# --- mutations --------------------------------------------------------------------------------------


class NotApplicable(Exception):
    pass


_EXTREME_INTS = [-1, 0, 1, 2, -2, 7, -7, 2**31 - 1, -(2**31), 2**62, -(2**62), 2**63 - 1, 1000]
_EXTREME_FLOATS = [float("nan"), float("inf"), float("-inf"), 0.0, -1.0, 1e30, -1e-30, 1e-45]


def _nodes(m):
    """Every (graph, node) in the model, subgraphs included."""
    todo = [m.graph]
    res = []
    while todo:
        g = todo.pop()
        for n in g.node:
            res.append((g, n))
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    todo.append(a.g)
                elif a.type == onnx.AttributeProto.GRAPHS:
                    todo.extend(a.graphs)
    return res


def _pick(rng, seq):
    if not len(seq):
        raise NotApplicable
    return seq[int(rng.integers(len(seq)))]


def m_attr_value(m, rng):
    g, n = _pick(rng, [(g, n) for g, n in _nodes(m) if any(a.type in (1, 2, 6, 7) for a in n.attribute)])
    a = _pick(rng, [a for a in n.attribute if a.type in (1, 2, 6, 7)])
    if a.type == onnx.AttributeProto.INT:
        a.i = _pick(rng, _EXTREME_INTS)
    elif a.type == onnx.AttributeProto.FLOAT:
        a.f = _pick(rng, _EXTREME_FLOATS)
    elif a.type == onnx.AttributeProto.INTS:
        vals = list(a.ints) or [0]
        vals[int(rng.integers(len(vals)))] = _pick(rng, _EXTREME_INTS)
        if rng.random() < 0.3:
            vals = vals[:-1] if rng.random() < 0.5 else vals + [_pick(rng, _EXTREME_INTS)]
        del a.ints[:]
        a.ints.extend(vals)
    else:
        vals = list(a.floats) or [0.0]
        vals[int(rng.integers(len(vals)))] = _pick(rng, _EXTREME_FLOATS)
        del a.floats[:]
        a.floats.extend(vals)
    return f"attr {n.op_type}.{a.name} -> {helper.get_attribute_value(a)!r}"[:200]


def m_attr_type(m, rng):
    g, n = _pick(rng, [(g, n) for g, n in _nodes(m) if n.attribute])
    a = _pick(rng, list(n.attribute))
    kind = _pick(rng, ["i", "f", "s", "ints", "floats", "t"])
    name = a.name
    n.attribute.remove(a)
    value = {
        "i": 3,
        "f": 0.5,
        "s": b"bogus",
        "ints": [1, -1],
        "floats": [0.5],
        "t": numpy_helper.from_array(np.array([1.5], np.float32)),
    }[kind]
    n.attribute.append(helper.make_attribute(name, value))
    return f"attr {n.op_type}.{name} retyped as {kind}"


def m_axis(m, rng):
    g, n = _pick(rng, _nodes(m))
    k = _pick(rng, [-9, -5, -3, 3, 4, 5, 9, 2**40])
    name = _pick(rng, ["axis", "axes"]) if any(a.name == "axes" for a in n.attribute) else "axis"
    for a in list(n.attribute):
        if a.name == name:
            n.attribute.remove(a)
    n.attribute.append(helper.make_attribute(name, [k] if name == "axes" else k))
    return f"{n.op_type}.{name} = {k}"


def m_dims(m, rng):
    vis = [
        vi
        for vi in (*m.graph.input, *m.graph.output, *m.graph.value_info)
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape")
    ]
    vi = _pick(rng, vis)
    dims = vi.type.tensor_type.shape.dim
    if not len(dims) or rng.random() < 0.2:
        dims.add().dim_value = _pick(rng, [0, 1, 5])
        return f"dim added to {vi.name}"
    d = dims[int(rng.integers(len(dims)))]
    v = _pick(rng, [0, -1, -5, 2**31, 10**12, 1, "sym"])
    if v == "sym":
        d.dim_param = "fuzz_dim"
    else:
        d.dim_value = v
    return f"dim of {vi.name} -> {v}"


def m_init_dims(m, rng):
    t = _pick(rng, [t for t in m.graph.initializer])
    if rng.random() < 0.3:
        t.dims.append(_pick(rng, [2, 0, 7]))
    elif len(t.dims):
        t.dims[int(rng.integers(len(t.dims)))] = _pick(rng, [0, 1, 3, 2**20, -1])
    else:
        t.dims.append(3)
    return f"initializer {t.name} dims -> {list(t.dims)}"


def m_init_data(m, rng):
    # not one an earlier step made external (its data is in no file yet: reading it is the engine's test)
    t = _pick(rng, [t for t in m.graph.initializer if t.data_location != onnx.TensorProto.EXTERNAL])
    arr = numpy_helper.to_array(t)
    if arr.dtype.kind == "f" and arr.size:
        arr = arr.copy()
        arr.reshape(-1)[int(rng.integers(arr.size))] = _pick(rng, _EXTREME_FLOATS)
    elif arr.dtype.kind in "iu" and arr.size:
        arr = arr.copy()
        info = np.iinfo(arr.dtype)
        v = _pick(rng, [info.max, info.min, 0, -1, 1, 2**20])
        arr.reshape(-1)[int(rng.integers(arr.size))] = min(max(v, info.min), info.max)
    else:
        raise NotApplicable
    t.CopyFrom(numpy_helper.from_array(arr, t.name))
    return f"initializer {t.name} value extreme"


def m_dangling(m, rng):
    g, n = _pick(rng, [(g, n) for g, n in _nodes(m) if len(n.input)])
    k = int(rng.integers(len(n.input)))
    n.input[k] = "fuzz_missing_value"
    return f"{n.op_type} input {k} dangling"


def m_duplicate(m, rng):
    g, n = _pick(rng, [(g, n) for g, n in _nodes(m) if len(n.output)])
    names = [vi.name for vi in g.input] + [t.name for t in g.initializer] + [o for x in g.node for o in x.output]
    other = _pick(rng, [x for x in names if x and x != n.output[0]] or [n.output[0]])
    n.output[0] = other
    return f"{n.op_type} output duplicated as {other}"


def m_cycle(m, rng):
    g = m.graph
    if len(g.node) < 1:
        raise NotApplicable
    i = int(rng.integers(len(g.node)))
    j = int(rng.integers(i, len(g.node)))
    if not len(g.node[i].input) or not len(g.node[j].output):
        raise NotApplicable
    g.node[i].input[0] = g.node[j].output[0]
    return f"cycle: node {i} reads node {j}"


def m_opset(m, rng):
    choice = rng.random()
    if choice < 0.4:
        m.opset_import[0].version = _pick(rng, [0, 1, 3, 6, 99, 10000, -1])
        return f"opset -> {m.opset_import[0].version}"
    if choice < 0.7:
        g, n = _pick(rng, _nodes(m))
        n.domain = _pick(rng, ["com.bogus", "ai.onnx.ml", "com.microsoft"])
        return f"{n.op_type} domain -> {n.domain}"
    m.opset_import.add(domain="com.bogus", version=1)
    m.ir_version = _pick(rng, [0, 1, 3, 100, m.ir_version])
    return f"bogus domain import, ir_version {m.ir_version}"


_OP_TYPES = [
    "Add",
    "Relu",
    "Conv",
    "MatMul",
    "Gather",
    "Reshape",
    "Concat",
    "Slice",
    "Softmax",
    "Transpose",
    "ReduceSum",
    "Split",
    "Squeeze",
    "Unsqueeze",
    "Where",
    "Expand",
    "Tile",
    "Pad",
    "Resize",
    "TopK",
    "GatherElements",
    "ScatterND",
    "Einsum",
    "Gemm",
    "MaxPool",
    "Cast",
    "Range",
    "OneHot",
    "CumSum",
    "NonZero",
    "Unique",
    "LSTM",
    "If",
    "Loop",
    "ConstantOfShape",
    "Identity",
    "Flatten",
    "ArgMax",
    "InstanceNormalization",
    "LayerNormalization",
    "DepthToSpace",
    "GridSample",
    "RoiAlign",
    "Trilu",
]


def m_op_type(m, rng):
    g, n = _pick(rng, _nodes(m))
    old, n.op_type = n.op_type, _pick(rng, _OP_TYPES)
    return f"op {old} -> {n.op_type}"


def m_arity(m, rng):
    g, n = _pick(rng, _nodes(m))
    if len(n.input) and rng.random() < 0.5:
        del n.input[-1]
        return f"{n.op_type} lost its last input"
    names = [vi.name for vi in g.input] + [t.name for t in g.initializer]
    n.input.append(_pick(rng, names) if names and rng.random() < 0.7 else "")
    return f"{n.op_type} got an extra input"


def m_remove_node(m, rng):
    g = m.graph
    if not len(g.node):
        raise NotApplicable
    k = int(rng.integers(len(g.node)))
    op = g.node[k].op_type
    del g.node[k]
    return f"node {k} ({op}) removed"


def m_types(m, rng):
    vi = _pick(rng, [vi for vi in (*m.graph.input, *m.graph.output) if vi.type.HasField("tensor_type")])
    vi.type.tensor_type.elem_type = _pick(rng, [1, 2, 3, 6, 7, 9, 10, 11, 16, 8, 0, 99])
    return f"type of {vi.name} -> {vi.type.tensor_type.elem_type}"


def m_ext_data(m, rng):
    """Mark an initializer as external data with an odd location; the case is loaded from a file."""
    t = _pick(rng, [t for t in m.graph.initializer])
    loc = _pick(
        rng,
        [
            "../outside.bin",
            "/etc/hostname",
            "sub/../../outside.bin",
            "missing.bin",
            "",
            "link_out.bin",
            ".",
            "data.bin",
        ],
    )
    t.ClearField("raw_data")
    for fld in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data"):
        t.ClearField(fld)
    t.data_location = TensorProto.EXTERNAL
    del t.external_data[:]
    t.external_data.add(key="location", value=loc)
    if rng.random() < 0.5:
        t.external_data.add(key="offset", value=str(_pick(rng, [0, 3, 10**9, -4])))
        t.external_data.add(key="length", value=str(_pick(rng, [0, 1, 10**12, -1])))
    return f"initializer {t.name} external at {loc!r}"


def free_input_dims(m) -> None:
    """Every graph input's dims made symbolic, and shapes inferred inside dropped, so that feeds of other
    shapes reach the kernels (not the session's shape check)."""
    for vi in m.graph.input:
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
            for k, d in enumerate(vi.type.tensor_type.shape.dim):
                d.dim_param = f"free_{vi.name}_{k}"
    del m.graph.value_info[:]
    for vi in m.graph.output:
        if vi.type.HasField("tensor_type"):
            vi.type.tensor_type.ClearField("shape")


MODEL_MUTATIONS = [
    m_attr_value,
    m_attr_type,
    m_axis,
    m_dims,
    m_init_dims,
    m_init_data,
    m_dangling,
    m_duplicate,
    m_cycle,
    m_opset,
    m_op_type,
    m_arity,
    m_remove_node,
    m_types,
    m_ext_data,
]


def f_dtype(feeds, rng):
    k = _pick(rng, sorted(feeds))
    dt = _pick(rng, [np.float64, np.float16, np.int32, np.int64, np.uint8, np.bool_, np.int8, np.float32])
    feeds[k] = np.asarray(feeds[k]).astype(dt)
    return f"feed {k} as {np.dtype(dt)}"


def f_nan(feeds, rng):
    k = _pick(rng, [k for k in sorted(feeds) if feeds[k].dtype.kind == "f" and feeds[k].size])
    x = feeds[k].copy()
    flat = x.reshape(-1)
    for _ in range(int(rng.integers(1, 4))):
        flat[int(rng.integers(flat.size))] = _pick(rng, [np.nan, np.inf, -np.inf])
    feeds[k] = x
    return f"feed {k} with NaN/Inf"


def f_empty(feeds, rng):
    k = _pick(rng, [k for k in sorted(feeds) if feeds[k].ndim])
    shape = list(feeds[k].shape)
    shape[int(rng.integers(len(shape)))] = 0
    feeds[k] = np.zeros(shape, feeds[k].dtype)
    return f"feed {k} empty {shape}"


def f_shape(feeds, rng):
    k = _pick(rng, sorted(feeds))
    x = feeds[k]
    r = rng.random()
    if r < 0.3 and x.ndim:
        shape = [d if rng.random() < 0.5 else _pick(rng, [1, 2, 3, d + 1, 2 * d + 1]) for d in x.shape]
    elif r < 0.5:
        shape = list(x.shape) + [_pick(rng, [1, 2])]
    elif r < 0.7 and x.ndim:
        shape = list(x.shape[1:])
    elif r < 0.85 and x.ndim:
        shape = [1] * x.ndim
        shape[int(rng.integers(x.ndim))] = 4096  # broadcast-hostile against the other feeds
    else:
        shape = []
    flat = x.reshape(-1)
    n = int(np.prod(shape)) if shape else 1
    feeds[k] = (np.resize(flat, n) if flat.size else np.zeros(n, x.dtype)).reshape(shape)
    return f"feed {k} shape {shape}"


def f_noncontiguous(feeds, rng):
    k = _pick(rng, [k for k in sorted(feeds) if feeds[k].ndim and feeds[k].size])
    x = feeds[k]
    if rng.random() < 0.5:
        big = np.repeat(x, 2, axis=-1)
        feeds[k] = big[..., ::2]
    else:
        feeds[k] = np.asfortranarray(x) if x.ndim > 1 else np.repeat(x, 2)[::2]
    return f"feed {k} non-contiguous"


def f_ints(feeds, rng):
    k = _pick(rng, [k for k in sorted(feeds) if feeds[k].dtype.kind in "iu" and feeds[k].size])
    x = feeds[k].copy()
    info = np.iinfo(x.dtype)
    v = _pick(rng, [info.max, info.min, -1, 0, 1000, 2**31 - 1])
    x.reshape(-1)[int(rng.integers(x.size))] = min(max(v, info.min), info.max)
    feeds[k] = x
    return f"feed {k} extreme integer"


FEED_MUTATIONS = [f_dtype, f_nan, f_empty, f_shape, f_noncontiguous, f_ints]


@dataclass
class Case:
    index: int
    seed_name: str
    model: onnx.ModelProto | None
    data: bytes
    feeds: dict
    steps: list[str] = field(default_factory=list)
    from_file: bool = False


def make_case(corpus: list[Seed], seed: int, i: int) -> Case:
    """Case ``i`` of ``seed``: a seed picked, 0-3 model mutations or 1-2 feed mutations, maybe bytes damage."""
    rng = np.random.default_rng([seed, i])
    s = corpus[int(rng.integers(len(corpus)))]
    m = onnx.ModelProto()
    m.CopyFrom(s.model)
    feeds = {k: np.array(v) for k, v in s.feeds.items()}
    steps: list[str] = []
    from_file = False
    kind = rng.random()
    if kind < 0.1:
        pass  # the seed as is: a differential check against onnxruntime
    elif kind < 0.55:
        for _ in range(int(rng.integers(1, 4))):
            mut = MODEL_MUTATIONS[int(rng.integers(len(MODEL_MUTATIONS)))]
            try:
                steps.append(mut(m, rng))
                from_file |= mut is m_ext_data
            except (NotApplicable, ValueError, TypeError):
                pass
    else:
        if rng.random() < 0.5:  # feeds of other shapes reach the kernels
            free_input_dims(m)
            steps.append("input dims freed")
        for _ in range(int(rng.integers(1, 3))):
            mut = FEED_MUTATIONS[int(rng.integers(len(FEED_MUTATIONS)))]
            try:
                steps.append(mut(feeds, rng))
            except (NotApplicable, ValueError, TypeError):  # e.g. strings that are no numbers
                pass
    data = m.SerializeToString()
    if rng.random() < 0.08:
        b = bytearray(data)
        if rng.random() < 0.5 and b:
            for _ in range(int(rng.integers(1, 9))):
                b[int(rng.integers(len(b)))] ^= 1 << int(rng.integers(8))
            steps.append("bit flips")
        else:
            b = b[: int(rng.integers(len(b) + 1))]
            steps.append(f"truncated to {len(b)} bytes")
        data = bytes(b)
        m = None
    return Case(i, s.name, m, data, feeds, steps, from_file)


# --- running one case -------------------------------------------------------------------------------


def _write_model_dir(case: Case, folder: str) -> str:
    """The case's model in ``folder`` with the files its odd external-data paths might reach."""
    os.makedirs(os.path.join(folder, "model", "sub"), exist_ok=True)
    with open(os.path.join(folder, "outside.bin"), "wb") as fh:
        fh.write(b"\x01" * 4096)
    with open(os.path.join(folder, "model", "data.bin"), "wb") as fh:
        fh.write(b"\x02" * 64)
    link = os.path.join(folder, "model", "link_out.bin")
    if not os.path.lexists(link):
        os.symlink(os.path.join(folder, "outside.bin"), link)
    path = os.path.join(folder, "model", "model.onnx")
    with open(path, "wb") as fh:
        fh.write(case.data)
    return path


def _outputs_equal(a, b) -> str | None:
    """None when engineroom's outputs ``a`` match onnxruntime's ``b``, else what differs."""
    if len(a) != len(b):
        return f"{len(a)} outputs vs {len(b)}"
    for k, (x, y) in enumerate(zip(a, b)):
        if isinstance(y, list) or isinstance(x, list):
            if not isinstance(x, list) or not isinstance(y, list):
                return f"output {k}: sequence vs tensor"
            why = _outputs_equal(x, y)
            if why:
                return f"output {k}: {why}"
            continue
        if x is None or y is None:
            if (x is None) != (y is None):
                return f"output {k}: None vs value"
            continue
        x, y = np.asarray(x), np.asarray(y)
        if x.dtype != y.dtype and y.dtype == np.uint8 and x.dtype.itemsize == 1 and x.dtype.kind == "V":
            x = x.view(np.uint8)  # onnxruntime's Python API returns float8 tensors as their bytes
        if x.shape != y.shape:
            return f"output {k}: shape {x.shape} vs {y.shape}"
        if x.dtype != y.dtype and not (x.dtype.kind in "OUS" and y.dtype.kind in "OUS"):
            return f"output {k}: dtype {x.dtype} vs {y.dtype}"
        if x.dtype.kind in "OUS":
            if x.tolist() != y.tolist():
                return f"output {k}: strings differ"
            continue
        if x.dtype.kind in "fc":
            xf, yf = x.astype(np.float64), y.astype(np.float64)
            rtol = 1e-2 if x.dtype.itemsize <= 2 else 1e-3
            fin = np.isfinite(yf)
            scale = float(np.max(np.abs(yf[fin]))) if fin.any() else 1.0
            if not np.allclose(xf, yf, rtol=rtol, atol=rtol * max(scale, 1e-6), equal_nan=True):
                bad = ~np.isclose(xf, yf, rtol=rtol, atol=rtol * max(scale, 1e-6), equal_nan=True)
                return (
                    f"output {k}: {int(bad.sum())} of {x.size} values differ (first at {np.argwhere(bad)[0].tolist()})"
                )
            continue
        if not np.array_equal(x, y):
            return f"output {k}: {int((x != y).sum())} of {x.size} values differ"
    return None


def _compared(case: Case) -> bool:
    if case.model is None:
        return True
    return not any(n.op_type in _NOT_COMPARED for _, n in _nodes(case.model))


def run_case(case: Case, folder: str, report=None, timeout_ms: int = 10000) -> dict:
    """Run ``case`` on engineroom then, when it ran, on onnxruntime; ``report(dict)`` is told each stage."""
    import engineroom as er

    src = case.data
    if case.from_file:
        src = _write_model_dir(case, folder)
    res = {"i": case.index, "seed": case.seed_name, "steps": case.steps}
    so = er.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 4
    ro = er.RunOptions()
    ro.add_run_config_entry("run.timeout_ms", str(timeout_ms))
    try:
        s = er.InferenceSession(src, so, providers=["CPUExecutionProvider"])
        outs = s.run(None, case.feeds, ro)
        res["outcome"] = "ran"
    except er.EngineroomError as e:
        res["outcome"] = f"error:{type(e).__name__}"
        res["detail"] = str(e)[:300]
        outs = None
    except Exception as e:  # noqa: BLE001 - exactly what the fuzzer looks for
        res["outcome"] = f"foreign:{type(e).__name__}"
        res["detail"] = "".join(traceback.format_exception(e))[-3000:]
        outs = None
    if report is not None:
        report({"stage": "engineroom", **res})
    if outs is None or not _compared(case):
        return res
    import onnxruntime as ort

    oso = ort.SessionOptions()
    oso.intra_op_num_threads = 1
    oso.log_severity_level = 4
    try:
        os_ = ort.InferenceSession(src, oso, providers=["CPUExecutionProvider"])
        ref = os_.run(None, case.feeds)
    except Exception:  # noqa: BLE001 - onnxruntime refusing a case is no finding
        res["oracle"] = "refused"
        return res
    why = _outputs_equal(outs, ref)
    res["oracle"] = "same" if why is None else "differs"
    if why is not None:
        # where onnxruntime differs, the ONNX reference evaluator (the spec in code) decides: onnxruntime's
        # own arithmetic (0 * inf in an unused interpolation weight, ...) is no finding against engineroom
        if _reference_agrees(case, outs):
            res["oracle"] = "differs, onnx.reference agrees with engineroom"
        else:
            # told apart: a difference on finite feeds, and one where a feed holds NaN/inf (where the order of
            # IEEE operations, e.g. inf * 0 inside an interpolation, decides the answer)
            res["outcome"] = "mismatch" if _finite(case.feeds) else "mismatch:non-finite feed"
            res["detail"] = why
    return res


def _finite(feeds: dict) -> bool:
    return all(v.dtype.kind not in "fc" or bool(np.isfinite(v).all()) for v in feeds.values())


def _reference_agrees(case: Case, outs) -> bool:
    if case.model is None:
        return False
    try:
        from onnx.reference import ReferenceEvaluator

        ref = ReferenceEvaluator(case.model).run(None, case.feeds)
    except Exception:  # noqa: BLE001 - the reference cannot run it: no tie-break
        return False
    return _outputs_equal(outs, list(ref)) is None


# --- worker processes ------------------------------------------------------------------------------


def _limit_memory(gib: float) -> None:
    try:
        import resource

        lim = int(gib * (1 << 30))
        resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
    except (ImportError, ValueError, OSError):
        pass


def worker_main(seed: int, node_tests: int | None, zoo: list[str], mem_gib: float) -> None:
    """Read case indices on stdin, answer JSON lines: a 'start' line, then the case's result."""
    import warnings

    warnings.simplefilter("ignore")
    _limit_memory(mem_gib)
    corpus = load_corpus(node_tests, zoo)
    out = sys.stdout
    out.write(json.dumps({"ready": len(corpus)}) + "\n")
    out.flush()
    with tempfile.TemporaryDirectory() as tmp:
        for line in sys.stdin:
            i = int(line)
            folder = os.path.join(tmp, str(i))
            try:
                case = make_case(corpus, seed, i)
            except Exception as e:  # noqa: BLE001 - a bug of the fuzzer itself, not of the engine
                out.write(json.dumps({"i": i, "stage": "done", "outcome": "fuzzer_error", "detail": repr(e)}) + "\n")
                out.flush()
                continue
            out.write(json.dumps({"i": i, "stage": "start", "seed": case.seed_name, "steps": case.steps}) + "\n")
            out.flush()

            def report(msg):
                out.write(json.dumps(msg, default=str) + "\n")
                out.flush()

            res = run_case(case, folder, report)
            res["stage"] = "done"
            out.write(json.dumps(res, default=str) + "\n")
            out.flush()


class _Worker:
    def __init__(self, seed, node_tests, zoo, mem_gib):
        # glibc checks its heap on every free and fills freed memory: an out-of-bounds write by a compiled
        # loop then aborts in the case that made it, rather than cases later or never
        env = dict(
            os.environ,
            OMP_NUM_THREADS="1",
            OPENBLAS_NUM_THREADS="1",
            MKL_NUM_THREADS="1",
            MALLOC_CHECK_="3",
            MALLOC_PERTURB_="165",
            ENGINEROOM_JIT=os.environ.get("ENGINEROOM_JIT", "wait"),
        )
        args = [
            sys.executable,
            os.path.abspath(__file__),
            "--worker",
            str(seed),
            json.dumps(node_tests),
            json.dumps(list(zoo)),
            str(mem_gib),
        ]
        self.log = tempfile.TemporaryFile()  # the worker's stderr: what a crash printed last
        self.proc = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True, env=env, cwd=HERE
        )
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def get(self, timeout):
        try:
            line = self.lines.get(timeout=max(timeout, 0.01))
        except queue.Empty:
            return "timeout"
        return None if line is None else json.loads(line)

    def stderr_tail(self, n: int = 1500) -> str:
        try:
            self.log.seek(0)
            return self.log.read().decode(errors="replace")[-n:]
        except Exception:  # noqa: BLE001
            return ""

    def kill(self):
        try:
            self.proc.kill()
            self.proc.wait(10)
        except Exception:  # noqa: BLE001
            pass


def fuzz(
    cases,
    seed: int,
    workers: int = 2,
    case_timeout: float = 60.0,
    node_tests: int | None = None,
    zoo=(),
    mem_gib: float = 6.0,
    progress=None,
) -> dict:
    """Run case indices ``cases`` (an int n means range(n)) of ``seed`` in ``workers`` processes.

    Returns counts by outcome and the findings (crash / hang / foreign / mismatch), each with the case
    index that replays it."""
    todo: queue.Queue = queue.Queue()
    for i in range(cases) if isinstance(cases, int) else cases:
        todo.put(i)
    counts: dict[str, int] = {}
    findings: list[dict] = []
    lock = threading.Lock()

    def record(res):
        with lock:
            counts[res["outcome"]] = counts.get(res["outcome"], 0) + 1
            if res.get("oracle"):
                counts["oracle:" + res["oracle"]] = counts.get("oracle:" + res["oracle"], 0) + 1
            if res["outcome"].split(":")[0] in FINDINGS or res["outcome"] == "fuzzer_error":
                findings.append(res)
            if progress is not None:
                progress(res)

    def start():
        w = _Worker(seed, node_tests, zoo, mem_gib)
        msg = w.get(600)
        if not isinstance(msg, dict) or "ready" not in msg:
            raise RuntimeError(f"fuzz worker failed to start: {msg!r}")
        return w

    def drive():
        w = start()
        while True:
            try:
                i = todo.get_nowait()
            except queue.Empty:
                break
            w.proc.stdin.write(f"{i}\n")
            w.proc.stdin.flush()
            deadline = time.monotonic() + case_timeout
            info = {"i": i}
            ran_engine = False
            while True:
                msg = w.get(deadline - time.monotonic())
                if msg == "timeout" or msg is None:
                    w.kill()
                    code = w.proc.returncode
                    if ran_engine:  # engineroom was done: onnxruntime, the oracle, died or hung
                        record(
                            {
                                **info,
                                "outcome": info.get("outcome", "ran"),
                                "oracle": "crashed" if msg is None else "hung",
                            }
                        )
                    else:
                        record(
                            {
                                **info,
                                "outcome": "hang" if msg == "timeout" else "crash",
                                "detail": f"worker exit code {code}; its stderr ended: {w.stderr_tail()}",
                            }
                        )
                    w = start()
                    break
                if msg.get("stage") == "start":
                    info.update(msg)
                elif msg.get("stage") == "engineroom":
                    ran_engine = True
                    info.update(msg)
                elif msg.get("stage") == "done":
                    record(msg)
                    break
        w.kill()

    threads = [threading.Thread(target=drive) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    findings.sort(key=lambda r: r["i"])
    return {"counts": dict(sorted(counts.items())), "findings": findings}


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "--worker":
    worker_main(int(sys.argv[2]), json.loads(sys.argv[3]), json.loads(sys.argv[4]), float(sys.argv[5]))
