"""Quantized com.microsoft contrib kernels: the QOperator set that onnxruntime's static quantizer writes
(QLinearAdd, QLinearMul, QLinearSigmoid, QLinearLeakyRelu, QLinearSoftmax, QLinearConcat, QLinearWhere,
QLinearAveragePool, QLinearGlobalAveragePool, QLinearConv, QGemm, NhwcMaxPool), the dynamic quantizer's
DynamicQuantizeMatMul / MatMulIntegerToFloat / DynamicQuantizeLSTM, MatMulInteger16, and the contrib
QuantizeLinear / DequantizeLinear.

Numerics follow onnxruntime's CPU kernels: integer products are summed exactly (float64 GEMMs of
integer-valued operands), requantization rounds half to even and saturates, elementwise ops compute in
float32 as MLAS does, and 8-bit unary ops are 256-entry lookup tables built once when the scales are
constants. Dynamic quantization of activations (DynamicQuantizeMatMul, DynamicQuantizeLSTM) uses
onnxruntime's uint8 range rule (``_contrib.dynamic_qparams``), so the rounding of the activations is the same.
"""
from __future__ import annotations

import numpy as np

from engineroom.plugin_sdk.geometry import softmax_blocks
from engineroom.providers.cpu import _threadpool, intgemm
from engineroom.providers.cpu._contrib import (
    const,
    delegate,
    dequantize,
    dynamic_qparams,
    host_kernel,
    quantize,
    requantize_lut,
    scalar,
)
from engineroom.providers.cpu._threadpool import MIN_QUIET_WORK, parallel_ranges
from engineroom.providers.cpu.array_module import arrays
from engineroom.providers.cpu.quantize import quantize_dynamic_u8
from engineroom.providers.cpu.rnn import _activation_names, _activations, _masks, _reverse_index

MS = "com.microsoft"
_F32 = np.dtype(np.float32)
_F64 = np.dtype(np.float64)
_Q8 = (np.uint8, np.int8)


def _zp_dtype(zp, fallback):
    return np.dtype(zp.dtype) if zp is not None else np.dtype(fallback)


def _out_dtype(info, i, fallback):
    d = info.output_dtypes[i] if len(info.output_dtypes) > i else None
    return np.dtype(d) if d is not None else np.dtype(fallback)


# ---------------------------------------------------------------------------------------------
# elementwise


def _binary(info, combine):
    """QLinearAdd / QLinearMul: inputs A, A_scale, A_zp, B, B_scale, B_zp, C_scale, C_zp. Constant scales
    and zero points (what the quantizer writes) are read once, here."""
    idx = (1, 2, 4, 5, 6, 7)
    consts = [const(info, i) for i in idx]
    fixed = None
    if all(c is not None or not info.has_input(i) for c, i in zip(consts, idx)):
        fixed = tuple(scalar(c) for c in consts)
    out_fixed = _out_dtype(info, 0, np.uint8) if info.output_dtypes and info.output_dtypes[0] is not None else None

    def run(a, sa, za, b, sb, zb, sc, zc=None):
        out = out_fixed or _zp_dtype(zc, a.dtype)
        p = fixed or (scalar(sa), scalar(za), scalar(sb), scalar(zb), scalar(sc), scalar(zc))
        y = combine(a, p[0], p[1], b, p[2], p[3], p[4], p[5])
        lim = np.iinfo(out)
        return (np.clip(np.rint(y), lim.min, lim.max).astype(out),)

    return run


def _fma(x, r, c):
    """float32 x * r + c with one rounding, as the FMA instruction (exact in float64, then rounded)."""
    return (x.astype(_F64) * np.float64(r) + np.asarray(c, _F64)).astype(_F32)


def _add(a, sa, za, b, sb, zb, sc, zc):
    # MLAS's AVX2 kernel: fixed = zc - (ra*za + rb*zb) with ra = sa/sc, rb = sb/sc in float32, then
    # fma(a, ra, fma(b, rb, fixed)); a one-element operand is folded into ``fixed`` first (mul, add)
    ra, rb = np.float32(sa) / np.float32(sc), np.float32(sb) / np.float32(sc)
    fixed = np.float32(zc) - (ra * np.float32(za) + rb * np.float32(zb))
    if b.size == 1 and a.size != 1:
        return _fma(a, ra, fixed + np.float32(b.reshape(())) * rb)
    if a.size == 1 and b.size != 1:
        return _fma(b, rb, fixed + np.float32(a.reshape(())) * ra)
    return _fma(a, ra, _fma(b, rb, fixed))


def _mul(a, sa, za, b, sb, zb, sc, zc):
    ratio = np.float32(sa) * np.float32(sb) / np.float32(sc)
    return (a.astype(_F32) - np.float32(za)) * (b.astype(_F32) - np.float32(zb)) * ratio + np.float32(zc)


@host_kernel("QLinearAdd", MS, since=1, types=_Q8)
def qlinear_add(info):
    return _binary(info, _add)


@host_kernel("QLinearMul", MS, since=1, types=_Q8)
def qlinear_mul(info):
    return _binary(info, _mul)


def _unary_lut(info, fn):
    """An 8-bit unary op y = quantize(fn(dequantize(x))): inputs X, X_scale, X_zp, Y_scale, Y_zp. The
    table is built once when the four parameters are constants, else per run."""
    in_dt = np.dtype(info.input_dtypes[0]) if info.input_dtypes and info.input_dtypes[0] is not None else None
    params = [const(info, i) for i in (1, 2, 3, 4)]

    def table(sx, zx, sy, zy, in_dtype):
        return requantize_lut(fn, scalar(sx), scalar(zx), scalar(sy), scalar(zy), in_dtype, _zp_dtype(zy, in_dtype))

    fixed = None
    if in_dt is not None and all(p is not None or not info.has_input(i) for p, i in zip(params, (1, 2, 3, 4))):
        fixed = table(*params, in_dt)

    def run(x, sx, zx=None, sy=None, zy=None):
        lut = fixed if fixed is not None and x.dtype == in_dt else table(sx, zx, sy, zy, x.dtype)
        return (lut[x.view(np.uint8)],)

    return run


