"""Exact integer matrix products on float BLAS, for the quantized ops (MatMulInteger, QLinearMatMul,
ConvInteger, QLinearConv; the com.microsoft ones may use it too).

An 8-bit product ``(a - a_zp) @ (b - b_zp)`` is a sum of K products of integers of at most 255 in
magnitude. float32 represents every integer up to 2**24 exactly, so when ``amax * bmax * K < 2**24``
every partial sum BLAS forms, in any order and with or without fused multiply-adds, is exact: one
float32 GEMM gives the exact result at float32 speed (float64 GEMMs run at half the rate on twice
the bytes). Where the bound is larger, the sum is split so each part fits:

- a matrix product splits K into chunks that fit, one float32 GEMM each, the chunks summed in float64
  (no extra multiplications);
- a convolution (whose K is channels x taps, inside the conv's own GEMM) splits its weight instead:
  ``w = hi * 16 + lo`` with ``lo`` in [0, 16), both parts stacked as extra output channels of one
  conv, recombined in float64 after it (see :func:`split_weight`).

``bmax`` of a constant weight is measured once when it is prepared (``IntMatrix``); an activation's
bound comes from its dtype and zero point. Where even a split cannot fit (16-bit operands, huge K),
float64 BLAS serves: exact while the bound stays under 2**53.
"""
from __future__ import annotations

import platform
import sys

import numpy as np

from engineroom.providers.cpu import _threadpool

EXACT_F32 = 2 ** 24
# K chunks shorter than this are not worth their GEMM calls: float64 instead
_MIN_CHUNK = 64
SPLIT_SHIFT = 4             # split_weight's lo part holds the low 4 bits
_F32 = np.dtype(np.float32)
_F64 = np.dtype(np.float64)


def int_bound(dtype, zp=None) -> int:
    """The largest |v - zp| for values v of an integer ``dtype`` and a zero point of the same type
    (``zp`` None: zero): the operand bound of an exact product."""
    info = np.iinfo(np.dtype(dtype))
    if zp is None:
        return max(abs(int(info.min)), int(info.max))
    z = np.asarray(zp)
    if z.size == 0:
        return max(abs(int(info.min)), int(info.max))
    zlo, zhi = int(z.min()), int(z.max())
    return max(int(info.max) - zlo, zhi - int(info.min))


def centered(v, zp, dtype=_F32, axis=-1):
    """v - zp as floats (integer-valued): ``zp`` a scalar, or one value per index of ``axis`` of v."""
    f = np.asarray(v).astype(dtype)
    if zp is None:
        return f
    z = np.asarray(zp).astype(dtype)
    if z.size == 1:
        f -= z.reshape(())
    else:
        shape = [1] * f.ndim
        shape[axis] = -1
        f -= z.reshape(shape)
    return f


def chunk_size(amax: int, bmax: int) -> int:
    """The longest K for which a float32 sum of K products of integers bounded by amax and bmax is exact."""
    return EXACT_F32 // max(1, int(amax) * int(bmax))


class IntMatrix:
    """A right-hand integer matrix (..., K, N) minus its zero point (per tensor or per column), prepared
    once for a constant weight: float32 copy where products fit float32 (in chunks of K), else float64."""

    __slots__ = ("f", "bmax", "chunk", "K")

    def __init__(self, b, zp=None, amax: int = 255, bmax: int | None = None):
        """``amax``: the bound of the left operands it will meet; ``bmax``: this matrix's bound where
        known (its dtype's, for a matrix used once), else measured (a constant weight's own)."""
        b64 = centered(b, zp, _F64)
        self.K = b64.shape[-2] if b64.ndim >= 2 else b64.shape[0]
        self.bmax = bmax if bmax is not None else (int(np.abs(b64).max()) if b64.size else 0)
        self.chunk = chunk_size(amax, self.bmax)
        self.f = b64.astype(_F32) if self.chunk >= min(self.K, _MIN_CHUNK) else b64

    def matmul(self, a, amax: int | None = None):
        """``a @ self`` exactly, for an integer-valued float ``a`` (..., M, K) whose |values| are at most
        ``amax`` (default: the bound this matrix was prepared for, which ``amax`` may only lower; a
        tighter one, e.g. from the zero point a dynamic quantization chose, means fewer K chunks):
        float32 or float64, integer-valued."""
        chunk = self.chunk if amax is None else max(self.chunk, chunk_size(amax, self.bmax))
        return exact_matmul(a, self.f, chunk)


