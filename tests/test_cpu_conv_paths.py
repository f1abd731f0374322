"""The CPU Conv kernel's fast paths (Winograd F(2,3)/F(4,3), depthwise channels-first and channels-last,
1x1, strided im2col) against a float64 direct convolution, over the shapes that pick each path."""
from __future__ import annotations

import contextlib
import itertools

import numpy as np
import pytest
from conftest import steady_mode
from jit_paths import JIT_PATHS, spy_on

from engineroom.providers.cpu.compiled import jit as _jit
from engineroom.providers.cpu.conv import _ConvPlan
from engineroom.providers.cpu.winograd import choose_tile

# Kernels with a compiled (numba) loop are checked on both paths: "jit" where numba is installed
# (else skipped with the reason), "numpy" always.


def direct_conv(x, w, b, pads, strides, dilations, group):
    """float64 reference: an explicit loop over kernel taps."""
    x = x.astype(np.float64)
    w = w.astype(np.float64)
    N, C, H, W = x.shape
    M, Cg, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    oh = (H + pads[0] + pads[2] - (kh - 1) * dilations[0] - 1) // strides[0] + 1
    ow = (W + pads[1] + pads[3] - (kw - 1) * dilations[1] - 1) // strides[1] + 1
    y = np.zeros((N, M, oh, ow))
    mg = M // group
    for g in range(group):
        xs = xp[:, g * Cg:(g + 1) * Cg]
        ws = w[g * mg:(g + 1) * mg]
        for i, j in itertools.product(range(kh), range(kw)):
            r, c = i * dilations[0], j * dilations[1]
            patch = xs[:, :, r:r + (oh - 1) * strides[0] + 1:strides[0], c:c + (ow - 1) * strides[1] + 1:strides[1]]
            y[:, g * mg:(g + 1) * mg] += np.einsum("nchw,mc->nmhw", patch, ws[:, :, i, j])
    if b is not None:
        y += b.reshape(1, M, 1, 1)
    return y


def run_plan(x, w, b, pads, strides, dilations, group, winograd=True, jit=True, clip=None, z=None):
    attrs = {"pads": list(pads), "strides": list(strides), "dilations": list(dilations), "group": group}
    plan = _ConvPlan(np, attrs, w, winograd=winograd, spatial=x.shape[2:])
    assert (plan.jit is not None) == _jit.available()
    if plan.depthwise:
        assert (plan.wd_jit is not None) == (_jit.available() and x.ndim == 4)
    if not jit:
        plan.jit = plan.wd_jit = plan.wino_jit = None
    return plan(x, b, clip, z)


def check(x, w, b, pads=(1, 1, 1, 1), strides=(1, 1), dilations=(1, 1), group=1, rtol=1e-5, jit=True, clip=None,
          z=None):
    ref = direct_conv(x, w, b, pads, strides, dilations, group)
    if z is not None:
        ref += z
    if clip is not None:
        ref = np.clip(ref, *clip)
    got = run_plan(x, w, b, pads, strides, dilations, group, jit=jit, clip=clip, z=z)
    assert got.shape == ref.shape
    assert got.dtype == x.dtype
    err = np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-30)
    assert err <= rtol, err
    return got


RNG = np.random.default_rng(0)


def rand(*shape, dtype=np.float32):
    return RNG.standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("C,M,H,W", [(16, 24, 40, 40), (16, 8, 20, 20), (32, 32, 13, 17), (8, 16, 9, 30),
                                     (64, 32, 7, 7)])
@pytest.mark.parametrize("pads", [(1, 1, 1, 1), (0, 0, 0, 0), (2, 1, 0, 3)])
@pytest.mark.parametrize("jit", JIT_PATHS)
def test_winograd_shapes(C, M, H, W, pads, jit):
    x, w, b = rand(2, C, H, W), rand(M, C, 3, 3), rand(M)
    check(x, w, b, pads=pads, rtol=3e-5, jit=jit)
    check(x, w, None, pads=pads, rtol=3e-5, jit=jit)


