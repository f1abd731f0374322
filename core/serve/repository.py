"""A Triton-style model repository: ``DIR/NAME/VERSION/model.onnx`` with an optional ``DIR/NAME/config.json``.

The configuration uses Triton's field names (``max_batch_size``, ``dynamic_batching`` with
``preferred_batch_size`` and ``max_queue_delay_microseconds``, ``instance_group`` with ``count``,
``version_policy``, ``default_model_filename``) plus engineroom's ``providers`` and ``session_options``.
Every field is checked at start-up; an unknown or unsupported one is an error naming it, never ignored.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from engineroom.serve.errors import ConfigError

_KEYS = {"name", "platform", "backend", "max_batch_size", "dynamic_batching", "instance_group", "providers",
         "session_options", "version_policy", "default_model_filename"}


@dataclass
class ModelConfig:
    name: str
    max_batch_size: int = 0                   # 0: the first dim is not a batch dim and nothing is merged
    dynamic_batching: bool = False
    preferred_batch_size: list[int] = field(default_factory=list)
    max_queue_delay_us: int = 0
    instance_count: int = 1
    providers: list | None = None             # as InferenceSession(providers=...)
    session_options: dict = field(default_factory=dict)
    version_policy: dict = field(default_factory=lambda: {"latest": {"num_versions": 1}})
    default_model_filename: str = "model.onnx"


@dataclass
class ModelVersionSource:
    name: str
    version: str
    path: str
    config: ModelConfig


def _int(cfg: dict, key: str, where: str, minimum: int = 0) -> int:
    v = cfg[key]
    if isinstance(v, str) and v.strip().lstrip("-").isdigit():   # Triton's JSON form writes int64 as strings
        v = int(v)
    if not isinstance(v, int) or isinstance(v, bool) or v < minimum:
        raise ConfigError(f"{where}: '{key}' must be an integer >= {minimum}, got {v!r}")
    return v


def parse_config(name: str, cfg: dict, where: str) -> ModelConfig:
    if not isinstance(cfg, dict):
        raise ConfigError(f"{where}: the configuration must be a JSON object")
    unknown = sorted(set(cfg) - _KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(unknown)} (known: {', '.join(sorted(_KEYS))})")
    if cfg.get("name", name) != name:
        raise ConfigError(f"{where}: 'name' is {cfg['name']!r} but the model's folder is {name!r}")
    for key, allowed in (("platform", "onnxruntime_onnx"), ("backend", "onnxruntime")):
        if key in cfg and cfg[key] != allowed:
            raise ConfigError(f"{where}: '{key}' {cfg[key]!r} is not served here (only {allowed!r})")
    c = ModelConfig(name=name)
    if "max_batch_size" in cfg:
        c.max_batch_size = _int(cfg, "max_batch_size", where)
    if "dynamic_batching" in cfg:
        db = cfg["dynamic_batching"]
        if not isinstance(db, dict):
            raise ConfigError(f"{where}: 'dynamic_batching' must be an object")
        bad = sorted(set(db) - {"preferred_batch_size", "max_queue_delay_microseconds"})
        if bad:
            raise ConfigError(f"{where}: dynamic_batching field(s) {', '.join(bad)} are not supported")
        if c.max_batch_size < 1:
            raise ConfigError(f"{where}: dynamic_batching needs 'max_batch_size' >= 1")
        c.dynamic_batching = True
        if "max_queue_delay_microseconds" in db:
            c.max_queue_delay_us = _int(db, "max_queue_delay_microseconds", where + " dynamic_batching")
        pref = db.get("preferred_batch_size", [])
        if not isinstance(pref, list) or not all(isinstance(p, int) and 1 <= p <= c.max_batch_size for p in pref):
            raise ConfigError(f"{where}: 'preferred_batch_size' must list sizes in 1..max_batch_size, got {pref!r}")
        c.preferred_batch_size = sorted(pref)
    if "instance_group" in cfg:
        groups = cfg["instance_group"]
        if not isinstance(groups, list) or not groups:
            raise ConfigError(f"{where}: 'instance_group' must be a non-empty list")
        count = 0
        for g in groups:
            if not isinstance(g, dict) or set(g) - {"count", "kind"}:
                raise ConfigError(f"{where}: an instance_group entry takes only 'count' (and 'kind': KIND_CPU / "
                                  f"KIND_AUTO; the device is chosen by 'providers'), got {g!r}")
            if g.get("kind", "KIND_AUTO") not in ("KIND_AUTO", "KIND_CPU"):
                raise ConfigError(f"{where}: instance_group kind {g['kind']!r} is not supported: choose the "
                                  "device with 'providers'")
            count += _int(g, "count", where + " instance_group", 1) if "count" in g else 1
        c.instance_count = count
    if "providers" in cfg:
        provs = cfg["providers"]
        ok = isinstance(provs, list) and all(
            isinstance(p, str) or (isinstance(p, list) and len(p) == 2 and isinstance(p[0], str)
                                   and isinstance(p[1], dict)) for p in provs)
        if not ok:
            raise ConfigError(f"{where}: 'providers' must list names or [name, {{options}}] pairs, got {provs!r}")
        c.providers = [p if isinstance(p, str) else (p[0], p[1]) for p in provs]
    if "session_options" in cfg:
        if not isinstance(cfg["session_options"], dict):
            raise ConfigError(f"{where}: 'session_options' must be an object")
        c.session_options = dict(cfg["session_options"])
    if "version_policy" in cfg:
        vp = cfg["version_policy"]
        if not (isinstance(vp, dict) and len(vp) == 1 and next(iter(vp)) in ("latest", "all", "specific")):
            raise ConfigError(f"{where}: 'version_policy' must be one of {{'latest': {{'num_versions': N}}}}, "
                              f"{{'all': {{}}}}, {{'specific': {{'versions': [...]}}}}, got {vp!r}")
        c.version_policy = vp
    if "default_model_filename" in cfg:
        c.default_model_filename = str(cfg["default_model_filename"])
    return c


def _select_versions(versions: list[int], policy: dict, where: str) -> list[int]:
    kind, arg = next(iter(policy.items()))
    if kind == "all":
        return versions
    if kind == "latest":
        n = _int(arg, "num_versions", where + " version_policy.latest", 1) if "num_versions" in arg else 1
        return versions[-n:]
    wanted = arg.get("versions") if isinstance(arg, dict) else None
    if not isinstance(wanted, list) or not wanted:
        raise ConfigError(f"{where}: version_policy.specific needs a non-empty 'versions' list")
    missing = [v for v in wanted if int(v) not in versions]
    if missing:
        raise ConfigError(f"{where}: version_policy.specific asks for version(s) {missing} that have no folder")
    return sorted(int(v) for v in wanted)


def scan(root: str) -> list[ModelVersionSource]:
    """Every (model, version) the repository asks to serve, with its parsed configuration."""
    if not os.path.isdir(root):
        raise ConfigError(f"model repository {root!r} is not a folder")
    out = []
    for name in sorted(os.listdir(root)):
        mdir = os.path.join(root, name)
        if not os.path.isdir(mdir) or name.startswith("."):
            continue
        where = f"model '{name}'"
        cfg_path = os.path.join(mdir, "config.json")
        if os.path.exists(cfg_path):
            try:
                with open(cfg_path) as f:
                    raw = json.load(f)
            except (OSError, ValueError) as e:
                raise ConfigError(f"{where}: cannot read {cfg_path}: {e}") from e
            config = parse_config(name, raw, f"{where} ({cfg_path})")
        elif os.path.exists(os.path.join(mdir, "config.pbtxt")):
            raise ConfigError(f"{where}: config.pbtxt is not read here; write its fields as config.json "
                              "(Triton's JSON form of the model configuration)")
        else:
            config = ModelConfig(name=name)
        versions = sorted(int(v) for v in os.listdir(mdir)
                          if v.isdigit() and os.path.isdir(os.path.join(mdir, v)))
        versions = [v for v in versions if os.path.exists(os.path.join(mdir, str(v), config.default_model_filename))]
        if not versions:
            raise ConfigError(f"{where}: no version folder holds {config.default_model_filename} "
                              f"(expected {mdir}/1/{config.default_model_filename})")
        for v in _select_versions(versions, config.version_policy, where):
            out.append(ModelVersionSource(name, str(v), os.path.join(mdir, str(v), config.default_model_filename),
                                          config))
    if not out:
        raise ConfigError(f"model repository {root!r} holds no model (expected NAME/VERSION/model.onnx)")
    return out
