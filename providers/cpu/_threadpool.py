"""The CPU provider's own worker pool: GEMMs and compiled loops split into parts that the calling thread
and the pool's workers claim one at a time, each part a single-threaded BLAS call or loop.

Why not OpenBLAS's own threads: OpenBLAS splits a GEMM statically, one equal share per thread, and
its threads spin while they wait. When another process holds one of the cores, the share scheduled
there finishes late and every GEMM waits for it (mobilenet_v2 went from 25 ms to 710 ms with a busy
process on the second core). Here the caller starts on the first part at once, a worker joins when
it is free, and whichever thread is free takes the next part, so a descheduled thread delays at most
the one part it holds.

Which mode a run takes (the provider's ``run_scope``: ``_begin``/``_end``):
- while other processes keep one of our cores busy (``_Load``: their CPU time in /proc/stat over 0.1 s
  windows, no probing), the steady mode: only large GEMMs and loops split, workers sleep between them.
  With other processes on the machine OpenBLAS's threads ran 2-100x slower (bert_mini 24-935 ms against
  12-13, gpt2_tiny 21-1028 against 9). Python workers hold the GIL between their parts, so a worker
  preempted there stalls the caller whatever the chunking: the caller takes late GEMM chunks back
  (``_GemmTask``) and after a stall the pool stands aside for a while (``_Calm``);
- on a quiet machine, the quick mode: workers spin between parts in compiled waits with the GIL released
  (``compiled/_jit_sync``), so a part reaches a worker in 10-40 us, not a 50-100 us wake-up, and loops
  from 512K units split over them. GEMMs from 1M multiply-adds and the main compiled loops (conv
  epilogues, channels-last depthwise and 3x3 "same" channels-first depthwise, Winograd transforms, im2col
  and its band convs, col2im, attention heads: ``compiled/_jit_par``'s ``_LOOPS``) from 32K units split
  inside one compiled call instead
  (``WorkerPool.gemm``, ``native_ranges``): the worker, spinning in that same wait, runs its part itself,
  a GEMM through the C entry point of OpenBLAS (or oneMKL), never entering the interpreter, so it starts within a
  microsecond, as OpenBLAS's own threads do;
- or OpenBLAS's own threads (``matmul`` is NumPy's call, ``parallel_ranges`` takes only very large loops).
  By default (``AutoMode``) a quiet session runs in the quick mode and tries OpenBLAS's threads after its
  first runs, keeping the faster; ``session.intra_op.allow_spinning`` = "0" always holds BLAS (the quick
  mode when quiet), "1" always leaves it to OpenBLAS.

Where oneMKL is installed (the `mkl` extra), the compiled GEMM calls take its sgemm/dgemm on its sequential
layer instead of OpenBLAS's, and every product from MKL_MIN_MACS goes to it in every mode (``_mkl_matmul``).

The pool's size is the process's BLAS thread count as it stands outside our calls: OpenBLAS's
default (the cores) or what ``intra_op_num_threads`` set it to (the session does that). During a run
that holds BLAS, and during each of our pool GEMMs, OpenBLAS is held at one thread (restored after,
counted so that concurrent runs do not fight over it): every BLAS call the provider makes is then
single-threaded, and the parallelism is the pool's.
"""
from __future__ import annotations

import itertools
import math
import os
import sys
import threading
import time

import numpy as np

# OpenBLAS runs GEMMs below this many multiply-adds on one thread by itself (its SMP_THRESHOLD_MIN *
# GEMM_MULTITHREAD_THRESHOLD): nothing to hold or split there
BLAS_SINGLE_MACS = 65536 * 4
# below this many multiply-adds one BLAS call on the caller's thread is cheaper than waking a worker
# (tens of microseconds), splitting and handing the GIL back and forth (a worker preempted holding it
# stalls the caller): bert_mini's 8M-MAC GEMMs, split from 2M, ran 14.1 against 10.6 ms a run at 2
# threads (p99 36.7 against 29.9 ms with the second core busy; shared machine, noisy)
MIN_PARALLEL_MACS = 1 << 24
# chunks per thread: enough that a late thread holds a small share, few enough that each chunk stays
# a large BLAS call (B is packed once per chunk); and no chunk under MIN_CHUNK_MACS (each costs a few
# microseconds of Python besides its BLAS call)
CHUNKS_PER_THREAD = 4
MIN_CHUNK_MACS = 1 << 20


def _default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):      # not Linux
        return max(1, os.cpu_count() or 1)


class _Knob:
    """One BLAS library's thread count: OpenBLAS's own get/set functions called directly (~0.1 us a call,
    from any thread), else threadpoolctl's controller (MKL, BLIS, OpenBLAS on OpenMP: per-thread there)."""

    __slots__ = ("get", "set")

    def __init__(self, lib) -> None:
        self.get, self.set = lambda: lib.num_threads, lib.set_num_threads
        if getattr(lib, "internal_api", "") == "openblas" and getattr(lib, "threading_layer", "") != "openmp":
            try:
                import ctypes

                prefix, suffix = lib._find_affixes()
                get = getattr(lib.dynlib, f"{prefix}openblas_get_num_threads{suffix}")
                put = getattr(lib.dynlib, f"{prefix}openblas_set_num_threads{suffix}")
            except (AttributeError, TypeError):      # another threadpoolctl: its controller serves
                return
            get.argtypes, get.restype = (), ctypes.c_int
            put.argtypes, put.restype = (ctypes.c_int,), None
            self.get, self.set = get, put


