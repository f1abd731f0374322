"""Compiled loops for the CPU provider's hottest kernels: numba, compiled ahead of time, out of process.

NumPy runs one whole-array pass per operation; a few kernels (depthwise convolution, Gelu, softmax,
col2im, ...) need many passes over small arrays and lose most of their time there. Their loops are
written once, with numba, in the ``_jit_<name>`` modules of this package (a few still sit in the kernel
package above, ``providers/cpu``, and are found there alike), each declaring the argument
types it is compiled for (``AOT``). ``load(name)`` hands back those kernels compiled into a plain C
extension module, built once per machine by numba's ahead-of-time compiler in a child process and
cached on disk (``ENGINEROOM_CACHE_DIR``, else ``~/.cache/engineroom``): sessions then load a small
shared library and never import numba or LLVM themselves, which would cost ~120 MB of memory and
~150 ms per process.

A first use on a new machine does not wait for the compiler (~15 s a module, ``_jit_par`` ~120 s): one
detached child process builds every missing module in the background, one after another (one line says so, with the
log's path), while ``load`` answers None, so kernels take their NumPy paths; ``load`` looks again at
most once a second, and sessions created once a module is ready use it. The child outlives a short
command (``python -m engineroom run``), so the next command finds the loops built.
``ENGINEROOM_JIT=wait`` builds in the foreground instead (the tests and benchmarks, which must know
which path runs); ``build_all()`` (``python -m engineroom compile``) builds everything now.

numba is an accelerator, never a requirement: without it (the ``jit`` extra), with
``ENGINEROOM_JIT=0``, without a C compiler (one notice) or where the build fails, ``load`` returns None
and every kernel keeps its NumPy path, which agrees with the compiled one to float rounding.

Spec of one argument in ``AOT``: ``A<ndim>`` a C-contiguous array of the variant's dtype, ``U<ndim>`` a
C-contiguous uint8 array (packed quantized weights), ``I<ndim>`` int64 and ``D<ndim>`` float64 ones
(indices, accumulators), ``s`` a scalar of that dtype, ``i`` an int64. The
compiled code trusts its argument types (a wrong one would crash the process), so each call is checked
against the variants first.
"""
from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import sysconfig
import threading
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("engineroom")

_lock = threading.Lock()
_modules: dict[str, object] = {}
_MISSING = object()
_PENDING = object()         # being built in the background: look again after _recheck_at[name]
_recheck_at: dict[str, float] = {}
_background: list[bool] = []     # a background build was started (or found running) by this process
_usable: list[bool] = []
_DTYPES = {"f4": np.dtype(np.float32), "f8": np.dtype(np.float64)}


def available() -> bool:
    """True where numba is installed and ENGINEROOM_JIT is not "0" (numba itself is not imported)."""
    if not _usable:
        _usable.append(os.environ.get("ENGINEROOM_JIT", "1") != "0"
                       and importlib.util.find_spec("numba") is not None)
    return _usable[0]


def load(name: str):
    """The compiled kernels of the ``_jit_<name>`` loop module (attributes named as its
    functions), or None where they cannot be had (yet: see the module's docstring)."""
    mod = _modules.get(name, _MISSING)      # kernels without a factory ask on every run: no lock then
    if mod is not _MISSING and mod is not _PENDING:
        return mod
    if not available():
        return None
    if mod is _PENDING and time.monotonic() < _recheck_at[name]:
        return None
    with _lock:
        if _modules.get(name, _MISSING) in (_MISSING, _PENDING):
            _modules[name] = _load(name)
        mod = _modules[name]
        return None if mod is _PENDING else mod


def _mode() -> str:
    """"wait" (build in the foreground) or "background"."""
    return "wait" if os.environ.get("ENGINEROOM_JIT", "").strip().lower() == "wait" else "background"


# where the loop modules live: this package, and the kernel package above it for those not moved yet
_HERE = Path(__file__).parent
_FOLDERS = ((_HERE, __name__.rsplit(".", 1)[0]), (_HERE.parent, __name__.rsplit(".", 2)[0]))


