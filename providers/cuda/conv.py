"""Conv and FusedConv as im2col + one batched GEMM (cuBLAS through ``cupy.matmul``), with the bias,
the residual and the activation applied by one fused elementwise kernel.

The columns are a strided view of the (padded) input, ``(N, C, *kernel, *out)``, turned into a
contiguous ``(N, G, C/G * K, P)`` block by one copy; ``W (G, M/G, C/G * K) @ cols`` is then one
strided-batched GEMM whose result is already NCHW. A 1x1 convolution with unit strides and no
padding skips the copy (its columns are the input itself). CuPy 14 has no cuDNN module, so there is
no cuDNN path; ``cudnn_conv_algo_search`` is accepted and has no effect.
"""
from __future__ import annotations

import numpy as np

from engineroom.plugin_sdk.activations import (
    FUSED_ACTIVATIONS,
    activation_inplace,
    fused_activation,
    unsupported_activation,
)
from engineroom.plugin_sdk.geometry import window_geometry
from engineroom.providers.cuda.registry import kernel

MS = "com.microsoft"
_FLOATS = frozenset(np.dtype(t) for t in (np.float16, np.float32, np.float64))


def conv_geometry(spatial, kshape, strides, dilations, pads, auto_pad):
    """(output sizes, pads at the start, pads at the end) of a convolution, as ONNX defines them."""
    n = len(spatial)
    pb, pe, out = window_geometry(spatial, kshape, list(strides) or [1] * n, list(dilations) or [1] * n,
                                  list(pads) or [0] * (2 * n), auto_pad)
    return list(out), list(pb), list(pe)


# -- the epilogue: bias, residual and activation in one pass --------------------------------------
# FusedConv's activations (plugin_sdk.activations) as CUDA expressions of v and parameters p0, p1
_ACTIVATIONS = {
    "Identity": "v",
    "Relu": "v < (A)0 ? (A)0 : v",                               # keeps NaN, as max(x, 0) does
    "Clip": "v < p0 ? p0 : (v > p1 ? p1 : v)",
    "Sigmoid": "(A)1 / ((A)1 + exp(-v))",
    "Tanh": "tanh(v)",
    "LeakyRelu": "v < (A)0 ? v * p0 : v",
    "HardSigmoid": "min(max(v * p0 + p1, (A)0), (A)1)",
}
_epilogues: dict = {}


def _epilogue(xp, act: str, has_bias: bool, has_z: bool):
    """An ElementwiseKernel ``y = act(y + bias[channel] + z)`` over an NC... array (in place)."""
    key = (id(xp), act, has_bias, has_z)
    k = _epilogues.get(key)
    if k is None:
        body = ["A v = (A)y;"]
        if has_bias:
            body.append("v += (A)bias[(i / inner) % channels];")
        if has_z:
            body.append("v += (A)z;")
        body.append(f"y = (T)({_ACTIVATIONS[act]});")
        params = "raw T bias, T z, int64 inner, int64 channels, A p0, A p1"
        k = xp.ElementwiseKernel(params, "T y", "\n".join(body), f"engineroom_conv_epilogue_{len(_epilogues)}")
        _epilogues[key] = k
    return k


