"""Level 1: a Cast of a Cast that lost nothing is one Cast.

``Cast(to=C)(Cast(to=B)(x))`` with x of type A reads x directly (``Cast(to=C)(x)``) where every value of A
is exactly a value of B (bool to any number, a narrower integer to a wider one that holds its range, an
integer to a float whose significand holds it, a narrower float to a wider one): the second Cast then
converts the very value x holds, which is what converting x itself gives (NumPy's and onnxruntime's
conversions depend on the value, not on the type it came in). The first Cast goes when nothing else reads
it; where C is A, the Cast left is one to the type its input has, which ``eliminate_redundant_cast`` (run
after this) removes. Only NumPy's own numeric types take part: strings print and parse by type, and the
float8/4-bit types round and saturate by rules of their own.
"""
from __future__ import annotations

import onnx_ir as ir

_T = ir.DataType
_BITS = {_T.INT8: 8, _T.INT16: 16, _T.INT32: 32, _T.INT64: 64, _T.UINT8: 8, _T.UINT16: 16, _T.UINT32: 32,
         _T.UINT64: 64}
_SIGNED = {_T.INT8, _T.INT16, _T.INT32, _T.INT64}
# float type -> (significand bits with the implicit one, float types at least as wide)
_FLOATS = {_T.FLOAT16: (11, {_T.FLOAT16, _T.FLOAT, _T.DOUBLE}), _T.FLOAT: (24, {_T.FLOAT, _T.DOUBLE}),
           _T.DOUBLE: (53, {_T.DOUBLE})}
_NUMERIC = {_T.BOOL, *_BITS, *_FLOATS}


def lossless(a: ir.DataType, b: ir.DataType) -> bool:
    """Whether every value of type ``a`` is exactly a value of type ``b`` (NumPy's numeric types only)."""
    if a not in _NUMERIC or b not in _NUMERIC:
        return False
    if a == b or a == _T.BOOL:
        return True
    if b == _T.BOOL:
        return False
    if a in _FLOATS:
        return b in _FLOATS[a][1]
    bits, signed = _BITS[a], a in _SIGNED
    if b in _FLOATS:
        # magnitudes below 2**(bits - signed) fit a significand of that many bits
        return bits - signed <= _FLOATS[b][0]
    if signed and b not in _SIGNED:
        return False
    return _BITS[b] - (b in _SIGNED and not signed) >= bits


def _cast(node: ir.Node) -> bool:
    # saturate and round_mode concern the float8 types only, which take no part here
    return node.op_type == "Cast" and node.domain in ("", "ai.onnx") and len(node.inputs) == 1 \
        and node.inputs[0] is not None and node.attributes.get("to") is not None


def fold_cast_chains(graph: ir.Graph) -> int:
    """Rewrite the Casts of lossless Casts in ``graph`` (not its bodies) to read the first Cast's input;
    drop the first Casts nothing reads any more. Returns how many Casts were rewired."""
    n = 0
    for node in list(graph):
        if node.graph is not graph or not _cast(node):
            continue
        mid = node.inputs[0]
        first = mid.producer()
        if first is None or first.graph is not graph or not _cast(first):
            continue
        src = first.inputs[0]
        if src.type is None or not isinstance(src.type, ir.TensorType):
            continue
        try:
            a, b = src.dtype, _T(int(first.attributes["to"].value))
        except ValueError:
            continue
        if not lossless(a, b):
            continue
        node.replace_input_with(0, src)
        n += 1
        if not mid.uses() and not mid.is_graph_output():
            graph.remove(first, safe=True)
    return n