def module_names() -> list[str]:
    """Every compiled-loop module of the CPU provider (``_jit_<name>.py`` in either folder)."""
    return sorted({f.stem[len("_jit_"):] for folder, _ in _FOLDERS for f in folder.glob("_jit_*.py")})


def _module(name: str) -> str:
    """The import name of the loop module ``_jit_<name>``."""
    for folder, package in _FOLDERS:
        if (folder / f"_jit_{name}.py").exists():
            return f"{package}._jit_{name}"
    raise ModuleNotFoundError(f"no compiled-loop module _jit_{name}")


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

    # the module's source and those of the _jit_* modules it imports loops from (transitively): a change
    # elsewhere does not rebuild it
    h = hashlib.sha256(name.encode())
    for f in (*_sources(source), _HERE / "aot_build.py"):     # the build's wrappers too
        h.update(f.read_bytes())
    for part in (version("numba"), sys.version, np.__version__, platform.machine(), _cpu_model()):
        h.update(part.encode())
    return h.hexdigest()[:16]


# an import statement's line: ``from <module> import ...`` or ``import <module> [as x], ...``
_IMPORT_LINE = re.compile(r"^[ \t]*(?:from[ \t]+([\w.]+)[ \t]+import\b|import[ \t]+([\w., \t]+))", re.M)


def _imported(text: str):
    """The modules a source's import statements name (``from m import ...``: m; ``import a as b, c``: a, c),
    read from its lines: parsing and walking the whole syntax tree cost ~7 ms a module on every session's
    first use of a compiled module, ~30 ms of a first session."""
    for m in _IMPORT_LINE.finditer(text):
        if m.group(1):
            yield m.group(1)
        else:
            for part in m.group(2).split(","):
                words = part.split()
                if words:
                    yield words[0]


def _sources(source: Path) -> list[Path]:
    """``source`` and every ``_jit_*`` module it imports, directly or not, in a stable order."""
    seen: dict[Path, None] = {}
    todo = [source]
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen[f] = None
        for m in _imported(f.read_text()):
            leaf = m.rsplit(".", 1)[-1]
            if leaf.startswith("_jit_"):
                todo += [folder / f"{leaf}.py" for folder, _ in _FOLDERS if (folder / f"{leaf}.py").exists()]
    return sorted(seen)


_paths_known: dict[str, tuple[str, str, Path]] = {}


def _paths(name: str) -> tuple[str, str, Path]:
    """(module name, extension stem, extension path) of one compiled-loop module (hashing the sources
    once per process: a pending module is looked up again every second)."""
    if name not in _paths_known or _paths_known[name][2].parent != cache_dir():
        _paths_known[name] = _compute_paths(name)
    return _paths_known[name]


def _compute_paths(name: str) -> tuple[str, str, Path]:
    modname = _module(name)
    source = Path(importlib.util.find_spec(modname).origin)
    stem = f"_aot_{name}_{_key(name, source)}"
    return modname, stem, cache_dir() / (stem + sysconfig.get_config_var("EXT_SUFFIX"))


_notices: set = set()
_BUILDER = f"{__name__.rsplit('.', 1)[0]}.aot_build"     # the child process's module


def _notice(key: str, msg: str, *args) -> None:
    """One warning per process for each kind of trouble."""
    if key not in _notices:
        _notices.add(key)
        log.warning(msg, *args)


def _compiler() -> str | None:
    """The C compiler numba's ahead-of-time build calls, if there is one."""
    cc = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()[0]
    return shutil.which(cc) or shutil.which("cc") or shutil.which("gcc")