@pytest.mark.skipif(not _jit.available(), reason="numba is not installed (jit extra)")
@pytest.mark.parametrize("H,m", [(40, 4), (20, 2)])
def test_winograd_compiled_transforms_taken(monkeypatch, H, m):
    """F(4,3) and F(2,3) run the compiled input and output transforms (bias, residual, clip inside)."""
    used: set = set()
    spy_on(monkeypatch, "winograd", used)
    assert choose_tile(16, 16, (H, H)) == m
    x, w, b = rand(1, 16, H, H), rand(16, 16, 3, 3), rand(16)
    z = rand(1, 16, H, H)
    check(x, w, b, rtol=3e-5, clip=(0.0, 6.0), z=z)
    assert used == {"input_transform", "output_transform"}


def test_winograd_tile_choice():
    assert choose_tile(64, 64, (56, 56)) == 4
    assert choose_tile(256, 256, (14, 14)) == 2
    assert choose_tile(512, 512, (7, 7)) == 0
    assert choose_tile(3, 64, (224, 224)) == 0


def test_winograd_not_for_dynamic_or_float64():
    x, w = rand(1, 16, 32, 32), rand(16, 16, 3, 3)
    ref = direct_conv(x, w, None, (1, 1, 1, 1), (1, 1), (1, 1), 1)
    y = run_plan(x, w, None, (1, 1, 1, 1), (1, 1), (1, 1), 1, winograd=False)
    assert np.abs(y - ref).max() / np.abs(ref).max() < 1e-6
    y64 = run_plan(x.astype(np.float64), w.astype(np.float64), None, (1, 1, 1, 1), (1, 1), (1, 1), 1)
    assert np.abs(y64 - ref).max() / np.abs(ref).max() < 1e-12


@pytest.mark.parametrize("C,H,W", [(8, 40, 40), (64, 64, 64), (3, 70, 66), (32, 14, 14), (24, 7, 9), (4, 3, 3),
                                   (16, 1, 1)])
@pytest.mark.parametrize("strides", [(1, 1), (2, 2), (2, 1), (3, 3)])
@pytest.mark.parametrize("pads", [(1, 1, 1, 1), (0, 0, 0, 0), (0, 2, 1, 0)])
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("jit", JIT_PATHS)
def test_depthwise(C, H, W, strides, pads, batch, jit):
    if H + pads[0] + pads[2] < 3 or W + pads[1] + pads[3] < 3:
        pytest.skip("kernel larger than the padded input")  # no output positions
    x, w, b = rand(batch, C, H, W), rand(C, 1, 3, 3), rand(C)
    check(x, w, b, pads=pads, strides=strides, group=C, jit=jit)
    check(x, w, None, pads=pads, strides=strides, group=C, jit=jit)


@pytest.mark.parametrize("H,W", [(50, 300), (61, 131), (130, 90)])
@pytest.mark.parametrize("strides,pads", [((1, 1), (1, 1, 1, 1)), ((2, 2), (1, 1, 1, 1)), ((2, 1), (0, 2, 1, 0))])
@pytest.mark.parametrize("jit", JIT_PATHS)
def test_depthwise_in_strips(H, W, strides, pads, jit):
    """Images whose stride-phase planes exceed the compiled loop's strip size: several strips of rows,
    the last one shorter, each with its own share of the top and bottom padding."""
    x, w, b = rand(2, 3, H, W), rand(6, 1, 3, 3), rand(6)
    check(x, w, b, pads=pads, strides=strides, group=3, jit=jit, clip=(-0.5, 2.0))


@pytest.mark.parametrize("H,W", [(2, 10), (3, 10), (2, 17), (5, 11), (9, 12), (1, 12), (40, 9)])
@pytest.mark.parametrize("mult", [1, 2])
@pytest.mark.parametrize("jit", JIT_PATHS)
def test_depthwise_3x3_same_flat_edges(H, W, mult, jit):
    """3x3 stride-1 "same" convs of images at least 10 wide take the flat run with fixed-up edges
    (compiled path): the smallest such images, where the edges are most of it, and their neighbours."""
    x = rand(2, 5, H, W)
    check(x, rand(5 * mult, 1, 3, 3), rand(5 * mult), group=5, jit=jit, clip=(-0.3, 1.5))
    check(x, rand(5 * mult, 1, 3, 3), None, group=5, jit=jit)