@host_kernel("QLinearSigmoid", MS, since=1, types=_Q8)
def qlinear_sigmoid(info):
    def sigmoid(v):
        with np.errstate(over="ignore"):
            return 1 / (1 + np.exp(-v))
    return _unary_lut(info, sigmoid)


@host_kernel("QLinearLeakyRelu", MS, since=1, types=_Q8)
def qlinear_leaky_relu(info):
    alpha = np.float32(info.attrs.get("alpha", 0.01))
    return _unary_lut(info, lambda v: np.where(v >= 0, v, v * alpha))


@host_kernel("QLinearSoftmax", MS, since=1, types=_Q8)
def qlinear_softmax(info):
    """Softmax over ``axis`` of the dequantized input (opset < 13: over all axes from ``axis`` on, as
    Softmax-1 flattens), exp(x - max) in float32 from the integer difference, requantized to Y."""
    axis = int(info.attrs.get("axis", -1))
    opset = int(info.attrs.get("opset", 13))

    def run(x, sx, zx, sy, zy=None):
        out = _zp_dtype(zy, x.dtype)
        ax = axis + x.ndim if axis < 0 else axis
        xi = x.astype(np.int32)
        if opset < 13:
            xi = xi.reshape(softmax_blocks(x.shape, ax, opset)[:2])
            red = 1
        else:
            red = ax
        d = (xi - xi.max(axis=red, keepdims=True)).astype(_F32) * np.float32(scalar(sx))
        e = np.exp(d)
        y = e / e.sum(axis=red, keepdims=True, dtype=_F32)
        y = quantize(y, scalar(sy), scalar(zy), out)
        return (y.reshape(x.shape),)

    return run


@host_kernel("QLinearConcat", MS, since=1)
def qlinear_concat(info):
    """Inputs Y_scale, Y_zp, then (X, X_scale, X_zp) per tensor; each is requantized to Y's parameters
    (an input already in them is copied as it is)."""
    axis = int(info.attrs["axis"])

    def run(sy, zy, *rest):
        if len(rest) % 3:
            raise ValueError("QLinearConcat: inputs after Y_scale, Y_zero_point must come in (X, X_scale, "
                             f"X_zero_point) triples, got {len(rest)}")
        s_y, z_y = scalar(sy), scalar(zy)
        out = _zp_dtype(zy, rest[0].dtype)
        parts = []
        for x, sx, zx in zip(rest[0::3], rest[1::3], rest[2::3]):
            s_x, z_x = scalar(sx), scalar(zx)
            if np.float32(s_x) == np.float32(s_y) and z_x == z_y and x.dtype == out:
                parts.append(x)
            else:
                parts.append(quantize(dequantize(x, s_x, z_x), s_y, z_y, out))
        return (np.concatenate(parts, axis=axis),)

    return run


@host_kernel("QLinearWhere", MS, since=1)
def qlinear_where(info):
    """Inputs condition, X, X_scale, X_zp, Y, Y_scale, Y_zp, Z_scale, Z_zp: where(condition, X, Y) with
    both branches requantized to Z's parameters."""
    def run(cond, x, sx, zx, y, sy, zy, sz, zz):
        out = _zp_dtype(zz, x.dtype)
        s_z, z_z = scalar(sz), scalar(zz)
        xq = quantize(dequantize(x, scalar(sx), scalar(zx)), s_z, z_z, out)
        yq = quantize(dequantize(y, scalar(sy), scalar(zy)), s_z, z_z, out)
        return (np.where(cond, xq, yq),)

    return run


# ---------------------------------------------------------------------------------------------
# pooling


@host_kernel("QLinearGlobalAveragePool", MS, since=1, types=_Q8)
def qlinear_global_average_pool(info):
    """The integer sum over the image, less the zero point times its size, scaled by
    x_scale / y_scale / size in float32 and requantized (as MLAS does)."""
    channels_last = int(info.attrs.get("channels_last", 0))

    def run(x, sx, zx, sy, zy=None):
        out = _zp_dtype(zy, x.dtype)
        axes = tuple(range(1, x.ndim - 1)) if channels_last else tuple(range(2, x.ndim))
        size = int(np.prod([x.shape[a] for a in axes], dtype=np.int64))
        acc = x.sum(axis=axes, keepdims=True, dtype=np.int64) - int(scalar(zx)) * size
        scale = np.float32(scalar(sx)) / np.float32(scalar(sy)) / np.float32(size)
        y = np.rint(acc.astype(_F32) * scale) + np.float32(scalar(zy))
        lim = np.iinfo(out)
        return (np.clip(y, lim.min, lim.max).astype(out),)

    return run


@host_kernel("QLinearAveragePool", MS, since=1, types=_Q8)
def qlinear_average_pool(info):
    """AveragePool of the dequantized input, requantized; ``channels_last`` reads and writes NHWC."""
    channels_last = int(info.attrs.get("channels_last", 0))
    attrs = {k: v for k, v in info.attrs.items() if k != "channels_last"}
    pool = delegate(info, "AveragePool", 19, attrs, inputs=[0], dtypes=[_F32])

    def run(x, sx, zx, sy, zy=None):
        out = _zp_dtype(zy, x.dtype)
        xf = dequantize(x, scalar(sx), scalar(zx))
        if channels_last:
            xf = np.moveaxis(xf, -1, 1)
        y = pool(xf)[0]
        if channels_last:
            y = np.moveaxis(y, 1, -1)
        return (quantize(y, scalar(sy), scalar(zy), out),)

    return run


