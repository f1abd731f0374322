"""Softmax, LogSoftmax and LayerNormalization as single CUDA kernels (one thread block per row:
a shared-memory reduction for the row's max and sum, or mean and variance, then one write pass).

float32 and float64 compute in their own precision. float16 LayerNormalization is computed in float32
and cast back (two extra elementwise passes, no half-precision kernel to get wrong); float16 softmax
runs the CPU provider's kernel (with ``xp = cupy``), which rounds each step to float16 as the ONNX
definition computed in that type does.
"""
from __future__ import annotations

import numpy as np

from engineroom.plugin_sdk.geometry import softmax_blocks
from engineroom.providers.cuda.registry import kernel

_FLOATS = (np.float16, np.float32, np.float64)
_C_TYPES = {np.dtype(np.float32): ("float", "expf", "logf", "fmaxf", "sqrtf", "-__int_as_float(0x7f800000)"),
            np.dtype(np.float64): ("double", "exp", "log", "fmax", "sqrt",
                                   "-__longlong_as_double(0x7ff0000000000000LL)")}

_REDUCE = """
    sh[t] = {val}; __syncthreads();
    for (int s = nt / 2; s > 0; s >>= 1) {{ if (t < s) sh[t] = {op}; __syncthreads(); }}
    {dst} = sh[0]; __syncthreads();
"""

_SOFTMAX = """
extern "C" __global__ void engineroom_softmax_{T}(const {T}* __restrict__ x, {T}* __restrict__ y,
                                                  const long long n, const int log_mode) {{
    extern __shared__ __align__(8) unsigned char shared_raw[];
    {T}* sh = ({T}*)shared_raw;
    const int t = threadIdx.x, nt = blockDim.x;
    const {T}* xr = x + (long long)blockIdx.x * n;
    {T}* yr = y + (long long)blockIdx.x * n;
    {T} m = {NEG_INF};
    for (long long j = t; j < n; j += nt) m = {FMAX}(m, xr[j]);
    {reduce_max}
    {T} acc = 0;
    for (long long j = t; j < n; j += nt) acc += {EXP}(xr[j] - m);
    {reduce_sum}
    if (log_mode) {{
        const {T} lse = {LOG}(acc);
        for (long long j = t; j < n; j += nt) yr[j] = xr[j] - m - lse;
    }} else {{
        const {T} inv = ({T})1 / acc;
        for (long long j = t; j < n; j += nt) yr[j] = {EXP}(xr[j] - m) * inv;
    }}
}}
"""

_LAYERNORM = """
extern "C" __global__ void engineroom_layernorm_{T}(const {T}* __restrict__ x, const {T}* __restrict__ scale,
                                                    const {T}* __restrict__ bias, {T}* __restrict__ y,
                                                    {T}* __restrict__ mean_out, {T}* __restrict__ rstd_out,
                                                    const long long n, const {T} eps, const int has_bias) {{
    extern __shared__ __align__(8) unsigned char shared_raw[];
    {T}* sh = ({T}*)shared_raw;
    const int t = threadIdx.x, nt = blockDim.x;
    const {T}* xr = x + (long long)blockIdx.x * n;
    {T}* yr = y + (long long)blockIdx.x * n;
    {T} acc = 0;
    for (long long j = t; j < n; j += nt) acc += xr[j];
    {reduce_sum}
    const {T} mean = acc / ({T})n;
    {T} sq = 0;
    for (long long j = t; j < n; j += nt) {{ const {T} d = xr[j] - mean; sq += d * d; }}
    {reduce_sq}
    const {T} rstd = ({T})1 / {SQRT}(sq / ({T})n + eps);
    for (long long j = t; j < n; j += nt)
        yr[j] = (xr[j] - mean) * rstd * scale[j] + (has_bias ? bias[j] : ({T})0);
    if (t == 0) {{ mean_out[blockIdx.x] = mean; rstd_out[blockIdx.x] = rstd; }}
}}
"""

_kernels: dict = {}


def _source(template: str, dt: np.dtype) -> tuple[str, str]:
    T, EXP, LOG, FMAX, SQRT, NEG_INF = _C_TYPES[dt]
    code = template.format(
        T=T, EXP=EXP, LOG=LOG, FMAX=FMAX, SQRT=SQRT, NEG_INF=NEG_INF,
        reduce_max=_REDUCE.format(val="m", op=f"{FMAX}(sh[t], sh[t + s])", dst="m"),
        reduce_sum=_REDUCE.format(val="acc", op="sh[t] + sh[t + s]", dst="acc"),
        reduce_sq=_REDUCE.format(val="sq", op="sh[t] + sh[t + s]", dst="sq"))
    name = template.split("void ")[1].split("(")[0].replace("{T}", T)
    return code, name


def _kernel(xp, template: str, dt: np.dtype):
    key = (id(xp), template, dt)
    k = _kernels.get(key)
    if k is None:
        code, name = _source(template, dt)
        k = _kernels[key] = xp.RawKernel(code, name)
    return k


def _block(n: int) -> int:
    """Threads per row: a power of two (the tree reduction needs one), 32 to 256."""
    b = 32
    while b < n and b < 256:
        b *= 2
    return b


def _compute_dtype(dt) -> np.dtype:
    return np.dtype(np.float64) if np.dtype(dt) == np.float64 else np.dtype(np.float32)