class _Blas:
    """The BLAS libraries' thread counts, held at one while our GEMMs run (see the module docstring).
    threadpoolctl finds the libraries once; its per-call path costs ~10 us and obeys only the thread that
    first set a limit, so OpenBLAS is driven through its own functions."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.depth = 0
        self.saved: list[int] = []
        self.knobs: list[_Knob] | None = None
        self.gemm: np.ndarray | None = None         # see _gemm_pointers, _mkl_gemm_pointers
        self.mkl = False                            # the compiled GEMMs call oneMKL
        self.modules = 0

    def _find(self) -> None:
        """Look the libraries up again when modules were imported since (SciPy brings an OpenBLAS of its
        own): first use, or between holds (a lookup costs 0.3-2 ms)."""
        if self.knobs is None or (self.depth == 0 and len(sys.modules) != self.modules):
            self._lookup()
            self.modules = len(sys.modules)         # after: a lookup that raised (ENGINEROOM_BLAS) raises again

    def _lookup(self) -> None:
        try:
            from threadpoolctl import ThreadpoolController

            libs = ThreadpoolController().select(user_api="blas").lib_controllers
            # a library on its sequential layer (oneMKL as loaded below) has no threads to hold
            self.knobs = [_Knob(lib) for lib in libs if getattr(lib, "threading_layer", "") != "sequential"]
            self.gemm = _gemm_pointers(libs)
        except Exception:  # noqa: BLE001 - no threadpoolctl or no BLAS found: nothing to hold
            self.knobs = []
            self.gemm = None
        mkl = _mkl_gemm_pointers()
        if mkl is not None:
            self.gemm = mkl
        self.mkl = mkl is not None

    def hold_single(self) -> int:
        """Set BLAS to one thread; returns its thread count outside our calls (the pool's size)."""
        with self.lock:
            self._find()
            if self.depth == 0:
                self.saved = [k.get() for k in self.knobs]
                for k, n in zip(self.knobs, self.saved):
                    if n != 1:
                        k.set(1)
            self.depth += 1
            return max(self.saved) if self.saved else _default_threads()

    def outside(self) -> int:
        """BLAS's thread count outside our calls (the pool's size), without changing it."""
        with self.lock:
            self._find()
            counts = self.saved if self.depth else [k.get() for k in self.knobs]
            return max(counts) if counts else _default_threads()

    def release(self) -> None:
        with self.lock:
            self.depth -= 1
            if self.depth == 0:
                for k, n in zip(self.knobs, self.saved):
                    if n != 1:
                        k.set(n)


def _gemm_pointers(libs) -> np.ndarray | None:
    """[cblas_sgemm's address, cblas_dgemm's, 1 for 64-bit integer arguments] of the first OpenBLAS
    on pthreads among ``libs`` (threadpoolctl's), for the compiled GEMM split (``compiled/_jit_par``), or
    None. Only that kind: its thread count is process-wide, so held at one it holds for our workers too."""
    import ctypes

    for lib in libs:
        if getattr(lib, "internal_api", "") != "openblas" or getattr(lib, "threading_layer", "") == "openmp":
            continue
        try:
            prefix, suffix = lib._find_affixes()
            config = getattr(lib.dynlib, f"{prefix}openblas_get_config{suffix}")
            config.argtypes, config.restype = (), ctypes.c_char_p
            ilp64 = b"USE64BITINT" in (config() or b"")
            fns = [getattr(lib.dynlib, f"{prefix}cblas_{t}gemm{suffix}") for t in "sd"]
        except (AttributeError, TypeError):
            continue
        return np.array([ctypes.cast(f, ctypes.c_void_p).value for f in fns] + [int(ilp64)], np.int64)
    return None


# which BLAS the compiled GEMM calls use: "auto" (oneMKL where the `mkl` extra is installed, else NumPy's
# OpenBLAS), "mkl" (the same, with a warning where oneMKL cannot be loaded) or "openblas"
BLAS_ENV = "ENGINEROOM_BLAS"
_MKL_SEQUENTIAL, _MKL_LP64, _MKL_ILP64 = 1, 0, 1       # mkl_rt's MKL_THREADING_SEQUENTIAL, MKL_INTERFACE_*
_mkl: list = []                                       # [pointers or None, the library], once per process


def _mkl_gemm_pointers() -> np.ndarray | None:
    """[cblas_sgemm's address, cblas_dgemm's, 1 for 64-bit integer arguments] of oneMKL's runtime library
    (the `mkl` extra) on its sequential layer, for the compiled GEMM calls, or None: not installed, not
    wanted (``ENGINEROOM_BLAS``), or another library in the process chose a threaded layer first.

    Why: oneMKL's single-threaded sgemm ran the zoo's products 1.1-1.6x faster than OpenBLAS's here
    (64x256x1024: 66 against 80 GMAC/s; mobilenet_v2's 32x32x12544 1x1 conv: 44 against 63), and the pool
    splits them as before: the sequential layer runs no threads of its own, so none to hold or to spin."""
    if _mkl:
        return _mkl[0]
    want = (os.environ.get(BLAS_ENV) or "auto").strip().lower()
    if want not in ("auto", "mkl", "openblas"):
        raise ValueError(f"{BLAS_ENV}={want!r}: expected auto, mkl or openblas")
    fns, lib, why = None, None, "not wanted"
    if want != "openblas":
        fns, lib, why = _load_mkl()
        if fns is None and want == "mkl":
            import warnings

            warnings.warn(f"{BLAS_ENV}=mkl: {why}; the CPU provider's GEMMs use NumPy's BLAS", RuntimeWarning,
                          stacklevel=2)
    _mkl[:] = [fns, lib]
    return fns


def _load_mkl():
    """(pointers, library, None) of oneMKL's mkl_rt set to its sequential layer, or (None, None, why not)."""
    import ctypes

    if not sys.platform.startswith("linux"):
        return None, None, "oneMKL is looked for on Linux only"
    # the environment's lib folder (where pip puts the wheel's libraries), then the loader's search path;
    # the library's soname: .so.3 from oneMKL 2026, .so.2 before
    names = ("libmkl_rt.so.3", "libmkl_rt.so.2")
    where = [os.path.join(p, "lib", n) for p in dict.fromkeys((sys.prefix, sys.base_prefix)) for n in names]
    lib = None
    for path in where + list(names):
        try:
            lib = ctypes.CDLL(path)
            break
        except OSError:
            continue
    if lib is None:
        return None, None, "libmkl_rt.so.3 (or .so.2) not found (pip install 'engineroom[mkl]')"
    try:
        layer, iface = lib.MKL_Set_Threading_Layer, lib.MKL_Set_Interface_Layer
        fns = [lib.cblas_sgemm, lib.cblas_dgemm]
    except AttributeError as e:
        return None, None, f"oneMKL's runtime library lacks {e}"
    layer.argtypes = iface.argtypes = (ctypes.c_int,)
    layer.restype = iface.restype = ctypes.c_int
    # both return the layer in force: another library may have chosen them before us
    if layer(_MKL_SEQUENTIAL) != _MKL_SEQUENTIAL:
        return None, None, "oneMKL already runs on a threaded layer in this process"
    ints = iface(_MKL_LP64) & ~2                      # (+2: the GNU calling convention's flag)
    if ints not in (_MKL_LP64, _MKL_ILP64):
        return None, None, "oneMKL's integer interface is unknown"
    return np.array([ctypes.cast(f, ctypes.c_void_p).value for f in fns] + [ints], np.int64), lib, None


_blas = _Blas()


class _Load:
    """Whether other processes keep the cores this process may run on busy: their CPU time over the
    last window (``/proc/stat``'s busy time of those cores less this process's own, ``os.times``), in
    cores. Read at most every ``WINDOW_S`` (~20 us a read), so a run pays a clock read. Without
    ``/proc/stat`` (not Linux) the machine counts as busy: the pool is the mode that stays steady."""

    WINDOW_S = 0.1
    FIRST_S = 0.02      # the first window, from the first session's creation
    BUSY = 0.5          # another process using half a core or more: the pool mode
    QUIET = 0.25        # back to OpenBLAS's threads below this (hysteresis: no flapping at the edge)

    __slots__ = ("next", "last", "busy", "cpus", "tick")

    def __init__(self) -> None:
        self.next = 0.0
        self.last: tuple[float, float, float] | None = None
        self.busy = True            # until a first window is measured
        try:
            self.cpus = {f"cpu{i}" for i in os.sched_getaffinity(0)}
            self.tick = 1.0 / os.sysconf("SC_CLK_TCK")
        except (AttributeError, OSError, ValueError):
            self.cpus, self.tick = None, 0.0

    def _sample(self) -> tuple[float, float, float] | None:
        try:
            with open("/proc/stat", "rb") as f:
                text = f.read().decode()
        except OSError:
            return None
        busy = 0
        for line in text.splitlines():
            name, _, rest = line.partition(" ")
            if name in self.cpus:
                v = [int(x) for x in rest.split()]
                # user nice system idle iowait irq softirq steal: all but idle and iowait are busy
                busy += v[0] + v[1] + v[2] + sum(v[5:8])
        t = os.times()
        return time.monotonic(), busy * self.tick, t.user + t.system

    def prime(self) -> None:
        """Start the first window (at session creation): its first run decides after ``FIRST_S``."""
        if self.last is None and self.cpus is not None:
            self.last = self._sample()
            self.next = time.monotonic() + self.FIRST_S

    def contended(self) -> bool:
        now = time.monotonic()
        if now < self.next or self.cpus is None:
            return self.busy
        self.next = now + self.WINDOW_S
        cur = self._sample()
        if cur is None:
            self.cpus = None
            self.busy = True
            return True
        if self.last is not None and cur[0] > self.last[0]:
            others = ((cur[1] - self.last[1]) - (cur[2] - self.last[2])) / (cur[0] - self.last[0])
            self.busy = others >= (self.QUIET if self.busy else self.BUSY)
        self.last = cur
        return self.busy


_load = _Load()
_load.prime()     # at the provider's import (early in the first session's creation): its first run is measured
_held = threading.local()


def _begin(always_hold: bool, gate: AutoMode | None = None) -> None:
    """A run's begin (the provider's ``run_scope``). The quick mode: on a quiet machine with the compiled
    waits, BLAS is held at one thread and the pool's workers spin between parts, so small kernels split
    too (``_held.quick``). While other processes keep a core busy (``_Load``), BLAS is held, the workers
    spin only briefly, and only large kernels split (a part whose core is taken stalls the caller).
    Otherwise OpenBLAS's own threads (``gate`` chose them for this session, or no compiled waits: a
    sleeping worker's wake-up costs 50-100 us), which cannot stall on a quiet machine."""
    stack = _held.__dict__.setdefault("stack", [])
    threads = _blas.outside()
    if threads <= 1 and not always_hold:
        stack.append(_ALONE)        # one thread: nothing to hold, split or choose (a run pays ~0.3 us)
        _held.quick = False
        _held.alone = True          # (its GEMMs still go to oneMKL where loaded, unsplit: ``_mkl_matmul``)
        return
    busy = _load.contended()
    pool = _pool(threads) if threads > 1 else None
    quick = not busy and pool is not None and pool.quick
    timed = False
    if quick and gate is not None:
        quick, timed = gate.choose()
    held = always_hold or busy or quick
    if held:
        _blas.hold_single()
    if pool is not None:
        pool.spin_for(busy)
        if quick:
            pool.wake()
    # a timed run notes the pool's split count: a short run that split something is not "tiny" (AutoMode)
    timing = (gate, pool, pool.splits() if pool is not None else 0) if timed else None
    stack.append((held, quick, timing, time.perf_counter()))
    _held.quick = quick
    _held.alone = False


_ALONE = (False, False, None, 0.0)


def _end() -> None:
    stack = _held.stack
    held, quick, timing, t0 = stack.pop()
    if held:
        _blas.release()
    _held.quick = stack[-1][1] if stack else False
    _held.alone = bool(stack) and stack[-1] is _ALONE
    if timing is not None:
        gate, pool, mark = timing
        gate.record(quick, time.perf_counter() - t0, pool is not None and pool.splits() != mark)


class AutoMode:
    """The default mode's run scope, one per session: on a quiet machine, the quick mode or OpenBLAS's own
    threads, whichever runs this session's model faster, measured on its own runs. With GEMMs and the main
    loops split inside one compiled call the quick mode wins or ties on most models (2 threads, quiet,
    medians in ms, quick / OpenBLAS's threads: resnet18 16.0 / 22.0, mobilenet_v2 6.4 / 7.5,
    tashkeel_bilstm_int8 8.1 / 13.6, picodet_layout 51 / 62, vit_s_focus 95 / 98), OpenBLAS's threads win
    by a few percent on some GEMM-bound transformers (gpt2_tiny 4.9 / 4.6, minilm_l6_int8 16.2 / 15.1). So
    the quick mode serves from the first run, and OpenBLAS's threads are tried only once the session has run
    ``QUICK_RUNS`` times: its last ``SAMPLES`` quick runs and the ``SAMPLES`` after them with OpenBLAS's
    threads are compared by their median run (OpenBLAS's threads vary more from run to run: their best run
    would flatter them), and the faster mode serves from then on; the quick mode must be ``MARGIN`` faster
    to be taken back, since going back costs a transient: OpenBLAS's threads spin for ~0.1 s after their
    last GEMM (re-created threads too), and quick runs beside them run up to 1.5x slower (the scheduler
    puts our worker on the caller's core; mobilenet_v2 9.3 against 6.2 ms for ~0.1 s). Tried first, as
    before, that transient fell on a session's early runs (compare.py's ten runs a process: resnet18 24.7
    ms against 16 once settled). A timed run under ``TINY_S`` that split nothing (tree ensembles, linear
    classifiers: tens of microseconds) ends the learning: no mode can matter there, only its cost (2-6 us a
    run: the load check, BLAS's thread count set and reset), and the session's runs skip all of it until one
    takes ten times that, which starts the learning again. A short run that split (vae_decoder's 4x4
    ConvTranspose alone: 80 us split, 130 us not) is not tiny."""

    SAMPLES = 3
    QUICK_RUNS = 20
    MARGIN = 0.9
    TINY_S = 1e-4

    __slots__ = ("runs", "times", "prefer", "tiny")

    def __init__(self) -> None:
        self.runs = 0
        self.times: tuple[list[float], list[float]] = ([], [])     # run seconds: [OpenBLAS, quick]
        self.prefer: bool | None = None                              # quick preferred; None while learning
        self.tiny = False

    def begin(self) -> None:
        if self.tiny:
            _held.__dict__.setdefault("stack", []).append((False, False, (self, None, 0), time.perf_counter()))
            _held.quick = _held.alone = False
        else:
            _begin(False, self)

    end = staticmethod(_end)

    def choose(self) -> tuple[bool, bool]:
        """(quick, timed) for the next quiet run."""
        if self.prefer is not None:
            return self.prefer, False
        self.runs += 1
        if self.runs > self.QUICK_RUNS and _blas.mkl:
            self.prefer = True      # GEMMs are oneMKL's in every mode (_mkl_matmul): none for OpenBLAS's threads
            return True, False
        return self.runs <= self.QUICK_RUNS, self.runs > 1

    def record(self, quick: bool, seconds: float, split: bool = False) -> None:
        """A timed run's mode and seconds; ``split``: the pool split some of its work."""
        if self.tiny:
            if seconds >= 10 * self.TINY_S:        # larger inputs now: learn again
                self.runs, self.times, self.prefer, self.tiny = 1, ([], []), None, False
            return
        if self.prefer is None and seconds < self.TINY_S and not split:
            self.prefer, self.tiny = False, True    # no mode can matter: skip their cost from the next run
            return
        if quick and self.runs <= self.QUICK_RUNS - self.SAMPLES:
            return                                  # a quick run before the samples: timed for TINY_S only
        self.times[quick].append(seconds)
        if self.prefer is None and min(len(t) for t in self.times) >= self.SAMPLES:
            mid = self.SAMPLES // 2
            q, o = sorted(self.times[True])[mid], sorted(self.times[False])[mid]
            self.prefer = q < self.MARGIN * o


def begin_pool_run() -> None:
    """``allow_spinning`` = "0": BLAS held at one thread for the run whatever the load (``_begin``)."""
    _begin(True)


end_pool_run = _end


def hold_blas() -> None:
    """BLAS at one thread until ``release_blas`` (a kernel's own hold, inside or outside a run)."""
    _blas.hold_single()


def release_blas() -> None:
    _blas.release()


class _Task:
    """``fn(*a)`` for each ``a`` in ``args``, claimed one at a time by the caller and the workers; the
    pool knows a worker is done with it from the worker's slot (``WorkerPool``)."""

    __slots__ = ("fn", "args", "claim", "error", "gen")

    def __init__(self, fn, args) -> None:
        self.fn = fn
        self.args = args
        self.claim = itertools.count()          # next() is atomic under the GIL
        self.error: BaseException | None = None
        self.gen = 0

    def drain(self) -> None:
        n = len(self.args)
        for i in self.claim:
            if i >= n:
                return
            try:
                self.fn(*self.args[i])
            except BaseException as e:  # noqa: BLE001 - handed to the caller, who re-raises it
                self.error = e


# a pool GEMM that took longer than STALL_FACTOR times its multiply-adds at SLOW_MACS_PER_S (a floor
# on one core's BLAS speed) plus STALL_S was stalled: a worker preempted while it held the GIL, or the
# caller's own core taken. The pool then stands aside (GEMMs and loops on the caller's thread alone)
# for a while that doubles with each stall, from CALM_MIN_S to CALM_MAX_S, and halves with each GEMM
# the pool served in time: on a machine whose cores other processes hold, one thread is what is steady
SLOW_MACS_PER_S = 5e9
STALL_FACTOR = 2.0
STALL_S = 1e-3
CALM_MIN_S = 0.02
CALM_MAX_S = 2.0


class _Calm:
    __slots__ = ("until", "span")

    def __init__(self) -> None:
        self.until = 0.0        # time.monotonic() before which the pool stands aside
        self.span = 0.0

    def pool_ok(self) -> bool:
        return self.until == 0.0 or time.monotonic() >= self.until

    def judge(self, seconds: float, macs: int) -> None:
        if seconds > STALL_FACTOR * macs / SLOW_MACS_PER_S + STALL_S:
            self.span = min(CALM_MAX_S, max(CALM_MIN_S, 2 * self.span))
            self.until = time.monotonic() + self.span
        elif self.span:
            self.span = 0.0 if self.span <= CALM_MIN_S else self.span / 2
            self.until = 0.0


_calm = _Calm()


class _GemmTask:
    """``matmul``'s chunks, ``(a, b, out)`` each. A worker computes its chunk into an array of its own and
    copies it into ``out`` only if the caller has not taken the chunk back. The caller, out of chunks,
    waits for the workers' chunks about as long as one of its own took, then computes the unfinished ones
    itself and returns: a worker whose core another process holds costs the GEMM at most one chunk,
    never a time slice (its late result is dropped). Waiting for every chunk, bert_mini's 8-chunk GEMMs
    (~0.2 ms) took 9-72 ms each in its slowest runs with another process on the second core."""

    __slots__ = ("chunks", "claim", "state", "lock", "done", "finished", "gen")

    def __init__(self, chunks: list[tuple]) -> None:
        self.gen = 0
        self.chunks = chunks
        self.claim = itertools.count()          # next() is atomic under the GIL
        self.state = [0] * len(chunks)          # 2: a worker's result is in out; 3: taken back by the caller
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.finished = 0

    def drain(self) -> None:
        """A worker's side."""
        n = len(self.chunks)
        for i in self.claim:
            if i >= n:
                return
            a, b, out = self.chunks[i]
            try:
                r = np.matmul(a, b)
            except BaseException:  # noqa: BLE001 - the caller computes this chunk again and sees the error
                continue
            with self.lock:
                if self.state[i] == 3:
                    continue
                np.copyto(out, r)
                self.state[i] = 2
                self.finished += 1
                if self.finished == n:
                    self.done.set()

    def run_caller(self) -> None:
        n = len(self.chunks)
        mine = []
        t0 = time.perf_counter()
        for i in self.claim:
            if i >= n:
                break
            a, b, out = self.chunks[i]
            np.matmul(a, b, out=out)
            mine.append(i)
        with self.lock:
            self.finished += len(mine)
            if self.finished == n:
                return
        # a worker's chunk in progress ends within about one chunk's time unless its core is taken
        per_chunk = (time.perf_counter() - t0) / len(mine) if mine else 1e-3
        if self.done.wait(1.5 * per_chunk + 5e-5):
            return
        taken = set(mine)
        for i in range(n):
            if i in taken:
                continue
            with self.lock:
                if self.state[i] == 2:
                    continue
                self.state[i] = 3
            a, b, out = self.chunks[i]
            np.matmul(a, b, out=out)


# a worker spins this long after its last part before it sleeps on the condition (a quiet machine: the
# gaps between a run's split kernels are its single-threaded steps, up to a few milliseconds: a worker
# asleep misses the next split's start, 19 of vit_s_focus's 96 projection GEMMs a run with a 1 ms spin;
# a busy one: the other process wants the core back); the caller spins for a worker's part up to WAIT_SPIN_S, then polls
SPIN_QUIET_S = 5e-3
SPIN_BUSY_S = 5e-5
WAIT_SPIN_S = 2e-3
# turns each side spins after its flag changed: the other side leaves the interpreter for its kernel
# meanwhile, so the GIL is free when this side asks for it (asking while it is held sleeps ~50-100 us)
EXTRA_S = 2e-6


_par: list = []


def _par_kernels():
    """The compiled splits (``compiled/_jit_par``): (worker_wait, {dtype: par_gemm}, the module), the first
    two as raw variants (the pool checks the arrays itself), or None where it is not built; looked up once
    a process that finds it (a pool made while it was still building keeps its None)."""
    if _par:
        return _par[0]
    from engineroom.providers.cpu.array_module import NUMPY

    mod = NUMPY.compiled("par")
    if mod is None:
        return None
    gemm = {np.dtype(np.float32): mod.par_gemm.variants[0][0], np.dtype(np.float64): mod.par_gemm.variants[1][0]}
    _par.append((mod.worker_wait.variants[0][0], gemm, mod))
    return _par[0]


def _sync_waits():
    """The compiled waits (``compiled/_jit_sync``) and nanoseconds per spin turn, or None where the compiled
    loops are unavailable (the workers then sleep between parts)."""
    from engineroom.providers.cpu.array_module import NUMPY  # imports this module: here, not at the top

    mod = NUMPY.compiled("sync")
    if mod is None:
        return None
    # the raw variants: the pool's own int64 arrays, so the per-call type checks are skipped
    worker_wait, wait_at_least = mod.worker_wait.variants[0][0], mod.wait_at_least.variants[0][0]
    flag = np.zeros(2, np.int64)
    best = math.inf
    for _ in range(3):
        t = time.perf_counter()
        wait_at_least(flag, 1, 1, 2000, 0)
        best = min(best, time.perf_counter() - t)
    return worker_wait, wait_at_least, max(best / 2000, 1e-8)


def _cache_lines(n: int) -> np.ndarray:
    """8 * n zeroed int64 slots starting on a 64-byte boundary: slot group i (8 i ...) is a cache line of its
    own, so a spinning worker's reads never share a line another thread writes for anything else."""
    buf = np.zeros(8 * n + 8, np.int64)
    off = (-buf.ctypes.data // 8) % 8
    return buf[off:off + 8 * n]


class WorkerPool:
    """``threads - 1`` daemon workers; the caller is the last thread.

    A caller posts a task (``_task``, generation ``_gen``, also written to ``_state[0]``) and works on
    its parts itself; a worker between tasks spins (compiled, GIL released) on ``_state[0]`` for a while,
    then sleeps on the condition. A worker records the generation it entered (``_entered``) before it
    claims parts, and its slot ``_state[8 w]`` is the last generation it finished (stored once it released
    the GIL): the caller, out of parts, waits only for the workers that entered its task. One caller
    at a time posts; another runs its parts on its own thread meanwhile."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self._cv = threading.Condition()
        self._post = threading.Lock()
        self._task = None
        self._gen = 0
        self._sleepers = 0
        self._started = 0
        # [0]: the posted generation; [8 w]: worker w's last done
        self._state = _cache_lines(threads)
        self._entered = [0] * threads
        self._sync = _sync_waits() if threads > 1 else None
        # the compiled splits: their own state (per worker: in its wait or not, its part word) and tasks
        self._par = _par_kernels() if self._sync is not None else None
        self._nstate = _cache_lines(threads)
        self._desc = np.zeros(_PAR_DESC * threads, np.int64)
        self._wakes = 0
        self._spin_turns = 0
        self._extra = 0
        self._wait_turns = 0
        if self._sync is not None:
            ns = self._sync[2]
            self._extra = int(EXTRA_S / ns)
            self._wait_turns = int(WAIT_SPIN_S / ns)
        self.spin_for(False)

    def spin_for(self, busy: bool) -> None:
        """How long idle workers spin before they sleep: briefly while other processes want the cores."""
        if self._sync is not None:
            self._spin_turns = int((SPIN_BUSY_S if busy else SPIN_QUIET_S) / self._sync[2])

    @property
    def quick(self) -> bool:
        """Whether a worker picks up a part within microseconds (it spins between parts)."""
        return self._sync is not None

    def _start(self) -> None:
        while self._started < self.threads - 1:
            self._started += 1
            threading.Thread(target=self._work, args=(self._started,), name=f"engineroom-cpu-{self._started}",
                             daemon=True).start()

    def _work(self, w: int) -> None:
        state, sync, par = self._state, self._sync, self._par
        seen = 0
        while True:
            wakes = self._wakes
            if par is not None:     # the same wait, serving compiled GEMM parts meanwhile
                par[0](state, 8 * w, seen, self._spin_turns, self._extra, self._nstate, self._desc, w)
            elif sync is not None:
                sync[0](state, 8 * w, seen, self._spin_turns, self._extra)
            else:
                state[8 * w] = seen
            if self._gen == seen:
                with self._cv:
                    self._sleepers += 1
                    while self._gen == seen and self._wakes == wakes:
                        self._cv.wait()
                    self._sleepers -= 1
                if self._gen == seen:
                    continue        # woken for GEMM parts (``wake``): back to the wait
            task = self._task
            seen = task.gen
            self._entered[w] = seen
            task.drain()

    def _publish(self, task) -> None:
        if self._started < self.threads - 1:
            self._start()
        self._gen += 1
        task.gen = self._gen
        self._task = task
        self._state[0] = self._gen
        if self._sleepers:
            with self._cv:
                self._cv.notify_all()

    def _join(self, gen: int) -> None:
        """Wait until every worker that entered generation ``gen`` finished its parts."""
        state, sync = self._state, self._sync
        for w in range(1, self.threads):
            if self._entered[w] != gen or state[8 * w] >= gen:
                continue
            if sync is not None:
                sync[1](state, 8 * w, gen, self._wait_turns, self._extra)
            while state[8 * w] < gen:       # a worker whose core another process holds: poll
                time.sleep(5e-5)

    def wake(self) -> None:
        """Workers asleep go back to their compiled wait, where they take GEMM parts (a quick run's start:
        the first GEMMs run on the caller alone meanwhile)."""
        if self._sleepers and self._par is not None:
            with self._cv:
                self._wakes += 1
                self._cv.notify_all()

    def gemm(self, a: np.ndarray, b: np.ndarray, out: np.ndarray) -> bool:
        """out[...] = a @ b split over the caller and the workers, inside one compiled call
        (``compiled/_jit_par``; OpenBLAS must be held at one thread, oneMKL runs on its sequential layer);
        False, doing nothing, where that does not take the arrays (``_gemm_call``)."""
        call = _gemm_call(a, b, out) if self._par is not None else None
        if call is None:
            return False
        self.ready()
        fn, a3, b3, c3, ta, tb = call
        fn(self._nstate, self._desc, _blas.gemm, a3, b3, c3, ta, tb, self.threads, PAR_ALIGN)
        return True

    def splits(self) -> int:
        """How many splits callers have posted to this pool (compiled and Python ones)."""
        return int(self._nstate[0]) + self._gen

    def ready(self) -> None:
        """Before a compiled split: workers asleep (a gap of more than their spin since the last parts) are
        woken, to take their part of this split if they arrive while the caller runs its own (it takes a
        part not taken by then back), else of the next."""
        if self._started < self.threads - 1:
            self._start()
        elif self._sleepers:
            self.wake()

    def run(self, fn, args: list[tuple]) -> None:
        """Call ``fn(*a)`` for every ``a`` in ``args``, spread over the pool; re-raise the first error."""
        if self.threads <= 1 or len(args) <= 1 or not self._post.acquire(blocking=False):
            for a in args:
                fn(*a)
            return
        try:
            task = _Task(fn, args)
            self._publish(task)
            task.drain()
            self._join(task.gen)
        finally:
            self._post.release()
        if task.error is not None:
            raise task.error

    def run_gemm(self, chunks: list[tuple]) -> None:
        """``np.matmul(a, b, out=o)`` for every ``(a, b, o)`` in ``chunks``; never waits for a worker
        longer than about one chunk (``_GemmTask``)."""
        if not self._post.acquire(blocking=False):
            for a, b, o in chunks:
                np.matmul(a, b, out=o)
            return
        try:
            task = _GemmTask(chunks)
            self._publish(task)
            task.run_caller()
        finally:
            self._post.release()


_pools: dict[int, WorkerPool] = {}


def _pool(threads: int) -> WorkerPool:
    pool = _pools.get(threads)
    if pool is None:
        pool = _pools.setdefault(threads, WorkerPool(threads))
    return pool


def _split(n: int, parts: int) -> list[tuple[int, int]]:
    step = -(-n // parts)
    return [(i, min(n, i + step)) for i in range(0, n, step)]


# the quick mode (workers spinning, a quiet machine) splits GEMMs from this many multiply-adds (~30 us
# on one core) into one chunk per thread where the compiled split does not take them, and loops over the
# Python workers from QUICK_MIN_WORK (~100 us of a depthwise loop: a Python worker's part starts 20-40 us
# late, each side's GIL requests sleeping while the other holds it; slanet_table's 501 Loop steps: 246 ->
# 213 ms a run from 64K)
QUICK_MIN_MACS = 1 << 21
QUICK_MIN_WORK = 1 << 19
# with the compiled split (``WorkerPool.gemm``: no interpreter on the worker's side) GEMMs split from
# NATIVE_MIN_MACS, rows (or columns) in multiples of PAR_ALIGN
NATIVE_MIN_MACS = 1 << 20
# and compiled loops (``native_ranges``) from NATIVE_MIN_WORK units (a 37K-element bias pass: 3.4 us alone)
NATIVE_MIN_WORK = 1 << 15
PAR_ALIGN = 16
_PAR_DESC = 32      # int64s per part's task (compiled/_jit_par.DESC)


def _operand(x: np.ndarray, lead: tuple):
    """(x as a C-contiguous 3-D array of matrices, 1 where they are stored transposed) for ``WorkerPool.gemm``
    with ``lead`` the output's batch shape, or (None, 0)."""
    if x.ndim > 2 and x.shape[:-2] != lead and math.prod(x.shape[:-2]) != 1:
        return None, 0
    if x.flags.c_contiguous:
        return x.reshape((-1,) + x.shape[-2:]), 0
    t = x.swapaxes(-1, -2)
    if t.flags.c_contiguous:
        return t.reshape((-1,) + t.shape[-2:]), 1
    return None, 0


def _gemm_call(a: np.ndarray, b: np.ndarray, out: np.ndarray):
    """(par_gemm's variant, a, b, out as 3-D arrays, a transposed, b transposed) for out[...] = a @ b through
    the compiled GEMM call (``compiled/_jit_par.par_gemm``), or None where it does not take the arrays:
    no BLAS pointers or compiled module, other dtypes or layouts, broadcasting other than one shared matrix."""
    fns = _blas.gemm
    par = _par_kernels()
    if fns is None or par is None:
        return None
    dt = out.dtype
    fn = par[1].get(dt)
    if fn is None or a.dtype != dt or b.dtype != dt or not out.flags.c_contiguous or out.ndim < 2 \
            or not out.size or not a.shape[-1]:
        return None
    lead = out.shape[:-2]
    a3, ta = _operand(a, lead)
    b3, tb = _operand(b, lead)
    if a3 is None or b3 is None:
        return None
    # BLAS trusts the sizes and reads its inputs while it writes: anything NumPy would refuse or buffer
    # (a mismatched product, an output over an input) is left to np.matmul
    (M, K), (Kb, N) = a3.shape[:0:-1] if ta else a3.shape[1:], b3.shape[:0:-1] if tb else b3.shape[1:]
    if (M, N) != out.shape[-2:] or K != Kb or np.may_share_memory(out, a) or np.may_share_memory(out, b):
        return None
    return fn, a3, b3, out.reshape((-1,) + out.shape[-2:]), ta, tb


# the smallest product the provider sends to oneMKL (where loaded): below it the compiled call's argument
# checks (a few microseconds) cost more than NumPy's call
MKL_MIN_MACS = 1 << 16
_NO_POOL = (np.zeros(8, np.int64), np.zeros(_PAR_DESC, np.int64))     # par_gemm's state at one thread: unread


def _mkl_matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray | None, macs: int, batch_shape: tuple) -> np.ndarray:
    """``matmul`` where the compiled GEMM calls use oneMKL (``_mkl_gemm_pointers``): oneMKL in every mode,
    split inside one compiled call over the pool in a quick run (from NATIVE_MIN_MACS) and in a run that
    leaves BLAS alone (allow_spinning = "1": from MIN_PARALLEL_MACS, its workers may be asleep), else on the
    calling thread: a steady run (another process holds a core: a part taken by a worker that is then
    descheduled would stall the caller a time slice; the Python chunks that avoid that cut the output into
    strided blocks the compiled call does not take) and a run on one thread.

    Why one library in every mode: oneMKL's products are the same however they are split (rows, columns,
    16-row blocks: bitwise, measured here) but differ from OpenBLAS's in the last bits where K > ~300,
    so a product must never go to OpenBLAS in one mode and to oneMKL in another: a session's results then
    depend on neither its mode nor the machine's load nor concurrent runs (``tests/fuzz/test_determinism``).
    Arrays it does not take (``_gemm_call``) go to NumPy in every mode alike."""
    if out is None:
        out = np.empty(batch_shape + (a.shape[-2], b.shape[-1]), dtype=np.result_type(a, b))
    if not getattr(_held, "alone", False):
        quick = getattr(_held, "quick", False)
        if macs >= (NATIVE_MIN_MACS if quick else MIN_PARALLEL_MACS) and (quick or not _blas.depth):
            threads = _blas.outside()
            if threads > 1 and _pool(threads).gemm(a, b, out):
                return out
    gemm_here(a, b, out)
    return out


def _matmul_into(a, b, out) -> None:
    np.matmul(a, b, out=out)


def matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``np.matmul(a, b, out=out)``; large products split over the pool, mid-sized ones on the caller's
    thread with BLAS held at one thread (so they never wait for a descheduled BLAS thread); where oneMKL
    is loaded, through it in every mode (``_mkl_matmul``)."""
    mkl = _blas.mkl
    if not mkl and not _blas.depth:
        # no run holding BLAS (allow_spinning = "1", one thread, or a call outside a run): OpenBLAS as it is
        return np.matmul(a, b, out=out)
    if a.ndim == 2 and b.ndim == 2:             # the common case, without the broadcasting arithmetic
        M, K = a.shape
        N = b.shape[1]
        macs = M * N * K
        if macs < (MKL_MIN_MACS if mkl else NATIVE_MIN_MACS):
            return np.matmul(a, b, out=out)
        batch_shape = ()
    else:
        if a.ndim < 2 or b.ndim < 2:
            return np.matmul(a, b, out=out)
        M, K = a.shape[-2:]
        N = b.shape[-1]
        kn = b.shape[-2] * N
        if not M * K or not kn or (a.size // (M * K)) * (b.size // kn) * M * N * K < \
                (MKL_MIN_MACS if mkl else NATIVE_MIN_MACS):
            # small products (a bound on the broadcast batch: its two sides' product) go straight to NumPy:
            # broadcast_shapes and np.prod below cost ~5 us, more than a small GEMV (Loop bodies: 10 a step)
            return np.matmul(a, b, out=out)
        batch_shape = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
        macs = math.prod(batch_shape) * M * N * K
    if mkl:
        return _mkl_matmul(a, b, out, macs, batch_shape)
    quick = getattr(_held, "quick", False)
    if macs < (NATIVE_MIN_MACS if quick else MIN_PARALLEL_MACS):
        return np.matmul(a, b, out=out)
    threads = _blas.hold_single()
    try:
        if threads <= 1:
            return np.matmul(a, b, out=out)
        if out is None:
            out = np.empty(batch_shape + (M, N), dtype=np.result_type(a, b))
        if quick:
            pool = _pool(threads)
            if pool.gemm(a, b, out):
                return out
            if macs < QUICK_MIN_MACS:
                return np.matmul(a, b, out=out)
            # workers spin: one chunk per thread (each packs its share once), the caller waits for them
            pool.run(_matmul_into, _chunks(a, b, out, batch_shape, threads))
            return out
        if not _calm.pool_ok():
            return np.matmul(a, b, out=out)
        parts = max(threads, min(threads * CHUNKS_PER_THREAD, macs // MIN_CHUNK_MACS))
        t = time.perf_counter()
        _pool(threads).run_gemm(_chunks(a, b, out, batch_shape, parts))
        _calm.judge(time.perf_counter() - t, macs)
        return out
    finally:
        _blas.release()


# non-BLAS loops (the compiled loops, which release the GIL) split over the pool from this much work
# (multiply-adds or elements written; 2^19 is ~0.1 ms of a depthwise loop) on: below it, waking a
# worker (~16 us) costs more than it saves; and no part under MIN_PART_WORK (each costs a few
# microseconds of Python and argument checks)
MIN_PARALLEL_WORK = 1 << 19
# outside a run that holds BLAS the pool takes only loops this large: on a quiet 2-core VM waking a
# sleeping worker costs ~60 us, and mobilenet_v2's depthwise loops split from 2^19 ran slower (8.5
# against 7.4 ms)
MIN_QUIET_WORK = 1 << 22
MIN_PART_WORK = 1 << 17


def quick_run() -> bool:
    """Whether this thread's run is in the quick mode (where ``native_ranges`` splits)."""
    return getattr(_held, "quick", False)


def gemm_pointers() -> np.ndarray | None:
    """The BLAS entry points the compiled split calls (``_gemm_pointers`` or ``_mkl_gemm_pointers``), for loops
    that run GEMMs of their own (``native_ranges("conv_bands", ...)``); None where there are none."""
    return _blas.gemm


def native_ranges(name: str, n: int, work: int, *args, align: int = 1, whole: bool = False) -> bool:
    """In a quick-mode run, the compiled loop ``name`` of ``compiled/_jit_par`` (float32 arrays given whole,
    see ``_LOOPS`` there) over range(n) split over the caller and the workers inside one compiled call,
    from NATIVE_MIN_WORK units of work; elsewhere, with ``whole``, the same loop over all of range(n) on the
    calling thread (``mkl_gemms``: a loop whose GEMMs must be oneMKL's in every mode); False, doing nothing,
    where it did not run (the caller's own path then)."""
    quick = n >= 2 and work >= NATIVE_MIN_WORK and getattr(_held, "quick", False)
    if not quick and not whole:
        return False
    threads = _blas.outside()
    pool = _pool(threads) if quick and threads > 1 else None
    if pool is not None and pool._par is None:
        pool = None
    if pool is None and not whole:
        return False
    from engineroom.providers.cpu.array_module import NUMPY  # imports this module: here, not at the top

    mod = NUMPY.compiled("par")         # looked up per call (a dict lookup), as the kernels' own loops are
    if mod is None:
        return False
    try:
        if pool is None:
            getattr(mod, "par_" + name)(_NO_POOL[0], _NO_POOL[1], 1, n, align, *args)
        else:
            pool.ready()
            getattr(mod, "par_" + name)(pool._nstate, pool._desc, threads, n, align, *args)
    except TypeError:           # arrays it does not take (float64, strided): before any work was done
        return False
    return True


def gemm_here(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """out[...] = a @ b on the calling thread, never split, through the library of the compiled GEMM calls
    where that is oneMKL (``mkl_gemms``), else NumPy's BLAS: for loops that run their GEMMs in parts of their
    own. ``out`` C-contiguous (else NumPy's)."""
    call = _gemm_call(a, b, out) if _blas.mkl else None
    if call is None:
        np.matmul(a, b, out=out)
        return
    fn, a3, b3, c3, ta, tb = call
    fn(_NO_POOL[0], _NO_POOL[1], _blas.gemm, a3, b3, c3, ta, tb, 1, PAR_ALIGN)


def mkl_gemms() -> bool:
    """Whether the provider's GEMMs go to oneMKL (``_mkl_gemm_pointers``): then a kernel whose split runs its
    GEMMs inside a compiled loop (``native_ranges``' conv bands, attention heads) takes oneMKL on its other
    paths too (``gemm_here``, or that loop ``whole``), never OpenBLAS's products, whose last bits differ."""
    if _blas.knobs is None:
        _blas.outside()
    return _blas.mkl


def parallel_ranges(fn, n: int, work: int) -> None:
    """``fn(lo, hi)`` over consecutive ranges covering ``range(n)`` (channels, rows), spread over the pool
    like ``matmul``'s chunks (several per thread, claimed one at a time, so a thread whose core is busy
    delays only the range it holds); ``fn(0, n)`` on the caller's thread where ``work`` is small."""
    if n > 1 and work >= QUICK_MIN_WORK:
        if getattr(_held, "quick", False):
            threads = _blas.outside()
            if threads > 1:
                # spinning workers: a part per thread, two where there is plenty (uneven ranges even out)
                parts = min(n, threads * (2 if work >= 16 * QUICK_MIN_WORK else 1))
                _pool(threads).run(fn, _split(n, parts))
                return
        elif work >= (MIN_PARALLEL_WORK if _blas.depth else MIN_QUIET_WORK) and _calm.pool_ok():
            threads = _blas.outside()
            parts = min(n, threads * CHUNKS_PER_THREAD, max(threads, work // MIN_PART_WORK))
            if threads > 1 and parts > 1:
                _pool(threads).run(fn, _split(n, parts))
                return
    fn(0, n)


# the path the gate does not prefer runs once after this many products, then after twice as many each
# time it loses again (up to _GATE_PROBE_MAX: a probe of a split on a busy machine can cost a time slice)
_GATE_PROBE = 16
_GATE_PROBE_MAX = 1024


class SplitGate:
    """Whether splitting a kernel's work over the pool pays now, learnt from its own calls (the int8 GEMM's
    products, LSTM directions): the time per unit of work split and on one thread (moving averages). On a
    quiet machine the split halves them; with the cores oversubscribed the worker joins late and the caller
    waits for it (T5's 56 products at load 9 on 2 cores: 31.7 ms one thread, 52.8 ms split, best of 20), and
    the products stay on the caller's thread until a probe finds the split paying again. Either path gives
    the same bits. Each path runs twice first, its first time not counted (the pool's threads start then,
    caches are cold: thai_oskut_lstm's first split layer looked slower than one thread, the later ones were
    15 ms faster a run)."""

    __slots__ = ("split", "serial", "n", "every", "prefer", "warm", "quick")

    def __init__(self) -> None:
        self.quick: SplitGate | None = None     # the quick mode's own statistics (``current``)
        self.split = self.serial = 0.0      # ns per multiply-add; 0.0 until measured
        self.n = 0
        self.every = _GATE_PROBE
        self.prefer = True
        self.warm = [0, 0]                  # samples taken: one thread, split

    def choose(self) -> bool:
        if self.warm[1] < 2:
            return True
        if self.warm[0] < 2:
            return False
        self.n += 1
        if self.n >= self.every:            # a probe of the other path
            self.n = 0
            return not self.prefer
        return self.prefer

    def record(self, split: bool, ns_per_mac: float) -> None:
        self.warm[split] += 1
        if self.warm[split] == 1:           # a first run: warm-up, not counted
            return
        old = self.split if split else self.serial
        # the preferred path's time averaged; a probe's taken as it is (it stands for the load now)
        new = ns_per_mac if not old or split != self.prefer else 0.75 * old + 0.25 * ns_per_mac
        if split:
            self.split = new
        else:
            self.serial = new
        if self.split and self.serial:
            prefer = self.split < self.serial
            if prefer != self.prefer:
                self.prefer, self.every = prefer, _GATE_PROBE
            elif split != prefer:           # a probe that lost: probe less often
                self.every = min(2 * self.every, _GATE_PROBE_MAX)


def gated(gate: SplitGate, work: int, split, serial) -> None:
    """``split()`` or ``serial()`` (the same work on the pool or on the caller's thread), as ``gate`` says,
    its time per unit of ``work`` recorded: for the other kernels that split independent work over the
    pool (DynamicQuantizeLSTM's and LSTM/GRU's directions), each with a gate of its own. A quick-mode run
    keeps statistics of its own: splits timed beside OpenBLAS's spinning threads or sleeping workers lost,
    and kept tashkeel_bilstm_int8's directions serial in the quick mode after (14 against 7.9 ms a run)."""
    if getattr(_held, "quick", False):
        if gate.quick is None:
            gate.quick = SplitGate()
        gate = gate.quick
    on = gate.choose()
    t0 = time.perf_counter_ns()
    if on:
        split()
    else:
        serial()
    gate.record(on, (time.perf_counter_ns() - t0) / max(1, work))


def _chunks(a, b, out, batch_shape, parts) -> list[tuple]:
    """Chunks along the batch when it has enough items (a 2-D operand shared by all), else along the
    rows of ``a`` or the columns of ``b``, whichever is longer; each chunk writes its slice of ``out``."""
    M, K = a.shape[-2:]
    N = b.shape[-1]
    batch = int(np.prod(batch_shape)) if batch_shape else 1
    if batch >= parts and (a.ndim == 2 or a.shape[:-2] == batch_shape) \
            and (b.ndim == 2 or b.shape[:-2] == batch_shape) and out.flags.c_contiguous:
        a3 = a if a.ndim == 2 else a.reshape((batch, M, K))
        b3 = b if b.ndim == 2 else b.reshape((batch, K, N))
        o3 = out.reshape((batch, M, N))
        return [(a3 if a.ndim == 2 else a3[i:j], b3 if b.ndim == 2 else b3[i:j], o3[i:j])
                for i, j in _split(batch, parts)]
    if M >= N:
        return [(a[..., i:j, :], b, out[..., i:j, :]) for i, j in _split(M, parts)]
    return [(a, b[..., :, i:j], out[..., :, i:j]) for i, j in _split(N, parts)]