@host_kernel("NhwcMaxPool", MS, since=1, types=_Q8)
def nhwc_max_pool(info):
    """MaxPool over a channels-last 8-bit tensor (exact: max commutes with the layout)."""
    pool = delegate(info, "MaxPool", 12, inputs=[0])

    def run(x):
        y = pool(np.ascontiguousarray(np.moveaxis(x, -1, 1)))[0]
        return (np.ascontiguousarray(np.moveaxis(y, 1, -1)),)

    return run


@host_kernel("QLinearConv", MS, since=1, types=_Q8)
def qlinear_conv_ms(info):
    """The ONNX QLinearConv, plus ``channels_last`` (NHWC input and output)."""
    channels_last = int(info.attrs.get("channels_last", 0))
    attrs = {k: v for k, v in info.attrs.items() if k != "channels_last"}
    conv = delegate(info, "QLinearConv", 10, attrs)

    def run(x, *rest):
        if channels_last:
            x = np.ascontiguousarray(np.moveaxis(x, -1, 1))
        y = conv(x, *rest)[0]
        return (np.ascontiguousarray(np.moveaxis(y, 1, -1)) if channels_last else y,)

    return run


# ---------------------------------------------------------------------------------------------
# matrix products


def _centered(b, zb, axis=-1):
    """b - zero point as float64 (integer-valued), the zero point per column where it is a vector."""
    bf = np.asarray(b).astype(_F64)
    if zb is not None:
        z = np.asarray(zb).astype(_F64)
        bf -= z.reshape(()) if z.size == 1 else z.reshape(-1)
    return bf


def _col_scale(s):
    s = np.asarray(s).astype(_F32)
    return s.reshape(()) if s.size == 1 else s.reshape(-1)


class _PreparedInt:
    """A right-hand integer matrix and its scale for the float-output integer products: B - zero point as an
    ``intgemm.IntMatrix`` (exact products on float32 BLAS) and the scale as float32, made once where they
    are constants."""

    def __init__(self, info, b_idx, s_idx, z_idx):
        cb, cs = const(info, b_idx), const(info, s_idx)
        cz = const(info, z_idx)
        has_z = info.has_input(z_idx)
        self.ready = cb is not None and cs is not None and (cz is not None or not has_z)
        self.i8 = None          # packed for the compiled VNNI kernel, where it runs (``intgemm.Int8Matrix``)
        self._packable = None
        self.b = None           # the float32-BLAS form, made when first needed (no VNNI kernel)
        if self.ready:
            self._const = (cb, cz)
            self.s = _col_scale(cs)
            if intgemm.Int8Matrix.fits(cb):
                self._packable = (cb, cz)
                if intgemm.int8_kernels() is not None:
                    self.i8 = intgemm.Int8Matrix(cb, cz)

    def get(self, b, s, z, amax):
        if self.ready and amax <= 255:
            if self.b is None:
                self.b = intgemm.IntMatrix(*self._const)
            return self.b, self.s
        return intgemm.IntMatrix(b, z, amax, intgemm.int_bound(b.dtype, z)), _col_scale(s)

    def int8_product(self, a, za: int, s_a, bias):
        """``_scaled`` of (a - za) @ (B - zb) on the VNNI kernel for 8-bit ``a``, or None where it does not
        serve."""
        kern = intgemm.int8_kernels() if self._packable is not None and a.dtype in _Q8 else None
        if kern is None:
            return None
        if self.i8 is None:     # the compiled module was still building when the session was made
            self.i8 = intgemm.Int8Matrix(*self._packable)
        y = self.i8.matmul_scaled(a, za, np.float32(s_a) * self.s, kern)
        if y is None:
            return _scaled(self.i8.matmul(a, za, kern), s_a, self.s, bias)
        if bias is not None:
            y += bias
        return y


def _scaled(acc, s_a, s_b, bias):
    """float32(acc) * (s_a * s_b) + bias in float32: the numbers of the unfused Cast, Mul(a_scale, b_scale),
    Mul and Add (onnxruntime's too)."""
    y = acc.astype(_F32, copy=False)
    y *= np.float32(s_a) * s_b
    if bias is not None:
        y += bias
    return y


@host_kernel("MatMulIntegerToFloat", MS, since=1, types=_Q8)
def matmul_integer_to_float(info):
    """(A - a_zp) @ (B - b_zp) * (a_scale * b_scale) + bias, float32 out; inputs A, B, a_scale, b_scale,
    a_zero_point, b_zero_point, bias. The optimizer fuses MatMulInteger + Cast + scale Mul into it
    (``optimizer.dynamic_quant_matmul``)."""
    prepared = _PreparedInt(info, 1, 3, 5)

    def run(a, b, sa, sb, za=None, zb=None, bias=None):
        s_a = _col_scale(sa)
        if s_a.ndim:
            raise NotImplementedError("MatMulIntegerToFloat: a per-row a_scale is not supported")
        y = prepared.int8_product(a, 0 if za is None else int(scalar(za)), s_a, bias)
        if y is not None:
            return (y,)
        amax = intgemm.int_bound(a.dtype, za)
        bm, s_b = prepared.get(b, sb, zb, amax)
        acc = bm.matmul(intgemm.centered(a, None if za is None else scalar(za), bm.f.dtype), amax)
        return (_scaled(acc, s_a, s_b, bias),)

    return run


