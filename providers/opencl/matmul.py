"""MatMul and Gemm over one register-tiled GEMM kernel (also the back end of Conv/ConvTranspose).

Each work-item computes a 4x8 block of C: per step of K it loads one 8-wide vector of a B row and
four A scalars and does four vector FMAs, so B streams through once per 4 rows and A once per 8
columns. Rows past M are clamped (computed twice, stored once) and a ragged right edge falls back to
a scalar loop. A is read through (row, k) strides, so a transposed A costs nothing; B must have
unit column stride (a transposed constant B is transposed once in the factory, with ``alpha``
folded in; a transposed runtime B is transposed by a strided copy). Batches (MatMul's broadcast
batch dims, Conv's (image, group) pairs) are grid dim 2, each with its own A/B/C/bias offsets from a
small cached table. The epilogue applies alpha, beta*bias (any strides: per row, per column,
scalar, full) and an optional clamp (ReLU/Clip fusion).
"""
from __future__ import annotations

import numpy as np

from engineroom.plugin_sdk.activations import fused_activation
from engineroom.providers.opencl.common import F32, all_of, inputs_in, rt_of
from engineroom.providers.opencl.registry import kernel

_SRC = """
{pragma}
#define T {T}
#define T8 {T}8
#define FMA(a, b, c) {fma}
{act}__kernel void gemm(int M, int N, int K,
                   __global const T* restrict A, int sam, int sak,
                   __global const T* restrict B, int ldb,
                   __global T* restrict C, int ldc,
                   __global const T* restrict bias, int sbm, int sbn, int has_bias,
                   T alpha, T beta, __global const int* restrict boffs, int nbatch,
                   __global const T* restrict Z, int has_z, int act, T lo, T hi) {{
  const int j = get_global_id(0) * 8, i = get_global_id(1) * 4, b = get_global_id(2);
  if (i >= M || j >= N || b >= nbatch) return;
  A += boffs[4 * b]; B += boffs[4 * b + 1]; C += boffs[4 * b + 2]; Z += has_z ? boffs[4 * b + 2] : 0;
  if (has_bias) bias += boffs[4 * b + 3];
  const int r1 = min(i + 1, M - 1), r2 = min(i + 2, M - 1), r3 = min(i + 3, M - 1);
  __global const T* a0 = A + (long)i * sam;
  __global const T* a1 = A + (long)r1 * sam;
  __global const T* a2 = A + (long)r2 * sam;
  __global const T* a3 = A + (long)r3 * sam;
  const int rows = min(4, M - i);
  if (j + 8 <= N) {{
    T8 c0 = (T8)(0), c1 = (T8)(0), c2 = (T8)(0), c3 = (T8)(0);
    __global const T* bp = B + j;
    if (sak == 1) {{
      for (int k = 0; k < K; ++k) {{
        const T8 bv = vload8(0, bp + (long)k * ldb);
        c0 = FMA((T8)(a0[k]), bv, c0); c1 = FMA((T8)(a1[k]), bv, c1);
        c2 = FMA((T8)(a2[k]), bv, c2); c3 = FMA((T8)(a3[k]), bv, c3);
      }}
    }} else {{
      for (int k = 0; k < K; ++k) {{
        const T8 bv = vload8(0, bp + (long)k * ldb);
        const long ka = (long)k * sak;
        c0 = FMA((T8)(a0[ka]), bv, c0); c1 = FMA((T8)(a1[ka]), bv, c1);
        c2 = FMA((T8)(a2[ka]), bv, c2); c3 = FMA((T8)(a3[ka]), bv, c3);
      }}
    }}
    T8 cs[4] = {{c0, c1, c2, c3}};
    for (int r = 0; r < rows; ++r) {{
      T8 v = cs[r] * alpha;
      if (has_bias) {{
        __global const T* bb = bias + (long)(i + r) * sbm + (long)j * sbn;
        v += beta * (sbn ? vload8(0, bb) : (T8)(bb[0]));  /* sbn is 0 or 1 */
      }}
      if (has_z) v += vload8(0, Z + (long)(i + r) * ldc + j);
      if (act) v = act8(v, act, lo, hi);
      vstore8(v, 0, C + (long)(i + r) * ldc + j);
    }}
  }} else {{
    for (int jj = j; jj < N; ++jj) {{
      T s0 = 0, s1 = 0, s2 = 0, s3 = 0;
      for (int k = 0; k < K; ++k) {{
        const T bv = B[(long)k * ldb + jj];
        const long ka = (long)k * sak;
        s0 = FMA(a0[ka], bv, s0); s1 = FMA(a1[ka], bv, s1); s2 = FMA(a2[ka], bv, s2); s3 = FMA(a3[ka], bv, s3);
      }}
      T ss[4] = {{s0, s1, s2, s3}};
      for (int r = 0; r < rows; ++r) {{
        T v = ss[r] * alpha;
        if (has_bias) v += beta * bias[(long)(i + r) * sbm + (long)jj * sbn];
        if (has_z) v += Z[(long)(i + r) * ldc + jj];
        if (act) v = act1(v, act, lo, hi);
        C[(long)(i + r) * ldc + jj] = v;
      }}
    }}
  }}
}}
"""


