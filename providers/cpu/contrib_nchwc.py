"""The com.microsoft.nchwc ops that onnxruntime writes when it saves a model optimized at ORT_ENABLE_ALL
(``SessionOptions.optimized_model_filepath``): Conv, MaxPool, AveragePool, GlobalMaxPool,
GlobalAveragePool, Upsample, ReorderInput and ReorderOutput.

In onnxruntime these run on MLAS's blocked layout (channels in blocks of 8 or 16, padded up to a whole
block), with ReorderInput / ReorderOutput converting at the edges; the saved conv filters are stored in
MLAS's blocked filter layouts (``unblock_filter`` restores them once, in the kernel factory). Here the
tensors between ReorderInput and ReorderOutput simply stay NCHW: each nchwc op is its plain
counterpart, ReorderInput converts NHWC input (``channels_last``) to NCHW, and ReorderOutput crops to
``channels`` and converts to NHWC where asked. Elementwise ops and Concat that onnxruntime leaves between nchwc ops
compute the same on the plain layout.
"""
from __future__ import annotations

import numpy as np

from engineroom.providers.cpu._contrib import delegate, host_kernel

NCHWC = "com.microsoft.nchwc"
_F32 = (np.float32,)


def block_size() -> int:
    """MLAS's NCHWc block: 16 channels where the CPU has AVX-512F, else 8. It is not recorded in the saved
    model, whose weights are stored blocked: a model is read with the block of the machine reading it,
    which is the machine onnxruntime's warning says it must be used on (the one that saved it)."""
    feats = getattr(np, "_core", np.core)._multiarray_umath.__cpu_features__
    return 16 if feats.get("AVX512F") else 8


