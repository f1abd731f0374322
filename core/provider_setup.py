"""Provider set-up for a session: starting the requested providers in priority order, with the
fallback rules (a provider that cannot start is left out with a warning, or EPFail when the CPU fallback
is disabled; the CPU provider appended last), and the rebuild on the CPU provider after a provider fails
during a run."""
from __future__ import annotations

import logging

from engineroom import discovery
from engineroom.errors import EPFail, InvalidArgument
from engineroom.options import SessionOptions
from engineroom.plugin_sdk import ExecutionProvider

log = logging.getLogger("engineroom")


def create_providers(so: SessionOptions, providers, provider_options, log_level: int) -> list[ExecutionProvider]:
    """The session's providers, started in priority order: names or (name, options), ``provider_options``,
    or the devices / selection policy of ``so``. One that is missing, unavailable or fails to start is
    left out with a warning (EPFail with ``session.disable_cpu_ep_fallback=1``); the CPU provider is
    appended unless that is set."""
    strict = so.config("session.disable_cpu_ep_fallback") == "1"
    if not providers and provider_options is None and so.has_providers():
        from engineroom.devices import providers_for_session  # devices or a selection policy

        providers = providers_for_session(so)
    requested = list(providers) if providers else ["CPUExecutionProvider"]
    if provider_options is not None and len(provider_options) != len(requested):
        raise InvalidArgument(f"provider_options has {len(provider_options)} entries for "
                              f"{len(requested)} providers: they must match one to one")
    out: list[ExecutionProvider] = []
    for k, item in enumerate(requested):
        if isinstance(item, (tuple, list)):
            if len(item) != 2 or not isinstance(item[1], dict):
                raise InvalidArgument(f"provider entry {item!r} must be a name or a (name, options dict) tuple")
            name, opts = item[0], dict(item[1])
        else:
            name, opts = item, {}
        if provider_options is not None:
            opts.update(provider_options[k] or {})
        if not isinstance(name, str):
            raise InvalidArgument(f"provider names must be strings, got {name!r}")
        if any(p.name == name for p in out):
            continue
        prov = start_provider(name, opts, strict, log_level)
        if prov is not None:
            out.append(prov)
    if not strict and not any(p.name == "CPUExecutionProvider" for p in out):
        cpu = start_provider("CPUExecutionProvider", {}, True, log_level)
        out.append(cpu)
    if not out:
        raise EPFail("no execution provider could be started")
    return out

def start_provider(name: str, opts: dict, strict: bool, log_level: int) -> ExecutionProvider | None:
    """Provider ``name`` started with ``opts``, or None (logged) when it cannot be used; EPFail when ``strict``."""
    cls = discovery.provider_class(name)
    reason = None
    if cls is None:
        reason = discovery.load_failure(name) or (
            f"no provider of that name is registered; available providers: "
            f"{', '.join(discovery.available_provider_names())}")
    elif not discovery.is_available(name):
        reason = discovery.load_failure(name) or discovery.unavailable_reason(name) or (
            "it is not available on this machine")
    else:
        try:
            from engineroom.compat.provider_options import without_ignored

            return cls(**without_ignored(name, cls.options, opts, log_level))
        except InvalidArgument:   # a bad option (ProviderOptionError is one): the user's error, not a fallback
            raise
        except Exception as e:  # noqa: BLE001 - a provider that fails to start is reported, never hidden
            reason = f"it failed to start: {type(e).__name__}: {e}"
    msg = f"{name} cannot be used: {reason}"
    if strict:
        raise EPFail(msg)
    if log_level <= logging.WARNING:
        log.warning("%s; falling back to the remaining providers", msg)
    return None

def cpu_for_folding(cpu: ExecutionProvider | None) -> ExecutionProvider | None:
    """The CPU provider constant folding runs kernels of: the session's, or a fresh one where it has none."""
    if cpu is not None:
        return cpu
    cls = discovery.provider_class("CPUExecutionProvider")
    return cls() if cls is not None else None


def retry_on_cpu(session) -> bool:
    """After a provider failure in a run, rebuild ``session`` on the CPU provider alone (onnxruntime's
    fallback); False where fallback is off or the session is on the CPU provider already."""
    if not session._fallback or session.get_providers() == ["CPUExecutionProvider"]:
        return False
    log.warning("a provider failed during the run; falling back to CPUExecutionProvider and retrying "
                "(InferenceSession.disable_fallback() turns this off)")
    session.set_providers(["CPUExecutionProvider"])
    return True
