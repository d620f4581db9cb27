"""Loading: the whole configuration (`Config`, one field per section), built from built-in
defaults, then a TOML file, then environment variables. Each raw value is coerced to its key's
type and checked; a bad one raises ConfigError with a single line that names the key and where
the value came from, so an operator can fix it without reading code. Last, the one check across
sections: the in-process store's memory budget.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.config.sections import (
    SESSION_MEMORY_KIB,
    ClientsConfig,
    LimitsConfig,
    LogConfig,
    MetricsConfig,
    MigrationConfig,
    RedisConfig,
    RolloutConfig,
    ServerConfig,
    SessionConfig,
    TracingConfig,
    UpstreamConfig,
    store_memory_mib,
)


class ConfigError(ValueError):
    """A configuration value is missing, of the wrong type or out of range."""


@dataclass(frozen=True)
class Config:
    """The whole configuration: one field per section, in the order check-config renders them."""

    server: ServerConfig = field(default_factory=ServerConfig)
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)
    session: SessionConfig = field(default_factory=SessionConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    redis: RedisConfig = field(default_factory=RedisConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    clients: ClientsConfig = field(default_factory=ClientsConfig)
    migration: MigrationConfig = field(default_factory=MigrationConfig)
    tracing: TracingConfig = field(default_factory=TracingConfig)

    def replace(self, **sections: Mapping[str, Any]) -> Config:
        """A copy with some keys changed, validated like a file: replace(session={"ttl": 5})."""
        data = as_dict(self)
        for name, values in sections.items():
            data.setdefault(name, {}).update(values)
        return build_config(data, source="override")


# A section is a frozen dataclass and a field of Config; nothing else needs to know about it.
_SECTION_CLASSES: dict[str, type] = typing.get_type_hints(Config)

# Names operators already used before every key had one; each maps to one (section, key) and stays
# valid next to the derived name (docs/configuration.md, "Environment").
ENV_NAMES: dict[str, tuple[str, str]] = {
    "GATEWAY_HOST": ("server", "host"),
    "GATEWAY_PORT": ("server", "port"),
    "GATEWAY_UPSTREAM_URL": ("upstream", "url"),
    "GATEWAY_SESSION_DEADLINE": ("session", "deadline"),
    "GATEWAY_SESSION_TTL": ("session", "ttl"),
    "GATEWAY_MAX_SESSIONS": ("session", "max_sessions"),
    "GATEWAY_LOG_LEVEL": ("log", "level"),
    "GATEWAY_LOG_FORMAT": ("log", "format"),
    "GATEWAY_LEGACY_URL": ("rollout", "legacy_url"),
    "GATEWAY_ROLLOUT_MODE": ("rollout", "mode"),
    "GATEWAY_ROLLOUT_FLAGS_FILE": ("rollout", "flags_file"),
    "GATEWAY_ROLLOUT_ADMIN_TOKEN": ("rollout", "admin_token"),
    "GATEWAY_REDIS_URL": ("redis", "url"),
    "GATEWAY_METRICS_PORT": ("metrics", "port"),
}
# The file to read; the one GATEWAY_* variable that is not a key.
CONFIG_FILE_ENV = "GATEWAY_CONFIG"
ENV_PREFIX = "GATEWAY_"
# What Kubernetes injects for a Service named "gateway" (service links): GATEWAY_SERVICE_HOST,
# GATEWAY_PORT=tcp://..., GATEWAY_PORT_8080_TCP_ADDR... Told apart so that the error says why.
SERVICE_LINK = re.compile(r"GATEWAY_(SERVICE_HOST|SERVICE_PORT(_\w+)?|PORT_\d+_(TCP|UDP|SCTP)(_\w+)?)")
_SERVICE_LINK_VALUE = re.compile(r"(tcp|udp|sctp)://")
_SERVICE_LINK_HINT = (
    "; a Kubernetes service link of a Service named 'gateway'? set enableServiceLinks: false in the pod spec"
)


def env_name(section: str, key: str) -> str:
    """The derived environment name of a key: server.shutdown_timeout → GATEWAY_SERVER_SHUTDOWN_TIMEOUT."""
    return f"{ENV_PREFIX}{section}_{key}".upper()


def config_keys() -> list[tuple[str, dataclasses.Field[Any]]]:
    """Every (section, field) of the configuration, in declaration order."""
    return [
        (section.name, key)
        for section in dataclasses.fields(Config)
        for key in dataclasses.fields(_SECTION_CLASSES[section.name])
    ]


def env_names() -> dict[str, tuple[str, str]]:
    """Every environment name (derived ones and the older aliases) → (section, key). Derived
    from the dataclasses, so a key added to a section has its name without further work."""
    names = {env_name(section, f.name): (section, f.name) for section, f in config_keys()}
    for alias, target in ENV_NAMES.items():
        if names.setdefault(alias, target) != target:
            raise AssertionError(f"{alias} names two keys")  # a programming error, caught by the tests
    return names


def as_dict(config: Config) -> dict[str, dict[str, Any]]:
    return dataclasses.asdict(config)


def _coerce(raw: Any, typ: type, from_env: bool) -> Any:
    """Turns a TOML or environment value into the field's type, or raises ValueError."""
    if typ is bool:
        if isinstance(raw, bool):
            return raw
        if from_env and isinstance(raw, str) and raw.lower() in ("1", "true", "yes", "0", "false", "no"):
            return raw.lower() in ("1", "true", "yes")
        raise ValueError("must be true or false")
    if typ is int:
        if isinstance(raw, int) and not isinstance(raw, bool):
            return raw
        if from_env and isinstance(raw, str):
            try:
                return int(raw)
            except ValueError:
                pass
        raise ValueError("must be an integer")
    if typ is float:
        if isinstance(raw, (int, float)) and not isinstance(raw, bool):
            return float(raw)
        if from_env and isinstance(raw, str):
            try:
                return float(raw)
            except ValueError:
                pass
        raise ValueError("must be a number")
    if typ is str:
        if isinstance(raw, str):
            return raw
        raise ValueError("must be a string")
    if typ is tuple:
        if from_env and isinstance(raw, str):
            raw = _env_list(raw)
        if isinstance(raw, (list, tuple)) and all(isinstance(item, str) for item in raw):
            return tuple(raw)
        raise ValueError("must be a list of strings")
    if typ is dict:
        if from_env and isinstance(raw, str):
            raw = _env_json(raw, "a JSON object")
        if isinstance(raw, Mapping) and all(isinstance(v, str) for v in raw.values()):
            return dict(raw)
        raise ValueError("must be a table of strings")
    raise ValueError(f"unsupported type {typ}")