def softmax_rows(xp, x2, log_mode: bool):
    """Softmax (or LogSoftmax) of each row of the contiguous 2-D array ``x2``."""
    rows, n = x2.shape
    dt = x2.dtype
    cdt = _compute_dtype(dt)
    xc = x2 if dt == cdt else x2.astype(cdt)
    if not hasattr(xp, "RawKernel"):          # an array module without CUDA kernels (tests use NumPy)
        e = xc - xc.max(axis=1, keepdims=True)
        y = e - xp.log(xp.exp(e).sum(axis=1, keepdims=True)) if log_mode else xp.exp(e) / xp.exp(e).sum(
            axis=1, keepdims=True)
        return y.astype(dt, copy=False)
    y = xp.empty_like(xc)
    if rows and n:
        b = _block(n)
        _kernel(xp, _SOFTMAX, cdt)((rows,), (b,), (xc, y, np.int64(n), np.int32(log_mode)),
                                   shared_mem=b * cdt.itemsize)
    return y if dt == cdt else y.astype(dt)


def _softmax_factory(info, log_mode: bool):
    xp = info.xp
    opset = info.opset
    dts = info.input_dtypes
    if dts and dts[0] is not None and np.dtype(dts[0]) == np.float16:
        # float16 as the CPU kernel computes it (each step rounded to float16, as ONNX's definition
        # in that type does); float32 accumulation differs by an ulp, beyond the node tests' rtol
        from engineroom.providers.cpu.registry import registry as cpu_registry

        return cpu_registry.lookup("", info.op_type, opset).factory(info)
    axis = int(info.attrs["axis"])                # the schema's default: 1 before opset 13, then -1

    def run(x):
        ax = axis + x.ndim if axis < 0 else axis
        if x.ndim == 0:
            return (xp.zeros_like(x) if log_mode else xp.ones_like(x),)
        if opset < 13:                        # the input as a 2-D matrix (outer, the trailing block)
            outer, block, _ = softmax_blocks(x.shape, ax, opset)
            return (softmax_rows(xp, xp.ascontiguousarray(x).reshape(outer, block), log_mode).reshape(x.shape),)
        if ax == x.ndim - 1:
            return (softmax_rows(xp, xp.ascontiguousarray(x).reshape(-1, x.shape[-1]), log_mode).reshape(x.shape),)
        moved = xp.ascontiguousarray(xp.moveaxis(x, ax, -1))
        y = softmax_rows(xp, moved.reshape(-1, moved.shape[-1]), log_mode).reshape(moved.shape)
        return (xp.ascontiguousarray(xp.moveaxis(y, -1, ax)),)

    return run


# both forms (before opset 13 the input is coerced to 2-D at axis; _softmax_factory reads info.opset)
for _op, _log in (("Softmax", False), ("LogSoftmax", True)):
    for _since in (1, 13):
        kernel(_op, since=_since, types=_FLOATS)(lambda info, log_mode=_log: _softmax_factory(info, log_mode))


def _supports_layernorm(view) -> str | None:
    if int(view.attrs.get("stash_type", 1)) != 1:
        return "stash_type other than float32"
    return None


# since 1 too: onnxruntime's contrib LayerNormalization of models before opset 17 is the same op
@kernel("LayerNormalization", since=1, types=_FLOATS, supports=_supports_layernorm)
@kernel("LayerNormalization", since=17, types=_FLOATS, supports=_supports_layernorm)
def layer_normalization(info):
    xp = info.xp
    a = info.attrs
    axis = int(a.get("axis", -1))          # defaults restated: before opset 17 the op has no ONNX schema
    eps = float(a.get("epsilon", 1e-5))
    out_dts = tuple(info.output_dtypes) + (None, None, None)

    def run(x, scale, bias=None):
        dt = x.dtype
        cdt = _compute_dtype(dt)
        ax = axis + x.ndim if axis < 0 else axis
        norm_shape = x.shape[ax:]
        rows = int(np.prod(x.shape[:ax], dtype=np.int64))
        n = int(np.prod(norm_shape, dtype=np.int64))
        xc = xp.ascontiguousarray(x, dtype=cdt).reshape(rows, n)
        s = xp.ascontiguousarray(xp.broadcast_to(scale.astype(cdt, copy=False), norm_shape)).reshape(-1)
        b = s if bias is None else xp.ascontiguousarray(
            xp.broadcast_to(bias.astype(cdt, copy=False), norm_shape)).reshape(-1)
        y = xp.empty_like(xc)
        mean = xp.empty(rows, cdt)
        rstd = xp.empty(rows, cdt)
        if not hasattr(xp, "RawKernel"):      # an array module without CUDA kernels (tests use NumPy)
            mean = xc.mean(axis=1)
            rstd = 1 / xp.sqrt(((xc - mean[:, None]) ** 2).mean(axis=1) + cdt.type(eps))
            y = (xc - mean[:, None]) * rstd[:, None] * s + (0 if bias is None else b)
        elif rows and n:
            blk = _block(n)
            _kernel(xp, _LAYERNORM, cdt)((rows,), (blk,), (xc, s, b, y, mean, rstd, np.int64(n), cdt.type(eps),
                                                            np.int32(bias is not None)), shared_mem=blk * cdt.itemsize)
        stat_shape = x.shape[:ax] + (1,) * (x.ndim - ax)
        mdt = out_dts[1] or cdt
        idt = out_dts[2] or cdt
        return (y.reshape(x.shape).astype(dt, copy=False), mean.reshape(stat_shape).astype(mdt, copy=False),
                rstd.reshape(stat_shape).astype(idt, copy=False))

    return run
