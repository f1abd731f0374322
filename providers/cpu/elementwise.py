"""Elementwise kernels: unary math, binary arithmetic, comparisons, logical and bitwise ops, variadic
Sum/Mean/Max/Min, Where, Clip, Mod, Pow, BitShift.

Everything is a direct call into the array module ``xp`` (NumPy here, a device array module on a
device provider). Two things NumPy does differently from ONNX are handled explicitly:

* a ufunc over 0-d arrays returns a NumPy *scalar*; the kernel contract wants arrays, so results go
  through :func:`_nd`;
* integer ``Div`` truncates toward zero in ONNX (C semantics), NumPy's ``//`` floors.

Binary ops of opset < 7 carry the legacy ``broadcast``/``axis`` attributes (B aligned at ``axis`` of
A instead of at the trailing dimensions); their since=1 kernels honour them.
"""
from __future__ import annotations

import warnings

import numpy as np

from engineroom.providers.cpu.array_module import arrays
from engineroom.providers.cpu.registry import array_kernel

# IEEE results (log(0) = -inf, 0/0 = NaN, overflow to inf, NaN cast to int) are what ONNX specifies and
# what onnxruntime returns silently; NumPy would warn from inside these kernels, so not from here.
warnings.filterwarnings("ignore", category=RuntimeWarning, module=r"engineroom\.providers\.cpu\.elementwise$")


def _nd(xp, r):
    """``r`` as an array: ufuncs over 0-d inputs give NumPy scalars, which the contract forbids."""
    return r if isinstance(r, xp.ndarray) else xp.asarray(r)


# ---------------------------------------------------------------------------------------------
# binary ops
# ---------------------------------------------------------------------------------------------

def _legacy_align(info):
    """For opset < 7 ``broadcast=1`` with ``axis``: a function reshaping B to line up at ``axis`` of A."""
    if info.opset >= 7 or not info.attrs.get("broadcast", 0) or "axis" not in info.attrs:
        return None
    axis = int(info.attrs["axis"])

    def align(a, b):
        if 0 < b.ndim < a.ndim:
            ax = axis + a.ndim if axis < 0 else axis
            b = b.reshape(b.shape + (1,) * (a.ndim - ax - b.ndim))
        return b

    return align


def _binary_factory(name: str):
    """Factory for a binary op that is exactly one ``xp`` ufunc (same-dtype inputs, NumPy broadcasting)."""

    def factory(info):
        xp = info.xp
        f = getattr(xp, name)
        nd = xp.ndarray
        asarray = xp.asarray
        align = _legacy_align(info)
        if align is None:
            def run(a, b):
                r = f(a, b)
                return (r if r.__class__ is nd else asarray(r),)
        else:
            def run(a, b):
                r = f(a, align(a, b))
                return (r if r.__class__ is nd else asarray(r),)
        return run

    factory.__name__ = f"binary_{name}"
    return factory


def _register_binary(ops_and_ufuncs, since_versions=(1, 7)):
    for op, name in ops_and_ufuncs:
        for since in since_versions:
            array_kernel(op, since=since)(_binary_factory(name))


_register_binary([
    ("Add", "add"), ("Sub", "subtract"), ("Mul", "multiply"),
    ("Equal", "equal"), ("Greater", "greater"), ("Less", "less"),
    ("GreaterOrEqual", "greater_equal"), ("LessOrEqual", "less_equal"),
    ("And", "logical_and"), ("Or", "logical_or"), ("Xor", "logical_xor"),
    ("BitwiseAnd", "bitwise_and"), ("BitwiseOr", "bitwise_or"), ("BitwiseXor", "bitwise_xor"),
])


