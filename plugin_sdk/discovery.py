"""Finds execution providers through the ``engineroom.providers`` entry-point group (stevedore).

The core never imports a provider module by name: built-in providers are registered in our own
pyproject.toml exactly as a third-party wheel registers its own. It lives in the SDK because it needs
nothing else (the entry-point group, the base class, the version check), so the SDK's conformance kit
finds providers the way sessions do without importing the core; ``engineroom.discovery`` re-exports it.
"""
from __future__ import annotations

import functools
import logging

from engineroom.plugin_sdk import ENTRY_POINT_GROUP, ExecutionProvider, sdk_compatible

log = logging.getLogger("engineroom")

# onnxruntime's canonical order: accelerators first, CPU last (what get_all_providers lists).
_PREFERRED_ORDER = ["CUDAExecutionProvider", "OpenVINOExecutionProvider", "OpenCLExecutionProvider"]


@functools.lru_cache(maxsize=None)
def _named_manager(name: str | None):
    """A stevedore manager that loads only the entry point ``name`` (None: loads none, lists all):
    a session asking for the CPU provider never imports the other providers' modules (~0.1 s)."""
    from stevedore import NamedExtensionManager

    return NamedExtensionManager(namespace=ENTRY_POINT_GROUP, names=[] if name is None else [name],
                                 invoke_on_load=False, on_load_failure_callback=_record_failure,
                                 propagate_map_exceptions=False)


_load_failures: dict[str, str] = {}


def _record_failure(manager, entrypoint, exc) -> None:
    _load_failures[entrypoint.name] = f"{type(exc).__name__}: {exc}"


def refresh() -> None:
    """Forget what was discovered (after installing a plugin into a running interpreter)."""
    from stevedore import ExtensionManager
    from stevedore import _cache as stevedore_cache

    _named_manager.cache_clear()
    # stevedore keeps entry points in memory twice: per group, and per sys.path value
    ExtensionManager.ENTRY_POINT_CACHE.clear()
    getattr(getattr(stevedore_cache, "_c", None), "_internal", {}).clear()
    _load_failures.clear()


def provider_names() -> list[str]:
    """Every registered provider name (loadable or not), accelerators first and CPU last."""
    names = {ep.name for ep in _named_manager(None).list_entry_points()} | set(_load_failures)
    return sorted(names, key=_order_key)


def _order_key(name: str):
    if name == "CPUExecutionProvider":
        return (2, name)
    if name in _PREFERRED_ORDER:
        return (0, _PREFERRED_ORDER.index(name))
    return (1, name)


def load_failure(name: str) -> str | None:
    """Why the provider ``name`` could not be loaded, or None."""
    provider_class(name)
    return _load_failures.get(name)


def provider_class(name: str) -> type[ExecutionProvider] | None:
    """The class registered as ``name``, or None (see :func:`load_failure` for why)."""
    mgr = _named_manager(name)
    if name not in mgr.names():
        return None
    cls = mgr[name].plugin
    if not (isinstance(cls, type) and issubclass(cls, ExecutionProvider)):
        _load_failures[name] = f"entry point does not name an ExecutionProvider subclass (got {cls!r})"
        return None
    if not sdk_compatible(getattr(cls, "sdk_version", "")):
        from engineroom.plugin_sdk import SDK_VERSION

        _load_failures[name] = (f"built for plugin SDK {cls.sdk_version!r}, incompatible with this engineroom's "
                                f"SDK {SDK_VERSION!r}")
        return None
    return cls


def is_available(name: str) -> bool:
    cls = provider_class(name)
    if cls is None:
        return False
    try:
        return bool(cls.is_available())
    except Exception as e:  # noqa: BLE001 - the contract says never raises; a broken plugin is just unavailable
        _load_failures[name] = f"is_available() raised {type(e).__name__}: {e}"
        return False


def unavailable_reason(name: str) -> str:
    """Why the provider says it cannot run here (its optional ``unavailable_reason()``), or ""."""
    cls = provider_class(name)
    try:
        return str(cls.unavailable_reason()) if cls is not None and not cls.is_available() else ""
    except Exception:  # noqa: BLE001 - an optional hook of a plugin; a broken one just says nothing
        return ""


def available_provider_names() -> list[str]:
    return [n for n in provider_names() if is_available(n)]