# float32 only: PoCL 3.0's LLVM 14 cannot compile the double8 tile (float64 GEMMs stay on the CPU)
GEMM_TYPES = frozenset({F32})

# Fused epilogues (FusedConv's activations, plugin_sdk.activations): code, then two float parameters
ACTIVATIONS = {"Identity": 0, "Relu": 1, "Clip": 2, "Sigmoid": 3, "Tanh": 4, "LeakyRelu": 5, "HardSigmoid": 6}
ACT_FUNCS = """
inline T8 act8(T8 v, int act, T p0, T p1) {
  switch (act) {
    case 1: return select(v, (T8)(0), v < (T8)(0));
    case 2: { T8 t = select(v, (T8)(p0), v < (T8)(p0)); return select(t, (T8)(p1), t > (T8)(p1)); }
    case 3: return (T8)(1) / ((T8)(1) + exp(-v));
    case 4: return tanh(v);
    case 5: return select(v, v * p0, v < (T8)(0));
    case 6: return fmax((T8)(0), fmin((T8)(1), v * p0 + p1));
  }
  return v;
}
inline T act1(T v, int act, T p0, T p1) {
  switch (act) {
    case 1: return v < (T)0 ? (T)0 : v;
    case 2: { T t = v < p0 ? p0 : v; return t > p1 ? p1 : t; }
    case 3: return (T)1 / ((T)1 + exp(-v));
    case 4: return tanh(v);
    case 5: return v < (T)0 ? v * p0 : v;
    case 6: return fmax((T)0, fmin((T)1, v * p0 + p1));
  }
  return v;
}
"""


def activation(attrs) -> tuple[int, float, float]:
    """(code, p0, p1) of a FusedConv node's activation (ValueError if unknown)."""
    name, params = fused_activation(attrs)
    p = (list(params) + [0.0, 0.0])[:2]
    return ACTIVATIONS[name], p[0], p[1]


