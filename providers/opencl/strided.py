"""The generated N-ary strided kernel behind every elementwise op and every data-movement op.

``y[i] = EXPR(x0[i], x1[i], ...)`` over one index space, each operand (the output included) with
its own element offset and strides: broadcasting is a zero stride, Transpose a permuted stride,
Slice an offset and a step, Concat/Split an output/input offset into the bigger tensor.

Before launching, dimensions are collapsed (size-1 dims dropped, neighbours merged wherever every
operand is contiguous across them), so a bias add over NCHW becomes a 2-D or 3-D launch without
any division: the last two collapsed dims are the grid's dims 0 and 1, the third its dim 2; only
tensors that stay above three dims after collapsing decompose grid dim 2 with ``%`` and ``/``.
Each kernel is specialised on whether each operand's innermost stride is 1, 0 or general (so the
common case is a plain unit-stride loop PoCL can vectorize); programs are cached per runtime.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from engineroom.providers.opencl.common import CTYPES

_ALWAYS = """
#define SIGMOID(v) (1.0f / (1.0f + exp(-(v))))
"""


def contiguous_strides(shape: Sequence[int]) -> tuple[int, ...]:
    st = []
    acc = 1
    for s in reversed(shape):
        st.append(acc)
        acc *= int(s)
    return tuple(reversed(st))


def broadcast_strides(in_shape: Sequence[int], out_shape: Sequence[int]) -> tuple[int, ...]:
    """Strides (in elements) reading a contiguous ``in_shape`` tensor broadcast to ``out_shape``."""
    cs = contiguous_strides(in_shape)
    lead = len(out_shape) - len(in_shape)
    out = [0] * lead
    for d, s in enumerate(in_shape):
        out.append(0 if int(s) == 1 and int(out_shape[lead + d]) != 1 else cs[d])
    return tuple(out)


def collapse(shape: Sequence[int], strides: Sequence[Sequence[int]]) -> tuple[list[int], list[list[int]]]:
    """Drop size-1 dims and merge neighbours that are contiguous for every operand."""
    keep = [d for d, s in enumerate(shape) if int(s) != 1]
    dims = [int(shape[d]) for d in keep]
    sts = [[int(st[d]) for d in keep] for st in strides]
    i = len(dims) - 1
    while i > 0:
        if all(st[i - 1] == st[i] * dims[i] for st in sts):
            dims[i - 1] *= dims[i]
            for st in sts:
                st[i - 1] = st[i]
                del st[i]
            del dims[i]
        i -= 1
    if not dims:
        dims = [1]
        sts = [[0] for _ in sts]
    return dims, sts


def _kind(s: int) -> str:
    return "c" if s == 1 else ("z" if s == 0 else "g")


def source(expr: str, in_ctypes: Sequence[str], out_ctype: str, kinds: str, rest: bool, nparams: int,
           preamble: str = "") -> str:
    """OpenCL C of one strided kernel ``k``; ``kinds`` has one of c/z/g per operand (output last)."""
    n = len(in_ctypes)
    args = ["int D0", "int D1", "int D2"]
    for j, ct in enumerate(in_ctypes):
        args.append(f"__global const {ct}* restrict a{j}, int o{j}, int s{j}_0, int s{j}_1, int s{j}_2")
    args.append(f"__global {out_ctype}* restrict y, int oy, int sy_0, int sy_1, int sy_2")
    if rest:
        args.append("__global const int* restrict meta")
    args += [f"float p{j}" for j in range(nparams)]
    names = [str(j) for j in range(n)] + ["y"]
    lines = ["int i0 = get_global_id(0), i1 = get_global_id(1), i2 = get_global_id(2);",
             "if (i0 >= D0 || i1 >= D1 || i2 >= D2) return;"]
    for j, nm in enumerate(names):
        k = kinds[j]
        t0 = "i0" if k == "c" else ("0" if k == "z" else f"i0 * s{nm}_0")
        base = f"o{nm} + {t0} + i1 * s{nm}_1"
        if not rest:
            base += f" + i2 * s{nm}_2"
        lines.append(f"int ix{nm} = {base};")
    if rest:
        # meta: nr, dims[nr] (outermost first), then nr strides per operand
        lines.append("{ int nr = meta[0]; int r = i2;")
        lines.append("  for (int d = nr - 1; d >= 0; --d) { int dim = meta[1 + d]; int c = r % dim; r /= dim;")
        for j, nm in enumerate(names):
            lines.append(f"    ix{nm} += c * meta[1 + nr * {j + 1} + d];")
        lines.append("  } }")
    for j, ct in enumerate(in_ctypes):
        lines.append(f"{ct} x{j} = a{j}[ix{j}];")
    lines.append(f"y[ixy] = ({out_ctype})({expr});")
    fp64 = "#pragma OPENCL EXTENSION cl_khr_fp64 : enable\n" if "double" in (*in_ctypes, out_ctype) else ""
    body = "\n  ".join(lines)
    return f"{fp64}{_ALWAYS}{preamble}\n__kernel void k({', '.join(args)}) {{\n  {body}\n}}\n"


class Strided:
    """One elementwise expression over given dtypes; call it with a shape and operand layouts."""

    def __init__(self, rt, expr: str, in_dtypes: Sequence, out_dtype, nparams: int = 0,
                 preamble: str = ""):
        self.rt = rt
        self.expr = expr
        self.in_ctypes = [CTYPES[np.dtype(d)] for d in in_dtypes]
        self.out_ctype = CTYPES[np.dtype(out_dtype)]
        self.nparams = nparams
        self.preamble = preamble
        self._plans: dict[tuple, tuple] = {}

    def _plan(self, key):
        shape, layouts = key
        dims, sts = collapse(shape, [st for _, st in layouts])
        nd = len(dims)
        rest = nd > 3
        d0 = dims[-1]
        d1 = dims[-2] if nd >= 2 else 1
        d2 = int(np.prod(dims[:-2])) if nd >= 3 else 1
        kinds = "".join(_kind(st[-1]) for st in sts)
        argtypes: list = [np.int32] * 3
        for _ in self.in_ctypes:
            argtypes += [None] + [np.int32] * 4
        argtypes += [None] + [np.int32] * 4
        if rest:
            argtypes.append(None)
        argtypes += [np.float32] * self.nparams
        src = source(self.expr, self.in_ctypes, self.out_ctype, kinds, rest, self.nparams, self.preamble)
        knl = self.rt.kernel(src, "k", argtypes)
        per_op = []
        for (off, _), st in zip(layouts, sts):
            s0 = st[-1]
            s1 = st[-2] if nd >= 2 else 0
            s2 = st[-3] if nd == 3 else 0
            per_op.append((off, s0, s1, s2))
        meta = None
        if rest:
            nr = nd - 2
            vals = [nr] + dims[:nr]
            for st in sts:
                vals += st[:nr]
            meta = self.rt.const_ints(vals)
        from engineroom.providers.opencl.runtime import grid

        g, l_ = grid((d0, d1, d2))
        return knl, g, l_, (d0, d1, d2), per_op, meta

    def __call__(self, shape, ins: Sequence[tuple], out: tuple, params: Sequence[float] = ()) -> None:
        """``ins``/``out``: (buffer, element offset, strides) per operand; ``shape``: the index space."""
        shape = tuple(int(s) for s in shape)
        if 0 in shape:
            return
        key = (shape, tuple((o, tuple(st)) for _, o, st in (*ins, out)))
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plan(key)
            if len(self._plans) > 256:
                self._plans.clear()
            self._plans[key] = plan
        knl, g, l_, ds, per_op, meta = plan
        args: list = list(ds)
        for (buf, _, _), p in zip((*ins, out), per_op):
            args.append(buf)
            args.extend(p)
        if meta is not None:
            args.append(meta)
        args.extend(params)
        self.rt.launch(knl, g, l_, *args)
