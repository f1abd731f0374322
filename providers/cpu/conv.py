"""Convolution kernels: Conv, ConvInteger, QLinearConv, DeformConv (N-D, NC... layout).

Conv is im2col over a strided window view of the padded input followed by one batched matmul over
(batch, group); the weight is reshaped to ``(group, M/group, C/group * K)`` once in the factory when it
is a constant. Strided convolutions take their columns from the input's stride phases (unit-stride
copies); 1x1 stride-1 unpadded convolutions are a plain matmul over the input as it is, strided ones over
one copy of the pixels they read; 3x3 stride-1
float32 convolutions with a constant weight use Winograd F(4,3) or F(2,3) where the image has enough
tiles (``winograd.py``). Depthwise convolutions (one input channel per group) skip the im2col copy and
accumulate ``tap view * per-channel weight`` over the K kernel taps, channels-first over long rows or,
for small images, channels-last. Where the compiled loops are available (``_jit_conv.py``, the ``jit``
extra) 2-D depthwise convs run one pass per channel, 2-D im2col is compiled, and the bias, FusedConv's
residual and its Relu/Clip are one pass after the GEMM; an ungrouped conv whose column matrix would be
large (a 7x7 stem's) makes it a band of output rows at a time, each consumed by its GEMM while in cache.
In a pool-mode run (``_threadpool``: BLAS held at one thread by the run) the dense (non-depthwise) paths
split their large GEMMs and compiled loops over the provider's own pool; on a quiet machine their GEMMs
take OpenBLAS's threads. 1-D convolutions run as 2-D ones of height 1
(every 2-D path serves them); on the NumPy path, strides with many phases (an STFT's hop of 160, a patch
embedding) copy their windows pixel-major in one pass. ConvTranspose is in ``conv_transpose.py``.

The window helpers (geometry, padding, tap slices) are shared with ``pool.py`` and ``conv_transpose.py``.
"""
from __future__ import annotations

import itertools
import math

import numpy as np

from engineroom.plugin_sdk.geometry import window_geometry as conv_geometry
from engineroom.plugin_sdk.host_values import ints as _ints
from engineroom.providers.cpu import _threadpool, intgemm
from engineroom.providers.cpu.array_module import arrays
from engineroom.providers.cpu.registry import array_kernel, kernel
from engineroom.providers.cpu.winograd import WinogradWeights, choose_tile, winograd_conv, winograd_conv_compiled

# ---------------------------------------------------------------------------------------------
# shared window helpers (also used by pool.py)


def compute_dtype(dt) -> np.dtype:
    """The float type arithmetic runs in: float32/float64 as they are, anything narrower in float32."""
    dt = np.dtype(dt)
    return dt if dt in (np.dtype(np.float32), np.dtype(np.float64)) else np.dtype(np.float32)


def pad_spatial(xp, x, pb, pe, value=0):
    """x padded on its trailing len(pb) axes (a new array), or x itself when there is nothing to pad."""
    if not any(pb) and not any(pe):
        return x
    lead = x.ndim - len(pb)
    shape = x.shape[:lead] + tuple(sz + b + e for sz, b, e in zip(x.shape[lead:], pb, pe))
    if value == 0:
        buf = xp.zeros(shape, dtype=x.dtype)
    else:
        buf = xp.full(shape, value, dtype=x.dtype)
    buf[(Ellipsis,) + tuple(slice(b, b + sz) for b, sz in zip(pb, x.shape[lead:]))] = x
    return buf


def tap_offsets(kshape, dilations):
    """Start offsets (one tuple per kernel tap, row-major over the kernel) of each tap's window."""
    return [tuple(j * d for j, d in zip(js, dilations)) for js in itertools.product(*(range(k) for k in kshape))]


def tap_slice(offs, strides, out):
    """Index selecting, in a padded input, the input element each output position sees at one tap."""
    return (Ellipsis,) + tuple(slice(o, o + (n - 1) * s + 1, s) for o, s, n in zip(offs, strides, out))


def window_view(xp, xpad, kshape, strides, dilations, out):
    """Strided view (lead..., k1..kn, o1..on) of a padded input: the im2col matrix without copying."""
    n = len(kshape)
    lead = xpad.ndim - n
    st = xpad.strides
    shape = xpad.shape[:lead] + tuple(kshape) + tuple(out)
    strides_ = st[:lead] + tuple(st[lead + i] * dilations[i] for i in range(n)) + \
        tuple(st[lead + i] * strides[i] for i in range(n))
    return xp.lib.stride_tricks.as_strided(xpad, shape=shape, strides=strides_)