@host_kernel("DynamicQuantizeMatMul", MS, since=1, types=(np.float32,))
def dynamic_quantize_matmul(info):
    """A quantized on the fly to uint8 (DynamicQuantizeLinear's numbers), then as MatMulIntegerToFloat;
    inputs A, B, b_scale, b_zero_point, bias."""
    prepared = _PreparedInt(info, 1, 2, 3)
    jit = arrays(np).compiled("quant")

    def run(a, b, sb, zb=None, bias=None):
        qa, s_a, z_a = quantize_dynamic_u8(a, np, jit)
        z = int(z_a)
        y = prepared.int8_product(qa, z, s_a, bias)
        if y is not None:
            return (y,)
        amax = max(z, 255 - z)          # the centered activation's bound: fewer K chunks than 255
        bm, s_b = prepared.get(b, sb, zb, amax)
        af = np.subtract(qa, np.float32(z), dtype=bm.f.dtype)
        return (_scaled(bm.matmul(af, amax), s_a, s_b, bias),)

    return run


@host_kernel("MatMulInteger16", MS, since=1, types=(np.int16, np.uint16))
def matmul_integer16(a, b):
    return np.matmul(a.astype(_F64), b.astype(_F64)).astype(np.int32)


@host_kernel("QGemm", MS, since=1, types=_Q8)
def qgemm(info):
    """alpha * (A - a_zp) @ (B - b_zp) * a_scale * b_scale, plus C (int32, in the product's scale); then
    requantized to y_scale / y_zero_point when given, else float32. Inputs A, a_scale, a_zp, B, b_scale,
    b_zp, C, y_scale, y_zp; attributes alpha, transA, transB."""
    alpha = np.float32(info.attrs.get("alpha", 1.0))
    trans_a = int(info.attrs.get("transA", 0))
    trans_b = int(info.attrs.get("transB", 0))
    cb, cs, cz = const(info, 3), const(info, 4), const(info, 5)
    pre = None
    if cb is not None and cs is not None and cz is not None:
        pre = (_centered(cb.T if trans_b else cb, cz), _col_scale(cs))

    def run(a, sa, za, b, sb, zb, c=None, sy=None, zy=None):
        if pre is not None:
            bc, s_b = pre
        else:
            bc, s_b = _centered(b.T if trans_b else b, zb), _col_scale(sb)
        af = (a.T if trans_a else a).astype(_F64) - scalar(za)
        acc = af @ bc
        if c is not None:
            acc = acc + c.astype(_F64)
        y = acc.astype(_F32) * (alpha * np.float32(scalar(sa)) * s_b)
        if sy is None:
            return (y,)
        out = _zp_dtype(zy, a.dtype)
        return (quantize(y, scalar(sy), scalar(zy), out),)

    return run


# ---------------------------------------------------------------------------------------------
# QuantizeLinear / DequantizeLinear (contrib versions: per-tensor or per-axis, 8/16-bit and int4)


@host_kernel("QuantizeLinear", MS, since=1)
def quantize_linear_ms(info):
    return delegate(info, "QuantizeLinear", 21)


@host_kernel("DequantizeLinear", MS, since=1)
def dequantize_linear_ms(info):
    return delegate(info, "DequantizeLinear", 21)


# ---------------------------------------------------------------------------------------------
# DynamicQuantizeLSTM


class _QuantizedWeight:
    """A quantized (K, N) weight whose ``h @ w`` quantizes h on the fly as onnxruntime's quantized LSTM
    GEMM does: uint8 with its own range rule per product, integer sums, scaled by h_scale * w_scale per
    column. ``__array_ufunc__ = None`` makes NumPy hand ``ndarray @ self`` to ``__rmatmul__``."""

    __array_ufunc__ = None

    def __init__(self, w, scale, zp):
        self.w = _centered(w, zp)                       # (K, N) float64, integer-valued
        self.w32 = self.w.astype(_F32)
        # |any partial sum| <= K * max|a - za| * max|w - zw|: below 2**24 float32 sums integers exactly
        self.bound = self.w.shape[0] * float(np.abs(self.w).max(initial=0))
        self.scale = _col_scale(scale)
        self._raw = (w, zp) if intgemm.Int8Matrix.fits(np.asarray(w)) else None
        self.i8 = None          # packed for the VNNI kernel (``pack``)

    def __rmatmul__(self, a):
        return self.product(a, len(a))

    def pack(self):
        """w packed for the VNNI kernel (``intgemm.Int8Matrix``, made once), or None where it does not run."""
        if self.i8 is None and self._raw is not None and intgemm.int8_kernels() is not None:
            self.i8 = intgemm.Int8Matrix(*self._raw)
        return self.i8

    def project(self, a, quant):
        """a (M, K) @ w, a quantized as one block: the input projection. On the VNNI kernel where it runs
        (exact integer sums, then float32(sum) * (a_scale * w_scale), as ``product``); ``quant`` the compiled
        ``quant`` module or None."""
        kern = intgemm.int8_kernels() if self.pack() is not None else None
        if kern is not None:
            q, s_a, z_a = quantize_dynamic_u8(a, np, quant)
            y = self.i8.matmul_scaled(q, int(z_a), np.float32(s_a) * self.scale, kern)
            if y is not None:   # None: a zero point on w, which the scaled kernel does not take
                return y
        return self.product(a, len(a))

    def product(self, a, rows):
        """a @ w with a (M, K) quantized in blocks of ``rows`` rows, each with its own range."""
        qa, s_a, zmax = _quantize_blocks(a, rows)
        if self.bound * zmax < 2 ** 24:
            acc = qa @ self.w32
        else:
            acc = (qa.astype(_F64) @ self.w).astype(_F32)
        return acc * (s_a * self.scale)