def _env_list(raw: str) -> Any:
    """A list by environment: a JSON array (`["a", "b,c"]`) when it starts with '[', else a comma
    list (`a, b`) whose items are stripped and whose empty items are dropped ("" is the empty list)."""
    if raw.lstrip().startswith("["):
        return _env_json(raw, "a JSON array")
    return [item.strip() for item in raw.split(",") if item.strip()]


def _env_json(raw: str, what: str) -> Any:
    if not raw.strip():
        return {} if "object" in what else []
    try:
        return json.loads(raw)
    except ValueError:
        raise ValueError(f"must be {what}") from None


_TYPES = {"int": int, "float": float, "str": str, "bool": bool, "tuple[str, ...]": tuple, "dict[str, str]": dict}


def build_config(
    data: Mapping[str, Any], source: str = "file", env_sources: Mapping[tuple[str, str], str] | None = None
) -> Config:
    """Validates a nested mapping into a Config; unknown sections and keys are errors."""
    env_sources = env_sources or {}
    sections: dict[str, Any] = {}
    for name in data:
        if name not in _SECTION_CLASSES:
            raise ConfigError(f"config error: unknown section [{name}] (in {source})")
    for sec_field in dataclasses.fields(Config):
        cls = _SECTION_CLASSES[sec_field.name]
        given = data.get(sec_field.name, {})
        if not isinstance(given, Mapping):
            raise ConfigError(f"config error: [{sec_field.name}] must be a table (in {source})")
        known = {f.name: f for f in dataclasses.fields(cls)}
        for key in given:
            if key not in known:
                raise ConfigError(f"config error: unknown key {sec_field.name}.{key} (in {source})")
        values: dict[str, Any] = {}
        for key, raw in given.items():
            where = env_sources.get((sec_field.name, key), source)
            fdef = known[key]
            try:
                value = _coerce(raw, _TYPES[str(fdef.type)], from_env=where.startswith(ENV_PREFIX))
                check = fdef.metadata.get("check")
                if isinstance(value, str) and getattr(check, "choices", None):
                    value = value.lower()
                problem = check(value) if check else None
                if problem:
                    raise ValueError(problem)
            except ValueError as exc:
                shown = "<hidden>" if fdef.metadata.get("secret") else repr(raw)
                raise ConfigError(f"config error: {sec_field.name}.{key} {exc} (got {shown} from {where})") from None
            values[key] = value
        sections[sec_field.name] = cls(**values)
    config = Config(**sections)
    _check_memory_budget(config, source, env_sources)
    return config


