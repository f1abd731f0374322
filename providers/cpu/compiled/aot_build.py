"""Builds one ``_jit_<name>`` module's kernels into a C extension with numba's ahead-of-time compiler.

Run by ``jit`` in a child process (``python -m engineroom.providers.cpu.compiled.aot_build MODULE STEM DIR``;
or ``--all DIR LOCK MODULE STEM [MODULE STEM ...]``, the detached background build of several modules,
one after another, which removes the LOCK file holding its pid when done), so that numba and LLVM
never load into the process that runs sessions. Every variant in the module's ``AOT`` table is
exported as ``<function>__<dtype>`` through a thin wrapper that calls the module's jitted function
(which keeps its own options: error model, fastmath, inlining), compiled for the host CPU. The
extension is written beside its final name and renamed into place, so concurrent builds never expose
a half-written file.
"""
from __future__ import annotations

import importlib
import os
import sys
import tempfile


def build(modname: str, stem: str, out_dir: str) -> None:
    from numba.pycc import CC
    from numba.pycc import compiler as pycc_compiler

    from engineroom.providers.cpu.compiled.jit import export_name, numba_signature

    # the exported wrappers release the GIL while the loop runs, as the loops' own nogil=True asks
    # (pycc's wrappers ignore it and held the GIL: the provider's worker pool could not run two loops
    # at once); the loops take only arrays and scalars
    class _NoGilFlags(pycc_compiler.Flags):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.release_gil = True

    pycc_compiler.Flags = _NoGilFlags
    mod = importlib.import_module(modname)
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        cc = CC(stem)
        cc.output_dir = tmp
        cc.target_cpu = "host"
        for fn, (spec, dtypes) in mod.AOT.items():
            params = ", ".join(f"a{i}" for i in range(len(spec.split())))
            scope = {"kernel": getattr(mod, fn)}
            exec(f"def wrapper({params}):\n    kernel({params})\n", scope)   # a wrapper of the right arity
            for dt in dtypes:
                cc.export(export_name(fn, dt), numba_signature(spec, dt))(scope["wrapper"])
        cc.compile()
        (built,) = [f for f in os.listdir(tmp) if f.startswith(stem) and not f.endswith(".o")]
        os.replace(os.path.join(tmp, built), os.path.join(out_dir, built))
    _drop_stale(stem, built, out_dir)


def _drop_stale(stem: str, keep: str, out_dir: str) -> None:
    """Remove this module's builds from older sources (the stem is ``_aot_<name>_<16 hex digits>``), so
    the cache does not grow with every change; a process that loaded one keeps its mapping."""
    import re

    pattern = re.compile(re.escape(stem[:-16]) + r"[0-9a-f]{16}\.")
    for f in os.listdir(out_dir):
        if f != keep and pattern.match(f):
            try:
                os.remove(os.path.join(out_dir, f))
            except OSError:
                pass


def build_several(out_dir: str, lock: str, pairs: list[str]) -> None:
    """Build each (module, stem) in turn; a failure is written beside its target as ``.failed`` (the
    process that asks next then keeps the NumPy paths, with one notice) and the next module goes on."""
    import sysconfig
    import time
    import traceback

    try:
        os.nice(10)     # a background job: the user's own work comes first
    except OSError:
        pass
    try:
        for modname, stem in zip(pairs[::2], pairs[1::2]):
            t0 = time.perf_counter()
            print(f"{time.strftime('%H:%M:%S')} building {modname} ...", flush=True)
            try:
                build(modname, stem, out_dir)
                print(f"{time.strftime('%H:%M:%S')} built {modname} in {time.perf_counter() - t0:.1f} s", flush=True)
            except Exception:       # noqa: BLE001 - recorded for the process that loads it next
                why = traceback.format_exc()
                print(why, flush=True)
                failed = os.path.join(out_dir, stem + sysconfig.get_config_var("EXT_SUFFIX"))
                with open(os.path.splitext(failed)[0] + ".failed", "w") as f:
                    f.write(why)
    finally:
        try:
            if open(lock).read().strip() == str(os.getpid()):
                os.remove(lock)
        except OSError:
            pass


if __name__ == "__main__":
    if sys.argv[1] == "--all":
        build_several(sys.argv[2], sys.argv[3], sys.argv[4:])
    else:
        build(*sys.argv[1:4])