def _phase_taps(k, s, d):
    """Per stride phase r of one axis: (r, first tap, tap step, first phase offset, offset step, count).

    Tap j reads input offset j*d = q*s + r, i.e. phase r at offset q; the taps of one phase form an
    arithmetic progression (step s/gcd(d, s)), and so do their offsets.
    """
    if s <= 0:          # a bad stride: the geometry check names it (a ZeroDivisionError here would not)
        return []
    by_phase: dict[int, list[int]] = {}
    for j in range(k):      # one pass over the taps, not one per phase (a 512-tap stride-160 STFT conv)
        by_phase.setdefault((j * d) % s, []).append(j)
    out = []
    for r in sorted(by_phase):
        js = by_phase[r]
        step = js[1] - js[0] if len(js) > 1 else 1
        out.append((r, js[0], step, js[0] * d // s, step * d // s, len(js)))
    return out


def im2col_polyphase(xp, phases, lead, kshape, strides, dilations, out):
    """im2col for a strided window: (lead..., k1..kn, o1..on) as a new contiguous array.

    ``phases`` is the padded input split into its stride phases, (s1..sn, lead..., Q1..Qn) (see
    :func:`_phase_planes`), so every copy into the column matrix reads unit-stride rows: far faster
    than gathering every s-th element straight from the input.
    """
    n = len(kshape)
    shape_lead = phases.shape[n:n + lead]
    cols = xp.empty(shape_lead + tuple(kshape) + tuple(out), dtype=phases.dtype)
    per_axis = [_phase_taps(kshape[i], strides[i], dilations[i]) for i in range(n)]
    for combo in itertools.product(*per_axis):
        ph = phases[tuple(c[0] for c in combo)]
        st = ph.strides
        base = sum(c[3] * st[lead + i] for i, c in enumerate(combo))
        shape = ph.shape[:lead] + tuple(c[5] for c in combo) + tuple(out)
        strides_ = st[:lead] + tuple(c[4] * st[lead + i] for i, c in enumerate(combo)) + st[lead:]
        src = xp.lib.stride_tricks.as_strided(ph.reshape(-1)[base // ph.itemsize:], shape=shape, strides=strides_)
        dst = cols[(Ellipsis,) + tuple(slice(c[1], c[1] + (c[5] - 1) * c[2] + 1, c[2]) for c in combo)
                   + (slice(None),) * n]
        dst[...] = src
    return cols


def _phase_planes(xp, x, pb, strides, Q):
    """The zero-padded input split into its stride phases, straight from x: (s1.., N, C, Q1..) with
    plane (r1, ..)[.., q1, ..] = padded x at (s1*q1 + r1, ..), i.e. x at s*q + r - pad."""
    n = len(strides)
    lead = x.shape[:2]
    planes = xp.zeros(tuple(strides) + lead + tuple(Q), dtype=x.dtype)
    for rs in itertools.product(*(range(s) for s in strides)):
        dst, src = [], []
        for i in range(n):
            s, r, b, sz = strides[i], rs[i], pb[i], x.shape[2 + i]
            q0 = max(0, -(-(b - r) // s))                   # first q with s*q + r - b >= 0
            j0 = s * q0 + r - b
            cnt = min(len(range(j0, sz, s)), Q[i] - q0)
            if cnt <= 0:
                break
            dst.append(slice(q0, q0 + cnt))
            src.append(slice(j0, j0 + (cnt - 1) * s + 1, s))
        else:
            planes[rs + (slice(None), slice(None)) + tuple(dst)] = x[(slice(None), slice(None)) + tuple(src)]
    return planes


def _lift_attrs(attrs):
    """A 1-D conv's attributes as those of the same conv over a height-1 image (a new dict)."""
    a = dict(attrs)
    for name in ("kernel_shape", "strides", "dilations"):
        if a.get(name):
            a[name] = [1] + [int(t) for t in a[name]]
    if a.get("pads"):
        b, e = a["pads"]
        a["pads"] = [0, int(b), 0, int(e)]
    return a


# ---------------------------------------------------------------------------------------------
# Conv

# NumPy runs a broadcasting ufunc (an array times one weight per row) at full speed only where each
# row is at least its ufunc buffer long; with the default 8192-element buffer, shorter rows go through
# a buffered loop 2-3x slower. Kernels with rows of 1-8K elements lower the buffer size (a per-thread,
# per-context NumPy setting) while they run; depthwise convs keep their rows at least this long.
_DW_MIN_ROW = 1024
# depthwise rows (one channel's output at the padded pitch) shorter than this run channels-last (measured:
# 800-pixel rows are still faster channels-first, 220-pixel rows 1.5x faster channels-last)
_DW_NCHW_MIN_ROW = 512
# strided im2col on the NumPy path: at most this many stride-phase combinations go through the phase
# planes (a stride-2 3x3 conv has 4), more (an STFT's hop of 160) take one pixel-major copy
_MAX_PHASE_COMBOS = 16
# compiled depthwise loops split over the CPU provider's pool only from this many multiply-adds: measured on
# the shared 2-core VM, halves or quarters over the pool ran slower than one call up to ~400 us of loop
# (C16 112x112 80 -> 90-99 us, C128 28x28 61 -> 90-101, C96 112x112 s2 358 -> 380, C256 56x56 379 -> 401-410):
# the worker wakes too late to take its share
_DW_SPLIT_MIN_MACS = 1 << 23
# the image width from which compiled/_jit_conv's 3x3 "same" depthwise loop takes the flat path (its
# _FLAT_MIN_W): the one case of the channels-first loops that compiled/_jit_par splits (``depthwise3x3``)
_DW_FLAT_MIN_W = 10
# ungrouped 2-D convs whose column matrix would hold at least _BAND_MIN_COLS floats (1 MB) make it a band of
# whole output rows at a time, each band at least _BAND_PIXELS output pixels: measured alone at one thread,
# bands of ~1K pixels against bands of 512 KB of columns: a 3-channel 3x3 stride-2 stem at 224x224 247 ->
# 165 us (unbanded 242), 512 -> 128 channels 3x3 at 28x28 11.8 -> 6.6 ms (its 512 KB bands were single rows
# of 28 pixels, too narrow for the GEMM), 16 -> 32 at 112x112 1.29 -> 1.20 ms, resnet's 7x7 stem 2.00 -> 2.08
_BAND_MIN_COLS = 1 << 18
_BAND_PIXELS = 1024
# a lean 1x1 conv's bias/activation pass runs in one call on the caller's thread up to this many outputs
# (~10 us of loop: waking a pool worker costs more), larger ones over channel ranges (``_epilogue``)
_LEAN_EPILOGUE_MAX = 1 << 16


def _band_rows(OH: int, OW: int) -> int:
    """Output rows per band of ``_ConvPlan._im2col_bands``: _BAND_PIXELS pixels or more."""
    return max(1, min(OH, -(-_BAND_PIXELS // OW)))


def _hard_activation(xp, y, hard):
    """y = clip(alpha * y + beta, 0, 1), times y where times_x (HardSwish), in place: the NumPy path."""
    alpha, beta, times_x = hard
    h = y * alpha if times_x else xp.multiply(y, alpha, out=y)
    h += beta
    xp.clip(h, 0, 1, out=h)
    if times_x:
        y *= h


def _over_channels(fn, N, C, work):
    """``fn(c0, c1)`` over channel ranges, spread over the CPU provider's worker pool where ``work`` pays
    for it (the compiled loops release the GIL). Batch 1 only: a channel range of an (N, C, ...) array
    is contiguous, as the compiled loops take it, only where N is 1."""
    if N == 1:
        _threadpool.parallel_ranges(fn, C, work)
    else:
        fn(0, C)


class _ufunc_buffer:
    """Context: NumPy's ufunc buffer size lowered to ``_DW_MIN_ROW`` (a no-op for other array modules)."""

    __slots__ = ("xp", "old")

    def __init__(self, xp):
        self.xp = xp

    def __enter__(self):
        self.old = self.xp.setbufsize(_DW_MIN_ROW) if arrays(self.xp).host else None

    def __exit__(self, *exc):
        if self.old is not None:
            self.xp.setbufsize(self.old)


class _ConvPlan:
    """One Conv node with one weight: parsed attributes, the prepacked weight, the im2col/depthwise/1x1 paths.

    Immutable once built (a run only reads it), so concurrent runs of a session can share it; a
    dynamic weight gets a fresh plan per run, sharing only the geometry cache.
    """

    def __init__(self, xp, attrs, w, geo_cache=None, winograd=False, spatial=None):
        self.xp = xp
        # a 1-D conv runs as a 2-D one of height 1, so the 2-D paths (the compiled im2col and depthwise
        # loops among them) serve it; x, z and y are reshaped at the edges (views where contiguous)
        self.lifted = w.ndim == 3
        if self.lifted:
            attrs = _lift_attrs(attrs)
            w = w.reshape(w.shape[:2] + (1,) + w.shape[2:])
            spatial = None if spatial is None else (1,) + tuple(spatial)
        self.attrs = attrs
        self.group = int(attrs.get("group", 1))
        self.auto_pad = attrs.get("auto_pad", "NOTSET")
        self._geo = {} if geo_cache is None else geo_cache
        self._prepack(w)
        # Winograd (constant float32 weights of 3x3 stride-1 ungrouped 2-D convs): the transformed
        # weights per tile size, made here when the input's spatial size is known, else at first use
        self._wino = {}
        self._w = None
        if winograd and self.group == 1 and self.kshape == (3, 3) and self.strides == (1, 1) \
                and self.dilations == (1, 1) and compute_dtype(w.dtype) == np.dtype(np.float32):
            self._w = w
            if spatial is not None:
                m = choose_tile(self.Cg, self.M, self.geometry(tuple(spatial))[2])
                if m:
                    self.winograd_weights(m)
        # its compiled transforms, which also apply FusedConv's bias, residual and clip
        self.wino_jit = arrays(self.xp).compiled("winograd") if self._w is not None and self.jit is not None else None

    def winograd_weights(self, m):
        ww = self._wino.get(m)
        if ww is None:          # idempotent: concurrent first runs may both build it, either result serves
            ww = self._wino[m] = WinogradWeights(self.xp, self._w, m)
        return ww

    def _prepack(self, w):
        xp = self.xp
        g = self.group
        self.w_shape = tuple(w.shape)
        n = w.ndim - 2
        a = self.attrs
        self.kshape = tuple(_ints(a.get("kernel_shape"), n, 1)) if a.get("kernel_shape") else tuple(w.shape[2:])
        self.strides = tuple(_ints(a.get("strides"), n, 1))
        self.dilations = tuple(_ints(a.get("dilations"), n, 1))
        self.pads = tuple(_ints(a.get("pads"), 2 * n, 0))
        M, Cg = w.shape[0], w.shape[1]
        K = math.prod(self.kshape)
        self.M, self.Cg, self.K = M, Cg, K
        self.depthwise = Cg == 1 and g > 1
        cdt = compute_dtype(w.dtype)
        wc = xp.asarray(w).astype(cdt, copy=False)
        if self.depthwise:
            # (C, multiplier, K): per input channel, the weights of its output channels by tap
            self.wd = xp.ascontiguousarray(wc.reshape(g, M // g, K))
            self.wd_taps = [xp.ascontiguousarray(self.wd[:, :, t]) for t in range(K)]
            # channels-last small-image path: each tap's weights tiled over enough pixels for long rows
            self.wd_rows = None
            if n == 2 and M == g:
                self.wd_rows = -(-_DW_MIN_ROW // g)
                self.wd_rowtaps = [xp.tile(self.wd[:, 0, t], self.wd_rows) for t in range(K)]
        else:
            self.wm = xp.ascontiguousarray(wc.reshape(g, M // g, Cg * K))
        # the compiled loops (numba installed, NumPy arrays): 2-D depthwise (weights (M, KH, KW)), im2col,
        # and the bias/residual/clip pass after the GEMM paths
        self.jit = arrays(xp).compiled("conv")
        self.host = arrays(xp).host
        self.zero_bias = np.zeros(M, dtype=cdt) if self.jit is not None else None
        self.wd_jit = np.ascontiguousarray(wc.reshape((M,) + self.kshape)) \
            if self.jit is not None and self.depthwise and n == 2 else None
        self.taps = tap_offsets(self.kshape, self.dilations)
        # im2col through the stride phases costs a Python step per phase combination: past a few, the
        # NumPy path copies the windows pixel-major instead (one copy)
        self.many_phases = math.prod(len(_phase_taps(k, s, d)) for k, s, d in
                                     zip(self.kshape, self.strides, self.dilations)) > _MAX_PHASE_COMBOS
        self.pointwise = all(k == 1 for k in self.kshape) and all(s == 1 for s in self.strides)
        # a strided 1x1 conv (ResNet's downsample): its columns are the input's strided pixels, one copy
        self.subsample = None if self.pointwise or any(k != 1 for k in self.kshape) else \
            (Ellipsis,) + tuple(slice(None, None, s) for s in self.strides)
        # windows that tile the input (kernel = stride, no dilation: a patch embedding, a recognizer's
        # 32x4 stem): im2col is one transposing copy of the input (see _patches)
        self.patches = not self.pointwise and self.kshape == self.strides and all(d == 1 for d in self.dilations)
        # the lean paths (``_lean``) of the two convs mobile networks are made of, on the compiled loops:
        # 1x1 ungrouped and 2-D depthwise
        self.lean = None
        if self.jit is not None and self.host:
            if self.pointwise and g == 1 and not any(self.pads):
                self.lean, self.w2 = "pointwise", xp.ascontiguousarray(self.wm[0])
            elif self.wd_jit is not None:
                self.lean = "depthwise"
        self.cdt = cdt
        self._lean_args = {}

    def geometry(self, spatial):
        key = (spatial, self.kshape)
        geo = self._geo.get(key)
        if geo is None:
            geo = conv_geometry(spatial, self.kshape, self.strides, self.dilations, self.pads, self.auto_pad)
            self._geo[key] = geo
        return geo

    def __call__(self, x, b=None, clip=None, z=None, hard=None):
        """The conv of x (and bias b), then, as FusedConv asks: ``+ z`` (a residual of the output's shape)
        and ``clip=(lo, hi)`` (its Relu/Clip) or ``hard=(alpha, beta, times_x)`` (its HardSigmoid, or
        HardSwish with times_x), fused into the conv's last pass where a path can."""
        # checked before any loop runs: the compiled loops index memory with these sizes
        if x.ndim < 3 or x.shape[1] != self.Cg * self.group or (b is not None and b.size != self.M):
            raise ValueError(f"Conv: input of shape {tuple(x.shape)} (and bias of {None if b is None else b.size} "
                             f"values) does not fit weights of shape {self.w_shape} with group {self.group}")
        if self.lifted:
            x = x.reshape(x.shape[:2] + (1,) + x.shape[2:])
            z = None if z is None else z.reshape(z.shape[:2] + (1,) + z.shape[2:])
        lean = self.lean
        if lean is not None and z is None and x.__class__ is np.ndarray and x.dtype == self.cdt and x.size \
                and x.flags.c_contiguous and (b is None or (b.__class__ is np.ndarray and b.dtype == self.cdt
                                                            and b.ndim == 1)) \
                and (self.jit if lean == "pointwise" else self.wd_jit) is not None:
            y = self._lean(x, b, clip, hard)
            return y.reshape(y.shape[:2] + y.shape[3:]) if self.lifted else y
        y, fused = self._conv(x, b, clip, z, hard)
        if not fused:
            if z is not None:
                y += z
            if clip is not None:
                self.xp.clip(y, clip[0], clip[1], out=y)
            if hard is not None:
                _hard_activation(self.xp, y, hard)
        y = y.astype(x.dtype, copy=False)
        return y.reshape(y.shape[:2] + y.shape[3:]) if self.lifted else y

    def _lean(self, x, b, clip, hard):
        """``_conv`` and its bias and activation for a C-contiguous input of the compute type and no residual
        (``lean`` set): the 1x1 GEMM or the depthwise loop with the fewest Python steps, the depthwise loop's
        arguments made once per input size. Mobile networks are made of these convs, and each paid ~6 us of
        Python on the general path (measured alone; more within a run), about what a 1x1 conv of a
        squeeze-and-excitation block costs in all."""
        N, M = x.shape[0], self.M
        if self.lean == "pointwise":
            y = np.empty((N, M) + x.shape[2:], dtype=x.dtype)
            if N == 1:              # the 2-D product (the pool's matmul takes its short path)
                arrays(np).matmul(self.w2, x.reshape(self.Cg, -1), out=y.reshape(M, -1))
            else:
                arrays(np).matmul(self.w2, x.reshape(N, self.Cg, -1), out=y.reshape(N, M, -1))
            if b is None and clip is None and hard is None:
                return y
            if y.size > _LEAN_EPILOGUE_MAX:
                self._epilogue(y, b, clip, None, hard)      # over channel ranges, split where large
                return y
            key = (clip, hard)
            act = self._lean_args.get(key)
            if act is None:         # the bias pass's loop and arguments, once per activation
                ct = self.cdt.type
                lo, hi = clip if clip is not None else (-np.inf, np.inf)
                act = self._lean_args[key] = (self.jit.bias_clip, (ct(lo), ct(hi)), False) if hard is None else \
                    (self.jit.bias_hard_act, (0, ct(hard[0]), ct(hard[1]), int(hard[2])), True)
            loop, args, reads_z = act
            y3 = y.reshape(N, M, -1)
            bb = self.zero_bias if b is None else b
            if reads_z:
                loop(y3, bb, y3, *args)     # z is not read (has_z 0)
            else:
                loop(y3, bb, *args)
            return y
        return self._depthwise_loop(x, b, clip, hard)

    def _depthwise_loop(self, x, b, clip, hard):
        """The compiled 2-D depthwise loop over x (C-contiguous, of the compute type) and b (None or of the
        compute type), ``clip`` or ``hard`` applied as it writes; its arguments made once per input size."""
        N, M = x.shape[0], self.M
        key = (x.shape[2:], clip, hard)
        prepared = self._lean_args.get(key)
        if prepared is None:        # idempotent: concurrent first runs may both make it
            pb, _, out = self.geometry(x.shape[2:])
            ct = self.cdt.type
            lo, hi = clip if clip is not None else (-np.inf, np.inf)
            args = (*self.strides, *self.dilations, pb[0], pb[1], ct(lo), ct(hi))
            loop = self.jit.depthwise2d
            if hard is not None:
                loop, args = self.jit.depthwise2d_act, args + (ct(hard[0]), ct(hard[1]), 2 if hard[2] else 1)
            # the 3x3 "same" loop's case, which the quick mode splits inside one compiled call
            same3x3 = hard is None and self.kshape == (3, 3) and self.strides == (1, 1) and \
                self.dilations == (1, 1) and tuple(pb) == (1, 1) and out == x.shape[2:] and out[0] >= 2 and \
                out[1] >= _DW_FLAT_MIN_W
            prepared = self._lean_args[key] = (out, loop, args, M * math.prod(out) * self.K, same3x3)
        out, loop, args, macs, same3x3 = prepared
        y = np.empty((N, M) + out, dtype=x.dtype)
        bb = self.zero_bias if b is None else b
        # in the quick mode, over input channels inside one compiled call (no Python worker: its part starts
        # 20-40 us late, and halves over the Python pool ran slower than one call below _DW_SPLIT_MIN_MACS):
        # mobilenet_v2 at 2 threads 5.66 -> 5.21 ms a run
        if same3x3 and _threadpool.native_ranges("depthwise3x3", self.group, macs, x, self.wd_jit, bb, y, args[-2],
                                                 args[-1]):
            return y
        if macs < _DW_SPLIT_MIN_MACS:
            loop(x, self.wd_jit, bb, y, *args)
        else:
            mult = M // self.group

            def part(c0, c1):       # input channels c0..c1 and their outputs
                loop(x[:, c0:c1], self.wd_jit[c0 * mult:c1 * mult], bb[c0 * mult:c1 * mult],
                     y[:, c0 * mult:c1 * mult], *args)
            _over_channels(part, N, self.group, macs)
        return y

    def _conv(self, x, b, clip, z, hard=None):
        """The convolution in the compute dtype (a fresh array), and whether ``z``, ``clip`` and ``hard`` were
        applied."""
        xp = self.xp
        cdt = compute_dtype(x.dtype)
        xc = x.astype(cdt, copy=False)
        N = x.shape[0]
        spatial = tuple(x.shape[2:])
        if self.depthwise and self.wd_jit is not None and cdt == self.wd_jit.dtype and z is None:
            bj = None if b is None else np.ascontiguousarray(b, dtype=cdt).reshape(-1)
            return self._depthwise_loop(np.ascontiguousarray(xc), bj, clip, hard), True      # its own y
        pb, pe, out = self.geometry(spatial)
        M = self.M
        # the result is always a fresh C-contiguous array of its own (fused kernels then work in place)
        y = xp.empty((N, M) + out, dtype=cdt)
        bias = b.astype(cdt, copy=False).reshape((M,) + (1,) * len(out)) if b is not None else None
        if self.depthwise:
            with _ufunc_buffer(xp):
                self._depthwise(xc, pb, pe, out, y, bias)
            return y, False
        # no BLAS hold of its own: in a pool-mode run (``_threadpool``: allow_spinning = "0", or the default
        # while another process keeps a core busy) the run holds BLAS at one thread and ``_threadpool.matmul``
        # splits the GEMMs over the pool; on a quiet machine OpenBLAS's own threads serve, and a hold here
        # would cost a thread-count change each way per conv (~0.5 ms: resnet18 at 2 threads, 33.9
        # against 22.8 ms a run)
        return self._dense(xc, b, clip, z, hard, y, bias, pb, pe, out)

    def _dense(self, xc, b, clip, z, hard, y, bias, pb, pe, out):
        """``_conv``'s Winograd, 1x1 and im2col paths (everything but depthwise)."""
        xp = self.xp
        cdt = xc.dtype
        N = xc.shape[0]
        spatial = tuple(xc.shape[2:])
        g, M, Cg, K = self.group, self.M, self.Cg, self.K
        P = math.prod(out) if out else 1
        if self._w is not None and cdt == np.dtype(np.float32):
            m = choose_tile(Cg, M, out)
            if m and self.wino_jit is not None and (z is None or (z.shape == y.shape and z.dtype == y.dtype)):
                lo, hi = clip if clip is not None else (-np.inf, np.inf)
                bj = np.ascontiguousarray(b, dtype=cdt) if b is not None else self.zero_bias
                winograd_conv_compiled(self.wino_jit, self.winograd_weights(m), xc, pb, y, bj, z,
                                       cdt.type(lo), cdt.type(hi))
                return y, self._hard_pass(y, hard)
            if m:
                winograd_conv(xp, self.winograd_weights(m), xc, pb, pe, out, y, bias)
                return y, self._epilogue(y, None, clip, z, hard)
        if self.pointwise and not any(pb) and not any(pe):
            cols = xc.reshape(N, g, Cg, P)
        elif self.subsample is not None and not any(pb) and not any(pe):
            cols = xp.ascontiguousarray(xc[self.subsample]).reshape(N, g, Cg, P)
        elif self.patches and not any(pb) and not any(pe):
            cols = self._patches(xc, out).reshape(N, g, Cg * K, P)
        elif self.jit is not None and len(out) == 2 and cdt == self.zero_bias.dtype:
            # bands where there are two or more: one band is the whole GEMM, which splits over the pool below
            # (a 64 -> 128 channel 3x3 stride-2 conv to 28x28, alone at 2 threads: 0.95 ms as one band)
            if g == 1 and Cg * K * P >= _BAND_MIN_COLS and N * -(-out[0] // _band_rows(out[0], out[1])) >= 2:
                self._im2col_bands(xc, y, pb, out)
                return y, self._epilogue(y, b, clip, z, hard) or self._plain_epilogue(y, bias, P)
            # the compiled im2col: each channel padded and phase-split once, every column row one copy
            cols = np.empty((N, g * Cg * K, P), dtype=cdt)
            xj, args = np.ascontiguousarray(xc), (*self.kshape, *self.strides, *self.dilations, pb[0], pb[1], *out)

            def part(c0, c1):           # channels c0..c1: rows c0*K..c1*K of cols
                self.jit.im2col2d(xj[:, c0:c1], cols[:, c0 * K:c1 * K], *args)
            if N > 1 or not _threadpool.native_ranges("im2col2d", g * Cg, g * Cg * K * P, xj, cols, *args):
                _over_channels(part, N, g * Cg, g * Cg * K * P)
            cols = cols.reshape(N, g, Cg * K, P)
        elif self.many_phases:
            # wide strides (an STFT's hop, a patch embedding): the windows copied pixel-major, each one
            # contiguous run along the last kernel axis, and the GEMM reads that matrix transposed
            xpad = pad_spatial(xp, xc, pb, pe)
            view = window_view(xp, xpad.reshape((N, g, Cg) + xpad.shape[2:]), self.kshape, self.strides,
                               self.dilations, out)                  # (N, g, Cg, k..., o...)
            nd = len(out)
            perm = (0, 1) + tuple(range(3 + nd, 3 + 2 * nd)) + (2,) + tuple(range(3, 3 + nd))
            cols = xp.ascontiguousarray(view.transpose(perm)).reshape(N, g, P, Cg * K).swapaxes(-1, -2)
        elif any(s > 1 and k > 1 for s, k in zip(self.strides, self.kshape)):
            Q = tuple(-(-(sz + b_ + e) // s) for sz, b_, e, s in zip(spatial, pb, pe, self.strides))
            phases = _phase_planes(xp, xc, pb, self.strides, Q)
            phases = phases.reshape(tuple(self.strides) + (N, g, Cg) + Q)
            cols = im2col_polyphase(xp, phases, 3, self.kshape, self.strides, self.dilations,
                                    out).reshape(N, g, Cg * K, P)
        else:
            xpad = pad_spatial(xp, xc, pb, pe)
            view = window_view(xp, xpad.reshape((N, g, Cg) + xpad.shape[2:]), self.kshape, self.strides,
                               self.dilations, out)
            cols = view.reshape(N, g, Cg * K, P)     # the im2col copy
        arrays(xp).matmul(self.wm, cols, out=y.reshape(N, g, M // g, P))
        return y, self._epilogue(y, b, clip, z, hard) or self._plain_epilogue(y, bias, P)

    def _patches(self, x, out):
        """The column matrix (N, C, k..., o...) of a conv whose windows tile x (kernel = stride, no pads): x
        cropped to whole windows, viewed as (N, C, o1, k1, o2, k2, ...) and copied in (k..., o...) order.
        Measured alone, one thread: a 4x4 stride-4 conv of a 96x512 image 310 -> 65 us, a 32x4 stride-(32, 4)
        stem 48 -> 36 (the compiled im2col split the input into one stride phase per kernel tap)."""
        nd = len(out)
        crop = (Ellipsis,) + tuple(slice(0, o * k) for o, k in zip(out, self.kshape))
        view = x[crop].reshape(x.shape[:2] + tuple(d for ok in zip(out, self.kshape) for d in ok))
        perm = (0, 1) + tuple(3 + 2 * i for i in range(nd)) + tuple(2 + 2 * i for i in range(nd))
        return self.xp.ascontiguousarray(view.transpose(perm))

    def _plain_epilogue(self, y, bias, P) -> bool:
        """y += bias with NumPy (where the compiled pass did not run); False: the residual and clip are
        still to apply."""
        if bias is not None:
            if _DW_MIN_ROW <= P < 8192:          # rows of 1-8K pixels: NumPy's fast broadcasting needs
                with _ufunc_buffer(self.xp):     # a smaller ufunc buffer (see _ufunc_buffer)
                    y += bias
            else:
                y += bias
        return False

    def _im2col_bands(self, x, y, pb, out):
        """y = W @ im2col(x) for an ungrouped 2-D conv (compiled im2col), a band of output rows at a time:
        each band's columns (``_BAND_PIXELS`` pixels or more) are made and consumed by its GEMM while they
        are in cache, and the bands are spread over the pool when large (``parallel_ranges``).
        A whole stem's column matrix (147 x 12544 floats, 7 MB) went through memory: its im2col took
        0.9 ms in a resnet18 run against 0.3 ms with warm caches."""
        N, C = x.shape[0], x.shape[1]
        OH, OW = out
        KH, KW = self.kshape
        sh, sw = self.strides
        dh, dw = self.dilations
        CK = C * self.K
        rb = _band_rows(OH, OW)
        nb = -(-OH // rb)
        xj = np.ascontiguousarray(x)
        y2 = y.reshape(N, self.M, OH * OW)
        wm = self.wm[0]
        fns = _threadpool.gemm_pointers()
        if fns is not None and _threadpool.native_ranges("conv_bands", N * nb, self.M * CK * OH * OW, xj, wm, y2,
                                                         fns, KH, KW, sh, sw, dh, dw, pb[0], pb[1], OH, OW, rb):
            return
        # each band's GEMM through the library the compiled bands call (``gemm_here``: oneMKL, whose products
        # differ from OpenBLAS's in the last bits, where loaded), into a buffer of its own: y's band is strided
        mkl = _threadpool.mkl_gemms()

        def bands(i0, i1):
            buf = np.empty(CK * rb * OW, dtype=x.dtype)
            band = np.empty(self.M * rb * OW, dtype=x.dtype) if mkl else None
            for i in range(i0, i1):
                n, r0 = divmod(i, nb)
                r0 *= rb
                r1 = min(OH, r0 + rb)
                c = buf[:CK * (r1 - r0) * OW].reshape(1, CK, (r1 - r0) * OW)
                self.jit.im2col2d(xj[n:n + 1], c, KH, KW, sh, sw, dh, dw, pb[0] - r0 * sh, pb[1], r1 - r0, OW)
                if band is None:
                    np.matmul(wm, c[0], out=y2[n, :, r0 * OW:r1 * OW])
                else:
                    o = band[:self.M * (r1 - r0) * OW].reshape(self.M, (r1 - r0) * OW)
                    _threadpool.gemm_here(wm, c[0], o)
                    y2[n, :, r0 * OW:r1 * OW] = o
        _threadpool.parallel_ranges(bands, N * nb, self.M * CK * OH * OW)

    def _hard_pass(self, y, hard) -> bool:
        """``hard`` (see ``__call__``) applied to y in place, after a path that fused the rest; True."""
        if hard is not None and not self._epilogue(y, None, None, None, hard):
            _hard_activation(self.xp, y, hard)
        return True

    def _epilogue(self, y, b, clip, z, hard=None) -> bool:
        """Bias, residual and clip (or ``hard``) in one compiled pass over y (in place); False where that
        cannot run (no numba, other array modules, a dtype or z it does not take) or has nothing to do."""
        jit = self.jit
        if jit is None or (b is None and clip is None and z is None and hard is None) \
                or y.dtype != self.zero_bias.dtype:
            return False
        if z is not None and (z.shape != y.shape or z.dtype != y.dtype):
            return False
        cdt = y.dtype.type
        lo, hi = (cdt(clip[0]), cdt(clip[1])) if clip is not None else (cdt(-np.inf), cdt(np.inf))
        bb = np.ascontiguousarray(b, dtype=y.dtype) if b is not None else self.zero_bias
        y3 = y.reshape(y.shape[0], y.shape[1], -1)
        N, M = y3.shape[0], y3.shape[1]
        if hard is not None:
            z3 = y3 if z is None else np.ascontiguousarray(z).reshape(y3.shape)     # read only where z is given
            alpha, beta, times_x = cdt(hard[0]), cdt(hard[1]), int(hard[2])
            if N == 1 and _threadpool.native_ranges("bias_hard_act", M, y3.size, y3, bb, z3, int(z is not None),
                                                    alpha, beta, times_x):
                return True

            def part(m0, m1):
                jit.bias_hard_act(y3[:, m0:m1], bb[m0:m1], z3[:, m0:m1], int(z is not None), alpha, beta, times_x)
        elif z is None:
            if N == 1 and _threadpool.native_ranges("bias_clip", M, y3.size, y3, bb, lo, hi):
                return True

            def part(m0, m1):
                jit.bias_clip(y3[:, m0:m1], bb[m0:m1], lo, hi)
        else:
            z3 = np.ascontiguousarray(z).reshape(y3.shape)
            if N == 1 and _threadpool.native_ranges("bias_add_clip", M, y3.size, y3, bb, z3, lo, hi):
                return True

            def part(m0, m1):
                jit.bias_add_clip(y3[:, m0:m1], bb[m0:m1], z3[:, m0:m1], lo, hi)
        _over_channels(part, N, M, y3.size)
        return True

    def _depthwise(self, xc, pb, pe, out, y, bias):
        """Group == C with one input channel per group: accumulate tap view * weight, no loop over channels.

        Every tap is one contiguous range of a flattened padded image: its output grid is laid out at
        the padded row pitch and cropped at the end, which keeps NumPy's inner loops long. Strided
        convolutions first split the padded input into its stride phases (polyphase: plane (r1, r2..)
        holds x[.., r1::s1, r2::s2..]), where each tap is again a unit-stride window. Small images
        (per-channel rows shorter than NumPy's fast broadcasting needs) run channels-last instead.
        """
        if self.wd_rows is not None:
            st = self.strides
            P = [sz + b + e for sz, b, e in zip(xc.shape[2:], pb, pe)]
            Q = [p_ // s + (p_ % s > 0) for p_, s in zip(P, st)]
            if (out[0] - 1) * Q[1] + out[1] < _DW_NCHW_MIN_ROW:
                return self._depthwise_nhwc(xc, pb, pe, out, y, bias)
        xp = self.xp
        N = xc.shape[0]
        g, M = self.group, self.M
        m = M // g
        nd = len(out)
        st = self.strides
        # pad the end further so every padded extent is a multiple of its stride (never read)
        pe = tuple(e + (-(sz + b + e)) % s for sz, b, e, s in zip(xc.shape[2:], pb, pe, st))
        if any(s > 1 for s in st):
            P = tuple(sz + b + e for sz, b, e in zip(xc.shape[2:], pb, pe))
            Q = tuple(p_ // s for p_, s in zip(P, st))
            phases = _phase_planes(xp, xc, pb, st, Q)                       # (s1.., N, C, Q1..)
            phases = phases.reshape((math.prod(st), N, g, 1, math.prod(Q)))
        else:
            xpad = xp.ascontiguousarray(pad_spatial(xp, xc, pb, pe))
            P = xpad.shape[2:]
            Q = P
            phases = xpad.reshape(1, N, g, 1, math.prod(P))
        R = [math.prod(Q[i + 1:]) for i in range(nd)]
        L = sum((o - 1) * r for o, r in zip(out, R)) + 1
        acc = xp.empty((N, g, m, L), dtype=xc.dtype)
        tmp = xp.empty_like(acc)
        for t, offs in enumerate(self.taps):
            phase = 0
            start = 0
            for i in range(nd):
                phase = phase * st[i] + offs[i] % st[i]
                start += (offs[i] // st[i]) * R[i]
            src = phases[phase][..., start:start + L]
            wt = self.wd_taps[t].reshape(g, m, 1)
            if t == 0:
                xp.multiply(src, wt, out=acc)
            else:
                xp.multiply(src, wt, out=tmp)
                acc += tmp
        isz = acc.itemsize
        view = xp.lib.stride_tricks.as_strided(
            acc, (N, M) + tuple(out), (acc.strides[0], L * isz) + tuple(r * isz for r in R))
        y[...] = view                    # the crop: a plain copy, then the bias over long rows
        if bias is not None:
            y.reshape(N, M, -1)[...] += bias.reshape(M, 1)

    def _depthwise_nhwc(self, xc, pb, pe, out, y, bias):
        """2-D depthwise conv (multiplier 1) channels-last: for images whose rows are too short for NCHW.

        The padded input is laid out (phase, row, C) (one plane per stride phase, every pixel's channels
        contiguous); each tap is then a contiguous range of rows, multiplied by the tap's weight row
        tiled over ``rows_per_block`` pixels so NumPy runs long contiguous loops.
        """
        xp = self.xp
        N, C, H, W = xc.shape
        (s1, s2), (o1, o2), (b1, b2) = self.strides, out, pb
        P1, P2 = H + pb[0] + pe[0], W + pb[1] + pe[1]
        Q1, Q2 = -(-P1 // s1), -(-P2 // s2)
        S = N * Q1 * Q2
        L = (N - 1) * Q1 * Q2 + (o1 - 1) * Q2 + o2
        rb = self.wd_rows
        Lp = -(-L // rb) * rb
        starts = [(a // s1) * Q2 + b // s2 for a, b in self.taps]
        planes = xp.zeros((s1 * s2, max(S, max(starts) + Lp), C), dtype=xc.dtype)
        for r1 in range(s1):
            q1 = max(0, -(-(b1 - r1) // s1))            # first plane row holding an input row
            h0 = q1 * s1 + r1 - b1
            n1 = len(range(h0, min(H, P1 - b1), s1))
            for r2 in range(s2):
                q2 = max(0, -(-(b2 - r2) // s2))
                w0 = q2 * s2 + r2 - b2
                n2 = len(range(w0, min(W, P2 - b2), s2))
                if n1 <= 0 or n2 <= 0:
                    continue
                dst = planes[r1 * s2 + r2, :S].reshape(N, Q1, Q2, C)[:, q1:q1 + n1, q2:q2 + n2]
                dst[...] = xc[:, :, h0:h0 + (n1 - 1) * s1 + 1:s1, w0:w0 + (n2 - 1) * s2 + 1:s2].transpose(0, 2, 3, 1)
        acc = xp.empty((Lp // rb, rb * C), dtype=xc.dtype)
        tmp = xp.empty_like(acc)
        for t, (a, b) in enumerate(self.taps):
            src = planes[(a % s1) * s2 + b % s2, starts[t]:starts[t] + Lp].reshape(acc.shape)
            if t == 0:
                xp.multiply(src, self.wd_rowtaps[t], out=acc)
            else:
                xp.multiply(src, self.wd_rowtaps[t], out=tmp)
                acc += tmp
        isz = acc.itemsize
        view = xp.lib.stride_tricks.as_strided(acc, (N, o1, o2, C), (Q1 * Q2 * C * isz, Q2 * C * isz, C * isz, isz))
        yt = y.transpose(0, 2, 3, 1)
        if bias is not None:
            xp.add(view, bias.reshape(C), out=yt)
        else:
            yt[...] = view


@array_kernel("Conv", since=1)
def conv(info):
    xp = info.xp
    attrs = info.attrs
    w = info.const_inputs[1] if len(info.const_inputs) > 1 else None
    if w is not None:
        shapes = tuple(info.input_shapes or ()) + (None,)
        xs = shapes[0]
        spatial = tuple(xs[2:]) if xs is not None and all(isinstance(d, int) for d in xs[2:]) else None
        plan = _ConvPlan(xp, attrs, w, winograd=True, spatial=spatial)

        def run_const(x, _w=None, b=None):
            return (plan(x, b),)
        run_const.plan = plan      # FusedConv calls the plan itself, to fuse a clip into the conv
        return run_const
    geo = {}

    def run(x, w, b=None):
        return (_ConvPlan(xp, attrs, w, geo)(x, b),)
    return run


# ---------------------------------------------------------------------------------------------
# ConvInteger / QLinearConv


def _zero_point_shift(xp, v, zp, per_channel_axis0, dtype=np.float64):
    """v - zero_point in ``dtype`` (exact for 8-bit data); zp is a scalar or, for weights, per output channel."""
    f = xp.asarray(v).astype(dtype)
    if zp is None:
        return f
    z = xp.asarray(zp).astype(dtype)
    if z.size == 1:
        return f - z.reshape(())
    if per_channel_axis0:
        return f - z.reshape((-1,) + (1,) * (f.ndim - 1))
    return f - z.reshape((1, -1) + (1,) * (f.ndim - 2))


class _IntConvPlan:
    """An exact integer conv (x - x_zp) * (w - w_zp) on float BLAS (see ``intgemm``): its weight in float32
    where the sums fit (as it is, or split in two parts stacked as extra output channels), else float64."""

    def __init__(self, xp, attrs, w, w_zp, geo, measure: bool):
        wc = _zero_point_shift(xp, w, w_zp, True)
        group = int(attrs.get("group", 1))
        K = math.prod(wc.shape[1:])                  # Cg x taps: the terms of each output's sum
        bmax = int(xp.abs(wc).max()) if measure and wc.size else intgemm.int_bound(w.dtype, w_zp)
        self.split = False
        if arrays(xp).host and K <= intgemm.chunk_size(255, bmax):
            wc = wc.astype(np.float32)
        elif arrays(xp).host and K <= intgemm.chunk_size(255, 2 ** intgemm.SPLIT_SHIFT):
            wc, self.split = intgemm.split_weight(wc, group).astype(np.float32), True
        self.group = group
        self.dtype = wc.dtype
        self.plan = _ConvPlan(xp, attrs, wc, geo)

    def __call__(self, xs):
        y = self.plan(xs)
        return intgemm.join_split(y, self.group) if self.split else y


def _int_conv_factory(info, w_idx, wzp_idx):
    """An exact integer convolution: fn(x, x_zp, w, w_zp) -> (x - x_zp) * (w - w_zp), integer-valued float32
    (where the sums fit its significand) or float64. The plan is made once when the weight and its zero
    point are both constants, its bound then measured on the weight itself.
    """
    xp = info.xp
    consts = tuple(info.const_inputs) + (None,) * 9
    has_wzp = len(info.input_names) > wzp_idx and info.input_names[wzp_idx] != ""
    static = consts[w_idx] is not None and (not has_wzp or consts[wzp_idx] is not None)
    geo = {}
    plan0 = _IntConvPlan(np, info.attrs, consts[w_idx], consts[wzp_idx] if has_wzp else None, geo, True) \
        if static and arrays(xp).host else None

    def conv_int(x, x_zp, w, w_zp):
        plan = plan0 if plan0 is not None else _IntConvPlan(xp, info.attrs, w, w_zp, geo, False)
        if plan.dtype == np.float32 and intgemm.int_bound(x.dtype, x_zp) > 255:
            plan = _IntConvPlan(xp, info.attrs, w, w_zp, geo, False)   # not 8-bit data: float64
        return plan(_zero_point_shift(xp, x, x_zp, False, plan.dtype))

    return conv_int


@kernel("ConvInteger", since=10)
def conv_integer(info):
    conv_int = _int_conv_factory(info, 1, 3)

    def run(x, w, x_zp=None, w_zp=None):
        return (conv_int(x, x_zp, w, w_zp).astype(np.int32),)

    return run


@kernel("QLinearConv", since=10)
def qlinear_conv(info):
    xp = info.xp
    conv_int = _int_conv_factory(info, 3, 5)

    def run(x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp, b=None):
        acc = conv_int(x, x_zp, w, w_zp)          # (N, M, o...) float32 or float64, integer-valued
        M = acc.shape[1]
        nd = acc.ndim - 2
        if b is not None:       # int32 bias: the exact sum in float64, rounded once below as before
            acc = acc.astype(np.float64, copy=False) + b.astype(np.float64).reshape((M,) + (1,) * nd)
        # requantized in float32 as onnxruntime does (scale = x_scale * w_scale / y_scale in float32, the
        # sum converted to float32): in float64 ties round differently and outputs move by one step
        ws = xp.asarray(w_scale).astype(np.float32)
        ws = ws.reshape((M,) + (1,) * nd) if ws.size > 1 else ws.reshape(())
        scale = xp.asarray(x_scale).astype(np.float32).reshape(()) * ws / \
            xp.asarray(y_scale).astype(np.float32).reshape(())
        y = xp.rint(acc.astype(np.float32) * scale)
        out_dt = np.dtype(y_zp.dtype) if y_zp is not None else np.dtype(np.uint8)
        if y_zp is not None:
            y += xp.asarray(y_zp).astype(np.float64).reshape(())
        lim = np.iinfo(out_dt)
        return (xp.clip(y, lim.min, lim.max).astype(out_dt),)

    return run


# ---------------------------------------------------------------------------------------------
# DeformConv


@kernel("DeformConv", since=19)
def deform_conv(info):
    """Deformable convolution: bilinear samples at offset tap positions (all taps at once), then matmul."""
    xp = info.xp
    a = info.attrs
    g = int(a.get("group", 1))
    og = int(a.get("offset_group", 1))

    def run(x, w, offset, b=None, mask=None):
        cdt = compute_dtype(x.dtype)
        N, C = x.shape[:2]
        spatial = tuple(x.shape[2:])
        n = len(spatial)
        M, Cg = w.shape[:2]
        kshape = tuple(_ints(a.get("kernel_shape"), n, 1)) if a.get("kernel_shape") else tuple(w.shape[2:])
        strides = _ints(a.get("strides"), n, 1)
        dil = _ints(a.get("dilations"), n, 1)
        pads = _ints(a.get("pads"), 2 * n, 0)
        K = math.prod(kshape)
        out = tuple(offset.shape[2:])
        P = math.prod(out)
        xc = x.astype(cdt, copy=False)
        off = offset.astype(cdt, copy=False).reshape((N, og, K, n) + out)
        # base sampling position per (tap, output position) and axis
        grids = np.meshgrid(*[np.arange(o) for o in out], indexing="ij")
        kgrids = np.meshgrid(*[np.arange(k) for k in kshape], indexing="ij")
        pos = []
        for i in range(n):
            base = (kgrids[i].reshape((K,) + (1,) * n) * dil[i] + grids[i][None] * strides[i] - pads[i])
            pos.append(xp.asarray(base.astype(cdt))[None, None] + off[:, :, :, i])   # (N, og, K, o...)
        # multilinear interpolation with zeros outside the input
        floors = [xp.floor(p) for p in pos]
        fracs = [p - f for p, f in zip(pos, floors)]
        floors = [f.astype(np.int64) for f in floors]
        cpg = C // og
        xg = xc.reshape(N, og, cpg, -1)
        samples = xp.zeros((N, og, cpg, K) + out, dtype=cdt)
        nidx = xp.arange(N).reshape((N, 1, 1) + (1,) * n)
        gidx = xp.arange(og).reshape((1, og, 1) + (1,) * n)
        for corner in itertools.product((0, 1), repeat=n):
            wgt = xp.ones_like(pos[0])
            flat = xp.zeros(pos[0].shape, dtype=np.int64)
            valid = xp.ones(pos[0].shape, dtype=bool)
            for i, c in enumerate(corner):
                idx = floors[i] + c
                wgt = wgt * (fracs[i] if c else (1 - fracs[i]))
                valid &= (idx >= 0) & (idx < spatial[i])
                flat = flat * spatial[i] + xp.clip(idx, 0, spatial[i] - 1)
            wgt = xp.where(valid, wgt, 0)
            # gather (N, og, cpg, K, o...) from xg[n, og, :, flat]
            vals = xg[nidx, gidx, :, flat]                        # (N, og, K, o..., cpg)
            vals = xp.moveaxis(vals, -1, 2)
            samples += vals * wgt[:, :, None]
        if mask is not None:
            msk = mask.astype(cdt, copy=False).reshape((N, og, 1, K) + out)
            samples *= msk
        cols = samples.reshape(N, g, Cg * K, P)
        wm = w.astype(cdt, copy=False).reshape(g, M // g, Cg * K)
        y = arrays(xp).matmul(wm, cols).reshape((N, M) + out)
        if b is not None:
            y += b.astype(cdt, copy=False).reshape((M,) + (1,) * n)
        return (y.astype(x.dtype, copy=False),)

    return run


__all__ = ["compute_dtype", "conv_geometry", "pad_spatial", "tap_offsets", "tap_slice", "window_view"]