def _load(name: str):
    modname, stem, target = _paths(name)
    failed = target.with_suffix(".failed")
    if not target.exists():
        if failed.exists():
            _notice(name, "engineroom: the CPU provider's %s loops failed to compile here before (%s); "
                    "their NumPy paths serve", name, failed)
            return None
        if _compiler() is None:
            _notice("cc", "engineroom: no C compiler found (install gcc), so the CPU provider's compiled loops "
                    "cannot be built on this machine; its NumPy paths serve (slower on convolutions and "
                    "attention). ENGINEROOM_JIT=0 silences this.")
            return None
        if _mode() == "background":
            _start_background()
            _recheck_at[name] = time.monotonic() + 1.0
            return _PENDING
        log.warning("engineroom: compiling the CPU provider's %s loops (once per machine, cached in %s)",
                    name, target.parent)
        why = _build(modname, stem, target)
        if why is not None:
            log.warning("engineroom: compiling %s failed; its NumPy paths serve instead:\n%s", name, why[-2000:])
            return None
    loader = importlib.machinery.ExtensionFileLoader(stem, str(target))
    spec = importlib.util.spec_from_file_location(stem, str(target), loader=loader)
    ext = importlib.util.module_from_spec(spec)
    loader.exec_module(ext)
    aot = _read_aot(Path(importlib.util.find_spec(modname).origin))
    return _Kernels({fn: _Kernel(fn, [(getattr(ext, export_name(fn, dt)), checks(spec_, dt)) for dt in dts])
                     for fn, (spec_, dts) in aot.items()})


def _build(modname: str, stem: str, target: Path) -> str | None:
    """Build one module in a child process now; the reason it failed (also written beside the target as
    ``.failed``, so later processes keep the NumPy paths without trying again), or None."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run([sys.executable, "-m", _BUILDER, modname, stem,
                               str(target.parent)], capture_output=True, text=True, timeout=900)
        why = proc.stderr if proc.returncode != 0 or not target.exists() else None
    except (OSError, subprocess.SubprocessError) as e:     # an unwritable cache, a hung compiler
        why = f"{type(e).__name__}: {e}"
    if why is not None:
        try:
            target.with_suffix(".failed").write_text(why)
        except OSError:
            pass
    return why


def missing() -> list[tuple[str, str, str, Path]]:
    """(name, module, stem, path) of each module not built on this machine and not failed before."""
    out = []
    for name in module_names():
        modname, stem, target = _paths(name)
        if not target.exists() and not target.with_suffix(".failed").exists():
            out.append((name, modname, stem, target))
    return out


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:         # alive, someone else's
        return True
    return True


def _start_background() -> None:
    """Start (once per process) one detached child building every missing module, unless another
    process's child is at it already (a lock file holding its pid)."""
    if _background:
        return
    _background.append(True)
    todo = missing()
    if not todo:
        return
    folder = cache_dir()
    lock = folder / ".build.lock"
    logfile = folder / "build.log"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        try:
            pid = int(lock.read_text().strip() or 0)
        except (OSError, ValueError):
            pid = 0
        if pid and _pid_alive(pid):
            _notice("bg", "engineroom: the CPU provider's compiled loops are being built by process %d "
                    "(log: %s); NumPy paths serve until they are ready", pid, logfile)
            return
        args = [sys.executable, "-m", _BUILDER, "--all", str(folder), str(lock)]
        for _name, modname, stem, _target in todo:
            args += [modname, stem]
        with open(logfile, "ab") as out:
            child = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                     start_new_session=True)     # outlives this process
        lock.write_text(str(child.pid))
    except OSError as e:        # an unwritable cache: NumPy paths, as for a failed build
        _notice("bg", "engineroom: cannot build the CPU provider's compiled loops in %s (%s); NumPy paths serve",
                folder, e)
        return
    _notice("bg", "engineroom: compiling the CPU provider's loops in the background, once per machine "
            "(%s: about 15 s each, par ~120 s; log: %s). NumPy paths serve until then; sessions created "
            "after use them. "
            "`python -m engineroom compile` builds them now.", ", ".join(t[0] for t in todo), logfile)


def build_all(progress: bool = True) -> dict[str, str | None]:
    """Build every missing module now, in the foreground: {name: None if built, else why not}."""
    if not available():
        return {}
    if _compiler() is None:
        return {name: "no C compiler found" for name in module_names()}
    from tqdm import tqdm

    todo = missing()
    result = {}
    with tqdm(total=len(todo), unit="module", desc="compiling CPU loops", disable=not (progress and todo)) as bar:
        for name, modname, stem, target in todo:
            bar.set_postfix_str(name)
            result[name] = _build(modname, stem, target)
            bar.update(1)
    with _lock:     # let this process load what was built
        for name in list(_modules):
            if _modules[name] is _PENDING:
                del _modules[name]
    return result


