"""Cast, CastLike and BitCast kernels.

Numeric conversions are ``astype`` (NumPy and ml_dtypes), with ONNX's special rules made explicit:

* float8 (E4M3FN, E4M3FNUZ, E5M2, E5M2FNUZ) with ``saturate=1`` clamps to +-FLT_MAX before rounding
  (NaN stays NaN); opset 19-23 sent +-Inf to NaN for the FNUZ types, opset 24+ saturates them too.
  With ``saturate=0`` ml_dtypes' own overflow (Inf or NaN) is exactly the ONNX table.
* FLOAT8E8M0 (a bare power-of-two exponent) is built from the float32 exponent bits with the
  ``round_mode`` ("up", "down", "nearest") and ``saturate`` rules.
* int4/uint4/int2/uint2 are built by our own rule (``_to_subbyte_int``), independent of the ml_dtypes
  release: integers keep their low bits; floats round half away from zero and are 0 out of range.
* strings follow onnxruntime: numbers print as C's ``%.8g`` (``NaN``, ``INF``, ``-INF``) or as plain
  integers (bools as ``1``/``0``); strings parse as floats (``inf``/``nan`` in any case) or integers.
"""
from __future__ import annotations

import warnings

import ml_dtypes
import numpy as np

from engineroom.plugin_sdk import np_dtype
from engineroom.providers.cpu.registry import array_kernel

# IEEE results (log(0) = -inf, 0/0 = NaN, overflow to inf, NaN cast to int) are what ONNX specifies and
# what onnxruntime returns silently; NumPy would warn from inside these kernels, so not from here.
warnings.filterwarnings("ignore", category=RuntimeWarning, module=r"engineroom\.providers\.cpu\.cast$")

_F8_SATURATING = frozenset(np.dtype(t) for t in (
    ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e4m3fnuz, ml_dtypes.float8_e5m2, ml_dtypes.float8_e5m2fnuz))
_FNUZ = frozenset(np.dtype(t) for t in (ml_dtypes.float8_e4m3fnuz, ml_dtypes.float8_e5m2fnuz))
_E8M0 = np.dtype(ml_dtypes.float8_e8m0fnu)
_SUBBYTE_INT = frozenset(np.dtype(t) for t in (ml_dtypes.int4, ml_dtypes.uint4, ml_dtypes.int2, ml_dtypes.uint2))
_ML_FLOATS = frozenset(np.dtype(t) for t in (
    ml_dtypes.bfloat16, ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e4m3fnuz, ml_dtypes.float8_e5m2,
    ml_dtypes.float8_e5m2fnuz, ml_dtypes.float4_e2m1fn, ml_dtypes.float8_e8m0fnu, ml_dtypes.float6_e2m3fn,
    ml_dtypes.float6_e3m2fn))
_OBJECT = np.dtype(object)
# NumPy's own numeric dtypes. Not "kind in 'biufc'": ml_dtypes' float8_e5m2 reports kind 'f'.
_NUMPY_NUMERIC = frozenset(np.dtype(c) for c in "?bBhHiIlLqQefdFD")

# Cast-1 names its target with a string.
_LEGACY_NAMES = {
    "FLOAT": 1, "UINT8": 2, "INT8": 3, "UINT16": 4, "INT16": 5, "INT32": 6, "INT64": 7, "STRING": 8,
    "BOOL": 9, "FLOAT16": 10, "DOUBLE": 11, "UINT32": 12, "UINT64": 13, "COMPLEX64": 14, "COMPLEX128": 15,
}


def _is_float(dt: np.dtype) -> bool:
    return dt.kind == "f" or dt in _ML_FLOATS


def _is_text(dt: np.dtype) -> bool:
    return dt.kind in "OUS"


def _as_float(x, xp):
    """``x`` as float32 or float64 (float64 where float32 could round: doubles, wide integers)."""
    dt = x.dtype
    if dt == np.float32 or dt == np.float64:
        return x
    if dt.kind in "iu" and dt.itemsize >= 4:
        return x.astype(np.float64)
    return x.astype(np.float32)


