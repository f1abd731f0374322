"""Differential test: the CPU provider against ``onnx.reference.ReferenceEvaluator``.

For each of the most-used ops of real models (plus a few cheap extras) a hypothesis strategy draws a
single-node model: input shapes (numpy broadcasting for the n-ary ops), attributes, dtypes and whether
the host-side inputs (shapes, axes, pads...) are initializers or graph inputs. The model is run by
engineroom's CPU provider and by the reference evaluator; output dtypes and shapes must agree exactly,
values within a per-dtype tolerance (exact for integers and bools).

Reproducible: ``derandomize=True`` and no example database, so CI draws the same examples every run
(``ENGINEROOM_DIFFERENTIAL_SCALE`` / ``ENGINEROOM_DIFFERENTIAL_SEED`` draw more or other ones locally).
A failing example prints as a ``Case(...)`` expression: ``check(Case(...))`` reruns it, and
``_build_model(Case(...))`` gives the model. Cases this test found are kept in ``EXAMPLES`` and always run.

Where ``onnx.reference`` itself is wrong (onnx 1.23), either the reference is handed the same computation
in a form it gets right (``REFERENCE_FIXES``: explicit pads for auto_pad, per-group ConvTranspose, ...)
or the generator leaves that draw out; each place says why. Nothing is loosened to hide an engineroom
difference.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, example, given, seed, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.ops.op_max_pool import MaxPool

import engineroom as ort

F16, F32, F64 = np.float16, np.float32, np.float64
I8, U8, I32, I64 = np.int8, np.uint8, np.int32, np.int64
BOOL = np.bool_
FLOATS = (F32, F32, F32, F32, F64, F16)  # float32 mostly
NUMERIC = FLOATS + (I32, I64)
ALL = NUMERIC + (I8, U8, BOOL)
INT64_MAX = np.iinfo(np.int64).max
INT64_MIN = np.iinfo(np.int64).min


# --------------------------------------------------------------------------------------------------
# the case, the model, the comparison
# --------------------------------------------------------------------------------------------------
@dataclass
class Inp:
    value: np.ndarray | None  # None: an omitted optional input ("")
    const: bool = False  # an initializer rather than a graph input


@dataclass
class Case:
    op: str
    inputs: list
    attrs: dict = field(default_factory=dict)
    n_out: int = 1
    opset: int = 18
    acc: bool = False  # the op accumulates (conv, matmul, reductions): float tolerances scaled up
    tol_dtype: type | None = None  # compare floats with this dtype's tolerance instead of the output's
    ref: str | None = None  # a REFERENCE_FIXES entry: how to get onnx.reference right for this case
    int_atol: int = 0  # integer outputs of an interpolation: a value at a .5 tie may round either way

    def __repr__(self) -> str:
        """A Python expression that rebuilds the case (``import numpy as np`` and this module's names)."""
        ins = []
        with np.printoptions(threshold=10**6, floatmode="unique", linewidth=10**6):
            for inp in self.inputs:
                if inp.value is None:
                    ins.append("Inp(None)")
                    continue
                v = inp.value
                if v.size == 0:
                    arr = f"np.zeros({v.shape}, np.{v.dtype})"
                else:
                    arr = f"np.array({v.tolist()!r}, np.{v.dtype})"
                ins.append(f"Inp({arr}{', const=True' if inp.const else ''})")
        extra = "".join(f", {k}={getattr(self, k)!r}" for k in _DEFAULTS if getattr(self, k) != _DEFAULTS[k])
        if self.tol_dtype is not None:
            extra += f", tol_dtype=np.{np.dtype(self.tol_dtype)}"
        if self.ref is not None:
            extra += f", ref={self.ref!r}"
        return (f"Case({self.op!r}, [{', '.join(ins)}], attrs={self.attrs!r}, opset={self.opset}{extra})")

    def _repr_pretty_(self, p, cycle):  # hypothesis prints falsifying examples through this
        p.text(repr(self))


_DEFAULTS = {"n_out": 1, "acc": False, "int_atol": 0}


def _out_names(case: Case) -> list[str]:
    return [f"y{i}" for i in range(case.n_out)]


def _build_model(case: Case) -> onnx.ModelProto:
    """One node; tensor inputs with static shapes; output types from ONNX shape inference."""
    names, graph_inputs, inits = [], [], []
    for i, inp in enumerate(case.inputs):
        if inp.value is None:
            names.append("")
            continue
        name = f"x{i}"
        names.append(name)
        if inp.const:
            inits.append(numpy_helper.from_array(inp.value, name))
        else:
            elem = helper.np_dtype_to_tensor_dtype(inp.value.dtype)
            graph_inputs.append(helper.make_tensor_value_info(name, elem, list(inp.value.shape)))
    while names and names[-1] == "":
        names.pop()
    node = helper.make_node(case.op, names, _out_names(case))
    for key, value in case.attrs.items():  # make_attribute can't type an empty list on its own
        kind = onnx.AttributeProto.INTS if isinstance(value, list) and not value else None
        node.attribute.append(helper.make_attribute(key, value, attr_type=kind))
    outputs = [helper.make_empty_tensor_value_info(n) for n in _out_names(case)]
    graph = helper.make_graph([node], "differential", graph_inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", case.opset)])
    model.ir_version = 8
    inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    types = {vi.name: vi.type for vi in list(inferred.graph.output) + list(inferred.graph.value_info)}
    for out in model.graph.output:
        if out.name in types:
            out.type.CopyFrom(types[out.name])
    if all(out.type.tensor_type.HasField("shape") for out in model.graph.output):
        onnx.checker.check_model(model)
    else:  # an output of unknown rank (a data-dependent shape): the checker wants a shape there
        ctx = onnx.checker.C.CheckerContext()
        ctx.ir_version, ctx.opset_imports = model.ir_version, {"": case.opset}
        onnx.checker.check_node(node, ctx)
    return model


def _tolerance(dtype: np.dtype, acc: bool) -> tuple[float, float]:
    """(rtol, atol) for a float dtype."""
    if dtype == np.float16:
        return (2e-2, 5e-2) if acc else (1e-2, 1e-2)
    if dtype == np.float64:
        return (1e-9, 1e-11) if acc else (1e-10, 1e-12)
    return (1e-4, 1e-4) if acc else (1e-4, 1e-5)


def _feed(case: Case) -> dict:
    # a scalar is fed as the 0-d array it stands for (InferenceSession.run refuses NumPy scalars, as onnxruntime's)
    return {f"x{i}": np.asarray(inp.value) if isinstance(inp.value, np.generic) else inp.value
            for i, inp in enumerate(case.inputs) if inp.value is not None and not inp.const}


def _reference(case: Case, new_ops=None) -> list:
    model = _build_model(case)
    with np.errstate(all="ignore"):
        return ReferenceEvaluator(model, new_ops=new_ops).run(None, {k: v.copy() for k, v in _feed(case).items()})


def check(case: Case) -> None:
    model = _build_model(case)
    expected = REFERENCE_FIXES[case.ref](case) if case.ref else _reference(case)
    feed = _feed(case)
    before = {k: v.copy() for k, v in feed.items()}
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, feed)
    for k, v in before.items():
        assert np.array_equal(feed[k], v, equal_nan=True), f"input {k} was modified in place"
    assert len(got) == len(expected)
    for i, (g, e) in enumerate(zip(got, expected, strict=True)):
        e = np.asarray(e)
        assert isinstance(g, np.ndarray), f"output {i}: {type(g)}"
        assert g.dtype == e.dtype, f"output {i}: dtype {g.dtype}, reference {e.dtype}"
        assert g.shape == e.shape, f"output {i}: shape {g.shape}, reference {e.shape}"
        if e.dtype.kind == "f":
            rtol, atol = _tolerance(np.dtype(case.tol_dtype or e.dtype), case.acc)
            np.testing.assert_allclose(
                g.astype(np.float64), e.astype(np.float64), rtol=rtol, atol=atol, equal_nan=True,
                err_msg=f"output {i}",
            )
        elif case.int_atol:
            np.testing.assert_allclose(g.astype(np.int64), e.astype(np.int64), rtol=0, atol=case.int_atol,
                                       err_msg=f"output {i}")
        else:
            np.testing.assert_array_equal(g, e, err_msg=f"output {i}")


# --------------------------------------------------------------------------------------------------
# where onnx.reference is wrong: the same computation, put to it in a form it gets right
# --------------------------------------------------------------------------------------------------
class _MaxPoolGeneric(MaxPool):
    """onnx.reference's MaxPool sends unit strides and dilations to CommonPool, which reads 2-D pads in the
    wrong order ([top, bottom, left, right]) and drops 1-D/3-D pads; its general N-d path (`_max_pool`, used
    for any other stride or dilation) follows the spec. Use that path always."""

    op_domain = ""

    def _run(self, x, auto_pad=None, ceil_mode=None, dilations=None, kernel_shape=None, pads=None,
             storage_order=None, strides=None):
        return self._max_pool(x, auto_pad=auto_pad, ceil_mode=ceil_mode, dilations=dilations,
                              kernel_shape=kernel_shape, pads=pads, storage_order=storage_order, strides=strides)


_MaxPoolGeneric.__name__ = "MaxPool"


def _spec_auto_pads(auto_pad: str, sizes, kernel, strides, dilations) -> list[int]:
    """Explicit pads for auto_pad, as the spec (and onnxruntime) derive them."""
    begins, ends = [], []
    for n, k, s, d in zip(sizes, kernel, strides, dilations, strict=True):
        total = 0
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            out = -(-n // s)
            total = max(0, (out - 1) * s + d * (k - 1) + 1 - n)
        small, big = total // 2, total - total // 2
        begins.append(big if auto_pad == "SAME_LOWER" else small)
        ends.append(small if auto_pad == "SAME_LOWER" else big)
    return begins + ends


def _ref_pool(case: Case) -> list:
    """onnx.reference's pools mishandle auto_pad (output size without dilations, SAME_LOWER rounded down,
    negative pads handed to np.pad): run it with the explicit pads the spec derives instead."""
    attrs = dict(case.attrs)
    x = case.inputs[0].value
    nsp = x.ndim - 2
    auto_pad = attrs.pop("auto_pad", "NOTSET")
    if auto_pad != "NOTSET":
        attrs["pads"] = _spec_auto_pads(auto_pad, x.shape[2:], attrs["kernel_shape"],
                                        attrs.get("strides", [1] * nsp), attrs.get("dilations", [1] * nsp))
    if case.op == "AveragePool" and attrs.get("ceil_mode") and not attrs.get("count_include_pad"):
        # its ceil_mode pads half the extra cells at the front, shifting every window: with padding left out
        # of the average anyway, padding the extra cells at the end instead is the same computation
        pads = attrs.get("pads", [0] * 2 * nsp)
        for i in range(nsp):
            pads[nsp + i] += _ceil_extra(x.shape[2 + i], attrs["kernel_shape"][i], attrs.get("strides", [1] * nsp)[i],
                                         attrs.get("dilations", [1] * nsp)[i], pads[i], pads[nsp + i])
        attrs["pads"], attrs["ceil_mode"] = pads, 0
    ref = Case(case.op, case.inputs, attrs=attrs, n_out=case.n_out, opset=case.opset)
    return _reference(ref, [_MaxPoolGeneric] if case.op == "MaxPool" else None)


def _ref_conv_transpose(case: Case) -> list:
    """onnx.reference's ConvTranspose ignores output_shape unless auto_pad is SAME_* (pads stay 0), and
    slices groups wrongly (W by output channels, one output channel per group, the whole bias each
    time): hand it the explicit pads the spec derives, and run it on each group with group=1."""
    x, w, b = (inp.value for inp in case.inputs)
    attrs = dict(case.attrs)
    nsp = x.ndim - 2
    auto_pad = attrs.pop("auto_pad", "NOTSET")
    out_shape = attrs.pop("output_shape", None)
    if out_shape is None and auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        out_shape = [n * s for n, s in zip(x.shape[2:], attrs.get("strides", [1] * nsp), strict=True)]
    if out_shape is not None:
        begins, ends = [], []
        for i in range(nsp):
            s, d = attrs.get("strides", [1] * nsp)[i], attrs.get("dilations", [1] * nsp)[i]
            op = attrs.get("output_padding", [0] * nsp)[i]
            total = s * (x.shape[2 + i] - 1) + op + d * (w.shape[2 + i] - 1) + 1 - out_shape[i]
            small, big = total // 2, total - total // 2
            begins.append(small if auto_pad == "SAME_UPPER" else big)
            ends.append(big if auto_pad == "SAME_UPPER" else small)
        attrs["pads"] = begins + ends
    group = attrs.pop("group", 1)
    strides = attrs.get("strides", [1] * nsp)
    out_pad = attrs.get("output_padding", [0] * nsp)
    crop = None
    if any(p >= s for p, s in zip(out_pad, strides, strict=True)):
        # output_padding >= stride (allowed when below the dilation) breaks the reference's col2im: take the
        # full output (no pads, no output_padding, no bias) from it, and cut the window out here
        pads = attrs.pop("pads", [0] * 2 * nsp)
        attrs.pop("output_padding")
        full = [s * (x.shape[2 + i] - 1) + attrs.get("dilations", [1] * nsp)[i] * (w.shape[2 + i] - 1) + 1
                for i, s in enumerate(strides)]
        crop = (pads[:nsp], [full[i] - pads[i] - pads[nsp + i] + out_pad[i] for i in range(nsp)], b)
        b = None
    cin, cout = x.shape[1] // group, w.shape[1]
    outs = []
    for g in range(group):
        sub = [Inp(x[:, g * cin:(g + 1) * cin]), Inp(w[g * cin:(g + 1) * cin]),
               Inp(None if b is None else b[g * cout:(g + 1) * cout])]
        outs.append(_reference(Case(case.op, sub, attrs=attrs, opset=case.opset))[0])
    y = np.concatenate(outs, axis=1)
    if crop is not None:
        begins, sizes, bias = crop
        window = np.zeros(y.shape[:2] + tuple(sizes), y.dtype)
        src = tuple(slice(bg, bg + n) for bg, n in zip(begins, sizes, strict=True))
        part = y[(slice(None), slice(None)) + src]
        window[(slice(None), slice(None)) + tuple(slice(0, n) for n in part.shape[2:])] = part
        if bias is not None:
            window += bias.reshape((-1,) + (1,) * nsp)
        y = window
    return [y]


def _ref_slice(case: Case) -> list:
    """numpy slicing (onnx.reference's Slice) makes a start before the beginning empty a negative step's
    range; the spec clamps it to 0 (the first element). Hand the reference the clamped start."""
    data, starts, ends, axes, steps = (case.inputs + [Inp(None)] * 2)[:5]
    if steps.value is None:
        return _reference(case)
    rank = data.value.ndim
    axes_v = range(len(starts.value)) if axes.value is None else axes.value
    fixed = starts.value.copy()
    for i, (a, step) in enumerate(zip(axes_v, steps.value, strict=True)):
        if step < 0 and fixed[i] < -data.value.shape[a % rank]:
            fixed[i] = 0
    return _reference(Case(case.op, [data, Inp(fixed, starts.const), ends, axes, steps], opset=case.opset))


def _ref_positive_axes(case: Case) -> list:
    """onnx.reference's GatherElements compares the other dims wrongly for a negative axis, and its Resize
    transposes by negative axes (numpy rejects the permutation): give it the axes as non-negative numbers."""
    rank = case.inputs[0].value.ndim
    attrs = dict(case.attrs)
    if "axis" in attrs:
        attrs["axis"] %= rank
    if "axes" in attrs:
        attrs["axes"] = [a % rank for a in attrs["axes"]]
    return _reference(Case(case.op, case.inputs, attrs=attrs, n_out=case.n_out, opset=case.opset))


def _ref_input_dtype(case: Case) -> list:
    """onnx.reference's ReduceSumSquare sums without dtype=, so numpy widens int32 to int64; the op's output
    type is the input's (the small drawn values can't overflow)."""
    return [np.asarray(y).astype(case.inputs[0].value.dtype) for y in _reference(case)]


def _ref_shape(case: Case) -> list:
    """onnx.reference's Shape-15 adds the rank to a negative end twice when start is 0 ([0:-1] for end=-3 on
    rank 2): give it start and end already clamped to [0, rank], as the spec does."""
    rank = case.inputs[0].value.ndim
    attrs = {k: min(max(v + rank if v < 0 else v, 0), rank) for k, v in case.attrs.items()}
    return _reference(Case(case.op, case.inputs, attrs=attrs, opset=case.opset))


def _ceil_extra(n, k, s, d, pb, pe) -> int:
    """Cells past the end padding that ceil_mode's last window reaches (that window starting inside)."""
    eff = d * (k - 1) + 1
    out = -(-(n + pb + pe - eff) // s) + 1
    if (out - 1) * s >= n + pb:
        out -= 1
    return max(0, (out - 1) * s + eff - (n + pb + pe))


REFERENCE_FIXES = {
    "pool": _ref_pool,
    "conv_transpose": _ref_conv_transpose,
    "slice": _ref_slice,
    "input_dtype": _ref_input_dtype,
    "shape": _ref_shape,
    "positive_axes": _ref_positive_axes,
}


# --------------------------------------------------------------------------------------------------
# drawing helpers
# --------------------------------------------------------------------------------------------------
OPS: dict[str, tuple] = {}
MAIN = 50  # examples for each of the 40 most-used ops
EXTRA = 20  # examples for each extra op
# a deeper local run: ENGINEROOM_DIFFERENTIAL_SCALE=20 draws 20 times as many examples per op, and
# ENGINEROOM_DIFFERENTIAL_SEED=n draws other ones (CI sets neither: the same draws on every run)
SCALE = float(os.environ.get("ENGINEROOM_DIFFERENTIAL_SCALE", "1"))
SEED = os.environ.get("ENGINEROOM_DIFFERENTIAL_SEED")


def op(name: str, examples: int = MAIN):
    def register(fn):
        OPS[name] = (st.composite(fn), examples)
        return fn

    return register


def rng_of(draw) -> np.random.Generator:
    return np.random.default_rng(draw(st.integers(0, 2**32 - 1)))


def rand(rng, shape, dtype, lo=-3.0, hi=3.0, ilo=-10, ihi=10, nonzero=False) -> np.ndarray:
    shape = tuple(int(d) for d in shape)
    dt = np.dtype(dtype)
    if dt == np.bool_:
        return rng.random(shape) < 0.5
    if dt.kind in "iu":
        info = np.iinfo(dt)
        a = rng.integers(max(ilo, info.min), min(ihi, info.max) + 1, size=shape).astype(dt)
        if nonzero:
            a[a == 0] = 1
        return a
    a = rng.uniform(lo, hi, size=shape)
    if nonzero:
        a = np.where(np.abs(a) < 0.25, np.copysign(0.5, a), a)
    return a.astype(dt)


def shape_st(draw, min_rank=0, max_rank=4, min_dim=1, max_dim=5) -> list[int]:
    rank = draw(st.integers(min_rank, max_rank))
    return [draw(st.integers(min_dim, max_dim)) for _ in range(rank)]


def bcast_st(draw, n, min_rank=0, max_rank=4, max_dim=5) -> list[list[int]]:
    """n shapes that broadcast together (numpy rules): leading dims dropped, some dims set to 1."""
    full = shape_st(draw, min_rank, max_rank, 1, max_dim)
    shapes = []
    for _ in range(n):
        drop = draw(st.sampled_from([0, 0, 0] + list(range(len(full) + 1))))
        s = full[drop:]
        mask = draw(st.integers(0, 2 ** len(s) - 1)) if draw(st.booleans()) else 0
        shapes.append([1 if mask >> j & 1 else d for j, d in enumerate(s)])
    return shapes


def axis_st(draw, rank) -> int:
    return draw(st.integers(-rank, rank - 1))


def axes_st(draw, rank, min_size=0) -> list[int]:
    """Distinct axes, some negative, in drawn order."""
    chosen = draw(st.lists(st.integers(0, rank - 1), min_size=min_size, max_size=rank, unique=True))
    return [a - rank if draw(st.booleans()) else a for a in chosen]


def i64(v) -> np.ndarray:
    return np.array(v, dtype=np.int64)


# --------------------------------------------------------------------------------------------------
# the 40 most-used ops
# --------------------------------------------------------------------------------------------------
def _binary(draw, op_name, dtypes, opset=18, lo=-3.0, hi=3.0, nonzero_rhs=False, n=2):
    rng = rng_of(draw)
    dt = draw(st.sampled_from(dtypes))
    shapes = bcast_st(draw, n)
    vals = [rand(rng, s, dt, lo, hi) for s in shapes]
    if nonzero_rhs:
        vals[1] = rand(rng, shapes[1], dt, lo, hi, nonzero=True)
    if op_name in ("Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "Max", "Min") and draw(st.booleans()):
        # ties matter for comparisons: draw from few values
        vals = [rand(rng, s, dt, -2, 2, ilo=-2, ihi=2).round().astype(dt) for s in shapes]
    return Case(op_name, [Inp(v) for v in vals], opset=opset)


@op("Add")
def gen_add(draw):
    return _binary(draw, "Add", NUMERIC, opset=draw(st.sampled_from([14, 18])))


@op("Sub")
def gen_sub(draw):
    return _binary(draw, "Sub", NUMERIC, opset=14)


@op("Mul")
def gen_mul(draw):
    return _binary(draw, "Mul", NUMERIC, opset=14)


@op("Div")
def gen_div(draw):
    # integer division truncates toward zero (C, onnxruntime and the reference agree)
    return _binary(draw, "Div", NUMERIC, opset=14, nonzero_rhs=True)


@op("Pow")
def gen_pow(draw):
    rng = rng_of(draw)
    base_dt = draw(st.sampled_from(FLOATS + (I32, I64)))
    exp_dt = draw(st.sampled_from((F32, F64, I32, I64) if base_dt in (F32, F64) else (base_dt,)))
    a_shape, b_shape = bcast_st(draw, 2)
    if np.dtype(base_dt).kind == "f":
        a = rand(rng, a_shape, base_dt, 0.1, 3.0)
        if draw(st.booleans()):  # negative bases with integral exponents
            a = rand(rng, a_shape, base_dt, -3.0, 3.0)
            b = rand(rng, b_shape, exp_dt, -3, 3).round().astype(exp_dt)
        else:
            b = rand(rng, b_shape, exp_dt, -2.0, 2.0, ilo=-2, ihi=3)
    else:
        a = rand(rng, a_shape, base_dt, ilo=-5, ihi=5)
        b = rand(rng, b_shape, exp_dt, ilo=0, ihi=4)
    return Case("Pow", [Inp(a), Inp(b)], opset=15)


@op("Equal")
def gen_equal(draw):
    return _binary(draw, "Equal", ALL, opset=draw(st.sampled_from([13, 19])))


@op("Less")
def gen_less(draw):
    return _binary(draw, "Less", NUMERIC, opset=13)


@op("Where")
def gen_where(draw):
    rng = rng_of(draw)
    dt = draw(st.sampled_from(ALL))
    c, x, y = bcast_st(draw, 3)
    return Case("Where", [Inp(rand(rng, c, BOOL)), Inp(rand(rng, x, dt)), Inp(rand(rng, y, dt))], opset=16)


def _unary(draw, op_name, dtypes, lo=-3.0, hi=3.0, opset=13, attrs=None, big=False, **kw):
    rng = rng_of(draw)
    dt = draw(st.sampled_from(dtypes))
    if big:
        shape = [draw(st.integers(60, 70)), 70]  # kernels switch to a throughput path at 4096 elements
    else:
        shape = shape_st(draw, 0, 4, draw(st.sampled_from([1, 1, 1, 0])))
    return Case(op_name, [Inp(rand(rng, shape, dt, lo, hi, **kw))], attrs=attrs or {}, opset=opset)


@op("Relu")
def gen_relu(draw):
    return _unary(draw, "Relu", FLOATS + (I8, I32, I64), opset=14)


@op("Sigmoid")
def gen_sigmoid(draw):
    return _unary(draw, "Sigmoid", FLOATS, lo=-12, hi=12)


@op("Tanh")
def gen_tanh(draw):
    return _unary(draw, "Tanh", FLOATS, lo=-6, hi=6)


@op("Sqrt")
def gen_sqrt(draw):
    return _unary(draw, "Sqrt", FLOATS, lo=0.0, hi=9.0)


@op("Erf")
def gen_erf(draw):
    case = _unary(draw, "Erf", FLOATS, lo=-3, hi=3)
    if case.inputs[0].value.dtype == np.float64:
        case.tol_dtype = F32  # onnx.reference's Erf computes in float32 (np.vectorize(erf, otypes=["f"]))
    return case


@op("Exp")
def gen_exp(draw):
    return _unary(draw, "Exp", FLOATS, lo=-5, hi=5)


@op("LeakyRelu")
def gen_leaky_relu(draw):
    attrs = {} if draw(st.booleans()) else {"alpha": draw(st.sampled_from([0.01, 0.1, 0.2, 1.5, 0.0]))}
    return _unary(draw, "LeakyRelu", FLOATS, opset=16, attrs=attrs)


@op("Gelu")
def gen_gelu(draw):
    approx = draw(st.sampled_from([None, "none", "tanh"]))
    attrs = {} if approx is None else {"approximate": approx}
    case = _unary(draw, "Gelu", FLOATS, lo=-5, hi=5, opset=20, attrs=attrs)
    if case.inputs[0].value.dtype == np.float64:
        # onnx.reference runs Gelu's function body: its Erf computes in float32, its constants are float32
        case.tol_dtype = F32
    return case


@op("Clip")
def gen_clip(draw):
    rng = rng_of(draw)
    dt = draw(st.sampled_from(NUMERIC + (I8, U8)))
    x = rand(rng, shape_st(draw), dt, lo=-4, hi=4)
    lo = hi = None
    if draw(st.booleans()):
        lo = rand(rng, (), dt, -2, 0.5, ilo=-3, ihi=1)
    if draw(st.booleans()):
        hi = rand(rng, (), dt, 0.5, 3, ilo=1, ihi=5)
    const = draw(st.booleans())
    return Case("Clip", [Inp(x), Inp(lo, const), Inp(hi, const)], opset=13)


@op("Cast")
def gen_cast(draw):
    rng = rng_of(draw)
    src = draw(st.sampled_from(ALL))
    dst = draw(st.sampled_from(ALL))
    shape = shape_st(draw)
    dsrc, ddst = np.dtype(src), np.dtype(dst)
    if dsrc.kind == "f" and ddst.kind in "iu":
        # float -> int: in range of the target (out of range is undefined); truncation toward zero
        lo = 0.0 if ddst.kind == "u" else -100.0
        x = rand(rng, shape, src, lo, 100.0)
    elif dsrc.kind in "iu" and ddst.kind == "u":
        x = rand(rng, shape, src, ilo=0, ihi=120)
    else:
        x = rand(rng, shape, src, -100, 100, ilo=-100, ihi=100)
        if dsrc.kind == "f" and draw(st.booleans()):
            x = rand(rng, shape, src, -3, 3).round().astype(src)  # zeros, for bool targets
    to = helper.np_dtype_to_tensor_dtype(ddst)
    return Case("Cast", [Inp(x)], attrs={"to": to}, opset=draw(st.sampled_from([13, 19, 21])))


def _softmax(draw, name):
    rng = rng_of(draw)
    dt = draw(st.sampled_from(FLOATS))
    shape = shape_st(draw, 1, 4)
    attrs = {} if draw(st.booleans()) else {"axis": axis_st(draw, len(shape))}
    return Case(name, [Inp(rand(rng, shape, dt, -6, 6))], attrs=attrs, opset=13)


@op("Softmax")
def gen_softmax(draw):
    return _softmax(draw, "Softmax")


@op("LayerNormalization")
def gen_layer_norm(draw):
    rng = rng_of(draw)
    dt = draw(st.sampled_from(FLOATS))
    shape = shape_st(draw, 1, 4, 1, 6)
    axis = axis_st(draw, len(shape))
    norm_shape = shape[axis:]
    x = rand(rng, shape, dt)
    scale = rand(rng, norm_shape, dt, 0.5, 2.0)
    bias = rand(rng, norm_shape, dt) if draw(st.booleans()) else None
    attrs = {"axis": axis}
    if draw(st.booleans()):
        attrs["epsilon"] = draw(st.sampled_from([1e-5, 1e-3, 0.1]))
    # Mean and InvStdDev too, sometimes. Their type is the stash type (float32), but onnx.reference casts
    # them to X's type, so only float32 inputs ask for them.
    n_out = draw(st.sampled_from([1, 1, 3])) if dt == F32 else 1
    return Case("LayerNormalization", [Inp(x), Inp(scale), Inp(bias)], attrs=attrs, n_out=n_out, opset=17, acc=True)


@op("BatchNormalization")
def gen_batch_norm(draw):
    rng = rng_of(draw)
    dt = draw(st.sampled_from(FLOATS))
    shape = [draw(st.integers(1, 3)), draw(st.integers(1, 4))] + shape_st(draw, 0, 2, 1, 5)
    c = shape[1]
    x = rand(rng, shape, dt)
    scale, bias, mean = rand(rng, [c], dt), rand(rng, [c], dt), rand(rng, [c], dt, -1, 1)
    var = rand(rng, [c], dt, 0.1, 3.0)
    attrs = {} if draw(st.booleans()) else {"epsilon": draw(st.sampled_from([1e-5, 1e-3]))}
    const = draw(st.booleans())
    inputs = [Inp(x)] + [Inp(v, const) for v in (scale, bias, mean, var)]
    return Case("BatchNormalization", inputs, attrs=attrs, opset=draw(st.sampled_from([14, 15])))


def _conv_geometry(draw, nsp, transpose=False):
    """Kernel, strides, dilations, auto_pad and pads for a conv or pool."""
    k = [draw(st.integers(1, 3)) for _ in range(nsp)]
    s = [draw(st.integers(1, 3)) for _ in range(nsp)]
    d = [draw(st.integers(1, 2)) for _ in range(nsp)]
    auto_pad = draw(st.sampled_from(["NOTSET"] * 4 + ["SAME_UPPER", "SAME_LOWER", "VALID"]))
    pads = None
    if auto_pad == "NOTSET" and draw(st.booleans()):
        pads = [draw(st.integers(0, k[i] - 1)) for i in range(nsp)] + [
            draw(st.integers(0, k[i] - 1)) for i in range(nsp)
        ]
    return k, s, d, auto_pad, pads


def _spatial_sizes(draw, k, d, pads, max_extra=4):
    """Input sizes for which every output dim of a conv/pool is >= 1."""
    out = []
    for i in range(len(k)):
        eff = d[i] * (k[i] - 1) + 1
        pad = 0 if pads is None else pads[i] + pads[i + len(k)]
        out.append(draw(st.integers(max(1, eff - pad), max(1, eff - pad) + max_extra)))
    return out


@op("Conv")
def gen_conv(draw, winograd=False):
    rng = rng_of(draw)
    dt = draw(st.sampled_from(FLOATS))
    nsp = draw(st.sampled_from([1, 2, 2, 2, 3]))
    group = draw(st.sampled_from([1, 1, 1, 2, 3]))
    cin_g = 1 if draw(st.booleans()) and group > 1 else draw(st.integers(1, 3))
    cout_g = draw(st.integers(1, 3))
    k, s, d, auto_pad, pads = _conv_geometry(draw, nsp)
    sizes = _spatial_sizes(draw, k, d, pads, 4 if nsp < 3 else 2)
    if winograd:
        # constant-weight 3x3 stride-1 convs with 8+ channels and 32+ output tiles take a Winograd path
        nsp, group, cin_g, cout_g = 2, 1, draw(st.integers(8, 12)), draw(st.integers(8, 12))
        k, s, d = [3, 3], [1, 1], [1, 1]
        sizes = [draw(st.integers(14, 26)), draw(st.integers(14, 26))]  # 32+ tiles of 2x2 or 4x4 outputs
        if pads is not None:
            pads = [min(p, 2) for p in pads[:2] + pads[-2:]]
        if auto_pad != "NOTSET":
            pads = None
    n = draw(st.integers(1, 2))
    x = rand(rng, [n, cin_g * group] + sizes, dt, -2, 2)
    w = rand(rng, [cout_g * group, cin_g] + k, dt, -1, 1)
    b = rand(rng, [cout_g * group], dt) if draw(st.booleans()) else None
    attrs = {"group": group} if group > 1 or draw(st.booleans()) else {}
    if draw(st.booleans()):
        attrs["kernel_shape"] = k
    if any(v > 1 for v in s) or draw(st.booleans()):
        attrs["strides"] = s
    if any(v > 1 for v in d) or draw(st.booleans()):
        attrs["dilations"] = d
    if auto_pad != "NOTSET":
        attrs["auto_pad"] = auto_pad
    if pads is not None:
        attrs["pads"] = pads
    const = winograd or draw(st.booleans())
    return Case("Conv", [Inp(x), Inp(w, const), Inp(b, const)], attrs=attrs, opset=11, acc=True)


@op("ConvTranspose")
def gen_conv_transpose(draw):
    rng = rng_of(draw)
    dt = draw(st.sampled_from(FLOATS))
    nsp = draw(st.sampled_from([1, 2, 2, 2, 3]))
    group = draw(st.sampled_from([1, 1, 1, 2]))
    cin_g, cout_g = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    k, s, d, auto_pad, pads = _conv_geometry(draw, nsp)
    sizes = [draw(st.integers(1, 4 if nsp < 3 else 3)) for _ in range(nsp)]
    n = draw(st.integers(1, 2))
    x = rand(rng, [n, cin_g * group] + sizes, dt, -2, 2)
    w = rand(rng, [cin_g * group, cout_g] + k, dt, -1, 1)
    b = rand(rng, [cout_g * group], dt) if draw(st.booleans()) else None
    attrs = {"group": group} if group > 1 else {}
    if draw(st.booleans()):
        attrs["kernel_shape"] = k
    if any(v > 1 for v in s) or draw(st.booleans()):
        attrs["strides"] = s
    if any(v > 1 for v in d) or draw(st.booleans()):
        attrs["dilations"] = d
    if auto_pad != "NOTSET":
        attrs["auto_pad"] = auto_pad
    if pads is not None:
        # the pads crop the full output (stride * (n - 1) + dilated kernel); leave at least one element
        for i in range(nsp):
            full_i = s[i] * (sizes[i] - 1) + d[i] * (k[i] - 1) + 1
            pads[nsp + i] = min(pads[nsp + i], full_i - 1 - pads[i])  # pads[i] <= k - 1 < full_i
        attrs["pads"] = pads
    if draw(st.booleans()):
        # output_padding must be smaller than the stride or the dilation
        attrs["output_padding"] = [draw(st.integers(0, max(s[i], d[i]) - 1)) for i in range(nsp)]
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        # a stride beyond the dilated kernel (+ output_padding) makes SAME's total padding negative: the spec's
        # formula then extends the output with zeros (engineroom, ONNX shape inference), onnxruntime clamps the
        # padding to 0 and returns a shorter output, onnx.reference fails. Not drawn.
        out_pad = attrs.get("output_padding", [0] * nsp)
        s[:] = [min(s[i], d[i] * (k[i] - 1) + 1 + out_pad[i]) for i in range(nsp)]
        if "strides" in attrs:
            attrs["strides"] = s
    full = [s[i] * (sizes[i] - 1) + d[i] * (k[i] - 1) + 1 for i in range(nsp)]
    if auto_pad == "NOTSET" and pads is None and draw(st.booleans()):
        attrs["output_shape"] = [draw(st.integers(1, full[i] + attrs.get("output_padding", [0] * nsp)[i]))
                                 for i in range(nsp)]
    const = draw(st.booleans())
    return Case("ConvTranspose", [Inp(x), Inp(w, const), Inp(b, const)], attrs=attrs, opset=11, acc=True,
                ref="conv_transpose")


def _pool(draw, name, dtypes):
    rng = rng_of(draw)
    dt = draw(st.sampled_from(dtypes))
    nsp = draw(st.sampled_from([1, 2, 2, 2, 3]))
    k, s, d, auto_pad, pads = _conv_geometry(draw, nsp)
    opset = draw(st.sampled_from([12, 19])) if name == "AveragePool" else 12
    if name == "AveragePool" and opset < 19:
        d = [1] * nsp
    sizes = _spatial_sizes(draw, k, d, pads, 4 if nsp < 3 else 2)
    x = rand(rng, [draw(st.integers(1, 2)), draw(st.integers(1, 3))] + sizes, dt, -5, 5, ilo=-100, ihi=100)
    attrs = {"kernel_shape": k}
    if any(v > 1 for v in s) or draw(st.booleans()):
        attrs["strides"] = s
    if any(v > 1 for v in d):
        attrs["dilations"] = d
    if auto_pad != "NOTSET":
        attrs["auto_pad"] = auto_pad
    if pads is not None:
        attrs["pads"] = pads
    if auto_pad == "NOTSET" and draw(st.booleans()):
        attrs["ceil_mode"] = 1
    return Case(name, [Inp(x)], attrs=attrs, opset=opset, ref="pool"), auto_pad, pads


def _padding_only_window(n, k, s, d, pb, pe, ceil) -> bool:
    """Whether some window of a pool sees padding only (possible with a dilation)."""
    eff = d * (k - 1) + 1
    out = (n + pb + pe - eff) // s + 1
    if ceil:
        out = -(-(n + pb + pe - eff) // s) + 1
        if (out - 1) * s >= n + pb:
            out -= 1
    return any(not any(0 <= o * s - pb + j * d < n for j in range(k)) for o in range(out))


@op("MaxPool")
def gen_max_pool(draw):
    case, auto_pad, _ = _pool(draw, "MaxPool", FLOATS + (I8, U8))
    a, x = case.attrs, case.inputs[0].value
    nsp = x.ndim - 2
    if "dilations" in a:
        # a window over padding only has no maximum the spec names: onnxruntime returns the lowest float,
        # engineroom -inf, onnx.reference NaN. Not drawn.
        strides = a.get("strides", [1] * nsp)
        pads = a.get("pads") or _spec_auto_pads(auto_pad, x.shape[2:], a["kernel_shape"], strides, a["dilations"])
        if any(_padding_only_window(x.shape[2 + i], a["kernel_shape"][i], strides[i], a["dilations"][i], pads[i],
                                    pads[nsp + i], a.get("ceil_mode", 0)) for i in range(nsp)):
            del a["dilations"]
    if draw(st.sampled_from([False, False, True])):
        case.n_out = 2  # Indices too
        if draw(st.booleans()):
            case.attrs["storage_order"] = 1
    return case


@op("AveragePool")
def gen_average_pool(draw):
    case, auto_pad, pads = _pool(draw, "AveragePool", FLOATS)
    if draw(st.booleans()):
        case.attrs["count_include_pad"] = 1
        if case.attrs.get("ceil_mode"):
            # onnx.reference shifts the windows by half of ceil_mode's extra cells (see _ref_pool); with
            # padding counted in the average there is no equivalent form for it when that half is not 0
            a, x, nsp = case.attrs, case.inputs[0].value, len(case.attrs["kernel_shape"])
            p = a.get("pads", [0] * 2 * nsp)
            if any(_ceil_extra(x.shape[2 + i], a["kernel_shape"][i], a.get("strides", [1] * nsp)[i],
                               a.get("dilations", [1] * nsp)[i], p[i], p[nsp + i]) >= 2 for i in range(nsp)):
                del a["ceil_mode"]
    return case


@op("GlobalAveragePool")
def gen_global_average_pool(draw):
    rng = rng_of(draw)
    dt = draw(st.sampled_from(FLOATS))
    shape = [draw(st.integers(1, 2)), draw(st.integers(1, 4))] + shape_st(draw, 1, 3, 1, 6)
    return Case("GlobalAveragePool", [Inp(rand(rng, shape, dt))], opset=1, acc=True)


@op("MatMul")
def gen_matmul(draw):
    rng = rng_of(draw)
    dt = draw(st.sampled_from(NUMERIC))
    m, k, n = draw(st.integers(1, 6)), draw(st.integers(1, 8)), draw(st.integers(1, 6))
    ba, bb = bcast_st(draw, 2, 0, 2, 3)
    a_shape = [k] if draw(st.sampled_from([False] * 4 + [True])) else ba + [m, k]
    b_shape = [k] if draw(st.sampled_from([False] * 4 + [True])) else bb + [k, n]
    a, b = rand(rng, a_shape, dt, -2, 2, ilo=-5, ihi=5), rand(rng, b_shape, dt, -2, 2, ilo=-5, ihi=5)
    return Case("MatMul", [Inp(a), Inp(b, draw(st.booleans()))], opset=13, acc=True)


@op("Gemm")
def gen_gemm(draw):
    rng = rng_of(draw)
    dt = draw(st.sampled_from(FLOATS + (I32, I64)))
    m, k, n = draw(st.integers(1, 6)), draw(st.integers(1, 8)), draw(st.integers(1, 6))
    ta, tb = draw(st.booleans()), draw(st.booleans())
    a = rand(rng, [k, m] if ta else [m, k], dt, -2, 2, ilo=-5, ihi=5)
    b = rand(rng, [n, k] if tb else [k, n], dt, -2, 2, ilo=-5, ihi=5)
    c_shape = draw(st.sampled_from([None, [], [1], [n], [1, n], [m, 1], [m, n]]))
    c = None if c_shape is None else rand(rng, c_shape, dt, ilo=-5, ihi=5)
    attrs = {}
    if ta or draw(st.booleans()):
        attrs["transA"] = int(ta)
    if tb or draw(st.booleans()):
        attrs["transB"] = int(tb)
    if np.dtype(dt).kind == "f" and draw(st.booleans()):
        attrs["alpha"] = draw(st.sampled_from([0.5, 2.0, -1.0]))
    if np.dtype(dt).kind == "f" and draw(st.booleans()):
        attrs["beta"] = draw(st.sampled_from([0.0, 0.5, 2.0]))
    const = draw(st.booleans())
    return Case("Gemm", [Inp(a), Inp(b, const), Inp(c, const)], attrs=attrs, opset=13, acc=True)


def _factor(draw, total, rank):
    """A shape of `rank` dims whose product is total."""
    dims = [1] * rank
    p, t = 2, total
    factors = []
    while t > 1:
        while t % p == 0:
            factors.append(p)
            t //= p
        p += 1
    if rank == 0:
        return dims
    for f in factors:
        dims[draw(st.integers(0, rank - 1))] *= f
    return dims


@op("Reshape")
def gen_reshape(draw):
    rng = rng_of(draw)
    dt = draw(st.sampled_from(ALL))
    shape = shape_st(draw, 0, 4, 1, 5)
    total = math.prod(shape)
    rank = draw(st.integers(0 if total == 1 else 1, 5))
    target = _factor(draw, total, rank)
    spec = list(target)
    allowzero = draw(st.sampled_from([None, 0, 1]))
    if rank and draw(st.booleans()):
        spec[draw(st.integers(0, rank - 1))] = -1
    if not allowzero:
        for i in range(min(rank, len(shape))):
            if spec[i] == shape[i] and draw(st.booleans()):
                spec[i] = 0  # copy the input's dim
    attrs = {} if allowzero is None else {"allowzero": allowzero}
    opset = draw(st.sampled_from([14, 19, 21]))
    return Case("Reshape", [Inp(rand(rng, shape, dt)), Inp(i64(spec).reshape(rank), draw(st.booleans()))],
                attrs=attrs, opset=opset)


@op("Transpose")
def gen_transpose(draw):
    rng = rng_of(draw)
    dt = draw(st.sampled_from(ALL))
    shape = shape_st(draw, 0, 5, 1, 4)
    attrs = {}
    if draw(st.sampled_from([True, True, True, False])):
        attrs["perm"] = draw(st.permutations(range(len(shape))))
    return Case("Transpose", [Inp(rand(rng, shape, dt))], attrs=attrs, opset=draw(st.sampled_from([13, 21])))


@op("Concat")
def gen_concat(draw):
    rng = rng_of(draw)
    dt = draw(st.sampled_from(ALL))
    shape = shape_st(draw, 1, 4, 1, 4)
    axis = axis_st(draw, len(shape))
    n = draw(st.integers(1, 4))
    vals = []
    for _ in range(n):
        s = list(shape)
        s[axis] = draw(st.integers(0, 3))
        vals.append(rand(rng, s, dt))
    if all(v.shape[axis] == 0 for v in vals):
        vals[0] = rand(rng, shape, dt)
    return Case("Concat", [Inp(v, draw(st.sampled_from([False, False, True]))) for v in vals],
                attrs={"axis": axis}, opset=13)


@op("Split")
def gen_split(draw):
    rng = rng_of(draw)
    dt = draw(st.sampled_from(ALL))
    shape = shape_st(draw, 1, 4, 1, 6)
    axis = axis_st(draw, len(shape))
    dim = shape[axis]
    opset = draw(st.sampled_from([13, 18]))
    how = draw(st.sampled_from(["sizes", "equal", "num_outputs"] if opset >= 18 else ["sizes", "equal"]))
    attrs = {} if axis == 0 and draw(st.booleans()) else {"axis": axis}
    inputs = [Inp(rand(rng, shape, dt))]
    if how == "sizes":
        n = draw(st.integers(1, 4))
        cuts = sorted(draw(st.integers(0, dim)) for _ in range(n - 1))
        sizes = [b - a for a, b in zip([0] + cuts, cuts + [dim], strict=True)]
        inputs.append(Inp(i64(sizes), draw(st.booleans())))
    elif how == "equal":
        n = draw(st.sampled_from([d for d in range(1, dim + 1) if dim % d == 0]))
        if opset >= 18:
            attrs["num_outputs"] = n
    else:
        # uneven: ceil(dim / n) each, the last one smaller; every output non-empty
        valid = [m for m in range(1, dim + 1) if (m - 1) * -(-dim // m) < dim]
        n = draw(st.sampled_from(valid))
        attrs["num_outputs"] = n
    return Case("Split", inputs, attrs=attrs, n_out=n, opset=opset)


@op("Slice")
def gen_slice(draw):
    rng = rng_of(draw)
    dt = draw(st.sampled_from(ALL))
    shape = shape_st(draw, 1, 4, 1, 6)
    rank = len(shape)
    axes = axes_st(draw, rank, min_size=1)
    bound = st.one_of(st.integers(-8, 8), st.sampled_from([INT64_MAX, INT64_MIN, -INT64_MAX]))
    starts = [draw(bound) for _ in axes]
    ends = [draw(bound) for _ in axes]
    steps = [draw(st.sampled_from([1, 1, 1, 2, 3, -1, -1, -2, -3])) for _ in axes]
    idt = draw(st.sampled_from([I64, I64, I32]))

    def idx(v):
        return np.array(v, dtype=np.int64).clip(np.iinfo(idt).min, np.iinfo(idt).max).astype(idt)

    const = draw(st.booleans())
    inputs = [Inp(rand(rng, shape, dt)), Inp(idx(starts), const), Inp(idx(ends), const)]
    default_axes = [a % rank for a in axes] == list(range(len(axes)))
    if draw(st.booleans()) and all(v == 1 for v in steps) and default_axes:
        pass  # axes and steps omitted
    elif draw(st.booleans()) and all(v == 1 for v in steps):
        inputs.append(Inp(idx(axes), const))
    else:
        inputs += [Inp(idx(axes), const) if not default_axes or draw(st.booleans()) else Inp(None),
                   Inp(idx(steps), const)]
    return Case("Slice", inputs, opset=13, ref="slice")


@op("Gather")
def gen_gather(draw):
    rng = rng_of(draw)
    dt = draw(st.sampled_from(ALL))
    shape = shape_st(draw, 1, 4, 1, 5)
    axis = axis_st(draw, len(shape))
    d = shape[axis]
    ishape = shape_st(draw, 0, 3, 0 if draw(st.sampled_from([False] * 5 + [True])) else 1, 4)
    idt = draw(st.sampled_from([I64, I32]))
    indices = rng.integers(-d, d, size=ishape).astype(idt)
    attrs = {} if axis == 0 and draw(st.booleans()) else {"axis": axis}
    return Case("Gather", [Inp(rand(rng, shape, dt)), Inp(indices, draw(st.booleans()))], attrs=attrs, opset=13)


@op("Unsqueeze")
def gen_unsqueeze(draw):
    rng = rng_of(draw)
    dt = draw(st.sampled_from(ALL))
    shape = shape_st(draw, 0, 4, 1, 4)
    out_rank = len(shape) + draw(st.integers(1, 3))
    axes = axes_st(draw, out_rank, min_size=out_rank - len(shape))[: out_rank - len(shape)]
    return Case("Unsqueeze", [Inp(rand(rng, shape, dt)), Inp(i64(axes), draw(st.booleans()))],
                opset=draw(st.sampled_from([13, 21])))


@op("Squeeze")
def gen_squeeze(draw):
    rng = rng_of(draw)
    dt = draw(st.sampled_from(ALL))
    shape = shape_st(draw, 1, 5, 1, 3)
    ones = [i for i, d in enumerate(shape) if d == 1]
    inputs = [Inp(rand(rng, shape, dt))]
    if ones and draw(st.sampled_from([True, True, False])):
        chosen = draw(st.lists(st.sampled_from(ones), min_size=1, unique=True))
        axes = [a - len(shape) if draw(st.booleans()) else a for a in chosen]
        inputs.append(Inp(i64(axes), draw(st.booleans())))
    return Case("Squeeze", inputs, opset=draw(st.sampled_from([13, 21])))


@op("Shape")
def gen_shape(draw):
    rng = rng_of(draw)
    dt = draw(st.sampled_from(ALL))
    shape = shape_st(draw, 0, 5, 0, 4)
    attrs = {}
    if draw(st.booleans()):
        attrs["start"] = draw(st.integers(-6, 6))
    if draw(st.booleans()):
        attrs["end"] = draw(st.integers(-6, 6))
    return Case("Shape", [Inp(rand(rng, shape, dt))], attrs=attrs, opset=draw(st.sampled_from([15, 19, 21])),
                ref="shape")


def _reduce(draw, name, dtypes, input_axes_since=18, max_rank=4, max_dim=5, ilo=-5, ihi=5):
    rng = rng_of(draw)
    dt = draw(st.sampled_from(dtypes))
    shape = shape_st(draw, 1, max_rank, 1, max_dim)
    opset = draw(st.sampled_from([13, 18]))
    axes = axes_st(draw, len(shape)) if draw(st.sampled_from([True, True, False])) else None
    attrs = {}
    if draw(st.booleans()):
        attrs["keepdims"] = draw(st.integers(0, 1))
    inputs = [Inp(rand(rng, shape, dt, ilo=ilo, ihi=ihi))]
    if opset >= input_axes_since:
        if draw(st.booleans()):
            attrs["noop_with_empty_axes"] = draw(st.integers(0, 1))
        if axes is not None:
            inputs.append(Inp(i64(axes), draw(st.booleans())))
    elif axes:
        attrs["axes"] = axes
    return Case(name, inputs, attrs=attrs, opset=opset, acc=True)


@op("ReduceMean")
def gen_reduce_mean(draw):
    return _reduce(draw, "ReduceMean", FLOATS + (I32, I64))


@op("ReduceSum")
def gen_reduce_sum(draw):
    return _reduce(draw, "ReduceSum", NUMERIC, input_axes_since=13)


@op("Expand")
def gen_expand(draw):
    rng = rng_of(draw)
    dt = draw(st.sampled_from(ALL))
    xs, ts = bcast_st(draw, 2, 0, 4, 4)
    return Case("Expand", [Inp(rand(rng, xs, dt)), Inp(i64(ts).reshape(len(ts)), draw(st.booleans()))], opset=13)


@op("Resize")
def gen_resize(draw):
    rng = rng_of(draw)
    dt = draw(st.sampled_from((F32, F32, F32, F64, F16, U8, I8)))
    opset = draw(st.sampled_from([13, 18, 19]))
    n, c = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    h, w = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    x = rand(rng, [n, c, h, w], dt, -3, 3, ilo=0, ihi=100)
    mode = draw(st.sampled_from(["nearest", "linear", "cubic"]))
    ctms = ["half_pixel", "asymmetric", "align_corners", "pytorch_half_pixel", "tf_crop_and_resize"]
    if opset >= 19:
        ctms.append("half_pixel_symmetric")
    ctm = draw(st.sampled_from(ctms))
    attrs = {"mode": mode}
    if ctm != "half_pixel" or draw(st.booleans()):
        attrs["coordinate_transformation_mode"] = ctm
    if mode == "nearest":
        nm = draw(st.sampled_from([None, "round_prefer_floor", "round_prefer_ceil", "floor", "ceil"]))
        if nm:
            attrs["nearest_mode"] = nm
    if mode == "cubic":
        if draw(st.booleans()):
            attrs["cubic_coeff_a"] = draw(st.sampled_from([-0.5, -0.75]))
        if draw(st.booleans()):
            attrs["exclude_outside"] = 1
    roi = None
    if ctm == "tf_crop_and_resize":
        # binary fractions: a sample landing exactly on the last input pixel stays exact, so no rounding
        # decides between the pixel and extrapolation_value (0.2 + 0.8 need not be 1 in float32)
        roi = np.array([0, 0, draw(st.sampled_from([0.0, 0.125, 0.25])), draw(st.sampled_from([0.0, 0.5])),
                        1, 1, draw(st.sampled_from([1.0, 0.75, 1.25])), draw(st.sampled_from([1.0, 0.875]))],
                       np.float32)
        if draw(st.booleans()):
            attrs["extrapolation_value"] = draw(st.sampled_from([0.0, -1.0, 7.0]))
    axes = opset >= 18 and draw(st.booleans())
    if axes:
        attrs["axes"] = draw(st.sampled_from([[2, 3], [-2, -1]]))
        if roi is not None:
            roi = roi[[2, 3, 6, 7]]
    use_sizes = draw(st.booleans())
    scales = sizes = None
    if use_sizes:
        sz = [draw(st.integers(1, 8)), draw(st.integers(1, 8))]
        sizes = i64(sz if axes else [n, c] + sz)
        if opset >= 18 and draw(st.booleans()):
            attrs["keep_aspect_ratio_policy"] = draw(st.sampled_from(["stretch", "not_larger", "not_smaller"]))
            if mode == "nearest" and ctm == "align_corners":
                # the resized length in_len * scale is then fractional (5 * 7/3): a coordinate can be an exact
                # .5 in real numbers (4 * 4 / (35/3 - 1) = 1.5) that float32 and float64 round to either side of,
                # and nearest picks different pixels. Not drawn.
                attrs["keep_aspect_ratio_policy"] = "stretch"
    else:
        # an output dim of 0 (floor(1 * 0.5)) is valid; onnx.reference fails on it
        sc = [draw(st.sampled_from([0.5, 0.75, 1.0, 1.5, 2.0, 3.0] if dim > 1 else [1.0, 1.5, 2.0, 3.0]))
              for dim in (h, w)]
        scales = np.array(sc if axes else [1.0, 1.0] + sc, np.float32)
    if opset >= 18 and mode != "nearest" and draw(st.sampled_from([False, False, True])):
        attrs["antialias"] = 1
    if ctm == "pytorch_half_pixel" and (mode == "cubic" or attrs.get("antialias")):
        # a resized length of 1 maps to input coordinate 0 under pytorch_half_pixel (the spec); onnx.reference
        # uses -0.5, which only nearest and plain linear (clamping it to 0) don't see: not drawn
        if use_sizes:
            ones = attrs.get("keep_aspect_ratio_policy", "stretch") != "stretch" or min(sz) < 2
        else:
            ones = min(dim * f for dim, f in zip((h, w), sc, strict=True)) < 2
        if ones:
            attrs["coordinate_transformation_mode"] = "half_pixel"
    const = draw(st.booleans())
    inputs = [Inp(x), Inp(roi, const), Inp(scales, const), Inp(sizes, const)]
    # scales are float32 tensors, and onnxruntime (like engineroom) maps coordinates in float32 for float64
    # data too; onnx.reference does it in float64
    tol = F32 if dt == F64 else None
    # integer data: an interpolated value at an exact .5 (87.5 = 25 + 75 * 5/6) comes out on either side of
    # the tie after float rounding, so 1 apart is allowed there (not for nearest, which copies values)
    int_atol = 1 if mode != "nearest" and np.dtype(dt).kind in "iu" else 0
    return Case("Resize", inputs, attrs=attrs, opset=opset, ref="positive_axes", tol_dtype=tol, int_atol=int_atol)


@op("Pad")
def gen_pad(draw):
    rng = rng_of(draw)
    dt = draw(st.sampled_from(ALL))
    opset = draw(st.sampled_from([13, 18, 19, 21]))
    modes = ["constant", "constant", "reflect", "edge"] + (["wrap"] if opset >= 19 else [])
    mode = draw(st.sampled_from(modes))
    shape = shape_st(draw, 1, 4, 1 if mode == "constant" else 2, 5)
    rank = len(shape)
    axes = axes_st(draw, rank, min_size=1) if opset >= 18 and draw(st.booleans()) else None
    padded = [a % rank for a in axes] if axes is not None else list(range(rank))

    def amount(d):
        if mode == "reflect":
            return draw(st.integers(0, d - 1))
        if mode == "wrap":
            return draw(st.integers(0, d))
        if mode == "constant":
            return draw(st.integers(0, 3))  # negative pads (cropping) are valid; onnx.reference's np.pad rejects them
        return draw(st.integers(0, 3))

    begins = [amount(shape[a]) for a in padded]
    ends = [amount(shape[a]) for a in padded]
    attrs = {} if mode == "constant" and draw(st.booleans()) else {"mode": mode}
    const = draw(st.booleans())
    inputs = [Inp(rand(rng, shape, dt)), Inp(i64(begins + ends), const)]
    if mode == "constant" and draw(st.booleans()):
        inputs.append(Inp(rand(rng, (), dt), const))
    if axes is not None:
        if len(inputs) == 2:
            inputs.append(Inp(None))
        inputs.append(Inp(i64(axes), const))
    return Case("Pad", inputs, attrs=attrs, opset=opset)


@op("ArgMax")
def gen_argmax(draw):
    rng = rng_of(draw)
    dt = draw(st.sampled_from(NUMERIC + (U8,)))
    shape = shape_st(draw, 1, 4, 1, 5)
    x = rand(rng, shape, dt, ilo=0, ihi=3)  # ties among ints
    if np.dtype(dt).kind == "f" and draw(st.booleans()):
        x = rand(rng, shape, dt, -2, 2).round().astype(dt)
    attrs = {}
    if draw(st.booleans()):
        attrs["axis"] = axis_st(draw, len(shape))
    if draw(st.booleans()):
        attrs["keepdims"] = draw(st.integers(0, 1))
    if draw(st.booleans()):
        attrs["select_last_index"] = draw(st.integers(0, 1))
    return Case("ArgMax", [Inp(x)], attrs=attrs, opset=13)


@op("TopK")
def gen_topk(draw):
    rng = rng_of(draw)
    dt = draw(st.sampled_from(NUMERIC))
    shape = shape_st(draw, 1, 3, 1, 6)
    axis = axis_st(draw, len(shape))
    long_row = draw(st.sampled_from([False] * 4 + [True]))
    if long_row:  # a partial-selection path takes rows of 256+ with k <= n / 8
        shape[axis] = draw(st.integers(256, 300))
    x = rand(rng, shape, dt, ilo=0, ihi=4)
    if np.dtype(dt).kind == "f" and draw(st.booleans()):
        x = rand(rng, shape, dt, -2, 2).round().astype(dt)  # ties: the lower index first
    k = draw(st.integers(0, shape[axis] // 8 if long_row else shape[axis]))
    attrs = {} if axis == -1 and draw(st.booleans()) else {"axis": axis}
    if draw(st.booleans()):
        attrs["largest"] = draw(st.integers(0, 1))
    if draw(st.booleans()):
        attrs["sorted"] = 1  # sorted=0 leaves the order unspecified
    return Case("TopK", [Inp(x), Inp(i64([k]), draw(st.booleans()))], attrs=attrs, n_out=2, opset=11)


# --------------------------------------------------------------------------------------------------
# extras: cheap, common enough in exported models; and the size-dependent paths of the ops above
# --------------------------------------------------------------------------------------------------
@op("Conv_winograd", EXTRA)
def gen_conv_winograd(draw):
    return gen_conv(draw, winograd=True)


@op("unary_large", EXTRA)
def gen_unary_big(draw):
    name = draw(st.sampled_from(["Sigmoid", "Tanh", "Erf", "Exp", "Relu", "Gelu", "HardSwish", "HardSigmoid",
                                 "Softplus", "LeakyRelu", "Elu", "Sqrt", "Log", "Neg", "Abs"]))
    lo, hi, opset = {"Sqrt": (0.0, 9.0, 13), "Log": (0.01, 10.0, 13), "Gelu": (-5.0, 5.0, 20),
                     "HardSwish": (-5.0, 5.0, 14), "Relu": (-3.0, 3.0, 14)}.get(name, (-6.0, 6.0, 13))
    case = _unary(draw, name, FLOATS, lo=lo, hi=hi, opset=opset, big=True)
    if case.inputs[0].value.dtype == np.float64 and name in ("Erf", "Gelu", "HardSwish"):
        case.tol_dtype = F32  # onnx.reference computes these in float32 for float64 (see gen_erf, gen_gelu)
    return case
@op("Greater", EXTRA)
def gen_greater(draw):
    return _binary(draw, "Greater", NUMERIC, opset=13)


@op("GreaterOrEqual", EXTRA)
def gen_greater_or_equal(draw):
    return _binary(draw, "GreaterOrEqual", NUMERIC, opset=16)


@op("Max", EXTRA)
def gen_max(draw):
    return _binary(draw, "Max", NUMERIC, opset=13, n=draw(st.integers(1, 3)))


@op("Min", EXTRA)
def gen_min(draw):
    return _binary(draw, "Min", NUMERIC, opset=13, n=draw(st.integers(1, 3)))


@op("Mod", EXTRA)
def gen_mod(draw):
    rng = rng_of(draw)
    dt = draw(st.sampled_from(NUMERIC))
    a_shape, b_shape = bcast_st(draw, 2)
    fmod = 1 if np.dtype(dt).kind == "f" else draw(st.integers(0, 1))  # fmod=0 is for integers only
    a, b = rand(rng, a_shape, dt, -5, 5), rand(rng, b_shape, dt, -3, 3, nonzero=True)
    return Case("Mod", [Inp(a), Inp(b)], attrs={"fmod": fmod}, opset=13)


@op("And", EXTRA)
def gen_and(draw):
    return _binary(draw, "And", (BOOL,), opset=7)


@op("Not", EXTRA)
def gen_not(draw):
    return _unary(draw, "Not", (BOOL,), opset=1)


@op("PRelu", EXTRA)
def gen_prelu(draw):
    rng = rng_of(draw)
    dt = draw(st.sampled_from(FLOATS + (I32, I64)))
    xs = shape_st(draw, 1, 4)
    drop = draw(st.integers(0, len(xs)))
    mask = draw(st.integers(0, 2 ** (len(xs) - drop) - 1))
    ss = [1 if mask >> j & 1 else d for j, d in enumerate(xs[drop:])]
    return Case("PRelu", [Inp(rand(rng, xs, dt)), Inp(rand(rng, ss, dt, 0, 1, ilo=0, ihi=3))], opset=16)


@op("Neg", EXTRA)
def gen_neg(draw):
    return _unary(draw, "Neg", FLOATS + (I8, I32, I64))


@op("Abs", EXTRA)
def gen_abs(draw):
    return _unary(draw, "Abs", FLOATS + (I8, U8, I32, I64))


@op("Log", EXTRA)
def gen_log(draw):
    return _unary(draw, "Log", FLOATS, lo=0.01, hi=10)


@op("Reciprocal", EXTRA)
def gen_reciprocal(draw):
    return _unary(draw, "Reciprocal", FLOATS, nonzero=True)


@op("Floor", EXTRA)
def gen_floor(draw):
    return _unary(draw, "Floor", FLOATS)


@op("Round", EXTRA)
def gen_round(draw):
    case = _unary(draw, "Round", FLOATS, lo=-5, hi=5)
    x = case.inputs[0].value
    case.inputs[0].value = (np.round(x.astype(np.float64) * 2) / 2).astype(x.dtype)  # halves: to even
    return case


@op("Sin", EXTRA)
def gen_sin(draw):
    return _unary(draw, "Sin", FLOATS)


@op("Softplus", EXTRA)
def gen_softplus(draw):
    return _unary(draw, "Softplus", FLOATS, lo=-10, hi=10)


@op("HardSigmoid", EXTRA)
def gen_hard_sigmoid(draw):
    attrs = {} if draw(st.booleans()) else {"alpha": 1 / 6, "beta": 0.5}
    return _unary(draw, "HardSigmoid", FLOATS, lo=-5, hi=5, opset=6, attrs=attrs)


@op("HardSwish", EXTRA)
def gen_hard_swish(draw):
    case = _unary(draw, "HardSwish", FLOATS, lo=-5, hi=5, opset=14)
    if case.inputs[0].value.dtype == np.float64:
        case.tol_dtype = F32  # onnx.reference runs the function body, whose alpha=1/6 is a float32 attribute
    return case


@op("Elu", EXTRA)
def gen_elu(draw):
    attrs = {} if draw(st.booleans()) else {"alpha": 0.5}
    return _unary(draw, "Elu", FLOATS, opset=6, attrs=attrs)


@op("LogSoftmax", EXTRA)
def gen_log_softmax(draw):
    return _softmax(draw, "LogSoftmax")


@op("ReduceMax", EXTRA)
def gen_reduce_max(draw):
    return _reduce(draw, "ReduceMax", NUMERIC + (I8, U8))


@op("ReduceMin", EXTRA)
def gen_reduce_min(draw):
    return _reduce(draw, "ReduceMin", NUMERIC)


@op("ReduceProd", EXTRA)
def gen_reduce_prod(draw):
    # at most 27 factors of magnitude <= 2: no int32 overflow (whose wrapping the spec leaves open)
    return _reduce(draw, "ReduceProd", NUMERIC, max_rank=3, max_dim=3, ilo=-2, ihi=2)


@op("ReduceL2", EXTRA)
def gen_reduce_l2(draw):
    return _reduce(draw, "ReduceL2", FLOATS)


@op("ReduceSumSquare", EXTRA)
def gen_reduce_sum_square(draw):
    case = _reduce(draw, "ReduceSumSquare", FLOATS + (I32, I64))
    case.ref = "input_dtype"
    return case


@op("InstanceNormalization", EXTRA)
def gen_instance_norm(draw):
    rng = rng_of(draw)
    dt = draw(st.sampled_from(FLOATS))
    shape = [draw(st.integers(1, 2)), draw(st.integers(1, 4))] + shape_st(draw, 1, 2, 2, 5)
    c = shape[1]
    attrs = {} if draw(st.booleans()) else {"epsilon": 1e-3}
    inputs = [Inp(rand(rng, shape, dt)), Inp(rand(rng, [c], dt, 0.5, 2)), Inp(rand(rng, [c], dt))]
    return Case("InstanceNormalization", inputs, attrs=attrs, opset=6, acc=True)


@op("GlobalMaxPool", EXTRA)
def gen_global_max_pool(draw):
    rng = rng_of(draw)
    dt = draw(st.sampled_from(FLOATS))
    # two spatial dims: onnx.reference's GlobalMaxPool reduces axes (n-2, n-1) + 1, right only for 4-D input
    shape = [draw(st.integers(1, 2)), draw(st.integers(1, 4)), draw(st.integers(1, 5)), draw(st.integers(1, 5))]
    return Case("GlobalMaxPool", [Inp(rand(rng, shape, dt))], opset=1)


@op("Flatten", EXTRA)
def gen_flatten(draw):
    rng = rng_of(draw)
    dt = draw(st.sampled_from(ALL))
    shape = shape_st(draw, 1, 4, 1, 4)
    attrs = {} if draw(st.booleans()) else {"axis": draw(st.integers(-len(shape), len(shape)))}
    return Case("Flatten", [Inp(rand(rng, shape, dt))], attrs=attrs, opset=13)


@op("Tile", EXTRA)
def gen_tile(draw):
    rng = rng_of(draw)
    dt = draw(st.sampled_from(ALL))
    shape = shape_st(draw, 1, 4, 1, 3)
    reps = [draw(st.integers(0, 3)) for _ in shape]
    return Case("Tile", [Inp(rand(rng, shape, dt)), Inp(i64(reps), draw(st.booleans()))], opset=13)


@op("GatherElements", EXTRA)
def gen_gather_elements(draw):
    rng = rng_of(draw)
    dt = draw(st.sampled_from(ALL))
    shape = shape_st(draw, 1, 4, 1, 4)
    axis = axis_st(draw, len(shape))
    # the spec lets indices be smaller than data on the other axes too; onnx.reference (torch's rule) doesn't
    ishape = list(shape)
    ishape[axis] = draw(st.integers(0, 4))
    d = shape[axis]
    idx = rng.integers(-d, d, size=ishape).astype(draw(st.sampled_from([I64, I32])))
    return Case("GatherElements", [Inp(rand(rng, shape, dt)), Inp(idx)], attrs={"axis": axis}, opset=13,
                ref="positive_axes")


@op("CumSum", EXTRA)
def gen_cumsum(draw):
    rng = rng_of(draw)
    dt = draw(st.sampled_from(NUMERIC))
    shape = shape_st(draw, 1, 3, 1, 5)
    axis = np.array(axis_st(draw, len(shape)), dtype=draw(st.sampled_from([I64, I32])))
    attrs = {}
    if draw(st.booleans()):
        attrs["exclusive"] = 1
    if draw(st.booleans()):
        attrs["reverse"] = 1
    return Case("CumSum", [Inp(rand(rng, shape, dt)), Inp(axis, draw(st.booleans()))], attrs=attrs, opset=14,
                acc=True)


@op("Einsum", EXTRA)
def gen_einsum(draw):
    rng = rng_of(draw)
    dt = draw(st.sampled_from(FLOATS + (I32, I64)))
    dims = {c: draw(st.integers(1, 4)) for c in "bhijkqd"}
    eq = draw(st.sampled_from(["ij,jk->ik", "bij,bjk->bik", "bhqd,bhkd->bhqk", "ij->ji", "i,i->", "ii->i",
                               "ij->", "bij->bj", "i,j->ij", "...ij,...jk->...ik", "ij,ij->ij"]))
    dims["j"] = dims["i"] if eq == "ii->i" else dims["j"]
    lhs = eq.split("->")[0].split(",")
    vals = []
    for term in lhs:
        shp = ([2] if term.startswith("...") else []) + [dims[c] for c in term.replace("...", "")]
        vals.append(rand(rng, shp, dt, -2, 2, ilo=-4, ihi=4))
    return Case("Einsum", [Inp(v) for v in vals], attrs={"equation": eq}, opset=12, acc=True)


@op("Range", EXTRA)
def gen_range(draw):
    dt = draw(st.sampled_from([I32, I64, F32, F64]))
    start, limit = draw(st.integers(-6, 6)), draw(st.integers(-6, 6))
    delta = draw(st.sampled_from([1, 2, 3, -1, -2]))
    scale = 0.5 if np.dtype(dt).kind == "f" else 1  # exact in binary floating point
    vals = [np.array(v * scale, dtype=dt) for v in (start, limit, delta)]
    return Case("Range", [Inp(v) for v in vals], opset=11)


@op("ConstantOfShape", EXTRA)
def gen_constant_of_shape(draw):
    shape = shape_st(draw, 0, 3, 0, 4)
    attrs = {}
    if draw(st.booleans()):
        dt = draw(st.sampled_from([F32, F16, I64, I32, BOOL, F64]))
        attrs["value"] = numpy_helper.from_array(np.array([1 if dt == BOOL else 3], dtype=dt), "value")
    return Case("ConstantOfShape", [Inp(i64(shape).reshape(len(shape)))], attrs=attrs,
                opset=draw(st.sampled_from([9, 20, 21])))


@op("ScatterND", EXTRA)
def gen_scatter_nd(draw):
    rng = rng_of(draw)
    dt = draw(st.sampled_from(NUMERIC))
    shape = shape_st(draw, 1, 3, 1, 4)
    k = draw(st.integers(1, len(shape)))
    n = draw(st.integers(1, 4))
    reduction = draw(st.sampled_from([None, None, "add", "mul", "max", "min"]))
    cells = [tuple(int(rng.integers(-d, d)) for d in shape[:k]) for _ in range(n)]
    if reduction is None:  # duplicate indices only with a reduction
        seen, unique = set(), []
        for cell in cells:
            key = tuple(c % d for c, d in zip(cell, shape, strict=False))
            if key not in seen:
                seen.add(key)
                unique.append(cell)
        cells = unique
    indices = i64(cells).reshape(len(cells), k)
    updates = rand(rng, [len(cells)] + shape[k:], dt)
    attrs = {} if reduction is None else {"reduction": reduction}
    return Case("ScatterND", [Inp(rand(rng, shape, dt)), Inp(indices), Inp(updates)], attrs=attrs, opset=18)


@op("DepthToSpace", EXTRA)
def gen_depth_to_space(draw):
    rng = rng_of(draw)
    dt = draw(st.sampled_from(FLOATS + (I64,)))
    b = draw(st.integers(1, 3))
    shape = [draw(st.integers(1, 2)), b * b * draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 3))]
    attrs = {"blocksize": b}
    if draw(st.booleans()):
        attrs["mode"] = draw(st.sampled_from(["DCR", "CRD"]))
    return Case("DepthToSpace", [Inp(rand(rng, shape, dt))], attrs=attrs, opset=13)


@op("Trilu", EXTRA)
def gen_trilu(draw):
    rng = rng_of(draw)
    dt = draw(st.sampled_from(NUMERIC + (BOOL,)))
    shape = shape_st(draw, 2, 4, 1, 5)
    attrs = {} if draw(st.booleans()) else {"upper": draw(st.integers(0, 1))}
    inputs = [Inp(rand(rng, shape, dt))]
    if draw(st.booleans()):
        inputs.append(Inp(i64(draw(st.integers(-6, 6))), draw(st.booleans())))
    return Case("Trilu", inputs, attrs=attrs, opset=14)


# --------------------------------------------------------------------------------------------------
# the test
# --------------------------------------------------------------------------------------------------
# Cases found by this test, always run (ahead of the drawn ones): the draws change whenever this file does.
EXAMPLES = {
    # np.ascontiguousarray returns at least 1-d: a 0-d result came back with shape (1,)
    "Transpose": [
        Case("Transpose", [Inp(np.array(0.5, np.float32))], attrs={}, opset=13),
        Case("Transpose", [Inp(np.array(3, np.int64))], attrs={"perm": []}, opset=21),
    ],
    "Gather": [
        Case("Gather", [Inp(np.array([-1.5, 2.0], np.float32)), Inp(np.array(1, np.int64), const=True)],
             attrs={"axis": -1}, opset=13),
        Case("Gather", [Inp(np.array([-1.5, 2.0], np.float32)), Inp(np.array(-1, np.int64))], attrs={}, opset=13),
    ],
    # Indices of a window whose maximum equals the padding value (the type's lowest: 0 for uint8, -128 for
    # int8, -inf) must point at the input element, not at the padding before it (-1): onnxruntime agrees
    "MaxPool": [
        Case("MaxPool", [Inp(np.array([[[0, 3]]], np.uint8))], attrs={"kernel_shape": [2], "pads": [1, 0]}, opset=12,
             n_out=2, ref="pool"),
        Case("MaxPool", [Inp(np.array([[[[-128, 3]]]], np.int8))], attrs={"kernel_shape": [1, 2], "pads": [0, 1, 0, 0]},
             opset=12, n_out=2, ref="pool"),
        Case("MaxPool", [Inp(np.array([[[-np.inf, 3.0]]], np.float32))], attrs={"kernel_shape": [2], "pads": [1, 0]},
             opset=12, n_out=2, ref="pool"),
    ],
}


@pytest.mark.parametrize("op_name", list(OPS))
def test_differential(op_name):
    strategy, examples = OPS[op_name]

    @settings(max_examples=max(1, round(examples * SCALE)), deadline=None, derandomize=SEED is None,
              database=None, print_blob=False, suppress_health_check=list(HealthCheck))
    @given(case=strategy())
    def run(case):
        check(case)

    for case in reversed(EXAMPLES.get(op_name, [])):
        run = example(case=case)(run)
    if SEED is not None:
        run = seed(int(SEED))(run)
    run()


def test_op_count():
    """The main list covers the 40 most-used ops; extras come on top."""
    assert sum(1 for _, ex in OPS.values() if ex == MAIN) >= 40
