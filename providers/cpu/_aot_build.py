"""Builds one ``_jit_<name>`` module's kernels into a C extension with numba's ahead-of-time compiler.

Run by ``_jit.load`` in a child process (``python -m engineroom.providers.cpu._aot_build MODULE STEM
DIR``), so that numba and LLVM never load into the process that runs sessions. Every variant in the
module's ``AOT`` table is exported as ``<function>__<dtype>`` through a thin wrapper that calls the
module's jitted function (which keeps its own options: error model, fastmath, inlining), compiled for
the host CPU. The extension is written beside its final name and renamed into place, so concurrent
builds never expose a half-written file.
"""
from __future__ import annotations

import importlib
import os
import sys
import tempfile


def build(modname: str, stem: str, out_dir: str) -> None:
    from numba.pycc import CC

    from engineroom.providers.cpu._jit import export_name, numba_signature

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


if __name__ == "__main__":
    build(*sys.argv[1:4])