def _div_factory(info):
    xp = info.xp
    nd = xp.ndarray
    align = _legacy_align(info)
    # a constant signed-integer divisor above 0 (dividing by 2, by a hop length): the truncated quotient
    # is floor((a + (b - 1) * (a < 0)) / b), which no zero or overflow can upset (no errstate, no fix-up)
    c = info.const_inputs[1] if len(info.const_inputs) > 1 else None
    if align is None and c is not None and c.dtype.kind == "i" and c.size and (c > 0).all():
        bm1 = xp.asarray(c - 1)
        floor_divide, multiply, less = xp.floor_divide, xp.multiply, xp.less

        def run_pos(a, b):
            if a.dtype != b.dtype:
                return run(a, b)
            r = floor_divide(a + multiply(less(a, 0), bm1), b)
            return (r if r.__class__ is nd else xp.asarray(r),)

    def run(a, b):
        if align is not None:
            b = align(a, b)
        kind = a.dtype.kind
        if kind == "i":
            # ONNX integer division truncates toward zero; NumPy floors. Fix the quotients of inexact
            # divisions with operands of opposite signs.
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                q, r = xp.divmod(a, b)
            q = q if q.__class__ is nd else xp.asarray(q)
            adjust = (r != 0) & ((a < 0) != (b < 0))
            if adjust.any():
                q = q + adjust.astype(q.dtype)
            return (q,)
        if kind == "u":
            with np.errstate(divide="ignore", invalid="ignore"):
                r = xp.floor_divide(a, b)
        else:
            r = xp.divide(a, b)
        return (r if r.__class__ is nd else xp.asarray(r),)

    if align is None and c is not None and c.dtype.kind == "i" and c.size and (c > 0).all():
        return run_pos
    return run


@array_kernel("Div", since=1)
def div_legacy(info):
    return _div_factory(info)


@array_kernel("Div", since=7)
def div(info):
    return _div_factory(info)


@array_kernel("Pow", since=1)
def pow_(info):
    """Pow: the result has the base's dtype (opset 12+ allows an exponent of another dtype)."""
    xp = info.xp
    nd = xp.ndarray
    align = _legacy_align(info)

    def run(a, b):
        if align is not None:
            b = align(a, b)
        dt = a.dtype
        if b.dtype == dt and dt.kind == "f":
            r = xp.power(a, b)
        elif dt.kind in "iu" and b.dtype.kind in "iu":
            # NumPy refuses negative integer exponents; ONNX computes them (as C pow, truncated).
            if b.dtype.kind == "i" and (b < 0).any():
                r = xp.power(a.astype(np.float64), b.astype(np.float64))
            else:
                r = xp.power(a, b)
        else:
            # Mixed dtypes (or ml_dtypes floats): compute in float64 unless both are float32-or-smaller.
            ct = np.float64 if (dt.itemsize > 4 or b.dtype.itemsize > 4 or dt.kind in "iu") else np.float32
            r = xp.power(a.astype(ct, copy=False), b.astype(ct, copy=False))
        r = r if r.__class__ is nd else xp.asarray(r)
        return (r.astype(dt, copy=False),)

    return run


@array_kernel("Mod", since=10)
def mod(info):
    """Mod: fmod=1 is C's fmod (sign of A), fmod=0 is Python's modulo (sign of B)."""
    xp = info.xp
    nd = xp.ndarray
    f = xp.fmod if info.attrs.get("fmod", 0) else xp.mod

    def run(a, b):
        with np.errstate(divide="ignore", invalid="ignore"):
            r = f(a, b)
        return (r if r.__class__ is nd else xp.asarray(r),)

    return run


@array_kernel("BitShift", since=11)
def bit_shift(info):
    """BitShift: NumPy already gives 0 (or -1 for negative X right-shifted) for shifts >= width or < 0."""
    xp = info.xp
    nd = xp.ndarray
    f = xp.left_shift if info.attrs["direction"] == "LEFT" else xp.right_shift

    def run(x, y):
        r = f(x, y)
        return (r if r.__class__ is nd else xp.asarray(r),)

    return run


# ---------------------------------------------------------------------------------------------
# unary ops
# ---------------------------------------------------------------------------------------------

def _unary_factory(name: str):
    def factory(info):
        xp = info.xp
        f = getattr(xp, name)
        nd = xp.ndarray

        def run(x):
            r = f(x)
            return (r if r.__class__ is nd else xp.asarray(r),)

        return run

    factory.__name__ = f"unary_{name}"
    return factory


