"""The per-array-module shim of the shared kernel set: what a kernel written against ``xp`` needs
from its array module beyond the NumPy API that module mirrors.

Kernels declared ``array_kernel`` (``registry``) run with any array module a provider hands them as
``info.xp``; the few things that differ between modules are asked of ``arrays(xp)`` instead of being
branched on in the kernels:

* ``special`` — the module's ``scipy.special`` (erf, erfc, expit, ndtri, ...);
* ``host`` — True where the arrays are NumPy arrays in host memory, so a kernel's host-only fast paths
  apply (exact integer GEMM on float BLAS, NumPy's ufunc internals and buffer size);
* ``matmul(a, b, out=None)`` — the module's GEMM; NumPy's is the provider's worker pool
  (``_threadpool``: large products in chunks over the cores, steady when a core is busy);
* ``compiled(name)`` — the compiled loops of ``compiled/_jit_<name>`` where they take these arrays,
  else None (the kernel's array-module path serves).

This module holds NumPy's shim. A provider that runs the kernel set on another array module registers
that module's shim (``register``) before it creates kernels; the CUDA provider keeps its own.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable

import numpy as np

from engineroom.providers.cpu import _threadpool
from engineroom.providers.cpu.compiled import jit


class ArrayModule:
    """One array module's answers to the questions above (see the module docstring)."""

    __slots__ = ("xp", "host", "_special_name", "_special", "matmul")

    def __init__(self, xp: Any, *, host: bool, special: str,
                 matmul: Callable | None = None) -> None:
        self.xp = xp
        self.matmul = matmul or xp.matmul
        self.host = host
        self._special_name = special        # imported on first use: scipy costs ~100 ms
        self._special = None

    @property
    def special(self):
        if self._special is None:
            self._special = importlib.import_module(self._special_name)
        return self._special

    def compiled(self, name: str):
        """The compiled loops of ``_jit_<name>`` (see ``compiled.jit``), or None where they do not take
        this module's arrays or are not built (yet)."""
        return jit.load(name) if self.host else None


NUMPY = ArrayModule(np, host=True, special="scipy.special", matmul=_threadpool.matmul)
_BY_MODULE: dict[Any, ArrayModule] = {np: NUMPY}


def register(shim: ArrayModule) -> None:
    """Make ``shim`` the answer for kernels run with ``shim.xp`` (a provider does this at start-up)."""
    _BY_MODULE[shim.xp] = shim


def arrays(xp: Any) -> ArrayModule:
    """The shim of the array module ``xp`` (a LookupError naming it if its provider registered none)."""
    shim = _BY_MODULE.get(xp)
    if shim is None:
        raise LookupError(f"no array-module shim for {getattr(xp, '__name__', xp)!r}: a provider running the "
                          "CPU kernel set on it must register one (providers.cpu.array_module.register)")
    return shim
