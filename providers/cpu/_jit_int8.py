"""Compiled (numba) 8-bit integer matrix product: uint8 x int8 -> int32, exact, with AVX-512 VNNI.

``vpdpbusd`` multiplies 64 unsigned bytes by 64 signed bytes and adds each group of four products to a
32-bit lane: four times the multiply-adds of a float32 FMA per instruction, and exact (the lanes wrap
modulo 2**32, which the callers' results fit). LLVM does not form it from plain loops (it widens to 16
bits), so the micro-kernel is written as LLVM IR through a numba intrinsic: 4 rows of A by 32 columns of
B, eight accumulators in registers, the loop over K in steps of 4.

B is packed once (``intgemm.Int8Matrix``): panels of 32 columns, each (K/4, 32, 4) bytes, so one
64-byte load holds four K steps of 16 columns. A is (M, K) uint8 with M a multiple of 4 and K of 4
(callers pad with zeros, which add nothing).

On a CPU without VNNI the same IR is built from generic vector ops (widen, multiply, add groups of four),
so the module always compiles; :func:`vnni` says which one was built and the callers use the kernel only
where it is the VNNI one (float32 BLAS is faster than the generic form).
"""
from __future__ import annotations

import llvmlite.binding as _llvm
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core.extending import intrinsic

# the AMX kernels are inline assembly: the object emitter needs the host's assembly parser (the
# ahead-of-time build does not set it up by itself)
_llvm.initialize_native_asmparser()

MR = 4          # rows of A per micro-kernel
NR = 32         # columns of B per panel (two 16-lane accumulators per row)
_I8, _I32, _I64 = ir.IntType(8), ir.IntType(32), ir.IntType(64)
_V16 = ir.VectorType(_I32, 16)
_B64 = ir.VectorType(_I8, 64)


def _host_has_vnni() -> bool:
    import llvmlite.binding as llvm

    f = llvm.get_host_cpu_features()
    return bool(f.get("avx512vnni")) and bool(f.get("avx512bw"))


def _dot4(builder, acc, a_splat, b):
    """acc + per lane the sum of four u8(a) * s8(b) products: vpdpbusd, or generic IR that computes it."""
    mod = builder.module
    if _host_has_vnni():
        name = "llvm.x86.avx512.vpdpbusd.512"
        fn = mod.globals.get(name) or ir.Function(mod, ir.FunctionType(_V16, [_V16, _V16, _V16]), name)
        return builder.call(fn, [acc, a_splat, b])
    wide = ir.VectorType(_I32, 64)
    prod = builder.mul(builder.zext(builder.bitcast(a_splat, _B64), wide),
                       builder.sext(builder.bitcast(b, _B64), wide))
    for j in range(4):
        part = builder.shuffle_vector(prod, ir.Constant(wide, ir.Undefined),
                                      ir.Constant(ir.VectorType(_I32, 16), [4 * i + j for i in range(16)]))
        acc = builder.add(acc, part)
    return acc