def exact_matmul(a, b, chunk: int):
    """a @ b for integer-valued a, b whose products fit float32 over ``chunk`` terms (see ``chunk_size``).

    ``b`` float64 (a bound past float32) runs in float64; else one float32 GEMM per chunk of K, chunks
    summed in float64. N-D ``a`` times a 2-D ``b`` is one 2-D GEMM."""
    if b.dtype == _F64:
        return _mm(a.astype(_F64, copy=False), b)
    a = a.astype(_F32, copy=False)
    K = a.shape[-1]
    if K <= chunk:
        return _mm(a, b)
    acc = None
    for k0 in range(0, K, chunk):
        part = _mm(a[..., k0:k0 + chunk], b[k0:k0 + chunk] if b.ndim == 1 else b[..., k0:k0 + chunk, :])
        if acc is None:
            acc = part.astype(_F64)
        else:
            acc += part
    return acc


def _mm(a, b):
    if b.ndim == 2 and a.ndim > 2 and a.flags.c_contiguous:
        return np.matmul(a.reshape(-1, a.shape[-1]), b).reshape(a.shape[:-1] + (b.shape[1],))
    return np.matmul(a, b)


def split_weight(w, group: int):
    """A conv weight (M, Cg, k...) of integers as (2M, Cg, k...): per group, its ``hi`` rows then its ``lo``
    rows, ``w = hi * 2**SPLIT_SHIFT + lo`` with ``0 <= lo < 2**SPLIT_SHIFT`` (so each part is at most 16
    in magnitude for 8-bit weights). :func:`join_split` recombines the conv's output."""
    w = np.asarray(w, dtype=_F64)
    hi = np.floor(w / 2 ** SPLIT_SHIFT)
    lo = w - hi * 2 ** SPLIT_SHIFT
    M = w.shape[0]
    parts = np.stack([hi.reshape((group, M // group) + w.shape[1:]), lo.reshape((group, M // group) + w.shape[1:])],
                     axis=1)                         # (group, 2, M/group, Cg, k...)
    return parts.reshape((2 * M,) + w.shape[1:])


def join_split(y, group: int):
    """The output (N, 2M, o...) of a conv with a :func:`split_weight` weight as the original conv's
    (N, M, o...), in float64 (exact)."""
    N, M2 = y.shape[:2]
    v = y.reshape((N, group, 2, M2 // (2 * group)) + y.shape[2:])
    out = v[:, :, 0].astype(_F64)
    out *= 2 ** SPLIT_SHIFT
    out += v[:, :, 1]
    return out.reshape((N, M2 // 2) + y.shape[2:])


# --------------------------------------------------------------------------------------------------
# 8-bit products on the compiled VNNI kernel (``_jit_int8``)

# (a - za)(b - zb) summed over K stays within int32 while K * 255 * 255 < 2**31: the kernel's int32
# lanes wrap, and the corrections below are taken modulo 2**32 too, so the result is exact up to here
INT8_MAX_K = (2 ** 31 - 1) // (255 * 255)
_VNNI: bool | None = None   # whether the compiled module is the VNNI build (known once it loads)
_AMX: np.ndarray | None = None  # the AMX tile configuration where the tile kernels may run (amx_config)
_AMX_ASKED = False


def int8_kernels():
    """The compiled ``_jit_int8`` module where it runs on VNNI instructions, else None (not built yet, no
    numba, or a CPU without VNNI: float32 BLAS serves then)."""
    global _VNNI
    from engineroom.providers.cpu.array_module import arrays

    mod = arrays(np).compiled("int8")
    if mod is None:
        return None                     # not built (yet), or the NumPy paths asked for
    if _VNNI is None:
        flag = np.zeros(2, np.uint8)
        mod.vnni(flag)
        _VNNI = bool(flag[0])
        if flag[1]:
            _ask_for_tiles()
    return mod if _VNNI else None


def _ask_for_tiles() -> None:
    """Ask Linux for the AMX tile state (arch_prctl ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA: without it the
    first tile instruction kills the process) and make the tile configuration the AMX kernels load: tiles
    0-7 of 16 rows of 64 bytes. Nothing where the request fails (another OS, an older kernel)."""
    global _AMX, _AMX_ASKED
    if _AMX_ASKED:
        return
    _AMX_ASKED = True
    if not sys.platform.startswith("linux") or platform.machine() != "x86_64":
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.syscall(158, 0x1023, 18) != 0:        # SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XTILEDATA
            return
    except (OSError, AttributeError):
        return
    cfg = np.zeros(64, np.uint8)
    cfg[0] = 1                                        # palette 1
    cfg[16:48].view(np.uint16)[:8] = 64               # bytes a row, tiles 0-7
    cfg[48:56] = 16                                   # rows
    _AMX = cfg


def amx_config() -> np.ndarray | None:
    """The tile configuration for ``_jit_int8.gemm_u8s8_amx*`` where they may run (the module built for a
    host with AMX and the tile state granted to this process), else None. ``int8_kernels`` asks first."""
    return _AMX if int8_kernels() is not None else None


# below this many multiply-adds one thread does the product: waking a worker costs tens of microseconds
# (T5's products, 2^24.6 to 2^26.6 multiply-adds, take 0.1 to 0.4 ms on one thread)
_INT8_PARALLEL_MACS = 1 << 24
# blocks per thread: claimed one at a time, so a thread whose core is taken delays only the block it holds;
# few, since each is a call of its own (microseconds of argument checks)
_INT8_BLOCKS_PER_THREAD = 2
_gate = _threadpool.SplitGate()


def _panels_over_pool(fn, a2, c, rest, panels: int, macs: int) -> None:
    """``fn(a2, *rest, c, p0, p1)`` (a compiled kernel that releases the GIL) over B's panels 0..panels,
    split over the CPU provider's worker pool (``_threadpool``) where the product is large enough, the
    pool has threads and splitting pays (``_threadpool.SplitGate``): by column blocks where B has panels enough (each
    thread then reads only its share of B), else by blocks of rows (a product with few columns and many
    rows: tashkeel's attention score, 8192 x 512 by 512 x 1)."""
    threads = _pool_threads(_threadpool) if macs >= _INT8_PARALLEL_MACS else 1
    parts = threads * _INT8_BLOCKS_PER_THREAD
    M = a2.shape[0]
    if threads > 1 and panels >= parts:
        step = -(-panels // parts)
        args = [(a2, *rest, c, p, min(p + step, panels)) for p in range(0, panels, step)]
    elif threads > 1 and M >= 4 * parts:
        step = -(-M // parts) // 4 * 4 or 4        # whole micro-kernel rows each
        args = [(a2[i:i + step], *rest, c[i:i + step], 0, panels) for i in range(0, M, step)]
    else:
        fn(a2, *rest, c, 0, panels)
        return
    _threadpool.gated(_gate, macs, lambda: _threadpool._pool(threads).run(fn, args),
                      lambda: fn(a2, *rest, c, 0, panels))


def _with_tiles(kern, name: str, a2):
    """The kernel ``name`` of ``kern``, or its AMX form (the tile configuration bound as its last argument)
    where AMX runs here and A has a block of 32 rows to give it."""
    cfg = _AMX
    if cfg is None or a2.shape[0] < 32:
        return getattr(kern, name)
    amx = getattr(kern, name.replace("gemm_u8s8", "gemm_u8s8_amx"))
    return lambda *args: amx(*args, cfg)


def _pool_threads(tp) -> int:
    """The pool's size as ``_threadpool.matmul`` takes it: BLAS's thread count outside the provider's
    calls (what ``intra_op_num_threads`` set), read without changing it."""
    return tp._blas.outside()


class Int8Matrix:
    """A constant 8-bit right-hand matrix (K, N) and its zero point (per tensor or per column), packed once
    for ``_jit_int8.gemm_u8s8``: signed bytes (uint8 weights shifted by 128, the zero point with them), in
    panels of 32 columns, (K/4, 32, 4) each, K and N padded with zeros; and its column sums, for the zero
    point of A."""

    __slots__ = ("K", "N", "Kp", "packed", "colsum", "zb", "panels", "_corr")

    def __init__(self, b, zp=None):
        b = np.asarray(b)
        self.K, self.N = b.shape
        shift = 128 if b.dtype == np.uint8 else 0
        bs = (b ^ np.uint8(128)).view(np.int8) if shift else b.view(np.int8)    # uint8 v as int8 v - 128
        zb = np.zeros(1, np.int64) if zp is None else np.asarray(zp).astype(np.int64).reshape(-1)
        zb = zb - shift
        self.zb = zb if zb.any() else None
        self.colsum = bs.sum(axis=0, dtype=np.int64)
        self.Kp = -(-self.K // 64) * 64      # the AMX tiles take K in steps of 64 (zeros add nothing)
        self.panels = -(-self.N // 32)
        full = bs
        if (self.Kp, self.panels * 32) != bs.shape:
            full = np.zeros((self.Kp, self.panels * 32), np.int8)
            full[:self.K, :self.N] = bs
        packed = full.reshape(self.Kp // 4, 4, self.panels, 32).transpose(2, 0, 3, 1)
        self.packed = np.ascontiguousarray(packed).reshape(-1, 128).view(np.uint8)
        self._corr: dict[int, np.ndarray] = {}      # za -> za * colsum as the kernel takes it (256 at most)

    @staticmethod
    def fits(b) -> bool:
        """Whether a constant B can be packed: 8-bit, 2-D, K within :data:`INT8_MAX_K`."""
        return b.ndim == 2 and b.dtype in (np.uint8, np.int8) and 0 < b.shape[0] <= INT8_MAX_K

    def _rows(self, a, za: int):
        """A as the kernel takes it: unsigned bytes (M padded to 4, K to the packing's), its zero point."""
        if a.ndim < 1 or a.shape[-1] != self.K:
            raise ValueError(f"the product's inner dimensions differ: A {a.shape} against B ({self.K}, {self.N})")
        if a.dtype == np.int8:          # signed A as unsigned bytes: a + 128, its zero point with it
            a = a.view(np.uint8) ^ np.uint8(128)
            za += 128
        a2 = a.reshape(-1, self.K)
        M = a2.shape[0]
        Mp = -(-M // 4) * 4
        if Mp != M or self.Kp != self.K or not a2.flags.c_contiguous:
            buf = np.zeros((Mp, self.Kp), np.uint8)
            buf[:M, :self.K] = a2
            a2 = buf
        return a2, M, za

    def matmul_scaled(self, a, za: int, scale, kern):
        """float32((a - za) @ (B - zb)) * scale, (..., N) float32 (one rounding each, as a Cast and a float32
        Mul of the exact product give): ``scale`` float32, per tensor or per column. The correction and the
        scaling run inside the kernel; None where B has a zero point (use :meth:`matmul`)."""
        if self.zb is not None:
            return None
        lead = a.shape[:-1]
        a2, M, za = self._rows(a, za)
        width = self.panels * 32
        corr = self._corr.get(za)
        if corr is None:
            corr = np.zeros(width, np.int32)
            corr[:self.N] = (za * self.colsum).astype(np.int32)   # modulo 2**32, as the kernel's lanes
            corr = self._corr.setdefault(za, corr.view(np.uint8))
        mult = np.empty(width, np.float32)
        mult[:self.N] = scale
        mult[self.N:] = 0
        c = np.empty((a2.shape[0], width), np.float32)
        _panels_over_pool(_with_tiles(kern, "gemm_u8s8_scaled", a2), a2, c, (self.packed, corr, mult), self.panels,
                          a2.shape[0] * self.Kp * width)
        if c.shape != (M, self.N):
            c = c[:M, :self.N]
        return c.reshape(lead + (self.N,))

    def matmul(self, a, za: int, kern):
        """(a - za) @ (B - zb) exactly, int32 (..., N): ``a`` uint8 or int8 (..., K), ``za`` its zero point (an
        integer), ``kern`` the module :func:`int8_kernels` gave."""
        lead = a.shape[:-1]
        a2, M, za = self._rows(a, za)
        c = np.empty((a2.shape[0], self.panels * 32), np.int32)
        _panels_over_pool(_with_tiles(kern, "gemm_u8s8", a2), a2, c.view(np.uint8), (self.packed,), self.panels,
                          a2.shape[0] * self.Kp * self.panels * 32)
        # (a - za)(b - zb) = ab - za * colsum(b) - zb * rowsum(a) + K * za * zb, in int32 modulo 2**32
        acc = c[:M, :self.N] - (za * self.colsum).astype(np.int32)
        if self.zb is not None:
            rows = a2[:M, :self.K].sum(axis=1, dtype=np.int64)
            acc -= (rows[:, None] * self.zb).astype(np.int32)
            acc += (self.K * za * self.zb).astype(np.int32)
        return acc.reshape(lead + (self.N,))