def unblock_filter(w, group: int, block: int):
    """The plain (O, I, kH, kW) filter from MLAS's blocked layouts, in which onnxruntime's NCHWc
    transformer saves it (dims unchanged, but O rounded up to the block): OIHWBo (depthwise convs, and
    convs reading an NCHW input of fewer channels than a block) holds [O/B][I][kH·kW][B]; OIHWBiBo
    (the rest; I is then a multiple of the block) holds [O/B][I/B][kH·kW][Bi][Bo]."""
    O, I, kh, kw = w.shape
    if O % block:
        raise ValueError(f"nchwc Conv: filter of {O} output channels is not in blocks of {block}; the model was "
                         f"saved on a machine with another NCHWc block size")
    K = kh * kw
    if group > 1 or I < block:
        plain = w.reshape(O // block, I, K, block).transpose(0, 3, 1, 2)
    else:
        if I % block:
            raise ValueError(f"nchwc Conv: filter of {I} input channels is not in blocks of {block}")
        plain = w.reshape(O // block, I // block, K, block, block).transpose(0, 4, 1, 3, 2)
    return np.ascontiguousarray(plain.reshape(O, I, kh, kw))


@host_kernel("Conv", NCHWC, since=1, types=_F32)
def nchwc_conv(info):
    """Conv + bias + ``Sum`` (a residual added before the activation) + ``activation``: FusedConv, on the
    filter restored from its blocked layout (``unblock_filter``); the bias is zero-padded to the
    filter's rounded-up output channels, which stay (zero) channels of the output as in onnxruntime."""
    cw = info.const_inputs[1] if len(info.const_inputs) > 1 else None
    if cw is None:
        raise NotImplementedError("nchwc Conv: the filter must be an initializer (onnxruntime saves it reordered)")
    group = int(info.attrs.get("group", 1))
    w = unblock_filter(np.asarray(cw, np.float32), group, block_size())
    O, I = w.shape[:2]
    cb = info.const_inputs[2] if len(info.const_inputs) > 2 else None
    has_b = info.has_input(2)
    b = None
    if cb is not None:
        b = np.zeros(O, np.float32)
        b[:cb.shape[0]] = cb
    elif has_b:
        raise NotImplementedError("nchwc Conv: the bias must be an initializer")
    names = tuple(info.input_names) + ("",) * (4 - len(info.input_names))
    dts = tuple(info.input_dtypes) + (None,) * (4 - len(info.input_dtypes))
    sub = info.with_(input_names=(names[0], names[1], names[2] or ("" if b is None else "bias"), names[3]),
                     input_dtypes=(dts[0], np.dtype(np.float32), None if b is None else np.dtype(np.float32), dts[3]),
                     input_shapes=(None, w.shape, None if b is None else b.shape, None),
                     const_inputs=(None, w, b, None), input_types=())
    cin = I * group
    # onnxruntime saves no shapes for the tensors between nchwc ops, and the conv plan picks its
    # algorithm (Winograd, direct, im2col) by image size: the FusedConv is built for the first image
    # size seen, rebuilt only when it changes
    conv, spatial = None, None

    def run(x, _w=None, _b=None, z=None):
        nonlocal conv, spatial
        if x.shape[1] > cin:          # padding channels of a rounded-up producer meet zero weights
            x = x[:, :cin]
        if x.shape[2:] != spatial:
            spatial = x.shape[2:]
            shapes = ((x.shape[0], cin) + spatial, w.shape, None if b is None else b.shape, None)
            conv = delegate(sub.with_(input_shapes=shapes), "FusedConv", 1, domain="com.microsoft")
        return conv(x, w, b, z)

    return run


@host_kernel("MaxPool", NCHWC, since=1, types=_F32)
def nchwc_max_pool(info):
    return delegate(info, "MaxPool", 12)


@host_kernel("AveragePool", NCHWC, since=1, types=_F32)
def nchwc_average_pool(info):
    return delegate(info, "AveragePool", 19)


@host_kernel("GlobalMaxPool", NCHWC, since=1, types=_F32)
def nchwc_global_max_pool(info):
    return delegate(info, "GlobalMaxPool", 1)


@host_kernel("GlobalAveragePool", NCHWC, since=1, types=_F32)
def nchwc_global_average_pool(info):
    return delegate(info, "GlobalAveragePool", 1)


@host_kernel("Upsample", NCHWC, since=1, types=_F32)
def nchwc_upsample(info):
    """Integer ``scales`` per axis (N, C, H, W), ``mode`` nearest or linear, ``coordinate_transformation_mode``
    as Resize's (default asymmetric)."""
    a = info.attrs
    scales = np.asarray([float(s) for s in a.get("scales", [])], np.float32)
    mode = a.get("mode", "nearest")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    tmode = a.get("coordinate_transformation_mode", "asymmetric")
    tmode = tmode.decode() if isinstance(tmode, bytes) else tmode
    attrs = {"mode": mode, "coordinate_transformation_mode": tmode, "nearest_mode": "floor"}
    resize = delegate(info.with_(const_inputs=(None, None, scales), input_names=(info.input_names[0], "", "s"),
                                 input_dtypes=(info.input_dtypes[0], None, np.dtype(np.float32)),
                                 input_shapes=(info.input_shapes[0] if info.input_shapes else None, None, (4,)),
                                 input_types=()),
                      "Resize", 13, attrs)

    def run(x):
        return resize(x, None, scales)

    return run


@host_kernel("ReorderInput", NCHWC, since=1, types=_F32)
def reorder_input(info):
    """Into the (here plain NCHW) nchwc layout: NHWC input when ``channels_last`` is 1."""
    channels_last = int(info.attrs.get("channels_last", 0))

    def run(x):
        return (np.ascontiguousarray(np.moveaxis(x, -1, 1)) if channels_last else x,)

    return run


@host_kernel("ReorderOutput", NCHWC, since=1, types=_F32)
def reorder_output(info):
    """Out of the nchwc layout: the first ``channels`` channels, NHWC when ``channels_last`` is 1."""
    channels = int(info.attrs.get("channels", 0))
    channels_last = int(info.attrs.get("channels_last", 0))

    def run(x):
        y = x[:, :channels] if channels and x.shape[1] > channels else x
        return (np.ascontiguousarray(np.moveaxis(y, 1, -1)) if channels_last else y,)

    return run
