"""Compiled loops for the CPU provider's hottest kernels: numba, compiled ahead of time, out of process.

NumPy runs one whole-array pass per operation; a few kernels (depthwise convolution, Gelu, softmax,
col2im, ...) need many passes over small arrays and lose most of their time there. Their loops are
written once, with numba, in the ``_jit_<name>`` modules of this package, each declaring the argument
types it is compiled for (``AOT``). ``load(name)`` hands back those kernels compiled into a plain C
extension module, built once per machine by numba's ahead-of-time compiler in a child process and
cached on disk (``ENGINEROOM_CACHE_DIR``, else ``~/.cache/engineroom``): sessions then load a small
shared library and never import numba or LLVM themselves, which would cost ~120 MB of memory and
~150 ms per process.

numba is an accelerator, never a requirement: without it (the ``jit`` extra), with
``ENGINEROOM_JIT=0``, or where the build fails (no C compiler), ``load`` returns None and every kernel
keeps its NumPy path, which agrees with the compiled one to float rounding.

Spec of one argument in ``AOT``: ``A<ndim>`` a C-contiguous array of the variant's dtype, ``s`` a
scalar of that dtype, ``i`` an int64. The compiled code trusts its argument types (a wrong one would
crash the process), so each call is checked against the variants first.
"""
from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import logging
import os
import platform
import subprocess
import sys
import sysconfig
import threading
from pathlib import Path

import numpy as np

log = logging.getLogger("engineroom")

_lock = threading.Lock()
_modules: dict[str, object] = {}
_MISSING = object()
_usable: list[bool] = []
_DTYPES = {"f4": np.dtype(np.float32), "f8": np.dtype(np.float64)}


def available() -> bool:
    """True where numba is installed and ENGINEROOM_JIT is not "0" (numba itself is not imported)."""
    if not _usable:
        _usable.append(os.environ.get("ENGINEROOM_JIT", "1") != "0"
                       and importlib.util.find_spec("numba") is not None)
    return _usable[0]


def load(name: str):
    """The compiled kernels of ``engineroom.providers.cpu._jit_<name>`` (attributes named as its
    functions), or None where they cannot be had. Builds them on first use on this machine."""
    mod = _modules.get(name, _MISSING)      # kernels without a factory ask on every run: no lock then
    if mod is not _MISSING:
        return mod
    if not available():
        return None
    with _lock:
        if name not in _modules:
            _modules[name] = _load(name)
        return _modules[name]


def cache_dir() -> Path:
    root = os.environ.get("ENGINEROOM_CACHE_DIR") or \
        os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "engineroom")
    return Path(root) / "aot"


def _cpu_model() -> str:
    """What the compiled code depends on (it targets the host CPU): its flags where Linux tells."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):       # the instruction sets the code may use
                    return line
    except OSError:
        pass
    return platform.processor()


def _key(name: str, source: Path) -> str:
    from importlib.metadata import version

    # every kernel module's source: one may import loops from another
    h = hashlib.sha256(name.encode())
    for f in sorted(source.parent.glob("_jit_*.py")):
        h.update(f.read_bytes())
    for part in (version("numba"), sys.version, np.__version__, platform.machine(), _cpu_model()):
        h.update(part.encode())
    return h.hexdigest()[:16]


def _load(name: str):
    modname = f"engineroom.providers.cpu._jit_{name}"
    source = Path(importlib.util.find_spec(modname).origin)
    stem = f"_aot_{name}_{_key(name, source)}"
    target = cache_dir() / (stem + sysconfig.get_config_var("EXT_SUFFIX"))
    failed = target.with_suffix(".failed")
    if not target.exists():
        if failed.exists():
            log.warning("engineroom: the CPU provider's %s loops failed to compile here before (%s); "
                        "their NumPy paths serve", name, failed)
            return None
        log.warning("engineroom: compiling the CPU provider's %s loops (once per machine, cached in %s)",
                    name, target.parent)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            proc = subprocess.run([sys.executable, "-m", "engineroom.providers.cpu._aot_build", modname, stem,
                                   str(target.parent)], capture_output=True, text=True, timeout=900)
            why = proc.stderr if proc.returncode != 0 or not target.exists() else None
        except (OSError, subprocess.SubprocessError) as e:     # an unwritable cache, a hung compiler
            why = f"{type(e).__name__}: {e}"
        if why is not None:
            log.warning("engineroom: compiling %s failed; its NumPy paths serve instead:\n%s", name, why[-2000:])
            try:
                failed.write_text(why)
            except OSError:
                pass
            return None
    loader = importlib.machinery.ExtensionFileLoader(stem, str(target))
    spec = importlib.util.spec_from_file_location(stem, str(target), loader=loader)
    ext = importlib.util.module_from_spec(spec)
    loader.exec_module(ext)
    aot = _read_aot(source)
    return _Kernels({fn: _Kernel(fn, [(getattr(ext, export_name(fn, dt)), checks(spec_, dt)) for dt in dts])
                     for fn, (spec_, dts) in aot.items()})


def _read_aot(source: Path) -> dict:
    """The module's ``AOT`` table, read from its source: importing it would import numba."""
    import ast

    tree = ast.parse(source.read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "AOT" for t in node.targets):
            return ast.literal_eval(node.value)
    raise ValueError(f"{source} declares no AOT table")


def export_name(fn: str, dt: str) -> str:
    return f"{fn}__{dt}"


def numba_signature(spec: str, dt: str) -> str:
    """The numba signature of one variant, e.g. ("A2 A1 s", "f4") -> "void(f4[:,::1], f4[::1], f4)"."""
    args = []
    for a in spec.split():
        if a[0] == "A":
            nd = int(a[1:])
            args.append(f"{dt}[{':,' * (nd - 1)}::1]")
        else:
            args.append({"s": dt, "i": "i8"}[a])
    return f"void({', '.join(args)})"


def checks(spec: str, dt: str) -> tuple:
    """Per array argument of one variant: (position, dtype, ndim)."""
    return tuple((i, _DTYPES[dt], int(a[1:])) for i, a in enumerate(spec.split()) if a[0] == "A")


class _Kernel:
    """One compiled function: the variant whose argument types the call matches, else a TypeError."""

    __slots__ = ("name", "variants")

    def __init__(self, name, variants):
        self.name = name
        self.variants = variants

    def __call__(self, *args):
        for fn, chk in self.variants:
            for i, dt, nd in chk:
                a = args[i]
                if type(a) is not np.ndarray or a.dtype != dt or a.ndim != nd or not a.flags.c_contiguous:
                    break
            else:
                return fn(*args)
        got = ", ".join(f"{a.dtype}[{a.ndim}-D{'' if a.flags.c_contiguous else ', strided'}]"
                        if isinstance(a, np.ndarray) else type(a).__name__ for a in args)
        raise TypeError(f"compiled kernel {self.name}: no variant takes ({got})")


class _Kernels:
    def __init__(self, kernels: dict):
        self.__dict__.update(kernels)
