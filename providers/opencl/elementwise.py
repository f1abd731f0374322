"""Elementwise kernels: unary math and activations, binary arithmetic/comparison/logic with NumPy
broadcasting, variadic Max/Min/Sum/Mean, Where, Clip, Cast — all one generated strided kernel
(:mod:`engineroom.providers.opencl.strided`) each, specialised on the node's dtypes.

Expressions are OpenCL C over ``x0, x1, ...`` (the operands), ``p0, p1`` (float attributes passed
as kernel arguments, so nodes differing only in ``alpha`` share a program) and ``{T}`` (the input's
C type). Float literals carry ``f`` so a float32 kernel never needs fp64.
"""
from __future__ import annotations

import numpy as np

from engineroom.providers.opencl.common import (
    BOOL,
    CTYPES,
    FLOATS,
    INTS,
    NUMERIC,
    STORABLE,
    all_of,
    inputs_in,
    n_outputs,
    rt_of,
)
from engineroom.providers.opencl.registry import kernel
from engineroom.providers.opencl.strided import Strided, broadcast_strides, contiguous_strides

# -- unary -------------------------------------------------------------------------------------------
# op: (expression, parameter attributes with defaults, dtypes, since, output dtype or None)
_UNARY = {
    "Relu": ("x0 > ({T})0 ? x0 : ({T})0", (), NUMERIC, 6),
    "Abs": ("x0 < ({T})0 ? -x0 : x0", (), NUMERIC, 6),
    "Neg": ("-x0", (), NUMERIC, 6),
    "Sign": ("({T})((x0 > ({T})0) - (x0 < ({T})0))", (), NUMERIC, 13),
    "Exp": ("exp(x0)", (), FLOATS, 6),
    "Log": ("log(x0)", (), FLOATS, 6),
    "Sqrt": ("sqrt(x0)", (), FLOATS, 6),
    "Reciprocal": ("({T})1 / x0", (), FLOATS, 6),
    "Floor": ("floor(x0)", (), FLOATS, 6),
    "Ceil": ("ceil(x0)", (), FLOATS, 6),
    "Round": ("rint(x0)", (), FLOATS, 11),
    "Sin": ("sin(x0)", (), FLOATS, 7), "Cos": ("cos(x0)", (), FLOATS, 7), "Tan": ("tan(x0)", (), FLOATS, 7),
    "Asin": ("asin(x0)", (), FLOATS, 7), "Acos": ("acos(x0)", (), FLOATS, 7),
    "Atan": ("atan(x0)", (), FLOATS, 7), "Sinh": ("sinh(x0)", (), FLOATS, 9),
    "Cosh": ("cosh(x0)", (), FLOATS, 9), "Asinh": ("asinh(x0)", (), FLOATS, 9),
    "Acosh": ("acosh(x0)", (), FLOATS, 9), "Atanh": ("atanh(x0)", (), FLOATS, 9),
    "Erf": ("erf(x0)", (), FLOATS, 9),
    "Sigmoid": ("({T})1 / (({T})1 + exp(-x0))", (), FLOATS, 6),
    "Tanh": ("tanh(x0)", (), FLOATS, 6),
    "Softplus": ("x0 > ({T})20 ? x0 : log1p(exp(x0))", (), FLOATS, 1),
    "Softsign": ("x0 / (({T})1 + fabs(x0))", (), FLOATS, 1),
    "Elu": ("x0 < ({T})0 ? p0 * (exp(x0) - ({T})1) : x0", ("alpha",), FLOATS, 6),
    "Selu": ("x0 > ({T})0 ? p1 * x0 : p1 * (p0 * exp(x0) - p0)",
             ("alpha", "gamma"), FLOATS, 6),
    "LeakyRelu": ("x0 < ({T})0 ? p0 * x0 : x0", ("alpha",), FLOATS, 6),
    "ThresholdedRelu": ("x0 > p0 ? x0 : ({T})0", ("alpha",), FLOATS, 10),
    "HardSigmoid": ("fmax(({T})0, fmin(({T})1, p0 * x0 + p1))", ("alpha", "beta"), FLOATS, 6),
    "HardSwish": ("x0 * fmax(({T})0, fmin(({T})1, x0 / ({T})6 + ({T})0.5f))", (), FLOATS, 14),
    "Celu": ("fmax(({T})0, x0) + fmin(({T})0, p0 * (exp(x0 / p0) - ({T})1))", ("alpha",), FLOATS, 12),
    "Mish": ("x0 * tanh(x0 > ({T})20 ? x0 : log1p(exp(x0)))", (), FLOATS, 18),
}
_GELU = {"none": "({T})0.5f * x0 * (({T})1 + erf(x0 * ({T})0.70710678118654752440f))",
         "tanh": "({T})0.5f * x0 * (({T})1 + tanh(({T})0.7978845608028654f * (x0 + ({T})0.044715f * x0 * x0 * x0)))"}