def _quantize_blocks(a, rows):
    """a (..., M, K) as uint8 values less their zero point, in float32 (clip(rint(a / s) + z, 0, 255) - z),
    each block of ``rows`` rows of the last two axes with its own range (onnxruntime's rule); the scale of
    each row (..., M, 1) and the largest |value| a quantized entry can have."""
    qa = np.empty(a.shape, _F32)
    s = np.empty(a.shape[:-1] + (1,), _F32)
    zmax = 0
    for idx in np.ndindex(a.shape[:-2]):
        for r0 in range(0, a.shape[-2], rows):
            blk = a[idx][r0:r0 + rows]
            s_a, z_a = dynamic_qparams(blk)
            q = np.rint(np.divide(blk, s_a, dtype=_F32))
            q += np.float32(z_a)
            np.clip(q, 0, 255, out=q)
            q -= np.float32(z_a)
            qa[idx][r0:r0 + rows] = q
            s[idx][r0:r0 + rows] = s_a
            zmax = max(zmax, z_a, 255 - z_a)
    return qa, s, zmax


# onnxruntime's LSTM runs its gates through MLAS's rational approximations of the logistic and tanh
# functions (Eigen's coefficients), with fused multiply-adds. DynamicQuantizeLSTM computes the same ones
# because the dynamic quantization of each step's h makes the model chaotic: an exact sigmoid moves h by
# an ulp, that flips a rounding in the next step's quantization, and a 3-layer BiLSTM's output moved by 2e-2.
_LOGISTIC_P = (4.37031012579801e-11, 1.15627324459942e-07, 6.08574864600143e-05, 8.51377133304701e-03,
               2.48287947061529e-01)
_LOGISTIC_Q = (6.10247389755681e-13, 5.76102136993427e-09, 6.29106785017040e-06, 1.70198817374094e-03,
               1.16817656904453e-01, 9.93151921023180e-01)
_TANH_P = (-2.76076847742355e-16, 2.00018790482477e-13, -8.60467152213735e-11, 5.12229709037114e-08,
           1.48572235717979e-05, 6.37261928875436e-04, 4.89352455891786e-03)
_TANH_Q = (1.19825839466702e-06, 1.18534705686654e-04, 2.26843463243900e-03, 4.89352518554385e-03)


def _horner_fma(x2, coefs):
    """Horner's rule over float32 coefficients, each step a fused multiply-add (exact in float64, rounded
    once to float32)."""
    c = [np.float32(v) for v in coefs]
    p = (x2.astype(_F64) * c[0] + np.float64(c[1])).astype(_F32)
    for v in c[2:]:
        p = (p.astype(_F64) * x2 + np.float64(v)).astype(_F32)
    return p


def _mlas_rational(x, lo, p_coefs, q_coefs):
    v = np.clip(x.astype(_F32, copy=False), np.float32(-lo), np.float32(lo))
    v2 = v * v
    return _horner_fma(v2, p_coefs) * v, _horner_fma(v2, q_coefs)


def mlas_logistic(x):
    p, q = _mlas_rational(x, 18.0, _LOGISTIC_P, _LOGISTIC_Q)
    return np.clip(p / q + np.float32(0.5), np.float32(0), np.float32(1))


def mlas_tanh(x):
    p, q = _mlas_rational(x, 9.0, _TANH_P, _TANH_Q)
    return p / q


def _lstm_direction(xw, h, c, rq, bias, p, acts, clip, input_forget, lens, rows, keep):
    """One direction of the LSTM in onnxruntime's order of operations: per step the gate pre-activations
    are (x W + h R) [+ peephole * c] + bias, clipped; c = c_prev * f + i * g; h = o * h_act(c). h enters
    each product quantized in blocks of ``rows`` rows (``_quantized_rows``); a finished sequence's h enters
    as zeros (its output row), or as its last value where ``keep`` (no Y)."""
    seq, H = xw.shape[0], h.shape[1]
    f_act, g_act, h_act = acts
    y = np.zeros((seq,) + h.shape, _F32)
    bi, bo, bf, bc = bias[:H], bias[H:2 * H], bias[2 * H:3 * H], bias[3 * H:]
    cl = (lambda v: np.clip(v, -clip, clip)) if clip is not None else (lambda v: v)
    h_last, c_last = h, c
    # without peepholes the three sigmoid gates (i, o, f: the first 3H columns) go through one call
    merged = p is None and not input_forget
    b3 = bias[:3 * H]
    for t in range(seq):
        a = xw[t] + rq.product(h, rows)                  # gates i, o, f, c
        if merged:
            iof = f_act(cl(a[:, :3 * H] + b3))
            i, o, fg = iof[:, :H], iof[:, H:2 * H], iof[:, 2 * H:]
            c_new = c * fg + i * g_act(cl(a[:, 3 * H:] + bc))
            h_new = h_act(c_new) * o
        else:
            ai, ao, af, ac = a[:, :H], a[:, H:2 * H], a[:, 2 * H:3 * H], a[:, 3 * H:]
            if p is not None:
                ai = ai + c * p[:H]
                af = af + c * p[2 * H:]
            i = f_act(cl(ai + bi))
            fg = np.float32(1) - i if input_forget else f_act(cl(af + bf))
            g = g_act(cl(ac + bc))
            c_new = c * fg + i * g
            if p is not None:
                ao = ao + c_new * p[H:2 * H]
            o = f_act(cl(ao + bo))
            h_new = h_act(c_new) * o
        if lens is not None:
            # a finished sequence keeps its last state as its final one, but (as in onnxruntime) enters
            # the next steps' products as zeros, which moves the range the step's h is quantized over
            m = (t < lens)[:, None]
            h_last, c_last = np.where(m, h_new, h_last), np.where(m, c_new, c_last)
            h, c = (h_last, c_last) if keep else (np.where(m, h_new, 0), np.where(m, c_new, 0))
            y[t] = h
        else:
            h, c = h_new, c_new
            y[t] = h_new
    return (y, h, c) if lens is None else (y, h_last, c_last)