# ----- strings ----------------------------------------------------------------------------------

def _format_float(v: float) -> str:
    if v != v:
        return "NaN"
    if v in (float("inf"), float("-inf")):
        return "INF" if v > 0 else "-INF"
    return "%.8g" % v


def _to_string(x, xp):
    dt = x.dtype
    if _is_text(dt):
        return x.astype(object)
    if _is_float(dt) or dt.kind == "c":
        vals = np.asarray(x if dt in _NUMPY_NUMERIC else x.astype(np.float32))
        if dt.kind == "c":
            flat = [str(v) for v in vals.ravel().tolist()]
        else:
            flat = [_format_float(v) for v in vals.astype(np.float64).ravel().tolist()]
    else:
        vals = np.asarray(x if dt.kind in "biu" else x.astype(np.int64))
        flat = [str(int(v)) for v in vals.ravel().tolist()]
    out = np.empty(len(flat), dtype=object)
    out[:] = flat
    return out.reshape(x.shape)     # strings live on the host whatever the provider


def _parse_float(s: str) -> float:
    try:
        return float(s)     # also "inf", "+INF", "NaN", "1e-5" in any case, as C's strtod
    except ValueError:
        return float.fromhex(s)     # strtod reads hexadecimal floats too ("0x1p-3")


def _parse_int(s: str) -> int:
    try:
        return int(s)
    except ValueError:
        return int(_parse_float(s))    # "100.5" -> 100, as C's stoll reads the leading integer


def _from_string(x, to: np.dtype, saturate: bool, round_mode: str, since: int, xp):
    flat = [s.decode() if isinstance(s, bytes) else str(s) for s in np.asarray(x).ravel().tolist()]
    flat = [s.strip() for s in flat]
    if _is_text(to):
        out = np.empty(len(flat), dtype=object)
        out[:] = flat
        return out.reshape(x.shape)
    if to.kind in "iu":
        vals = np.array([_parse_int(s) for s in flat], dtype=object)
        ints = np.array([v & 0xFFFFFFFFFFFFFFFF for v in vals.tolist()], dtype=np.uint64).view(np.int64)
        return _cast_numeric(ints, to, saturate, round_mode, since, xp).reshape(x.shape)
    if to.kind == "b":
        return np.array([_parse_float(s) != 0 for s in flat], dtype=bool).reshape(x.shape)
    # floats, and int4/int2 (read as a float and rounded, as onnxruntime does)
    vals = np.array([_parse_float(s) for s in flat], dtype=np.float64)
    return _cast_numeric(vals, to, saturate, round_mode, since, xp).reshape(x.shape)


# ----- float8 / e8m0 / sub-byte ------------------------------------------------------------------

def _to_float8(x, to: np.dtype, saturate: bool, since: int, xp):
    xf = _as_float(x, xp)
    if saturate:
        m = float(ml_dtypes.finfo(to).max)
        clipped = xp.clip(xf, -m, m)        # NaN passes through clip unchanged
        if since < 24 and to in _FNUZ:
            # Cast 19-23: saturate sends +-Inf of the FNUZ types to NaN (they have no Inf).
            clipped[xp.isinf(xf)] = np.nan
        xf = clipped
    return xf.astype(to)


def _to_e8m0(x, saturate: bool, round_mode: str, xp):
    bits = _as_float(x, xp).astype(np.float32).view(np.uint32)
    exp = ((bits >> 23) & 0xFF).astype(np.uint16)
    special = exp == 0xFF
    if round_mode == "up":
        inc = (bits & 0x7FFFFF) != 0
    elif round_mode == "nearest":
        guard = (bits & 0x400000) != 0
        rest = (bits & 0x3FFFFF) != 0
        inc = guard & (rest | (exp > 0))
    elif round_mode == "down":
        inc = None
    else:
        raise ValueError(f"Cast: unsupported round_mode {round_mode!r}")
    if inc is not None:
        inc &= ~special
        exp += inc.astype(np.uint16)
    if saturate:
        exp = xp.minimum(exp, 0xFE)
        # +-Inf saturates to the largest power of two, NaN stays NaN.
        exp[special & ((bits & 0x7FFFFF) == 0)] = 0xFE
        exp[special & ((bits & 0x7FFFFF) != 0)] = 0xFF
    else:
        exp = xp.minimum(exp, 0xFF)
        exp[special] = 0xFF
    return exp.astype(np.uint8).view(_E8M0)