def _check_memory_budget(config: Config, source: str, env_sources: Mapping[tuple[str, str], str]) -> None:
    session = config.session
    if config.redis.url or not session.memory_budget_mb:
        return
    needed = store_memory_mib(session.max_sessions)
    if needed > session.memory_budget_mb:
        where = env_sources.get(("session", "max_sessions"), source)
        raise ConfigError(
            f"config error: session.max_sessions {session.max_sessions} × {SESSION_MEMORY_KIB} KiB per session is"
            f" {needed:.0f} MiB, over session.memory_budget_mb {session.memory_budget_mb} (from {where}): lower"
            " max_sessions, raise memory_budget_mb with the memory limit, or use Redis (docs/sizing.md)"
        )


def load_config(env: Mapping[str, str] | None = None, path: str | Path | None = None) -> Config:
    """Defaults, then the TOML file (path, or GATEWAY_CONFIG), then environment names: every key has
    its derived GATEWAY_<SECTION>_<KEY> name (and some an older alias). An unknown GATEWAY_*
    variable is an error, as an unknown key in the file is: a typo must not start a default."""
    return load_config_with_sources(env, path)[0]


Sources = dict[tuple[str, str], str]


def load_config_with_sources(
    env: Mapping[str, str] | None = None, path: str | Path | None = None
) -> tuple[Config, Sources]:
    """load_config, and where each key that is not a default came from: the file's path or the
    environment name (for `gateway check-config`)."""
    env = os.environ if env is None else env
    data: dict[str, dict[str, Any]] = {}
    source = "defaults"
    path = path or env.get(CONFIG_FILE_ENV)
    if path:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(f"config error: cannot read {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config error: {path} is not valid TOML: {exc}") from None
        source = str(path)
    sources: Sources = {
        (section, key): source for section, table in data.items() if isinstance(table, Mapping) for key in table
    }
    names = env_names()
    env_sources: dict[tuple[str, str], str] = {}
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or name == CONFIG_FILE_ENV:
            continue
        target = names.get(name)
        if target is None:
            hint = _SERVICE_LINK_HINT if SERVICE_LINK.fullmatch(name) else ""
            raise ConfigError(f"config error: unknown environment variable {name} (docs/configuration.md{hint})")
        if _SERVICE_LINK_VALUE.match(env[name]):
            where = f"docs/configuration.md{_SERVICE_LINK_HINT}"
            raise ConfigError(f"config error: {name} looks like a service link, not a value ({where})")
        section, key = target
        if target in env_sources and env[env_sources[target]] != env[name]:
            raise ConfigError(f"config error: {env_sources[target]} and {name} both set {section}.{key}, differently")
        data.setdefault(section, {})[key] = env[name]
        env_sources[target] = name
    return build_config(data, source=source, env_sources=env_sources), sources | env_sources