class Gemm:
    """The tiled GEMM kernel of one float dtype on one runtime."""

    def __init__(self, rt, dtype):
        from engineroom.providers.opencl.common import CTYPES

        self.rt = rt
        self.dtype = np.dtype(dtype)
        t = CTYPES[self.dtype]
        pragma = "#pragma OPENCL EXTENSION cl_khr_fp64 : enable" if t == "double" else ""
        ft = self.dtype.type
        # PoCL's LLVM cannot select fma on double vectors: plain multiply-add there
        fma = "((a) * (b) + (c))" if t == "double" else "fma(a, b, c)"
        self.knl = rt.kernel(_SRC.format(T=t, pragma=pragma, fma=fma, act=ACT_FUNCS), "gemm",
                             [np.int32] * 3 + [None, np.int32, np.int32, None, np.int32, None, np.int32,
                                               None, np.int32, np.int32, np.int32, ft, ft, None, np.int32,
                                               None, np.int32, np.int32, ft, ft])
        self.ft = ft
        self._zero = rt.const_ints([0, 0, 0, 0])

    def __call__(self, M, N, K, a, sam, sak, b, ldb, c, ldc, bias=None, sbm=0, sbn=0, alpha=1.0, beta=1.0,
                 boffs=None, batch=1, z=None, act=(0, 0.0, 0.0)):
        """C = act(alpha * A B + beta * bias + Z); ``act`` is (code, p0, p1) from :func:`activation`."""
        from engineroom.providers.opencl.runtime import grid

        if M == 0 or N == 0 or batch == 0:
            return
        g, l_ = grid((-(-N // 8), -(-M // 4), batch))
        self.rt.launch(self.knl, g, l_, M, N, K, a, sam, sak, b, ldb, c, ldc,
                       bias if bias is not None else c, sbm, sbn, int(bias is not None),
                       alpha, beta, boffs if boffs is not None else self._zero, batch,
                       z if z is not None else c, int(z is not None), *act)


def _transpose_2d(rt, x, dt):
    """A contiguous transposed copy of the last two dims of ``x``."""
    from engineroom.providers.opencl.strided import Strided, contiguous_strides

    shape = tuple(x.shape[:-2]) + (x.shape[-1], x.shape[-2])
    cs = list(contiguous_strides(x.shape))
    cs[-1], cs[-2] = cs[-2], cs[-1]
    y = rt.empty(shape, dt)
    Strided(rt, "x0", [dt], dt)(shape, [(x.base_data, 0, tuple(cs))], (y.base_data, 0, contiguous_strides(shape)))
    return y


def _buf(x, fallback):
    """The buffer of ``x``, or any valid buffer when ``x`` is empty (K == 0: never read)."""
    return x.base_data if x.base_data is not None else fallback.base_data


def _matmul_ok(view):
    for s in view.input_shapes[:2]:
        if s is not None and len(s) == 0:
            return "scalar operand"
    return None


@kernel("MatMul", since=1, types=GEMM_TYPES, supports=all_of(inputs_in(GEMM_TYPES), _matmul_ok))
def matmul(info):
    rt = rt_of(info)
    dt = np.dtype(info.input_dtypes[0])
    gemm = Gemm(rt, dt)
    plans: dict = {}

    def plan(ashape, bshape):
        a2 = ashape if len(ashape) > 1 else (1,) + tuple(ashape)
        b2 = bshape if len(bshape) > 1 else tuple(bshape) + (1,)
        M, K = a2[-2], a2[-1]
        K2, N = b2[-2], b2[-1]
        if K != K2:
            raise ValueError(f"MatMul shapes {tuple(ashape)} and {tuple(bshape)} do not line up")
        batch = np.broadcast_shapes(a2[:-2], b2[:-2])
        out = tuple(batch) + (M, N)
        if len(ashape) == 1:
            out = out[:-2] + out[-1:]
        if len(bshape) == 1:
            out = out[:-1]
        nb = int(np.prod(batch)) if batch else 1
        if len(b2) == 2 or all(s == 1 for s in b2[:-2]):
            # B shared by every batch: fold A's batch into M (A is contiguous)
            return out, nb * M, N, K, 1, None
        from engineroom.providers.opencl.strided import broadcast_strides

        sa = broadcast_strides(a2[:-2], batch)
        sb = broadcast_strides(b2[:-2], batch)
        offs = []
        for idx in np.ndindex(*batch):
            ao = sum(i * s for i, s in zip(idx, sa)) * M * K
            bo = sum(i * s for i, s in zip(idx, sb)) * K * N
            co = int(np.ravel_multi_index(idx, batch)) * M * N
            offs += [ao, bo, co, 0]
        return out, M, N, K, nb, rt.const_ints(offs)

    def run(a, b):
        key = (a.shape, b.shape)
        p = plans.get(key)
        if p is None:
            p = plans[key] = plan(tuple(a.shape), tuple(b.shape))
        out, M, N, K, nb, boffs = p
        y = rt.empty(out, dt)
        if y.size:
            gemm(M, N, K, _buf(a, y), K, 1, _buf(b, y), N, y.base_data, N, boffs=boffs, batch=nb)
        return (y,)

    return run


def _gemm_ok(view):
    for s in view.input_shapes[:2]:
        if s is not None and len(s) != 2:
            return "A and B must be 2-D"
    return None


@kernel("Gemm", since=7, types=GEMM_TYPES, supports=all_of(inputs_in(GEMM_TYPES), _gemm_ok), prepack=(1, 2))
def gemm_op(info):
    rt = rt_of(info)
    dt = np.dtype(info.input_dtypes[0])
    gemm = Gemm(rt, dt)
    a = info.attrs
    alpha, beta, ta, tb = float(a["alpha"]), float(a["beta"]), int(a["transA"]), int(a["transB"])
    bconst = info.const_inputs[1] if len(info.const_inputs) > 1 else None
    cconst = info.const_inputs[2] if len(info.const_inputs) > 2 else None
    packed_b = None
    if bconst is not None:
        bk = np.asarray(bconst, dt)
        bk = bk.T if tb else bk
        packed_b = rt.to_device(np.ascontiguousarray(bk * dt.type(alpha)) if alpha != 1.0 else bk)
    packed_c = None
    if cconst is not None and info.has_input(2):
        packed_c = rt.to_device(np.asarray(cconst, dt) * dt.type(beta))

    def run(A, B, C=None):
        if ta:
            K, M = A.shape
            sam, sak = 1, M
        else:
            M, K = A.shape
            sam, sak = K, 1
        alpha_ = alpha
        if packed_b is not None:
            Bd = packed_b
            alpha_ = 1.0
        else:
            Bd = _transpose_2d(rt, B, dt) if tb else B
        N = Bd.shape[1]
        y = rt.empty((M, N), dt)
        if y.size == 0:
            return (y,)
        bias, sbm, sbn, beta_ = None, 0, 0, beta
        if C is not None and beta != 0.0:
            Cd = packed_c if packed_c is not None else C
            if packed_c is not None:
                beta_ = 1.0
            cs = Cd.shape
            if len(cs) > 2 or (len(cs) == 2 and cs[0] not in (1, M)) or (len(cs) >= 1 and cs[-1] not in (1, N)):
                raise ValueError(f"Gemm: C of shape {tuple(cs)} does not broadcast to ({M}, {N})")
            c2 = (1,) * (2 - len(cs)) + tuple(cs)
            sbm = c2[1] if c2[0] == M and M != 1 else 0
            sbn = 1 if c2[1] == N and N != 1 else 0
            bias = Cd.base_data
        gemm(M, N, K, _buf(A, y), sam, sak, _buf(Bd, y), N, y.base_data, N, bias, sbm, sbn, alpha_, beta_)
        return (y,)

    return run