def _ctype(dt) -> str:
    return CTYPES[np.dtype(dt)]


def _unary_factory(expr: str, params: tuple, out_dtype=None):
    def factory(info):


        rt = rt_of(info)
        dt = np.dtype(info.input_dtypes[0])
        odt = np.dtype(out_dtype) if out_dtype is not None else dt
        e = expr.replace("{T}", _ctype(dt))
        vals = [float(info.attrs[n]) for n in params]     # KernelInfo has the schema's defaults
        op = Strided(rt, e, [dt], odt, len(vals))

        def run(x):
            y = rt.empty(x.shape, odt)
            st = contiguous_strides(x.shape)
            op(x.shape, [(x.base_data, 0, st)], (y.base_data, 0, st), vals)
            return (y,)

        return run

    return factory


for _op, (_expr, _params, _types, _since) in _UNARY.items():
    kernel(_op, since=_since, types=_types)(_unary_factory(_expr, _params))


@kernel("Gelu", since=20, types=FLOATS, supports=lambda v: None if v.attrs.get("approximate", "none") in _GELU
        else f"approximate={v.attrs.get('approximate')!r}")
def gelu(info):
    return _unary_factory(_GELU[info.attrs["approximate"]], ())(info)


kernel("IsNaN", since=9, types=FLOATS)(_unary_factory("isnan(x0)", (), BOOL))
kernel("Not", since=1, types=(BOOL,))(_unary_factory("!x0", (), BOOL))


@kernel("IsInf", since=10, types=FLOATS)
def is_inf(info):
    neg = int(info.attrs["detect_negative"])
    pos = int(info.attrs["detect_positive"])
    expr = "isinf(x0) && ((x0 > 0 && %d) || (x0 < 0 && %d))" % (pos, neg)
    return _unary_factory(expr, (), BOOL)(info)


# -- n-ary with broadcasting -------------------------------------------------------------------------

def broadcast_run(rt, op, arrays, out_dtype, params=()):
    """Run the strided ``op`` over ``arrays`` broadcast together; returns the new output array."""
    shape = np.broadcast_shapes(*(a.shape for a in arrays))
    y = rt.empty(shape, out_dtype)
    if y.size:
        ins = [(a.base_data, 0, broadcast_strides(a.shape, shape)) for a in arrays]
        op(shape, ins, (y.base_data, 0, contiguous_strides(shape)), params)
    return y


def _nary_factory(expr: str, out_dtype=None, arity: int = 2):
    def factory(info):


        rt = rt_of(info)
        dts = [np.dtype(d) for d in info.input_dtypes[:arity]]
        odt = np.dtype(out_dtype) if out_dtype is not None else dts[-1]
        e = expr.replace("{T}", _ctype(dts[-1]))
        op = Strided(rt, e, dts, odt)

        def run(*xs):
            return (broadcast_run(rt, op, xs, odt),)

        return run

    return factory


def _same_dtypes(view):
    dts = {np.dtype(d) for d in view.input_dtypes if d is not None}
    return None if len(dts) == 1 else "inputs differ in dtype"


_BINARY = {
    "Add": ("x0 + x1", NUMERIC, None), "Sub": ("x0 - x1", NUMERIC, None), "Mul": ("x0 * x1", NUMERIC, None),
    "Div": ("x0 / x1", FLOATS, None),
    "Equal": ("x0 == x1", NUMERIC | {BOOL}, BOOL), "Less": ("x0 < x1", NUMERIC, BOOL),
    "Greater": ("x0 > x1", NUMERIC, BOOL), "LessOrEqual": ("x0 <= x1", NUMERIC, BOOL),
    "GreaterOrEqual": ("x0 >= x1", NUMERIC, BOOL),
    "And": ("x0 && x1", {BOOL}, BOOL), "Or": ("x0 || x1", {BOOL}, BOOL),
    "Xor": ("(x0 != 0) != (x1 != 0)", {BOOL}, BOOL),
    "PRelu": ("x0 < ({T})0 ? x0 * x1 : x0", FLOATS, None),
}
_SINCE = {"LessOrEqual": 12, "GreaterOrEqual": 12, "PRelu": 9}

for _op, (_expr, _types, _out) in _BINARY.items():
    kernel(_op, since=_SINCE.get(_op, 7), types=_types,
           supports=all_of(inputs_in(_types), _same_dtypes))(_nary_factory(_expr, _out))


@kernel("FastGelu", domain="com.microsoft", since=1, types=FLOATS,
        supports=all_of(inputs_in(FLOATS), _same_dtypes))
def fast_gelu(info):
    """onnxruntime's contrib FastGelu: the tanh GELU of X (+ bias)."""
    if info.has_input(1):
        return _nary_factory(_GELU["tanh"].replace("x0", "(x0 + x1)"))(info)
    return _unary_factory(_GELU["tanh"], ())(info)