for _op, _name in [
    ("Abs", "absolute"), ("Neg", "negative"), ("Exp", "exp"), ("Log", "log"), ("Sqrt", "sqrt"),
    ("Reciprocal", "reciprocal"), ("Floor", "floor"), ("Ceil", "ceil"),
    ("Round", "rint"),  # rint rounds half to even, as ONNX Round requires
    ("Sign", "sign"), ("IsNaN", "isnan"), ("Not", "logical_not"), ("BitwiseNot", "invert"),
    ("Sin", "sin"), ("Cos", "cos"), ("Tan", "tan"), ("Asin", "arcsin"), ("Acos", "arccos"), ("Atan", "arctan"),
    ("Sinh", "sinh"), ("Cosh", "cosh"), ("Asinh", "arcsinh"), ("Acosh", "arccosh"), ("Atanh", "arctanh"),
]:
    array_kernel(_op, since=1)(_unary_factory(_name))


@array_kernel("IsInf", since=10)
def is_inf(x, *, xp, detect_positive=1, detect_negative=1):
    if detect_positive and detect_negative:
        r = xp.isinf(x)
    elif detect_positive:
        r = xp.isinf(x) & (x > 0)
    elif detect_negative:
        r = xp.isinf(x) & (x < 0)
    else:
        r = xp.zeros(x.shape, dtype=bool)
    return _nd(xp, r)


# ---------------------------------------------------------------------------------------------
# variadic ops
# ---------------------------------------------------------------------------------------------

def _variadic_factory(name: str, mean: bool = False):
    def factory(info):
        xp = info.xp
        f = getattr(xp, name)

        def run(*xs):
            if len(xs) == 1:
                return (xs[0],)     # values are never mutated in place: no copy needed
            r = _nd(xp, f(xs[0], xs[1]))
            for x in xs[2:]:
                if np.broadcast_shapes(r.shape, x.shape) == r.shape:
                    f(r, x, out=r)      # r is our own temporary: accumulate in place
                else:
                    r = _nd(xp, f(r, x))
            if mean:
                xp.divide(r, xp.asarray(len(xs), dtype=r.dtype), out=r)
            return (r,)

        return run

    factory.__name__ = f"variadic_{name}"
    return factory


for _op, _name, _mean in [("Sum", "add", False), ("Mean", "add", True), ("Max", "maximum", False),
                          ("Min", "minimum", False)]:
    array_kernel(_op, since=1)(_variadic_factory(_name, _mean))


# ---------------------------------------------------------------------------------------------
# Where, Clip
# ---------------------------------------------------------------------------------------------

@array_kernel("Where", since=9)
def where(cond, x, y, *, xp):
    return xp.where(cond, x, y)


try:
    from numpy._core import umath as _umath
except ImportError:     # NumPy 1.x
    from numpy.core import umath as _umath

# The ufunc behind np.clip, without its Python wrapper. With two bounds it is vectorized, while
# maximum/minimum against a 0-d bound take a slow scalar loop (4x slower on float32).
_NP_CLIP = getattr(_umath, "clip", None)
_F32_F64 = (np.dtype(np.float32), np.dtype(np.float64))


def _clip(xp, x, lo, hi):
    if lo is None and hi is None:
        return x
    if arrays(xp).host and _NP_CLIP is not None and x.dtype in _F32_F64:
        r = _NP_CLIP(x, -np.inf if lo is None else lo, np.inf if hi is None else hi)
        return r if r.__class__ is np.ndarray else np.asarray(r)
    r = x
    if lo is not None:
        r = _nd(xp, xp.maximum(x, lo))
    if hi is not None:
        if r is x:
            r = _nd(xp, xp.minimum(x, hi))
        else:
            xp.minimum(r, hi, out=r)
    return r


@array_kernel("Clip", since=1)
def clip_attr(info):
    """Clip before opset 11: bounds are float attributes (defaults: the whole float range)."""
    xp = info.xp
    lo = info.attrs.get("min")
    hi = info.attrs.get("max")

    def run(x):
        return (_clip(xp, x, lo, hi),)

    return run


@array_kernel("Clip", since=11)
def clip(info):
    """Clip from opset 11: optional 0-d ``min``/``max`` inputs; with min > max every element becomes max."""
    xp = info.xp

    def run(x, lo=None, hi=None):
        return (_clip(xp, x, lo, hi),)

    return run