def _products(builder, a_p, lda, b_p, k4):
    """The loop over K of one micro-kernel: the (MR, NR/16) int32 accumulators, the builder left after it."""
    entry = builder.basic_block
    loop = builder.append_basic_block("int8.loop")
    done = builder.append_basic_block("int8.done")
    zero = ir.Constant(_V16, None)
    builder.cbranch(builder.icmp_signed(">", k4, ir.Constant(_I64, 0)), loop, done)
    builder.position_at_end(loop)
    k = builder.phi(_I64)
    k.add_incoming(ir.Constant(_I64, 0), entry)
    accs = [[builder.phi(_V16) for _ in range(NR // 16)] for _ in range(MR)]
    for row in accs:
        for p in row:
            p.add_incoming(zero, entry)
    boff = builder.mul(k, ir.Constant(_I64, 4 * NR))
    bv = [builder.load(builder.bitcast(builder.gep(b_p, [builder.add(boff, ir.Constant(_I64, 64 * j))]),
                                       _V16.as_pointer()), align=1) for j in range(NR // 16)]
    k_bytes = builder.mul(k, ir.Constant(_I64, 4))
    new = []
    for r in range(MR):
        ptr = builder.gep(a_p, [builder.add(builder.mul(ir.Constant(_I64, r), lda), k_bytes)])
        a4 = builder.load(builder.bitcast(ptr, _I32.as_pointer()), align=1)
        splat = builder.shuffle_vector(builder.insert_element(ir.Constant(_V16, ir.Undefined), a4,
                                                              ir.Constant(_I32, 0)),
                                       ir.Constant(_V16, ir.Undefined), ir.Constant(_V16, None))
        new.append([_dot4(builder, accs[r][j], splat, bv[j]) for j in range(NR // 16)])
    k1 = builder.add(k, ir.Constant(_I64, 1))
    k.add_incoming(k1, loop)
    for r in range(MR):
        for j in range(NR // 16):
            accs[r][j].add_incoming(new[r][j], loop)
    builder.cbranch(builder.icmp_signed("<", k1, k4), loop, done)
    builder.position_at_end(done)
    res = [[builder.phi(_V16) for _ in range(NR // 16)] for _ in range(MR)]   # phis first in a block
    for r in range(MR):
        for j in range(NR // 16):
            res[r][j].add_incoming(zero, entry)
            res[r][j].add_incoming(new[r][j], loop)
    return res


def _at(builder, base, off, ty):
    return builder.bitcast(builder.gep(base, [off]), ty.as_pointer())


@intrinsic
def _micro(typingctx, a_addr, lda, b_addr, c_addr, ldc, k4):
    """C[0:MR, 0:NR] = A[0:MR, 0:4*k4] @ panel (int32, stored); addresses and row strides in bytes."""
    sig = types.void(types.int64, types.int64, types.int64, types.int64, types.int64, types.int64)

    def codegen(context, builder, signature, args):
        a_addr, lda, b_addr, c_addr, ldc, k4 = args
        i8p = _I8.as_pointer()
        a_p, b_p, c_p = (builder.inttoptr(v, i8p) for v in (a_addr, b_addr, c_addr))
        res = _products(builder, a_p, lda, b_p, k4)
        for r in range(MR):
            for j in range(NR // 16):
                off = builder.add(builder.mul(ir.Constant(_I64, r), ldc), ir.Constant(_I64, 64 * j))
                builder.store(res[r][j], _at(builder, c_p, off, _V16), align=1)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _micro_scaled(typingctx, a_addr, lda, b_addr, c_addr, ldc, k4, corr_addr, scale_addr):
    """C[0:MR, 0:NR] = float32(A @ panel - corr) * scale (float32, stored): corr (NR,) int32 and scale (NR,)
    float32 per column. The conversion rounds to nearest even and the product is one float32 multiply,
    the numbers of NumPy's astype and multiply."""
    sig = types.void(*(types.int64,) * 8)

    def codegen(context, builder, signature, args):
        a_addr, lda, b_addr, c_addr, ldc, k4, corr_addr, scale_addr = args
        i8p = _I8.as_pointer()
        a_p, b_p, c_p, z_p, s_p = (builder.inttoptr(v, i8p) for v in (a_addr, b_addr, c_addr, corr_addr, scale_addr))
        res = _products(builder, a_p, lda, b_p, k4)
        f16 = ir.VectorType(ir.FloatType(), 16)
        for j in range(NR // 16):
            off = ir.Constant(_I64, 64 * j)
            corr = builder.load(_at(builder, z_p, off, _V16), align=1)
            scale = builder.load(_at(builder, s_p, off, f16), align=1)
            for r in range(MR):
                v = builder.sitofp(builder.sub(res[r][j], corr), f16)
                off_c = builder.add(builder.mul(ir.Constant(_I64, r), ldc), off)
                builder.store(builder.fmul(v, scale), _at(builder, c_p, off_c, f16), align=1)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _prefetch(typingctx, addr):
    """Prefetch the cache line at ``addr`` (bytes) for reading."""
    sig = types.void(types.int64)

    def codegen(context, builder, signature, args):
        fnty = ir.FunctionType(ir.VoidType(), [_I8.as_pointer(), _I32, _I32, _I32])
        fn = builder.module.globals.get("llvm.prefetch.p0") or ir.Function(builder.module, fnty, "llvm.prefetch.p0")
        builder.call(fn, [builder.inttoptr(args[0], _I8.as_pointer()), ir.Constant(_I32, 0), ir.Constant(_I32, 3),
                          ir.Constant(_I32, 1)])
        return context.get_dummy_value()

    return sig, codegen


@njit(nogil=True, boundscheck=False, inline="always")
def _prefetch_share(next_panel, panel_bytes, block, blocks):  # pragma: no cover (compiled)
    """The block-th of ``blocks`` shares of the next panel's cache lines: streamed in while this panel's
    row blocks run from L1 (the first block of each panel otherwise waits on memory: weights are read
    once per run, 18 MB in T5's encoder; 56 cold products 9.3 -> 8.6 ms)."""
    lines = panel_bytes // 64
    per = (lines + blocks - 1) // blocks
    for line in range(block * per, min((block + 1) * per, lines)):
        _prefetch(next_panel + line * 64)


# --- AMX (Sapphire Rapids and later): tdpbusd multiplies a 16 x 64 tile of unsigned bytes by a 16 x 64 tile
# of signed bytes in the same four-K-steps-per-column layout as the packed panels (16 columns of one panel
# are a tile: 16 rows of K/4 at a 128-byte stride), into a 16 x 16 int32 tile: 16,384 multiply-adds an
# instruction. Tiles 0, 1: 32 rows of A; 2, 3: the panel's two halves; 4-7: the 32 x 32 int32 block of C.
# Written as inline assembly: the ahead-of-time build targets the host CPU by name, which LLVM may not know
# to have AMX (a VM's "rocketlake"), so the tile intrinsics would not select; the assembler takes them. The
# process must ask the kernel for the tile state first (``intgemm.amx_config``), else the first tile
# instruction faults; the caller passes the 64-byte tile configuration it made then.

def _asm(builder, text, constraint, args):
    fnty = ir.FunctionType(ir.VoidType(), [a.type for a in args])
    builder.call(ir.InlineAsm(fnty, text, constraint + ",~{memory}" if constraint else "~{memory}",
                              side_effect=True), args)


@intrinsic
def _amx_begin(typingctx, cfg_addr):
    """ldtilecfg: the tiles' shapes for this thread (the 64-byte configuration at cfg_addr)."""
    sig = types.void(types.int64)

    def codegen(context, builder, signature, args):
        _asm(builder, "ldtilecfg ($0)", "r", [builder.inttoptr(args[0], _I8.as_pointer())])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _amx_end(typingctx):
    """tilerelease: the tile state back to its initial (cheap to save) form."""
    sig = types.void()

    def codegen(context, builder, signature, args):
        _asm(builder, "tilerelease", "", [])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _amx_block(typingctx, a_addr, lda, b_addr, c_addr, ldc, k64):
    """C (32 x 32 int32 at c_addr, row stride ldc bytes) = A (32 rows at a_addr, row stride lda) @ the panel at
    b_addr (K/4 rows of 128 bytes), K = 64 * k64: exact, wrapping as vpdpbusd."""
    sig = types.void(*(types.int64,) * 6)

    def codegen(context, builder, signature, args):
        a_addr, lda, b_addr, c_addr, ldc, k64 = args
        p8 = _I8.as_pointer()

        def load(tile, addr, stride):
            _asm(builder, f"tileloadd ($0,$1,1), %tmm{tile}", "r,r", [builder.inttoptr(addr, p8), stride])

        for n in (4, 5, 6, 7):
            _asm(builder, f"tilezero %tmm{n}", "", [])
        entry = builder.basic_block
        loop = builder.append_basic_block("amx.loop")
        done = builder.append_basic_block("amx.done")
        builder.cbranch(builder.icmp_signed(">", k64, ir.Constant(_I64, 0)), loop, done)
        builder.position_at_end(loop)
        k = builder.phi(_I64)
        k.add_incoming(ir.Constant(_I64, 0), entry)
        a0 = builder.add(a_addr, builder.mul(k, ir.Constant(_I64, 64)))
        b0 = builder.add(b_addr, builder.mul(k, ir.Constant(_I64, 16 * 4 * NR)))
        stride_b = ir.Constant(_I64, 4 * NR)
        load(0, a0, lda)
        load(1, builder.add(a0, builder.mul(lda, ir.Constant(_I64, 16))), lda)
        load(2, b0, stride_b)
        load(3, builder.add(b0, ir.Constant(_I64, 64)), stride_b)
        for c_tile, a_tile, b_tile in ((4, 0, 2), (5, 0, 3), (6, 1, 2), (7, 1, 3)):
            _asm(builder, f"tdpbusd %tmm{b_tile}, %tmm{a_tile}, %tmm{c_tile}", "", [])    # C += A . B
        k1 = builder.add(k, ir.Constant(_I64, 1))
        k.add_incoming(k1, loop)
        builder.cbranch(builder.icmp_signed("<", k1, k64), loop, done)
        builder.position_at_end(done)
        c2 = builder.add(c_addr, builder.mul(ldc, ir.Constant(_I64, 16)))
        for n, cp in ((4, c_addr), (5, builder.add(c_addr, ir.Constant(_I64, 64))), (6, c2),
                      (7, builder.add(c2, ir.Constant(_I64, 64)))):
            _asm(builder, f"tilestored %tmm{n}, ($0,$1,1)", "r,r", [builder.inttoptr(cp, p8), ldc])
        return context.get_dummy_value()

    return sig, codegen


def _host_has_amx() -> bool:
    import llvmlite.binding as llvm

    f = llvm.get_host_cpu_features()
    return bool(f.get("amx-int8")) and bool(f.get("amx-tile"))


def _flag(test):
    """A compiled constant: 1 where ``test()`` held on the machine that built the module, else 0."""
    @intrinsic
    def flag(typingctx):
        def codegen(context, builder, signature, args):
            return ir.Constant(_I64, 1 if test() else 0)

        return types.int64(), codegen

    return flag


_vnni_flag = _flag(_host_has_vnni)
_amx_flag = _flag(_host_has_amx)


@njit(nogil=True, boundscheck=False, inline="always")
def _drive(a, b0, c0, ldc, p0, p1, z0, s0, scaled):  # pragma: no cover (compiled)
    """Every row block of ``a`` by panels p0..p1 (the columns p0 * NR .. p1 * NR of C), the next panel
    streamed in meanwhile; ``scaled``: the float32 micro-kernel (corrections at z0, scales at s0), else
    the int32 one. A panel range lets the caller's threads share one product by columns, each reading
    only its own share of B (the larger operand: 1 MB against A's 48 KB in T5's feed-forward)."""
    M = a.shape[0]
    k4 = a.shape[1] // 4
    lda = a.shape[1]
    a0 = a.ctypes.data
    pbytes = k4 * 4 * NR
    blocks = M // MR
    for p in range(p0, p1):
        for i in range(blocks):
            if p + 1 < p1:
                _prefetch_share(b0 + (p + 1) * pbytes, pbytes, i, blocks)
            at, bt, ct = a0 + i * MR * lda, b0 + p * pbytes, c0 + i * MR * ldc + p * NR * 4
            if scaled:
                _micro_scaled(at, lda, bt, ct, ldc, k4, z0 + p * NR * 4, s0 + p * NR * 4)
            else:
                _micro(at, lda, bt, ct, ldc, k4)


@njit(nogil=True, boundscheck=False)
def gemm_u8s8(a, bp, c, p0, p1):  # pragma: no cover (compiled)
    """c[:, p0 * 32:p1 * 32] = a @ B's panels p0..p1 exactly (int32, wrapping): a (M, K) uint8, M and K
    multiples of 4; bp the packed B as bytes (panels * K/4, 128); c the bytes of an int32 (M, panels * 32)
    array."""
    _drive(a, bp.ctypes.data, c.ctypes.data, c.shape[1], p0, min(p1, c.shape[1] // (4 * NR)), 0, 0, False)


@njit(nogil=True, boundscheck=False)
def gemm_u8s8_scaled(a, bp, corr, scale, c, p0, p1):  # pragma: no cover (compiled)
    """c = float32(a @ B - corr) * scale over panels p0..p1 (columns p0 * 32 .. p1 * 32), exactly rounded
    once each: a and bp as for gemm_u8s8; corr the bytes of an int32 (panels * 32,) array, scale float32
    (panels * 32,), c float32 (M, panels * 32)."""
    _drive(a, bp.ctypes.data, c.ctypes.data, c.shape[1] * 4, p0, min(p1, c.shape[1] // NR), corr.ctypes.data,
           scale.ctypes.data, True)


@njit(nogil=True)
def vnni(out):  # pragma: no cover (compiled)
    """out[0] = 1 where gemm_u8s8 was built with VNNI instructions, else 0; out[1] = 1 where the host has AMX
    (the gemm_u8s8_amx kernels may run, once the process has the tile state)."""
    out[0] = np.uint8(_vnni_flag())
    out[1] = np.uint8(_amx_flag())


@njit(nogil=True, boundscheck=False)
def gemm_u8s8_amx(a, bp, c, p0, p1, cfg):  # pragma: no cover (compiled)
    """gemm_u8s8 with whole blocks of 32 rows on AMX tiles (K a multiple of 64), the rows left on the VNNI
    micro-kernel; cfg the 64-byte tile configuration (``intgemm.amx_config``)."""
    M, K = a.shape
    m32 = M // 32 * 32 if K % 64 == 0 else 0
    ldc = c.shape[1]
    p1 = min(p1, ldc // (4 * NR))
    pbytes = (K // 4) * 4 * NR
    if m32:
        a0, b0, c0 = a.ctypes.data, bp.ctypes.data, c.ctypes.data
        _amx_begin(cfg.ctypes.data)
        for p in range(p0, p1):
            for i in range(0, m32, 32):
                _amx_block(a0 + i * K, K, b0 + p * pbytes, c0 + i * ldc + p * NR * 4, ldc, K // 64)
        _amx_end()
    if m32 < M:
        _drive(a[m32:], bp.ctypes.data, c.ctypes.data + m32 * ldc, ldc, p0, p1, 0, 0, False)


@njit(nogil=True, boundscheck=False)
def gemm_u8s8_amx_scaled(a, bp, corr, scale, c, p0, p1, cfg):  # pragma: no cover (compiled)
    """gemm_u8s8_scaled with whole blocks of 32 rows on AMX tiles, as gemm_u8s8_amx: the int32 products into
    a scratch array, then float32(product - corr) * scale (one rounding each: the micro-kernel's numbers)."""
    M, K = a.shape
    m32 = M // 32 * 32 if K % 64 == 0 else 0
    width = c.shape[1]
    p1 = min(p1, width // NR)
    pbytes = (K // 4) * 4 * NR
    if m32 and p1 > p0:
        # the int32 blocks of all the panels first, then one pass converts them (a contiguous loop that
        # vectorizes; converting each block as it comes cost as much as the tiles' products)
        cols = (p1 - p0) * NR
        tmp = np.empty((m32, cols), np.int32)
        cw = corr.view(np.int32)
        a0, b0, t0 = a.ctypes.data, bp.ctypes.data, tmp.ctypes.data
        _amx_begin(cfg.ctypes.data)
        for p in range(p0, p1):
            for i in range(0, m32, 32):
                _amx_block(a0 + i * K, K, b0 + p * pbytes, t0 + (i * cols + (p - p0) * NR) * 4, cols * 4, K // 64)
        _amx_end()
        # the difference is the exact sum of (a - za) b, within int32 (INT8_MAX_K): no wrap to emulate
        cz = cw[p0 * NR:p1 * NR]
        sz = scale[p0 * NR:p1 * NR]
        for r in range(m32):
            tr = tmp[r]
            cr = c[r, p0 * NR:p1 * NR]
            for j in range(cols):
                cr[j] = np.float32(tr[j] - cz[j]) * sz[j]
    if m32 < M:
        _drive(a[m32:], bp.ctypes.data, c.ctypes.data + m32 * width * 4, width * 4, p0, p1, corr.ctypes.data,
               scale.ctypes.data, True)


# the variants compiled ahead of time (see _jit): argument kinds, dtypes (bytes only: the variant dtype is
# unused)
AOT = {
    "gemm_u8s8": ("U2 U2 U2 i i", ("f4",)),
    "gemm_u8s8_scaled": ("U2 U2 U1 A1 A2 i i", ("f4",)),
    "vnni": ("U1", ("f4",)),
    "gemm_u8s8_amx": ("U2 U2 U2 i i U1", ("f4",)),
    "gemm_u8s8_amx_scaled": ("U2 U2 U1 A1 A2 i i U1", ("f4",)),
}