class _StackedRecurrence:
    """The recurrent weights of several directions, for one batched ``h @ R`` per step: each direction's
    h quantized with its own range (as ``_QuantizedWeight`` does), the integer products of all directions
    in one matmul."""

    def __init__(self, weights):
        self.w32 = np.stack([q.w32 for q in weights])
        self.w64 = np.stack([q.w for q in weights])
        self.bounds = [q.bound for q in weights]
        n = self.w32.shape[2]
        self.scale = np.stack([np.broadcast_to(q.scale, (n,)) for q in weights])[:, None, :]

    def __call__(self, h, rows):
        qa, s, zmax = _quantize_blocks(h, rows)
        if max(self.bounds) * zmax < 2 ** 24:
            acc = np.matmul(qa, self.w32)
        else:
            acc = np.matmul(qa.astype(_F64), self.w64).astype(_F32)
        return acc * (s * self.scale)


def _lstm_directions_together(xw, h, c, rec, bias, clip, lens, rows, keep):
    """``_lstm_direction`` for all directions at once (default gates, no peepholes): xw (D, seq, B, 4H),
    h and c (D, B, H), bias (D, 1, 4H)."""
    D, seq, B, G = xw.shape
    H = G // 4
    y = np.zeros((D, seq, B, H), _F32)
    b3, bc = bias[..., :3 * H], bias[..., 3 * H:]
    cl = (lambda v: np.clip(v, -clip, clip)) if clip is not None else (lambda v: v)
    h_last, c_last = h, c
    for t in range(seq):
        a = xw[:, t] + rec(h, rows)
        iof = mlas_logistic(cl(a[..., :3 * H] + b3))
        i, o, fg = iof[..., :H], iof[..., H:2 * H], iof[..., 2 * H:]
        c_new = c * fg + i * mlas_tanh(cl(a[..., 3 * H:] + bc))
        h_new = mlas_tanh(c_new) * o
        if lens is not None:
            m = (t < lens)[None, :, None]
            h_last, c_last = np.where(m, h_new, h_last), np.where(m, c_new, c_last)
            h, c = (h_last, c_last) if keep else (np.where(m, h_new, 0), np.where(m, c_new, 0))
            y[:, t] = h
        else:
            h, c = h_new, c_new
            y[:, t] = h_new
    return (y, h, c) if lens is None else (y, h_last, c_last)


def _per_dir(v, d, num_dirs):
    """Direction d's scale or zero point: (D,) or (D, 4H) per direction, else one for all."""
    v = np.asarray(v)
    return v[d] if v.ndim >= 1 and v.shape[0] == num_dirs and v.size > 1 else v.reshape(-1)[:1]


class _CompiledRecurrence:
    """The directions' recurrent weights stacked for the compiled recurrences (``_jit_rnn``), made once:
    R's scale per column (D, 4H), the summed biases (D, 4H), the peepholes (D, 3H, zeros where there are
    none), and R in the form each loop takes: packed for VNNI, int8, or less its zero point as float32."""

    def __init__(self, dirs, hidden):
        g = 4 * hidden
        self.w32 = np.ascontiguousarray(np.stack([rq.w32 for rq, _, _ in dirs]))
        self.ws = np.ascontiguousarray(np.stack([np.broadcast_to(rq.scale, (g,)) for rq, _, _ in dirs]))
        self.bias = np.ascontiguousarray(np.stack([b for _, b, _ in dirs]))
        self.p = np.ascontiguousarray(np.stack([np.zeros(3 * hidden, _F32) if p is None else p
                                                for _, _, p in dirs]))
        # the float32 GEMM sums the integer products exactly while every partial sum stays below 2**24
        # (a quantized h less its zero point is at most 255 in magnitude); else the NumPy path (float64)
        self.exact = max(rq.bound for rq, _, _ in dirs) * 255 < 2 ** 24
        # R less its zero point as int8 (as uint8 bytes) where it fits: the compiled loop then makes the
        # products itself (dq_lstm_run), else each step's product is a BLAS GEMM of w32
        w = np.stack([rq.w.T for rq, _, _ in dirs])          # (D, 4H, H): dot products along rows
        self.w8 = (np.ascontiguousarray(w.astype(np.int8)).view(np.uint8)
                   if w.size and -128 <= w.min() and w.max() <= 127 else None)
        # R packed for the VNNI kernel, where it runs and R has no zero point left after packing
        # (dq_lstm_run_vnni): panels per direction, column sums, and the padded M, K, N
        self.vnni = None
        if intgemm.int8_kernels() is not None and all(rq._raw is not None for rq, _, _ in dirs):
            mats = [intgemm.Int8Matrix(*rq._raw) for rq, _, _ in dirs]
            if all(mt.zb is None for mt in mats):
                n_pad = mats[0].panels * 32
                colsum = np.zeros((len(mats), n_pad), np.int64)
                for d, mt in enumerate(mats):
                    colsum[d, :mt.N] = mt.colsum
                self.vnni = (np.ascontiguousarray(np.stack([mt.packed for mt in mats])), colsum, 4, mats[0].Kp,
                             n_pad)


