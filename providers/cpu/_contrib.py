"""Helpers shared by the com.microsoft contrib kernel modules (``contrib_*.py``): their registration as
NumPy-only kernels (``host_kernel``), building the kernel of a default-domain op for a contrib node (the
contrib op is that op plus something), and linear (de)quantization with onnxruntime's rounding (round
half to even, saturate)."""
from __future__ import annotations

import numpy as np

from engineroom.providers.cpu.registry import kernel, registry

_F32 = np.dtype(np.float32)


def host_kernel(op_type: str, domain: str, since: int = 1, **kw):
    """``@kernel`` (NumPy-only, as every kernel not declared ``array_kernel``), with the domain second."""
    return kernel(op_type, domain=domain, since=since, **kw)


def delegate(info, op_type: str, opset: int, attrs: dict | None = None, inputs=None, dtypes=None, domain: str = ""):
    """The kernel of ``domain::op_type`` built for this node: ``inputs`` picks input indices (default: all),
    ``dtypes`` overrides their dtypes (e.g. float32 for a kernel run on dequantized values)."""
    idx = list(range(len(info.input_names))) if inputs is None else list(inputs)

    def pick(seq, fill=None):
        seq = tuple(seq)
        return tuple(seq[i] if i < len(seq) else fill for i in idx)

    in_dt = pick(info.input_dtypes) if dtypes is None else tuple(np.dtype(d) if d is not None else None for d in dtypes)
    sub = info.with_(op_type=op_type, domain=domain, opset=opset,
                     attrs=dict(info.attrs if attrs is None else attrs),
                     input_names=pick(info.input_names, ""), input_dtypes=in_dt,
                     input_shapes=pick(info.input_shapes), const_inputs=pick(info.const_inputs),
                     input_types=pick(info.input_types) if info.input_types else ())
    if dtypes is not None:
        sub = sub.with_(output_dtypes=tuple(in_dt[:1]) * max(1, len(info.output_names)),
                        const_inputs=tuple(None if d is not None and c is not None and c.dtype != d else c
                                           for c, d in zip(sub.const_inputs, in_dt)))
    return registry.lookup(domain, op_type, opset).factory(sub)


def scalar(v, default=0.0) -> float:
    """A per-tensor scale or zero point (scalar or one-element tensor) as a Python float."""
    if v is None:
        return float(default)
    a = np.asarray(v)
    if a.size != 1:
        raise ValueError(f"expected a per-tensor (one-element) scale or zero point, got shape {a.shape}")
    return float(a.reshape(()))


def const(info, i):
    return info.const_inputs[i] if len(info.const_inputs) > i else None


def quantize(y, scale, zp, dtype):
    """round_half_even(y / scale) + zp, saturated to the integer ``dtype`` (float32 arithmetic)."""
    dtype = np.dtype(dtype)
    lim = np.iinfo(dtype)
    v = np.rint(np.asarray(y, _F32) / np.float32(scale))
    v += np.float32(zp)
    return np.clip(v, lim.min, lim.max).astype(dtype)


def dequantize(x, scale, zp):
    """(x - zp) * scale in float32."""
    return (x.astype(_F32) - np.float32(zp)) * np.float32(scale)


def requantize_lut(fn, x_scale, x_zp, y_scale, y_zp, in_dtype, out_dtype):
    """The 256-entry table y[q] = quantize(fn(dequantize(q))) over every value of an 8-bit type, as
    onnxruntime's lookup-table kernels (QLinearSigmoid, QLinearLeakyRelu) build it; index with ``x.view(uint8)``."""
    in_dtype = np.dtype(in_dtype)
    q = np.arange(256, dtype=np.uint8).view(in_dtype)
    return quantize(fn(dequantize(q, x_scale, x_zp)), y_scale, y_zp, out_dtype)


def dynamic_qparams(x):
    """onnxruntime's dynamic uint8 quantization parameters of a float tensor: the range includes 0,
    scale = (max - min) / 255 (1 when the range is empty), zero point = round_half_even(-min / scale)."""
    if x.size:
        lo = min(float(np.min(x)), 0.0)
        hi = max(float(np.max(x)), 0.0)
    else:
        lo = hi = 0.0
    lo32, hi32 = np.float32(lo), np.float32(hi)
    scale = np.float32(1.0) if hi32 == lo32 else np.float32((hi32 - lo32) / np.float32(255))
    zp = np.rint(np.clip(np.float32(0) - lo32 / scale, 0, 255))
    return scale, int(zp)