class ConvPlan:
    """One Conv node: its attributes, and its run at each input shape (geometry cached per shape)."""

    def __init__(self, xp, attrs, act="Identity", act_params=()):
        self.xp = xp
        self.group = int(attrs.get("group", 1))
        self.kshape = list(attrs.get("kernel_shape") or [])
        self.strides = list(attrs.get("strides") or [])
        self.dilations = list(attrs.get("dilations") or [])
        self.pads = list(attrs.get("pads") or [])
        self.auto_pad = attrs.get("auto_pad", "NOTSET")
        if isinstance(self.auto_pad, bytes):
            self.auto_pad = self.auto_pad.decode()
        self.act = act or "Identity"
        self.act_params = (list(act_params) + [0.0, 0.0])[:2]   # with their defaults (fused_activation)
        self._geo: dict = {}

    def _pack(self, w):
        """(G, M/G, C/G * K) weights for the batched GEMM: a view of the (constant, already uploaded
        by the plan) weights, so no second device copy of them exists."""
        m = w.shape[0]
        return w.reshape(self.group, m // self.group, -1)

    def geometry(self, shape, wshape):
        key = (shape, wshape)
        g = self._geo.get(key)
        if g is None:
            kshape = self.kshape or list(wshape[2:])
            out, begin, end = conv_geometry(shape[2:], kshape, self.strides, self.dilations, self.pads, self.auto_pad)
            n = len(kshape)
            strides = self.strides or [1] * n
            dilations = self.dilations or [1] * n
            pointwise = all(k == 1 for k in kshape) and not any(begin) and not any(end) and all(
                s == 1 for s in strides)
            g = self._geo[key] = (kshape, out, begin, end, strides, dilations, pointwise)
        return g

    def __call__(self, x, w, b=None, z=None):
        xp = self.xp
        wp = self._pack(xp.ascontiguousarray(w))
        N, C = x.shape[:2]
        kshape, out, begin, end, strides, dilations, pointwise = self.geometry(tuple(x.shape), tuple(w.shape))
        G = self.group
        P = int(np.prod(out, dtype=np.int64))
        if pointwise:
            cols = x.reshape(N, G, C // G, P)
        else:
            if any(begin) or any(end):
                x = xp.pad(x, [(0, 0), (0, 0)] + list(zip(begin, end)))
            st = x.strides
            n = len(kshape)
            shape = (N, C, *kshape, *out)
            view_strides = (st[0], st[1], *(st[2 + i] * dilations[i] for i in range(n)),
                            *(st[2 + i] * strides[i] for i in range(n)))
            windows = xp.lib.stride_tricks.as_strided(x, shape, view_strides)
            cols = xp.ascontiguousarray(windows).reshape(N, G, -1, P)
        y = xp.matmul(wp, cols)                                   # (N, G, M/G, P): already NCHW
        M = wp.shape[0] * wp.shape[1]
        y = y.reshape(N, M, *out)
        if b is not None or z is not None or self.act not in ("", "Identity"):
            if not hasattr(xp, "ElementwiseKernel"):              # an array module without CUDA kernels
                return _epilogue_reference(xp, y, b, z, self.act, self.act_params)
            bias = b if b is not None else y                      # unread when there is no bias
            ep = _epilogue(xp, self.act, b is not None, z is not None)
            acc = np.float64 if y.dtype == np.float64 else np.float32
            ep(bias, z if z is not None else y, P, M, acc(self.act_params[0]), acc(self.act_params[1]), y)
        return y


def _epilogue_reference(xp, y, b, z, act, params):
    """The epilogue with array operations (for array modules without ElementwiseKernel: the tests run
    these kernels with NumPy to check everything but the CUDA code); the activation is the SDK's."""
    acc = np.float64 if y.dtype == np.float64 else np.float32
    v = y.astype(acc)
    if b is not None:
        v += b.astype(acc).reshape((-1,) + (1,) * (y.ndim - 2))
    if z is not None:
        v += z.astype(acc)
    n = len(FUSED_ACTIVATIONS[act][1])
    return activation_inplace(xp, act, params[:n])(v).astype(y.dtype)


def _supports(view) -> str | None:
    dts = view.input_dtypes
    if not dts or dts[0] is None or np.dtype(dts[0]) not in _FLOATS:
        return "the CUDA Conv is for float16/float32/float64"
    return None


@kernel("Conv", since=1, supports=_supports)
def conv(info):
    plan = ConvPlan(info.xp, info.attrs)

    def run(x, w, b=None):
        return (plan(x, w, b),)

    return run


def _supports_fused(view) -> str | None:
    return unsupported_activation(view) or _supports(view)


@kernel("FusedConv", domain=MS, since=1, supports=_supports_fused)
def fused_conv(info):
    plan = ConvPlan(info.xp, info.attrs, *fused_activation(info.attrs))

    def run(x, w, b=None, z=None):
        return (plan(x, w, b, z),)

    return run