def _quantized_rows(batch: int, hidden: int) -> int:
    """How many rows of h one quantization range covers, as onnxruntime: its LSTM splits the batch across
    its threads when batch > 4 or (batch >= 2 and hidden <= 256), and each thread quantizes its own rows, so
    its results depend on intra_op_num_threads (here: the worker pool's size, which that option sets)."""
    if batch > 4 or (batch >= 2 and hidden <= 256):
        from engineroom.providers.cpu import _threadpool

        return -(-batch // max(1, _threadpool._blas.outside()))
    return batch


# whether running a layer's directions on two threads pays now (``_threadpool.gated``)
_dq_lstm_gate = _threadpool.SplitGate()


@host_kernel("DynamicQuantizeLSTM", MS, since=1, types=(np.float32,), host_inputs=(4,))
def dynamic_quantize_lstm(info):
    """LSTM with int8/uint8 weights W (D, input, 4H) and R (D, H, 4H), already transposed, with scales and
    zero points per direction (D,) or per direction and column (D, 4H). Inputs X, W, R, B, sequence_lens,
    initial_h, initial_c, P, W_scale, W_zero_point, R_scale, R_zero_point. The input projection of every
    step is one product, X quantized as one block; each step's recurrent product quantizes h dynamically
    (``_quantize_blocks``, blocks of rows as ``_quantized_rows``); the gates follow onnxruntime's order of
    operations and its approximate logistic / tanh (see ``mlas_logistic``). With the default activations
    every step runs in one compiled call a layer (``_jit_rnn.dq_lstm_run_vnni``: the products on the VNNI
    int8 kernel; ``dq_lstm_run`` where that does not run), or in ``_jit_rnn.dq_lstm_step`` after a BLAS
    GEMM a step where R less its zero point does not fit int8; else in NumPy. The input projection runs
    on the VNNI kernel where it can (``_QuantizedWeight.project``)."""
    a = info.attrs
    direction = a.get("direction", "forward")
    num_dirs = 2 if direction == "bidirectional" else 1
    hidden = int(a["hidden_size"])
    clip = a.get("clip")
    clip = None if clip is None else float(clip)
    input_forget = bool(int(a.get("input_forget", 0)))
    if int(a.get("layout", 0)):
        raise NotImplementedError("DynamicQuantizeLSTM: layout=1 is not supported")
    defaults = ["Sigmoid", "Tanh", "Tanh"]
    # onnxruntime computes Sigmoid and Tanh with MLAS's approximations whether or not they are named
    default_acts = _activation_names(info, defaults, num_dirs) == [["sigmoid", "tanh", "tanh"]] * num_dirs
    if default_acts:
        acts = [[mlas_logistic, mlas_tanh, mlas_tanh]] * num_dirs
    else:
        acts = _activations(info, defaults, num_dirs, np)
    has_p = info.has_input(7)
    kern = arrays(np).compiled("rnn") if default_acts else None
    quant = arrays(np).compiled("quant")
    flags = (1 if input_forget else 0) | (2 if has_p else 0)
    clip32 = np.float32(np.inf if clip is None else clip)
    # without Y, onnxruntime keeps a finished sequence's last h where the next steps' products read it
    keep_finished = not (info.output_names and info.output_names[0])

    def prepare(W, R, B, P, ws, wz, rs, rz):
        """(W of every direction side by side, as one quantized (input, D*4H) weight; per direction (R,
        summed biases, peepholes))."""
        cols = [np.broadcast_to(_per_dir(ws, d, num_dirs), (4 * hidden,)) for d in range(num_dirs)]
        zps = None if wz is None else [np.broadcast_to(_per_dir(wz, d, num_dirs), (4 * hidden,))
                                       for d in range(num_dirs)]
        w_all = _QuantizedWeight(np.concatenate(list(W), axis=1), np.concatenate(cols),
                                 None if zps is None else np.concatenate(zps))
        dirs = []
        for d in range(num_dirs):
            rq = _QuantizedWeight(R[d], _per_dir(rs, d, num_dirs), _per_dir(rz, d, num_dirs))
            bias = (B[d, :4 * hidden].astype(_F32) + B[d, 4 * hidden:].astype(_F32) if B is not None
                    else np.zeros(4 * hidden, _F32))
            p = None if P is None else P[d].astype(_F32)
            dirs.append((rq, bias, p))
        return w_all, dirs

    # NumPy: both directions step together (one batched product, one pass of gate math per step) where
    # their gates are the default ones and there are no peepholes: the same float32 operations
    together = num_dirs == 2 and default_acts and not input_forget and not has_p
    cache = {}

    def stacked(dirs, kind):
        got = cache.get((id(dirs), kind))
        if got is None:
            got = (_CompiledRecurrence(dirs, hidden) if kind == "compiled"
                   else _StackedRecurrence([rq for rq, _, _ in dirs]))
            if prepared is not None and dirs is prepared[1]:
                cache[(id(dirs), kind)] = got
        return got

    idx = (1, 2, 3, 7, 8, 9, 10, 11)
    consts = [const(info, i) for i in idx]
    prepared = None
    if all(c is not None or not info.has_input(i) for c, i in zip(consts, idx)):
        prepared = prepare(*consts)
        if kern is not None:        # the weights' compiled forms, made here rather than on the first run
            prepared[0].pack()
            stacked(prepared[1], "compiled")

    def run(X, W, R, B=None, sequence_lens=None, initial_h=None, initial_c=None, P=None,
            ws=None, wz=None, rs=None, rz=None):
        w_all, dirs = prepared if prepared is not None else prepare(W, R, B, P, ws, wz, rs, rz)
        seq, batch, _ = X.shape
        Xc = X.astype(_F32, copy=False)
        lens, steps = None, seq
        if sequence_lens is not None:
            lens = np.asarray(sequence_lens).astype(np.int64)
            if bool(np.all(lens >= seq)):
                lens = None
            else:       # onnxruntime runs (and quantizes the input of) the steps up to the longest sequence
                steps = int(np.clip(lens.max(initial=0), 0, seq))
        rows = _quantized_rows(batch, hidden)
        Y = np.zeros((seq, num_dirs, batch, hidden), _F32)
        # the input projection of every step and direction: one product. A reverse direction's input rows
        # (each sequence reversed within its length) are those of the forward one, reordered, so they are
        # quantized over the same range: its projection is the forward one's rows, reordered the same way
        x_all = w_all.project(np.ascontiguousarray(Xc[:steps]).reshape(steps * batch, -1), quant).reshape(
            steps, batch, num_dirs, 4 * hidden)
        xw = np.empty((num_dirs, steps, batch, 4 * hidden), _F32)
        h = np.empty((num_dirs, batch, hidden), _F32)
        c = np.empty((num_dirs, batch, hidden), _F32)
        revs = []
        for d in range(num_dirs):
            reverse = direction == "reverse" or d == 1
            rev_idx = None
            if not reverse:
                xw[d] = x_all[:, :, d]
            elif lens is None:
                xw[d] = x_all[::-1, :, d]
            else:
                rev_idx = _reverse_index(seq, lens, np)
                xw[d] = x_all[rev_idx[:steps], np.arange(batch)[None, :], d]
            h[d] = 0 if initial_h is None else initial_h[d]
            c[d] = 0 if initial_c is None else initial_c[d]
            revs.append((reverse, rev_idx))
        rec = stacked(dirs, "compiled") if kern is not None else None
        ys = None
        if rec is not None and (rec.vnni is not None or rec.exact):     # VNNI's int32 sums are always exact
            if steps:
                masks = _masks(lens, steps, batch, _F32)
                # the rows whose values enter each step's product (dq_quantize): all at the first step;
                # later, those whose previous step ran (else its output row, read back, is zero), or all
                # where there is no Y and a finished row's last h stays in place
                qm = np.ones((steps + 1, batch), _F32)
                if not keep_finished:
                    qm[1:] = masks
                qa, sc, zq = np.empty_like(h), np.empty((num_dirs, batch), _F32), np.empty((num_dirs, batch), _F32)
                acc = np.empty((num_dirs, batch, 4 * hidden), _F32)
                if rec.vnni is not None or rec.w8 is not None:
                    # one compiled call a direction, the directions on the provider's pool (independent
                    # recurrences: a bidirectional layer runs on two threads as onnxruntime's does); Y per
                    # direction, since the compiled loops take contiguous arrays
                    Yd = np.zeros((num_dirs, seq, 1, batch, hidden), _F32)
                    if rec.vnni is not None:
                        rp, colsum, m_pad, k_pad, n_pad = rec.vnni
                        qu = np.zeros((num_dirs, -(-batch // m_pad) * m_pad, k_pad), np.uint8)
                        accb = np.zeros((num_dirs, qu.shape[1], 4 * n_pad), np.uint8)

                        def directions(d0, d1):
                            for d in range(d0, d1):
                                s_ = slice(d, d + 1)
                                kern.dq_lstm_run_vnni(xw[s_], rp[s_], colsum[s_], rec.ws[s_], rec.bias[s_], rec.p[s_],
                                                      masks, qm, rows, c[s_], h[s_], Yd[d], qa[s_], sc[s_], zq[s_],
                                                      qu[s_], accb[s_], acc[s_], clip32, flags)
                    else:
                        def directions(d0, d1):
                            for d in range(d0, d1):
                                s_ = slice(d, d + 1)
                                kern.dq_lstm_run(xw[s_], rec.w8[s_], rec.ws[s_], rec.bias[s_], rec.p[s_], masks, qm,
                                                 rows, c[s_], h[s_], Yd[d], qa[s_], sc[s_], zq[s_], acc[s_], clip32,
                                                 flags)
                    work = steps * batch * 4 * hidden * hidden
                    if num_dirs > 1 and work >= MIN_QUIET_WORK and _threadpool._blas.outside() > 1:
                        # a split the pool surely makes: gated by its timings (a busy core can hold a
                        # direction for a time slice)
                        _threadpool.gated(_dq_lstm_gate, work, lambda: parallel_ranges(directions, num_dirs, work),
                                      lambda: directions(0, num_dirs))
                    else:
                        parallel_ranges(directions, num_dirs, work)
                    ys = list(Yd[:, :, 0])
                else:
                    kern.dq_quantize(h, qm, 0, rows, qa, sc, zq)
                    step = kern.dq_lstm_step
                    for t in range(steps):
                        np.matmul(qa, rec.w32, out=acc)
                        step(acc, xw, t, sc, rec.ws, rec.bias, rec.p, masks, qm, rows, c, h, Y, qa, zq, clip32,
                             flags)
            if ys is None:
                ys = [Y[:, d] for d in range(num_dirs)]
            hs, cs = h, c
        else:
            Yw = np.zeros((num_dirs, seq, batch, hidden), _F32)
            if together:
                Yw[:, :steps], hs, cs = _lstm_directions_together(
                    xw, h, c, stacked(dirs, "numpy"), np.stack([b for _, b, _ in dirs])[:, None, :], clip,
                    lens, rows, keep_finished)
            else:
                out = [_lstm_direction(xw[d], h[d], c[d], rq, bias, p, acts[d], clip, input_forget, lens, rows,
                                       keep_finished) for d, (rq, bias, p) in enumerate(dirs)]
                for d, (yd, _, _) in enumerate(out):
                    Yw[d, :steps] = yd
                hs, cs = [o[1] for o in out], [o[2] for o in out]
            ys = list(Yw)
        Y_h = np.empty((num_dirs, batch, hidden), _F32)
        Y_c = np.empty((num_dirs, batch, hidden), _F32)
        for d, (reverse, rev_idx) in enumerate(revs):
            y = ys[d]
            if reverse:
                y = y[::-1] if rev_idx is None else y[rev_idx, np.arange(batch)[None, :]]
            Y[:, d], Y_h[d], Y_c[d] = y, hs[d], cs[d]
        if lens is not None:        # an empty sequence has zero final states (as onnxruntime)
            Y_h[:, lens <= 0] = 0
            Y_c[:, lens <= 0] = 0
        return (Y, Y_h, Y_c)

    return run
