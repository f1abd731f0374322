"""Shared by the tests of kernels that have a compiled loop: both paths as a parameter, a spy that
records which compiled loops a kernel called, and the path a parametrized test runs on."""
from __future__ import annotations

import pytest

from engineroom.providers.cpu.compiled import jit as _jit

# "jit" where numba is installed (else skipped with the reason), "numpy" always
JIT_PATHS = [pytest.param(True, id="jit", marks=pytest.mark.skipif(not _jit.available(),
                                                                   reason="numba is not installed (jit extra)")),
             pytest.param(False, id="numpy")]


class Spy:
    """A compiled-kernel module that records in ``used`` the names of the loops called through it."""

    def __init__(self, mod, used: set):
        self._mod, self._used = mod, used

    def __getattr__(self, name):
        fn = getattr(self._mod, name)

        def call(*a):
            self._used.add(name)
            return fn(*a)
        if hasattr(fn, "variants"):        # the pool reads the raw variants of its own compiled calls
            call.variants = fn.variants
        return call


def spy_on(monkeypatch, module: str, used: set) -> None:
    """Make ``_jit.load(module)`` (and the pool's split loops, ``par``) hand out a Spy recording into ``used``."""
    load = _jit.load

    def spied(name):
        mod = load(name)
        return Spy(mod, used) if name in (module, "par") and mod is not None else mod
    monkeypatch.setattr(_jit, "load", spied)


class KernelPath:
    """The path a test runs on: ``jit`` True, the compiled loops (those called are in ``used``), or
    False, ``_jit.load`` answering None (the NumPy paths)."""

    def __init__(self, jit: bool, used: set):
        self.jit, self.used = jit, used

    def expect(self, name: str, taken: bool = True) -> None:
        """On the compiled path, assert whether loop ``name`` ran since the last check (itself, or split over
        the CPU provider's pool inside one compiled call: ``par_<name>`` of ``compiled/_jit_par``)."""
        if self.jit:
            ran = name in self.used or f"par_{name}" in self.used
            assert ran == taken, f"compiled {name} {'not ' if taken else ''}taken: {self.used}"
        self.used.clear()


def choose_path(request, monkeypatch, module: str) -> KernelPath:
    """For a fixture parametrized with JIT_PATHS: set up the path of ``request.param``, spying on
    ``module``'s compiled loops."""
    used: set = set()
    if request.param:
        spy_on(monkeypatch, module, used)
    else:
        monkeypatch.setattr(_jit, "load", lambda name: None)
    return KernelPath(request.param, used)