# bits, lowest value, highest value of each sub-byte integer type
_SUBBYTE_RANGE = {np.dtype(ml_dtypes.int4): (4, -8, 7), np.dtype(ml_dtypes.uint4): (4, 0, 15),
                  np.dtype(ml_dtypes.int2): (2, -2, 1), np.dtype(ml_dtypes.uint2): (2, 0, 3)}


def _to_subbyte_int(x, to: np.dtype, xp):
    """Cast to int4/uint4/int2/uint2 by our own rule, never by ml_dtypes' ``astype``: its float -> int4
    conversion changed in ml_dtypes 0.7 (out-of-range values wrapped before, are 0 since).

    * floats round half away from zero (onnxruntime's rounding); NaN, +-Inf and values outside the
      type's range give 0. ONNX leaves an out-of-range float -> fixed-point cast undefined; its node
      tests (onnx 1.23 with ml_dtypes >= 0.7) expect 0, while onnxruntime wraps: we follow the tests.
    * integers keep the low bits (two's complement wrap-around, the ONNX rule for fixed -> fixed).
    The result is built as the byte ml_dtypes stores (the value's low bits) and viewed as ``to``."""
    bits, lo, hi = _SUBBYTE_RANGE[to]
    dt = x.dtype
    if _is_float(dt):
        xf = _as_float(x, xp).astype(np.float64)
        r = xp.copysign(xp.floor(xp.abs(xf) + 0.5), xf)
        with np.errstate(invalid="ignore"):
            ok = (r >= lo) & (r <= hi)          # False for NaN and +-Inf
        ints = xp.where(ok, r, 0).astype(np.int64)
    elif dt in _SUBBYTE_INT:
        ints = x.view(np.uint8).astype(np.int64)    # the stored low bits; masked below
    else:
        ints = x.astype(np.int64)
    return (ints & ((1 << bits) - 1)).astype(np.uint8).view(to)


# ----- dispatch ---------------------------------------------------------------------------------

def _cast_numeric(x, to: np.dtype, saturate: bool, round_mode: str, since: int, xp):
    """Cast a non-string array to the non-string dtype ``to``."""
    dt = x.dtype
    if dt == to:
        return x
    if to in _F8_SATURATING:
        return _to_float8(x, to, saturate, since, xp)
    if to == _E8M0:
        return _to_e8m0(x, saturate, round_mode, xp)
    if to in _SUBBYTE_INT:
        return _to_subbyte_int(x, to, xp)
    if to in _ML_FLOATS:
        # float4, float6, bfloat16: ml_dtypes converts from float32/float64 (round to nearest even)
        return _as_float(x, xp).astype(to)
    if dt in _ML_FLOATS:
        if to.kind == "b":
            return x.astype(np.float32) != 0
        return x.astype(np.float32).astype(to) if to != np.float64 else x.astype(np.float64)
    if dt in _SUBBYTE_INT:
        return x.astype(np.int8).astype(to)
    with np.errstate(invalid="ignore", over="ignore"):     # out-of-range casts are undefined in ONNX
        return x.astype(to)


