"""The dependency rule, checked by reading the source: every ``import`` and ``from ... import`` of every
module (those inside functions too, resolved when relative) and every ``importlib.import_module`` /
``__import__`` call with a literal name.

- the core (``core/``, the ``engineroom`` package) never imports a provider (``engineroom.providers...``), nor
  names a provider module in a string (a table of lazy imports);
- the SDK (``plugin_sdk/``, ``engineroom.plugin_sdk``) imports nothing from the core or the providers;
- a provider (``providers/<name>/``, and the example third-party provider) imports only the SDK, the shared
  kernel set (``SHARED_KERNEL_SET``: the CPU provider's array-module-generic kernels, which another array
  module's provider registers with its own ``xp``) and its own package; any non-engineroom package is its
  own stack;
- nothing under ``providers/cpu`` names CuPy in code (imports, names, attributes, string constants;
  docstrings and comments may say that the kernels also serve CuPy's provider).
"""
from __future__ import annotations

import ast
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# folder -> import path, as [tool.setuptools] package-dir maps them (checked against pyproject.toml below)
LAYOUT = {"core": "engineroom", "plugin_sdk": "engineroom.plugin_sdk", "providers": "engineroom.providers"}
EXAMPLE_PROVIDERS = {os.path.join("examples", "third_party_provider", "src", "engineroom_precise_ep"):
                     "engineroom_precise_ep"}
SDK = "engineroom.plugin_sdk"
PROVIDERS = "engineroom.providers"
# The shared kernel set: what a provider over another array module may take from the CPU provider (its
# registry, whose kernels declared for any array module it registers, and the array-module shim); the rest of
# providers/cpu is the CPU provider's own.
SHARED_KERNEL_SET = ("engineroom.providers.cpu.registry", "engineroom.providers.cpu.array_module")


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _sources() -> list[tuple[str, str]]:
    """(path relative to the checkout, module name) of every .py file of the engine and the example provider."""
    out = []
    roots = {**LAYOUT, **EXAMPLE_PROVIDERS}
    for folder, package in roots.items():
        for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, folder)):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
            rel_dir = os.path.relpath(dirpath, os.path.join(ROOT, folder))
            parts = [] if rel_dir == "." else rel_dir.split(os.sep)
            if folder == "core" and parts and parts[0] in ("plugin_sdk", "providers"):
                continue
            for f in sorted(filenames):
                if not f.endswith(".py"):
                    continue
                mod_parts = parts + ([] if f == "__init__.py" else [f[:-3]])
                out.append((os.path.relpath(os.path.join(dirpath, f), ROOT), ".".join([package, *mod_parts])))
    return out


SOURCES = _sources()
MODULES = {m for _, m in SOURCES}


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the docstring constants of ``tree``'s module, classes and functions."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and \
                    isinstance(first.value.value, str):
                out.add(id(first.value))
    return out