_AOT_START = re.compile(r"^AOT\b[^=\n]*=", re.M)


def _read_aot(source: Path) -> dict:
    """The module's ``AOT`` table, read from its source: importing it would import numba. Only the
    statement is parsed where it can be told apart (from its line to the next line at column 0), else
    the whole module."""
    import ast

    text = source.read_text()
    m = _AOT_START.search(text)
    if m is not None:
        lines = text[m.start():].split("\n")
        for i in range(1, len(lines) + 1):
            if i < len(lines) and lines[i][:1] in ("", " ", "\t", "#"):
                continue
            try:
                stmt = ast.parse("\n".join(lines[:i]))
            except SyntaxError:
                continue
            if len(stmt.body) == 1 and isinstance(stmt.body[0], ast.Assign):
                return ast.literal_eval(stmt.body[0].value)
            break
    tree = ast.parse(text)
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "AOT" for t in node.targets):
            return ast.literal_eval(node.value)
    raise ValueError(f"{source} declares no AOT table")


def export_name(fn: str, dt: str) -> str:
    return f"{fn}__{dt}"


# array kinds whose dtype does not follow the variant: U uint8 (packed weights), I int64 (indices),
# D float64 (accumulators)
_FIXED = {"U": "u1", "I": "i8", "D": "f8"}


def numba_signature(spec: str, dt: str) -> str:
    """The numba signature of one variant, e.g. ("A2 A1 s", "f4") -> "void(f4[:,::1], f4[::1], f4)"."""
    args = []
    for a in spec.split():
        if a[0] in "AUID":
            nd = int(a[1:])
            args.append(f"{dt if a[0] == 'A' else _FIXED[a[0]]}[{':,' * (nd - 1)}::1]")
        else:
            args.append({"s": dt, "i": "i8"}[a])
    return f"void({', '.join(args)})"


def checks(spec: str, dt: str) -> tuple:
    """Per array argument of one variant: (position, dtype, ndim)."""
    return tuple((i, _DTYPES[dt] if a[0] == "A" else np.dtype(_FIXED[a[0]]), int(a[1:]))
                 for i, a in enumerate(spec.split()) if a[0] in "AUID")


def _matcher(chk: tuple):
    """``args -> bool``: whether the arrays of one variant's ``checks`` have their class, dtype, rank and C
    order, the tests written out in one expression: a call with six arrays is checked in ~0.6 us, against
    ~0.9 in a loop over the checks (a compiled call on a few hundred elements costs ~0.4 us itself)."""
    env = {"nd": np.ndarray}
    terms = []
    for k, (i, dt, ndim) in enumerate(chk):
        env[f"d{k}"] = dt
        terms.append(f"(a := args[{i}]).__class__ is nd and (a.dtype is d{k} or a.dtype == d{k}) "
                     f"and a.ndim == {int(ndim)} and a.flags.c_contiguous")
    exec("def match(args):\n    return " + (" and ".join(f"({t})" for t in terms) or "True"), env)
    return env["match"]


class _Kernel:
    """One compiled function: the variant whose argument types the call matches, else a TypeError."""

    __slots__ = ("name", "variants", "_matched")

    def __init__(self, name, variants):
        self.name = name
        self.variants = variants        # (compiled function, checks) per variant
        self._matched = [(fn, _matcher(chk)) for fn, chk in variants]

    def __call__(self, *args):
        for fn, match in self._matched:
            if match(args):
                return fn(*args)
        got = ", ".join(f"{a.dtype}[{a.ndim}-D{'' if a.flags.c_contiguous else ', strided'}]"
                        if isinstance(a, np.ndarray) else type(a).__name__ for a in args)
        raise TypeError(f"compiled kernel {self.name}: no variant takes ({got})")


class _Kernels:
    def __init__(self, kernels: dict):
        self.__dict__.update(kernels)