@kernel("Pow", since=7, types=FLOATS, supports=inputs_in(NUMERIC, which=(1,)))
def pow_(info):
    t = _ctype(info.input_dtypes[0])
    return _nary_factory(f"pow(x0, ({t})x1)", info.input_dtypes[0])(info)


@kernel("Mod", since=10, types=FLOATS, supports=lambda v: None if int(v.attrs["fmod"]) == 1
        and _same_dtypes(v) is None else "float Mod needs fmod=1")
def mod(info):
    return _nary_factory("fmod(x0, x1)")(info)


@kernel("Where", since=9, supports=all_of(inputs_in({BOOL}, which=(0,)), inputs_in(STORABLE, which=(1, 2)),
                                         lambda v: None if v.input_dtypes[1] == v.input_dtypes[2] else "x/y dtypes"))
def where(info):
    return _nary_factory("x0 ? x1 : x2", info.input_dtypes[1], arity=3)(info)


# variadic: folded pairwise, left to right (as NumPy's reduce)
_VARIADIC = {
    "Max": ({"f": "(x0 > x1 || isnan(x0)) ? x0 : x1", "i": "x0 > x1 ? x0 : x1"}, 8),
    "Min": ({"f": "(x0 < x1 || isnan(x0)) ? x0 : x1", "i": "x0 < x1 ? x0 : x1"}, 8),
    "Sum": ({"f": "x0 + x1", "i": "x0 + x1"}, 8),
    "Mean": ({"f": "x0 + x1", "i": None}, 8),
}


def _variadic_factory(op_type: str):
    exprs, _ = _VARIADIC[op_type]

    def factory(info):


        rt = rt_of(info)
        dt = np.dtype(info.input_dtypes[0])
        op = Strided(rt, exprs["f" if dt.kind == "f" else "i"], [dt, dt], dt)
        scale = Strided(rt, "x0 * p0", [dt], dt, 1) if op_type == "Mean" else None

        def run(*xs):
            acc = xs[0]
            for x in xs[1:]:
                acc = broadcast_run(rt, op, (acc, x), dt)
            if scale is not None:
                acc = broadcast_run(rt, scale, (acc,), dt, (1.0 / len(xs),))
            elif len(xs) == 1:
                acc = broadcast_run(rt, Strided(rt, "x0", [dt], dt), (acc,), dt)
            return (acc,)

        return run

    return factory


for _op, (_exprs, _since) in _VARIADIC.items():
    _types = FLOATS if _exprs["i"] is None else NUMERIC
    kernel(_op, since=_since, types=_types, supports=all_of(inputs_in(_types), _same_dtypes))(_variadic_factory(_op))


# -- Clip --------------------------------------------------------------------------------------------
_CLIP = "(x0 < p0 ? ({T})p0 : x0) > p1 ? ({T})p1 : (x0 < p0 ? ({T})p0 : x0)"  # as min(max(x, lo), hi)


@kernel("Clip", since=6, types=FLOATS)
def clip_attrs(info):
    return _unary_factory(_CLIP, ("min", "max"))(info)


@kernel("Clip", since=11, types=FLOATS, host_inputs=(1, 2))
def clip(info):


    rt = rt_of(info)
    dt = np.dtype(info.input_dtypes[0])
    op = Strided(rt, _CLIP.replace("{T}", _ctype(dt)), [dt], dt, 2)

    def run(x, lo=None, hi=None):
        p = (-np.inf if lo is None else float(np.asarray(lo).reshape(-1)[0]),
             np.inf if hi is None else float(np.asarray(hi).reshape(-1)[0]))
        return (broadcast_run(rt, op, (x,), dt, p),)

    return run


# -- Cast / Identity ---------------------------------------------------------------------------------
_CASTABLE = FLOATS | INTS | {BOOL}


def _cast_ok(view):
    to = view.output_dtypes[0]
    if to is None or np.dtype(to) not in _CASTABLE:
        return f"cast to {to} not supported"
    return None


@kernel("Cast", since=6, types=_CASTABLE, supports=_cast_ok)
def cast(info):


    rt = rt_of(info)
    src = np.dtype(info.input_dtypes[0])
    dst = np.dtype(info.output_dtypes[0])
    if src == dst:
        return lambda x: (x,)
    expr = "x0 != 0" if dst == BOOL else f"({_ctype(dst)})x0"
    op = Strided(rt, expr, [src], dst)

    def run(x):
        return (broadcast_run(rt, op, (x,), dst),)

    return run


@kernel("Identity", since=1, types=STORABLE)
def identity(info):
    return lambda x: (x,)


@kernel("Dropout", since=7, types=FLOATS, host_inputs=(1, 2), supports=all_of(n_outputs(1),
        lambda v: None if not v.has_input(2) or (v.const_inputs[2] is not None and not bool(v.const_inputs[2]))
        else "training mode"))
def dropout(info):
    return lambda x, *rest: (x,)