def _plan(src: np.dtype, to: np.dtype, saturate: bool, round_mode: str, since: int, xp):
    """The conversion from ``src`` to ``to``, resolved once per dtype pair."""
    if src == to:
        return lambda x: x
    if _is_text(to):
        return lambda x: _to_string(x, xp)
    if _is_text(src):
        return lambda x: _from_string(x, to, saturate, round_mode, since, xp)
    if src in _NUMPY_NUMERIC and to in _NUMPY_NUMERIC:
        if src.kind in "fc" and to.kind in "iu":
            def float_to_int(x):
                # NaN/Inf to int is undefined in ONNX: no warning. The module's warnings filter silences
                # NumPy's RuntimeWarning; np.errstate (~1.5 us a call, more than a small cast) is entered
                # only where a caller's np.seterr or -W error turned it into an exception
                try:
                    return x.astype(to)
                except (FloatingPointError, RuntimeWarning):
                    with np.errstate(invalid="ignore"):
                        return x.astype(to)
            return float_to_int
        return lambda x: x.astype(to)

    def special(x):
        if x.ndim == 0:     # the helpers index and clip in place: give them a 1-d array
            return special(x.reshape(1)).reshape(())
        r = _cast_numeric(x, to, saturate, round_mode, since, xp)
        return r if isinstance(r, xp.ndarray) else xp.asarray(r)

    return special


def _caster(to: np.dtype, saturate: bool, round_mode: str, since: int, xp, src=None):
    """A function casting one array to ``to``; the conversion is planned once per source dtype."""
    plans: dict = {}
    if src is not None:
        plans[np.dtype(src)] = _plan(np.dtype(src), to, saturate, round_mode, since, xp)

    def cast(x):
        fn = plans.get(x.dtype)
        if fn is None:
            fn = plans[x.dtype] = _plan(x.dtype, to, saturate, round_mode, since, xp)
        return fn(x)

    return cast


def _target(to) -> np.dtype:
    if isinstance(to, str):
        to = _LEGACY_NAMES[to.upper()]
    return np_dtype(int(to))


@array_kernel("Cast", since=1)
def cast(info):
    a = info.attrs
    src = info.input_dtypes[0] if info.input_dtypes else None
    fn = _caster(_target(a["to"]), int(a.get("saturate", 1)) == 1, a.get("round_mode", "up"), info.opset, info.xp, src)

    def run(x):
        return (fn(x),)

    if src is None:
        return run
    # the source type known from the model: its conversion called directly, one call less a run (a
    # model's dozens of Casts of shape values); another dtype at run time takes the general path
    src, to = np.dtype(src), _target(a["to"])
    if src in _NUMPY_NUMERIC and to in _NUMPY_NUMERIC and src != to and not (src.kind in "fc" and to.kind in "iu"):
        # NumPy's own conversion, which warns of nothing: astype right here
        def run_astype(x):
            if x.dtype == src:
                return (x.astype(to),)
            return (fn(x),)

        return run_astype
    direct = _plan(src, to, int(a.get("saturate", 1)) == 1, a.get("round_mode", "up"), info.opset, info.xp)

    def run_known(x):
        if x.dtype == src:
            return (direct(x),)
        return (fn(x),)

    return run_known


@array_kernel("CastLike", since=15)
def cast_like(info):
    """CastLike: Cast to the element type of the second input (known from the model, else read per run)."""
    a = info.attrs
    saturate = int(a.get("saturate", 1)) == 1
    round_mode = a.get("round_mode", "up")
    xp = info.xp
    src = info.input_dtypes[0] if info.input_dtypes else None
    known = info.input_dtypes[1] if len(info.input_dtypes) > 1 else None
    cache: dict = {}
    if known is not None:
        cache[np.dtype(known)] = _caster(np.dtype(known), saturate, round_mode, info.opset, xp, src)

    def run(x, like):
        to = like.dtype
        fn = cache.get(to)
        if fn is None:
            fn = cache[to] = _caster(to, saturate, round_mode, info.opset, xp)
        return (fn(x),)

    return run


@array_kernel("BitCast", since=26)
def bit_cast(info):
    """BitCast: the same bits read as another type of the same width (ml_dtypes keep sub-byte codes in
    the low bits of one byte, so a plain ``view`` is a bit cast for them too)."""
    to = np_dtype(int(info.attrs["to"]))

    def run(x):
        if x.dtype.itemsize != to.itemsize:
            raise ValueError(f"BitCast: {x.dtype} and {to} differ in width")
        return (x.view(to),)

    return run