@pytest.mark.parametrize("dilations", [(2, 2), (1, 3)])
@pytest.mark.parametrize("jit", JIT_PATHS)
def test_depthwise_dilated(dilations, jit):
    x, w, b = rand(2, 12, 20, 20), rand(12, 1, 3, 3), rand(12)
    check(x, w, b, pads=(2, 2, 2, 2), dilations=dilations, group=12, jit=jit)
    check(x, w, b, pads=(2, 2, 2, 2), dilations=dilations, strides=(2, 2), group=12, jit=jit)


@pytest.mark.parametrize("jit", JIT_PATHS)
@pytest.mark.parametrize("clip", [(0.0, np.inf), (0.0, 6.0), (-1.0, 0.5)])
def test_depthwise_fused_clip(jit, clip):
    """FusedConv's Relu/Clip, applied inside the compiled loop (or after the NumPy path)."""
    x, w, b = rand(2, 16, 15, 17), rand(16, 1, 3, 3), rand(16)
    check(x, w, b, group=16, jit=jit, clip=clip)
    check(x, w, None, strides=(2, 2), group=16, jit=jit, clip=clip)
    check(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64), group=16, jit=jit, clip=clip)


def conv_nd_reference(x, w, pads, strides, group):
    """float64 N-d depthwise/grouped reference via explicit tap loops (any number of spatial axes)."""
    nd = x.ndim - 2
    x = np.pad(x.astype(np.float64), ((0, 0), (0, 0)) + tuple((pads[i], pads[i + nd]) for i in range(nd)))
    M, Cg = w.shape[:2]
    ks = w.shape[2:]
    out = [(x.shape[2 + i] - ks[i]) // strides[i] + 1 for i in range(nd)]
    y = np.zeros((x.shape[0], M) + tuple(out))
    mg = M // group
    for g in range(group):
        for t in itertools.product(*(range(k) for k in ks)):
            sl = tuple(slice(t[i], t[i] + (out[i] - 1) * strides[i] + 1, strides[i]) for i in range(nd))
            patch = x[(slice(None), slice(g * Cg, (g + 1) * Cg)) + sl]
            y[:, g * mg:(g + 1) * mg] += np.einsum("nc...,mc->nm...", patch, w[(slice(g * mg, (g + 1) * mg),
                                                                                     slice(None)) + t])
    return y


@pytest.mark.parametrize("shape,strides,pads", [((2, 5, 3000), (1,), (1, 1)), ((1, 4, 2500), (2,), (1, 2)),
                                                ((1, 3, 14, 15, 16), (2, 1, 2), (1, 1, 1, 1, 0, 1)),
                                                ((1, 2, 20, 20, 20), (1, 1, 1), (1, 1, 1, 1, 1, 1))])
def test_depthwise_nd(shape, strides, pads):
    nd = len(shape) - 2
    C = shape[1]
    x, w = rand(*shape), rand(C, 1, *(3,) * nd)
    attrs = {"pads": list(pads), "strides": list(strides), "group": C}
    got = _ConvPlan(np, attrs, w)(x)
    ref = conv_nd_reference(x, w, pads, strides, C)
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()


@pytest.mark.parametrize("jit", JIT_PATHS)
@pytest.mark.parametrize("clip", [None, (0.0, np.inf), (0.0, 6.0)])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("case", [dict(C=16, M=24, H=20, W=20, k=1, pads=(0, 0, 0, 0)),      # 1x1: plain GEMM
                                  dict(C=16, M=16, H=28, W=28, k=3, pads=(1, 1, 1, 1)),      # Winograd
                                  dict(C=8, M=12, H=15, W=13, k=3, pads=(1, 1, 1, 1), strides=(2, 2)),  # im2col
                                  dict(C=8, M=8, H=12, W=12, k=3, pads=(1, 1, 1, 1), group=8)])  # depthwise
def test_fused_bias_residual_clip(jit, clip, residual, case):
    """FusedConv's bias + residual Z + Relu/Clip, in the compiled last pass (or NumPy passes), on every path."""
    c = dict(case)
    C, M, k, g = c.pop("C"), c.pop("M"), c.pop("k"), c.get("group", 1)
    x, w = rand(2, C, c.pop("H"), c.pop("W")), rand(M, C // g, k, k)
    ref = direct_conv(x, w, None, c["pads"], c.get("strides", (1, 1)), (1, 1), g)
    z = rand(*ref.shape) if residual else None
    for dt in (np.float32, np.float64):
        b = rand(M, dtype=dt)
        # rtol: Winograd F(4,3) rounds to a few 1e-5 of the largest output in float32
        check(x.astype(dt), w.astype(dt), b, jit=jit, clip=clip, z=None if z is None else z.astype(dt), rtol=1e-4, **c)


@pytest.mark.parametrize("jit", JIT_PATHS)
@pytest.mark.parametrize("group", [1, 6])
def test_strided_input(jit, group):
    """An input that is a view (a transposed NHWC tensor): the compiled loops take a C-contiguous copy."""
    x = rand(2, 9, 11, 6).transpose(0, 3, 1, 2)
    check(x, rand(6, 6 // group, 3, 3), rand(6), group=group, jit=jit)
    check(x, rand(6, 6 // group, 3, 3), rand(6), strides=(2, 2), group=group, jit=jit, clip=(0.0, 6.0))


@pytest.mark.parametrize("jit", JIT_PATHS)
def test_depthwise_multiplier_and_5x5(jit):
    x = rand(1, 6, 30, 30)
    check(x, rand(12, 1, 3, 3), rand(12), group=6, jit=jit)
    check(x, rand(6, 1, 5, 5), rand(6), pads=(2, 2, 2, 2), group=6, jit=jit)
    check(rand(1, 6, 8, 8), rand(6, 1, 5, 5), None, pads=(2, 2, 2, 2), strides=(2, 2), group=6, jit=jit)
    check(x.astype(np.float64), rand(12, 1, 3, 3, dtype=np.float64), None, strides=(2, 3), group=6, jit=jit)


@pytest.mark.parametrize("case", [
    dict(C=3, M=16, H=33, W=31, k=7, pads=(3, 3, 3, 3), strides=(2, 2)),
    dict(C=16, M=32, H=28, W=28, k=1, pads=(0, 0, 0, 0), strides=(1, 1)),
    dict(C=16, M=32, H=28, W=28, k=1, pads=(0, 0, 0, 0), strides=(2, 2)),
    dict(C=16, M=32, H=15, W=15, k=3, pads=(1, 1, 1, 1), strides=(2, 2)),
    dict(C=8, M=8, H=12, W=12, k=3, pads=(1, 1, 1, 1), strides=(1, 1), group=2),
    dict(C=4, M=6, H=9, W=20, k=3, pads=(0, 2, 3, 1), strides=(3, 2), dilations=(2, 3)),
    dict(C=5, M=4, H=6, W=7, k=5, pads=(4, 4, 4, 4), strides=(1, 3)),     # windows wider than the image
    dict(C=6, M=6, H=8, W=8, k=2, pads=(0, 0, 1, 1), strides=(1, 1), group=3),
])
@pytest.mark.parametrize("jit", JIT_PATHS)
def test_dense_paths(case, jit):
    c = dict(case)
    g = c.pop("group", 1)
    x, w, b = rand(2, c["C"], c["H"], c["W"]), rand(c["M"], c["C"] // g, c["k"], c["k"]), rand(c["M"])
    d = c.get("dilations", (1, 1))
    check(x, w, b, pads=c["pads"], strides=c["strides"], dilations=d, group=g, jit=jit)
    check(x.astype(np.float64), w.astype(np.float64), None, pads=c["pads"], strides=c["strides"], dilations=d,
          group=g, jit=jit)


@pytest.mark.parametrize("case", [
    dict(C=1, M=8, H=32, W=40, k=(32, 4)),                   # a recognizer's stem: one row of patches
    dict(C=3, M=12, H=18, W=17, k=(4, 4)),                   # a patch embedding, the last row and column cropped
    dict(C=4, M=6, H=9, W=10, k=(3, 2), group=2),
    dict(C=2, M=4, H=6, W=6, k=(3, 3), pads=(0, 0, 1, 1)),   # padded: the im2col paths
    dict(C=2, M=4, H=6, W=6, k=(2, 2), dilations=(2, 2)),    # dilated: not tiling
])
@pytest.mark.parametrize("jit", JIT_PATHS)
def test_patch_convs(case, jit):
    """kernel = stride: the windows tile the input and im2col is one transposing copy."""
    c = dict(case)
    g, k = c.get("group", 1), c["k"]
    x, w, b = rand(2, c["C"], c["H"], c["W"]), rand(c["M"], c["C"] // g, *k), rand(c["M"])
    pads, d = c.get("pads", (0, 0, 0, 0)), c.get("dilations", (1, 1))
    plan = _ConvPlan(np, {"strides": list(k), "dilations": list(d), "group": g}, w)
    assert plan.patches == (d == (1, 1))
    check(x, w, b, pads=pads, strides=k, dilations=d, group=g, jit=jit)
    check(x.astype(np.float64), w.astype(np.float64), None, pads=pads, strides=k, dilations=d, group=g, jit=jit)


@pytest.mark.skipif(not _jit.available(), reason="numba is not installed (jit extra)")
@pytest.mark.parametrize("case", [
    dict(C=3, M=16, H=33, W=31, k=7, pads=(3, 3, 3, 3), strides=(2, 2)),         # a stem: 17 rows, 3 a band
    dict(C=5, M=7, H=20, W=9, k=3, pads=(0, 2, 3, 1), strides=(1, 2), dilations=(2, 1)),
    dict(C=4, M=8, H=11, W=40, k=5, pads=(2, 2, 2, 2), strides=(1, 1)),
])
@pytest.mark.parametrize("steady", [False, True])
def test_im2col_in_bands(monkeypatch, case, steady):
    """Ungrouped convs with a large column matrix make it a band of output rows at a time (made small here
    so that small shapes take that path): bands over the pool, a short last band, batch 2, the fused
    bias/residual/clip pass after it, float32 and float64."""
    from engineroom.providers.cpu import conv as conv_mod

    c = dict(case)
    monkeypatch.setattr(conv_mod, "_BAND_MIN_COLS", 1)
    monkeypatch.setattr(conv_mod, "_BAND_PIXELS", 3 * c["W"] // 2)     # a few output rows a band
    bands = []
    real = conv_mod._ConvPlan._im2col_bands
    monkeypatch.setattr(conv_mod._ConvPlan, "_im2col_bands", lambda self, *a: bands.append(1) or real(self, *a))
    x, w, b = rand(2, c["C"], c["H"], c["W"]), rand(c["M"], c["C"], c["k"], c["k"]), rand(c["M"])
    d = c.get("dilations", (1, 1))
    ref = direct_conv(x, w, None, c["pads"], c["strides"], d, 1)
    z = rand(*ref.shape)
    with steady_mode() if steady else contextlib.nullcontext():
        for dt in (np.float32, np.float64):
            check(x.astype(dt), w.astype(dt), b.astype(dt), pads=c["pads"], strides=c["strides"], dilations=d)
            check(x.astype(dt), w.astype(dt), None, pads=c["pads"], strides=c["strides"], dilations=d,
                  clip=(0.0, 6.0), z=z.astype(dt))
    assert len(bands) == 4


# ---------------------------------------------------------------------------------------------
# ConvTranspose


def direct_conv_transpose(x, w, b, pads, strides, out_pad, group, dilations=(1, 1)):
    """float64 reference straight from the definition: every input pixel scatters its kernel."""
    x = x.astype(np.float64)
    w = w.astype(np.float64)
    N, C, H, W = x.shape
    Mg, kh, kw = w.shape[1], w.shape[2], w.shape[3]
    Cg = C // group
    fh = (H - 1) * strides[0] + (kh - 1) * dilations[0] + 1 + out_pad[0]
    fw = (W - 1) * strides[1] + (kw - 1) * dilations[1] + 1 + out_pad[1]
    full = np.zeros((N, group * Mg, fh, fw))
    for gi in range(group):
        xs = x[:, gi * Cg:(gi + 1) * Cg]
        ws = w[gi * Cg:(gi + 1) * Cg]
        contrib = np.einsum("nchw,cmij->nmijhw", xs, ws)
        for i, j in itertools.product(range(kh), range(kw)):
            r, c = i * dilations[0], j * dilations[1]
            full[:, gi * Mg:(gi + 1) * Mg, r:r + (H - 1) * strides[0] + 1:strides[0],
                 c:c + (W - 1) * strides[1] + 1:strides[1]] += contrib[:, :, i, j]
    y = full[:, :, pads[0]:fh - pads[2], pads[1]:fw - pads[3]]
    if b is not None:
        y = y + b.reshape(1, -1, 1, 1)
    return y


def conv_transpose_kernel(w, b, attrs, jit=True, monkeypatch=None):
    from engineroom.plugin_sdk.kernel import KernelInfo
    from engineroom.providers.cpu.registry import registry

    if not jit:
        monkeypatch.setattr(_jit, "load", lambda name: None)
    dt = np.dtype(w.dtype)
    consts = (None, w, b)
    info = KernelInfo(index=0, op_type="ConvTranspose", domain="", opset=20, name="ct",
                      input_names=("x", "w", "b"), output_names=("y",),
                      input_dtypes=(dt,) * 3, output_dtypes=(dt,),
                      input_shapes=(None,) * 3, output_shapes=(None,), attrs=attrs, const_inputs=consts, xp=np)
    return registry.lookup("", "ConvTranspose", 20).factory(info)


def check_conv_transpose(x, w, b, pads, strides, out_pad, group, jit, monkeypatch, dilations=(1, 1), rtol=1e-5):
    kh, kw = w.shape[2:]
    attrs = {"strides": list(strides), "pads": list(pads), "output_padding": list(out_pad), "group": group,
             "kernel_shape": [kh, kw], "dilations": list(dilations)}
    ref = direct_conv_transpose(x, w, b, pads, strides, out_pad, group, dilations)
    if jit:     # the compiled col2im serves every 2-D case with non-negative pads: make sure it ran
        from engineroom.providers.cpu import conv_transpose as ct
        calls = []
        real = ct._convtranspose_jit
        monkeypatch.setattr(ct, "_convtranspose_jit", lambda *a: calls.append(1) or real(*a))
    (got,) = conv_transpose_kernel(w, b, attrs, jit, monkeypatch)(x, w, b)
    assert not jit or calls
    assert got.shape == ref.shape
    assert got.dtype == x.dtype
    assert np.abs(got - ref).max() <= rtol * np.abs(ref).max()
    (got,) = conv_transpose_kernel(w, None, attrs, jit, monkeypatch)(x, w)
    assert np.abs(got - (ref - b.reshape(1, -1, 1, 1))).max() <= rtol * np.abs(ref).max()


@pytest.mark.parametrize("jit", JIT_PATHS)
@pytest.mark.parametrize("C,M,H,W", [(6, 4, 20, 18), (4, 2, 3, 17), (8, 4, 4, 4), (32, 16, 4, 5)])
@pytest.mark.parametrize("k,s,pads,out_pad", [(4, 2, (1, 1, 1, 1), (0, 0)), (3, 2, (1, 1, 1, 1), (1, 1)),
                                              (3, 1, (1, 1, 1, 1), (0, 0)), (5, 3, (0, 2, 1, 0), (2, 0)),
                                              (2, 2, (0, 0, 0, 0), (0, 0)), (4, 2, (3, 3, 3, 3), (0, 1)),
                                              (1, 1, (0, 0, 0, 0), (0, 0)), (3, 3, (2, 0, 0, 2), (1, 2))])
@pytest.mark.parametrize("batch,group", [(1, 1), (2, 1), (2, 2)])
def test_conv_transpose(C, M, H, W, k, s, pads, out_pad, batch, group, jit, monkeypatch):
    x, w, b = rand(batch, C, H, W), rand(C, M // group, k, k), rand(M)
    check_conv_transpose(x, w, b, pads, (s, s), out_pad, group, jit, monkeypatch)


@pytest.mark.skipif(not _jit.available(), reason="numba is not installed (jit extra)")
@pytest.mark.parametrize("C,M,H,W,loop", [(16, 32, 4, 6, "col2im_channels_last"),   # small image, many channels
                                          (16, 32, 60, 6, "col2im_rows"),    # its accumulator past the limit
                                          (6, 4, 20, 18, "col2im_rows")])
def test_conv_transpose_col2im_order(C, M, H, W, loop, monkeypatch):
    """The compiled col2im's loop order: channels-last only where its accumulator stays small."""
    real_load = _jit.load
    real = real_load("conv_transpose")
    used = []

    class Spy:
        def __getattr__(self, name):
            fn = getattr(real, name)
            return lambda *a: used.append(name) or fn(*a)

    monkeypatch.setattr(_jit, "load", lambda name: Spy() if name == "conv_transpose" else real_load(name))
    x, w, b = rand(1, C, H, W), rand(C, M, 4, 4), rand(M)
    check_conv_transpose(x, w, b, (1, 1, 1, 1), (2, 2), (0, 0), 1, True, monkeypatch)
    assert used and set(used) == {loop}


@pytest.mark.parametrize("jit", JIT_PATHS)
@pytest.mark.parametrize("strides,dilations,pads,out_pad", [((2, 1), (2, 1), (1, 0, 2, 1), (1, 0)),
                                                            ((1, 3), (1, 2), (0, 1, 0, 1), (0, 2)),
                                                            ((2, 2), (3, 3), (2, 2, 2, 2), (1, 1))])
@pytest.mark.parametrize("C,M,H,W,group", [(16, 24, 5, 6, 1), (8, 4, 9, 20, 2)])
def test_conv_transpose_dilated(strides, dilations, pads, out_pad, C, M, H, W, group, jit, monkeypatch):
    x, w, b = rand(2, C, H, W), rand(C, M // group, 3, 2), rand(M)
    check_conv_transpose(x, w, b, pads, strides, out_pad, group, jit, monkeypatch, dilations)


@pytest.mark.parametrize("jit", JIT_PATHS)
def test_conv_transpose_float64(jit, monkeypatch):
    x, w, b = (rand(2, 8, 6, 7, dtype=np.float64), rand(8, 6, 4, 4, dtype=np.float64),
               rand(6, dtype=np.float64))
    check_conv_transpose(x, w, b, (1, 1, 1, 1), (2, 2), (0, 0), 1, jit, monkeypatch, rtol=1e-12)


@pytest.mark.skipif(not _jit.available(), reason="numba is not installed (jit extra)")
@pytest.mark.parametrize("case", [
    # depthwise loops split from conv._DW_SPLIT_MIN_MACS (8M multiply-adds) only
    dict(C=48, M=48, H=140, W=140, k=3, strides=(1, 1), group=48),         # depthwise, flat 3x3
    dict(C=32, M=64, H=147, W=151, k=5, strides=(2, 2), group=32),         # depthwise, multiplier 2, strips
    dict(C=48, M=40, H=91, W=85, k=3, strides=(2, 2), group=1),            # compiled im2col + bias/clip pass
    dict(C=96, M=96, H=56, W=56, k=3, strides=(1, 1), group=1),            # Winograd's compiled transforms
    dict(C=64, M=96, H=80, W=80, k=1, strides=(1, 1), group=1),            # 1x1: the bias/residual/clip pass
])
def test_split_over_threads_equals_one_thread(monkeypatch, case):
    """The compiled loops split over channel ranges on the worker pool give, bit for bit, what one
    thread gives (each channel is computed alike), and the direct convolution's numbers."""
    threadpoolctl = pytest.importorskip("threadpoolctl", reason="threadpoolctl sets the pool's thread count")
    from engineroom.providers.cpu import _threadpool as tp

    parts = []
    run = tp.WorkerPool.run
    monkeypatch.setattr(tp.WorkerPool, "run", lambda self, fn, args: (parts.append(len(args)), run(self, fn, args)))
    C, M, k, g = case["C"], case["M"], case["k"], case["group"]
    x, w, b = rand(1, C, case["H"], case["W"]), rand(M, C // g, k, k), rand(M)
    p = k // 2
    z = rand(*direct_conv(x, w, None, (p,) * 4, case["strides"], (1, 1), g).shape)
    got = {}
    for threads in (1, 2):
        with threadpoolctl.threadpool_limits(threads, user_api="blas"), steady_mode():
            parts.clear()
            got[threads] = check(x, w, b, pads=(p,) * 4, strides=case["strides"], group=g, clip=(0.0, 6.0),
                                 z=None if g > 1 else z, rtol=3e-4)   # Winograd F(4,3) over 96 channels
            assert (max(parts, default=1) > 1) == (threads == 2), parts
    np.testing.assert_array_equal(got[1], got[2])


@pytest.mark.skipif(not _jit.available(), reason="numba is not installed (jit extra)")
@pytest.mark.parametrize("C,H,k,stride", [(64, 56, 3, 1), (128, 28, 3, 2), (256, 14, 5, 1)])
def test_small_depthwise_stays_on_the_callers_thread(monkeypatch, C, H, k, stride):
    """PP-LCNet / MobileNet-sized depthwise loops (below conv._DW_SPLIT_MIN_MACS) are one call at 2 threads:
    split over the pool they ran slower than one call (the worker woke too late to take its share)."""
    threadpoolctl = pytest.importorskip("threadpoolctl", reason="threadpoolctl sets the pool's thread count")
    from engineroom.providers.cpu import _threadpool as tp

    parts = []
    run = tp.WorkerPool.run
    monkeypatch.setattr(tp.WorkerPool, "run", lambda self, fn, args: (parts.append(len(args)), run(self, fn, args)))
    x, w, b = rand(1, C, H, H), rand(C, 1, k, k), rand(C)
    with threadpoolctl.threadpool_limits(2, user_api="blas"), steady_mode():
        check(x, w, b, pads=(k // 2,) * 4, strides=(stride, stride), group=C, clip=(0.0, 6.0))
    assert parts == [], parts


@pytest.mark.skipif(not _jit.available(), reason="numba is not installed (jit extra)")
@pytest.mark.parametrize("C,mult,H,W,same", [(64, 1, 56, 56, True), (24, 2, 30, 12, True), (32, 1, 28, 9, False)])
def test_quick_mode_splits_3x3_same_depthwise_inside_one_compiled_call(monkeypatch, C, mult, H, W, same):
    """In the quick mode a 3x3 stride-1 "same" depthwise conv (images from _DW_FLAT_MIN_W wide) splits over
    input channels inside one compiled call (``_jit_par``'s depthwise3x3), giving the direct conv's numbers
    and, bit for bit, what the unsplit loop gives; narrower images keep the unsplit loop."""
    threadpoolctl = pytest.importorskip("threadpoolctl", reason="threadpoolctl sets the pool's thread count")
    from conftest import quick_mode

    used: set = set()
    spy_on(monkeypatch, "conv", used)
    x, w, b = rand(1, C, H, W), rand(C * mult, 1, 3, 3), rand(C * mult)
    with threadpoolctl.threadpool_limits(2, user_api="blas"), quick_mode():
        got = check(x, w, b, pads=(1,) * 4, group=C, clip=(0.0, 6.0))
    assert ("par_depthwise3x3" in used) == same, used
    used.clear()
    np.testing.assert_array_equal(got, run_plan(x, w, b, (1,) * 4, (1, 1), (1, 1), C, clip=(0.0, 6.0)))
    assert "par_depthwise3x3" not in used and "depthwise2d" in used