def imports_of(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, imported module) for every import in ``source``, the module ``module``: relative imports
    resolved; ``from a import b`` counts as importing ``a.b`` where that is a module of the engine."""
    tree = ast.parse(source)
    package = module if is_package else module.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[:len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.append((node.lineno, sub if sub in MODULES else base))
        elif isinstance(node, ast.Call) and node.args:
            fn = node.func
            fname = fn.id if isinstance(fn, ast.Name) else fn.attr if isinstance(fn, ast.Attribute) else ""
            if fname not in ("import_module", "__import__"):
                continue
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                out.append((node.lineno, arg.value))
            elif isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
                out.append((node.lineno, str(arg.values[0].value).rstrip(".")))   # f"pkg.{x}": at least pkg
    return out


def _parsed(path: str) -> tuple[str, ast.AST]:
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        text = f.read()
    return text, ast.parse(text, path)


def _all_imports() -> list[tuple[str, str, int, str]]:
    """(path, module, line, imported) over every source file."""
    out = []
    for path, module in SOURCES:
        text, _ = _parsed(path)
        for line, target in imports_of(text, module, path.endswith("__init__.py")):
            out.append((path, module, line, target))
    return out


IMPORTS = _all_imports()


def _provider_of(module: str) -> str | None:
    """The package of the provider ``module`` belongs to (engineroom.providers.cpu, engineroom_precise_ep...)."""
    if module.startswith(PROVIDERS + "."):
        return ".".join(module.split(".")[:3])
    for package in EXAMPLE_PROVIDERS.values():
        if _within(module, package):
            return package
    return None


def _layer(module: str) -> str:
    if _within(module, SDK):
        return "sdk"
    if _within(module, PROVIDERS) or _provider_of(module):
        return "provider"
    if _within(module, "engineroom"):
        return "core"
    return "outside"


def _report(bad: list[str]) -> str:
    return f"{len(bad)} imports break the dependency rule:\n  " + "\n  ".join(bad)


# -- the checker itself --------------------------------------------------------------------------------------
def test_the_layout_is_the_one_pyproject_maps():
    with open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8") as f:
        text = f.read()
    for folder, package in LAYOUT.items():
        assert re.search(rf'"{re.escape(package)}"\s*=\s*"{folder}"', text), f"pyproject.toml no longer maps {folder}"
    layers = {_layer(m) for m in MODULES}
    assert {"core", "sdk", "provider"} <= layers
    assert sum(1 for p, _ in SOURCES if p.startswith("core" + os.sep)) > 30, "the core's modules were not found"
    assert sum(1 for p, _ in SOURCES if p.startswith(os.path.join("providers", "cpu"))) > 20
    missing = [k for k in SHARED_KERNEL_SET if k not in MODULES]
    assert not missing, f"the shared kernel set names modules that do not exist: {missing}"


def test_every_kind_of_import_is_seen():
    src = '''
import numpy as np
import engineroom.session
from engineroom.plugin_sdk import kernel
from . import registry
from .registry import kernel as k2
from .. import opencl

def lazy():
    from engineroom import discovery
    import importlib
    importlib.import_module("engineroom.providers.cuda")
    __import__("cupy")
    importlib.import_module(f"engineroom.providers.{name}")

class C:
    def method(self):
        if True:
            import engineroom.providers.openvino.rules as r
'''
    got = [t for _, t in imports_of(src, "engineroom.providers.cpu.conv")]
    assert got.count("numpy") == 1
    assert {"engineroom.session", "engineroom.plugin_sdk.kernel", "engineroom.providers.cpu.registry",
            "engineroom.providers.opencl", "engineroom.discovery", "engineroom.providers.cuda", "cupy",
            "engineroom.providers", "engineroom.providers.openvino.rules", "importlib"} <= set(got), got
    # a package's own relative imports resolve against the package itself
    assert ("engineroom.providers.cpu.registry" in
            [t for _, t in imports_of("from .registry import registry", "engineroom.providers.cpu", True)])


# -- the rule ----------------------------------------------------------------------------------------------
def test_the_core_never_imports_a_provider():
    bad = [f"{p}:{line}: {m} imports {t}" for p, m, line, t in IMPORTS
           if _layer(m) == "core" and _within(t, PROVIDERS)]
    for path, module in SOURCES:
        if _layer(module) != "core":
            continue
        _, tree = _parsed(path)
        docs = _docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs and \
                    re.match(rf"{re.escape(PROVIDERS)}\.\w", node.value):
                bad.append(f"{path}:{node.lineno}: {module} names the provider module {node.value!r}")
    assert not bad, _report(bad)


def test_the_sdk_imports_nothing_from_the_core_or_the_providers():
    bad = [f"{p}:{line}: {m} imports {t}" for p, m, line, t in IMPORTS
           if _layer(m) == "sdk" and _within(t, "engineroom") and not _within(t, SDK)]
    assert not bad, _report(bad)


def test_a_provider_imports_only_the_sdk_the_shared_kernel_set_and_its_own_package():
    bad = []
    for p, m, line, t in IMPORTS:
        own = _provider_of(m)
        if own is None or _layer(t) == "outside" and not _provider_of(t):
            continue
        if _within(t, SDK) or _within(t, own) or any(_within(t, k) for k in SHARED_KERNEL_SET):
            continue
        what = "the core" if _layer(t) == "core" else "another provider" if _provider_of(t) else "engineroom"
        bad.append(f"{p}:{line}: {m} imports {t} ({what})")
    assert not bad, _report(bad)


def test_nothing_under_providers_cpu_names_cupy():
    bad = []
    for path, module in SOURCES:
        if not _within(module, PROVIDERS + ".cpu"):
            continue
        _, tree = _parsed(path)
        docs = _docstrings(tree)
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Name):
                names = [node.id]
            elif isinstance(node, ast.Attribute):
                names = [node.attr]
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [a.asname or "" for a in node.names] + \
                    [getattr(node, "module", None) or ""]
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names = [node.name]
            elif isinstance(node, ast.arg):
                names = [node.arg]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
                names = [node.value]
            hits = [n for n in names if "cupy" in n.lower()]
            if hits:
                bad.append(f"{path}:{getattr(node, 'lineno', '?')}: {hits[0][:80]!r}")
    assert not bad, f"{len(bad)} places under providers/cpu name CuPy:\n  " + "\n  ".join(bad)
