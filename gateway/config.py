"""Typed configuration: built-in defaults, then a TOML file, then environment variables.

Every value is validated once at start-up; a bad one raises ConfigError with a single line
that names the key and where the value came from, so an operator can fix it without reading code.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import tomllib
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from gateway.contract import GUID, OTHER, UNKNOWN


class ConfigError(ValueError):
    """A configuration value is missing, of the wrong type or out of range."""


def _positive(v: float) -> str | None:
    return None if v > 0 else "must be > 0"


def _non_negative(v: float) -> str | None:
    return None if v >= 0 else "must be >= 0"


def _non_empty(v: str) -> str | None:
    return None if v.strip() else "must not be empty"


def _fraction(v: float) -> str | None:
    return None if 0 <= v <= 1 else "must be from 0 to 1"


def _port(v: int) -> str | None:
    return None if 0 <= v <= 65535 else "must be a port number 0..65535"


def _http_url(v: str) -> str | None:
    if not v:
        return None
    parts = urlsplit(v)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an http(s) URL with a host"
    return None


@dataclass(frozen=True)
class SentinelTarget:
    """Where `redis+sentinel://[[user]:password@]host:port[,host:port...]/<primary name>[/<db>]` points."""

    sentinels: tuple[tuple[str, int], ...]
    primary: str
    db: int = 0
    username: str | None = None
    password: str | None = None


def parse_sentinel_url(v: str) -> SentinelTarget:
    """Raises ValueError (without the URL in the message: it may hold a password)."""
    rest = v.removeprefix("redis+sentinel://")
    if rest == v:
        raise ValueError("not a redis+sentinel:// URL")
    netloc, _, path = rest.partition("/")
    userinfo, _, hosts = netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    sentinels = []
    for address in hosts.split(","):
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("each sentinel must be host:port")
        sentinels.append((host, int(port)))
    primary, _, db = path.partition("/")
    if not primary or (db and not db.isdigit()):
        raise ValueError("the path must be /<primary name>[/<db>]")
    return SentinelTarget(tuple(sentinels), primary, int(db or 0), unquote(username) or None, unquote(password) or None)


def _redis_url(v: str) -> str | None:
    if not v:
        return None
    if v.startswith("redis+sentinel://"):
        try:
            parse_sentinel_url(v)
        except ValueError as exc:
            return f"is not a valid redis+sentinel:// URL: {exc}"
        return None
    parts = urlsplit(v)
    if parts.scheme in ("redis", "rediss") and parts.hostname:
        return None
    if parts.scheme == "unix" and parts.path:
        return None
    return "must be a redis://, rediss://, unix:// or redis+sentinel:// URL (or empty for the in-process store)"


def _key_prefix(v: str) -> str | None:
    # Braces would turn into Redis Cluster hash tags; whitespace and ':' would make key names ambiguous.
    return None if re.fullmatch(r"[A-Za-z0-9_.-]{1,32}", v) else "must be 1-32 of A-Z a-z 0-9 _ . -"


def _path(v: str) -> str | None:
    return None if v.startswith("/") else "must start with '/'"


def _one_of(*allowed: str) -> Callable[[str], str | None]:
    def check(v: str) -> str | None:
        return None if v in allowed else f"must be one of {', '.join(allowed)}"

    # An enum's values are lower case; "INFO" or "Gateway" (an environment habit) means the same.
    check.choices = allowed  # type: ignore[attr-defined]
    return check


# App names become metric label values: short and plain; "other" and "unknown" are taken.
_APP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,39}")
_RESERVED_APPS = (OTHER, UNKNOWN)
_VERSION = re.compile(r"(0|[1-9][0-9]{0,3})\.(0|[1-9][0-9]{0,3})")


def _app_name_problem(name: str, kind: str = "app") -> str | None:
    if not _APP_NAME.fullmatch(name) or name in _RESERVED_APPS:
        return f"{kind} name {name!r} must match {_APP_NAME.pattern} and not be other/unknown"
    return None


def _apps_by_guid(v: dict[str, str]) -> str | None:
    for guid, name in v.items():
        if not GUID.fullmatch(guid):
            return f"key {guid!r} is not a GUID"
        if problem := _app_name_problem(name):
            return problem
    return None


def _names_by_pattern(kind: str) -> Callable[[dict[str, str]], str | None]:
    """The check of a table of regular expression → app (or platform) name."""

    def check(v: dict[str, str]) -> str | None:
        for pattern, name in v.items():
            try:
                re.compile(pattern)
            except re.error as exc:
                return f"pattern {pattern!r} is not a regular expression ({exc})"
            if problem := _app_name_problem(name, kind):
                return problem
        return None

    return check


def _versions(v: tuple[str, ...]) -> str | None:
    bad = [x for x in v if not _VERSION.fullmatch(x)]
    return f"versions must be major.minor without leading zeros (got {bad[0]!r})" if bad else None


ADMIN_TOKEN_MIN_LENGTH = 32
ADMIN_TOKEN_MIN_DISTINCT = 8
ADMIN_TOKEN_MIN_BITS = 80.0


def entropy_bits(v: str) -> float:
    """An estimate of a string's randomness: its length times the Shannon entropy of its
    characters. A repeated or patterned word scores low; 32 random hex digits score about 110."""
    counts = [v.count(c) for c in set(v)]
    return -sum(n * math.log2(n / len(v)) for n in counts) if v else 0.0


def _admin_token(v: str) -> str | None:
    # A guessable admin token would make the inspection endpoint public: it must look random.
    if not v:
        return None
    periodic = v in (v + v)[1:-1]  # a shorter string repeated: "0123456789abcdef" * 2
    weak = len(set(v)) < ADMIN_TOKEN_MIN_DISTINCT or entropy_bits(v) < ADMIN_TOKEN_MIN_BITS or periodic
    if len(v) < ADMIN_TOKEN_MIN_LENGTH or weak:
        return (
            f"must be empty (no admin endpoint) or a random string of at least {ADMIN_TOKEN_MIN_LENGTH} characters"
            " (e.g. `openssl rand -hex 32`)"
        )
    return None


def _share(v: float) -> str | None:
    return None if 0 < v <= 1 else "must be a fraction in (0, 1]"


def _opt(check: Callable[[Any], str | None] | None = None, secret: bool = False, **kw: Any) -> Any:
    """A field with its check; a `secret` one (it may hold a password) is never echoed in errors."""
    return field(metadata={"check": check, "secret": secret}, **kw)


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = _opt(_port, default=8080)
    # aiohttp waits this long for in-flight client requests before closing resources.
    shutdown_timeout: float = _opt(_non_negative, default=10.0)
    # On SIGTERM /readyz answers 503 at once and requests are still served this long, so that
    # the load balancer stops sending before the listener closes (docs/connections.md).
    drain_seconds: float = _opt(_non_negative, default=5.0)
    max_line_size: int = _opt(_positive, default=8190)
    max_field_size: int = _opt(_positive, default=8190)
    # An idle keep-alive connection is closed after this long: above the idle timeout of the
    # load balancers in front (nginx and AWS ALB: 60 s), so that they, not we, close first.
    keepalive_timeout: float = _opt(_positive, default=75.0)
    # A request head (request line and headers) must arrive whole within this long from the
    # connection's start, or from its first byte on a kept-alive connection.
    head_timeout: float = _opt(_positive, default=10.0)
    # Bytes of one request head; more is a 431, so an unfinished head holds at most this much.
    max_head_bytes: int = _opt(_positive, default=32768)
    # Connections with a request head still unfinished; beyond, the oldest is closed.
    max_unfinished_heads: int = _opt(_positive, default=256)
    # Open client connections on this listener; a connection beyond it gets 503 and is closed.
    # Lowered at start to what the file-descriptor limit leaves after the outgoing pools.
    max_connections: int = _opt(_positive, default=4096)


@dataclass(frozen=True)
class UpstreamConfig:
    url: str = _opt(_http_url, default="http://127.0.0.1:8081")
    mkab_path: str = _opt(_path, default="/api/v2/mkab")
    visit_path: str = _opt(_path, default="/api/v2/visit")
    calldoctor_path: str = _opt(_path, default="/api/v2/calldoctor")
    disp_path: str = _opt(_path, default="/api/v2/disp")
    lpu_query_param: str = "lpuGuid"
    call_timeout: float = _opt(_positive, default=5.0)
    connect_timeout: float = _opt(_positive, default=2.0)
    # Bytes of one answer after decoding (gzip/deflate are inflated within this bound).
    max_body_bytes: int = _opt(_positive, default=2 * 1024 * 1024)
    # JSON values (counted before parsing) and top-level records of one per-LPU answer.
    max_json_values: int = _opt(_positive, default=100_000)
    max_records: int = _opt(_positive, default=1000)
    # Connections shared by every fan-out; size it as peak concurrent sessions ×
    # limits.upstream_per_session (docs/upstream-isolation.md, "Upstream pool").
    max_connections: int = _opt(_positive, default=1024)
    # Seconds a call waits for one of them; then its LPU fails (`pool_wait`). Not part of
    # call_timeout, which starts once the call has its connection. As long as the call timeout:
    # a burst that fills the pool drains at the upstream's pace, and the session's deadline
    # bounds the whole anyway; any wait at all is counted (gateway_upstream_pool_waits_total).
    pool_wait: float = _opt(_positive, default=5.0)
    retries: int = _opt(_non_negative, default=2)
    retry_backoff: float = _opt(_non_negative, default=0.05)
    # Retries may add at most this fraction of first attempts (plus a small floor), so that an
    # upstream in trouble is not hit with three times the traffic.
    retry_budget_ratio: float = _opt(_non_negative, default=0.2)
    retry_budget_floor: int = _opt(_non_negative, default=20)


# What one finished session costs the in-process store, resident (RSS), for a 5-LPU patient:
# measured 20.6 KiB (docs/sizing.md, scripts/memory_sizing.py), rounded up for allocator slack.
SESSION_MEMORY_KIB = 24


@dataclass(frozen=True)
class SessionConfig:
    deadline: float = _opt(_positive, default=20.0)
    ttl: float = _opt(_positive, default=600.0)
    # 40,000 × SESSION_MEMORY_KIB fits the default memory_budget_mb (docs/sizing.md).
    max_sessions: int = _opt(_positive, default=40_000)
    require_token_on_poll: bool = False
    # Seconds in which sessions created with the same token share one fan-out (gateway/sessions/reuse.py);
    # 0 turns sharing off.
    reuse_window: float = _opt(_non_negative, default=0.0)
    # LPUs in one patient's MKAB list; a longer list fails the creation (502 `4502`): no patient
    # has that many, and its fan-out would cost the upstream thousands of calls.
    max_lpus: int = _opt(_positive, default=100)
    # Bytes of one LPU's finished entry and of all of a session's entries; beyond, that LPU
    # is Failed (`too_large`), so one hospital's huge answer cannot make every poll huge.
    max_entry_bytes: int = _opt(_positive, default=2 * 1024 * 1024)
    max_session_bytes: int = _opt(_positive, default=8 * 1024 * 1024)
    # MiB the in-process store may take at max_sessions; the gateway refuses to start when
    # max_sessions × SESSION_MEMORY_KIB exceeds it, rather than be OOM-killed when the store
    # fills. Not checked with Redis (sessions live there); 0: not checked.
    memory_budget_mb: int = _opt(_non_negative, default=1024)


def store_memory_mib(max_sessions: int) -> float:
    """Memory the in-process store needs at max_sessions, by the measured per-session size."""
    return max_sessions * SESSION_MEMORY_KIB / 1024


@dataclass(frozen=True)
class RedisConfig:
    """The shared session store. An empty url keeps sessions in the process (one replica only)."""

    url: str = _opt(_redis_url, default="", secret=True)
    prefix: str = _opt(_key_prefix, default="vg")
    # Bounds every Redis call: connect, each command, and the wait for a pooled connection.
    timeout: float = _opt(_positive, default=0.5)
    max_connections: int = _opt(_positive, default=64)
    # A replica's claim on a running fan-out lasts this long unless renewed (every third of it).
    lease_ttl: float = _opt(_positive, default=3.0)
    # How often reachability is checked, and so how soon a recovered Redis is used again.
    probe_interval: float = _opt(_positive, default=1.0)
    # Consecutive timed-out calls that mark the store down. A timeout of a cheap call (the probe,
    # a lease), or one followed by an unanswered PING, marks it down at once; a slow read or write
    # of one big session does not, alone.
    down_after_timeouts: int = _opt(_positive, default=3)
    # Finished sessions each replica answers from memory instead of Redis (a finished session
    # never changes); 0 turns the copy off. About 20 KiB per 5-LPU session (docs/sizing.md).
    finished_cache_sessions: int = _opt(_non_negative, default=2000)


@dataclass(frozen=True)
class LimitsConfig:
    """Limits that protect the service (docs/reliability.md, "Limits")."""

    # Fan-outs still running on this replica, per token and in total; beyond them creation
    # answers 429 (per token) or 503 (in total) at once, before any upstream call.
    sessions_per_token: int = _opt(_positive, default=5)
    sessions_in_flight: int = _opt(_positive, default=5000)
    # Per token, for the sessions' whole TTL, reused ones included: live sessions (never more than
    # `token_share` of session.max_sessions) and the create rate (token bucket: per second,
    # burst). Counted across replicas with Redis. Beyond them creation answers 429 with the
    # seconds until it would be admitted.
    live_sessions_per_token: int = _opt(_positive, default=60)
    token_share: float = _opt(_share, default=0.01)
    create_rate_per_token: float = _opt(_positive, default=0.2)
    create_burst_per_token: int = _opt(_positive, default=10)
    # Token bucket per session: refill per second, and burst.
    poll_rate: float = _opt(_positive, default=20.0)
    poll_burst: int = _opt(_positive, default=20)
    # Upstream calls in flight for one LPU; more wait (up to upstream.call_timeout) for a slot.
    upstream_per_lpu: int = _opt(_positive, default=32)
    # Upstream calls in flight for one session (its LPUs' calls wait their turn, within the
    # deadline), so one patient with a long LPU list cannot take the whole pool.
    upstream_per_session: int = _opt(_positive, default=48)
    # Consecutive failed calls (timeout, connection error) that open an LPU's circuit, and how long
    # it stays open before one probe call is let through.
    breaker_failures: int = _opt(_positive, default=5)
    breaker_cooldown: float = _opt(_positive, default=10.0)
    # Tokens, sessions and LPUs remembered per limit; the least recently used are forgotten
    # beyond it, so a flood of distinct keys cannot grow memory.
    tracked_keys: int = _opt(_positive, default=100_000)


@dataclass(frozen=True)
class LogConfig:
    level: str = _opt(_one_of("debug", "info", "warning", "error"), default="info")
    format: str = _opt(_one_of("json", "console"), default="json")


@dataclass(frozen=True)
class MetricsConfig:
    # /metrics has its own listener by default, so that it is not on the public route the apps
    # use; port 0 serves it on the main port instead.
    host: str = ""  # empty: the same as server.host
    port: int = _opt(_port, default=9102)


@dataclass(frozen=True)
class ClientsConfig:
    """Which app a request comes from, as a metric label: a closed set, never the raw header."""

    # ClientApplication GUID → app name.
    by_guid: dict[str, str] = field(metadata={"check": _apps_by_guid}, default_factory=dict)
    # Regular expression searched in User-Agent → app name; the first match in file order wins.
    by_user_agent: dict[str, str] = field(metadata={"check": _names_by_pattern("app")}, default_factory=dict)
    # App versions (major.minor) kept as labels; any other version is counted as "other".
    versions: tuple[str, ...] = _opt(_versions, default=())


@dataclass(frozen=True)
class RolloutConfig:
    """Putting the gateway in front of the legacy service (docs/rollout.md). Without a
    legacy_url every session is the gateway's, exactly as if this section did not exist."""

    legacy_url: str = _opt(_http_url, default="")
    # The side for sessions no rule of the flags file decides, unless the file sets `mode`.
    mode: str = _opt(_one_of("legacy", "gateway", "shadow"), default="legacy")
    flags_file: str = ""
    flags_poll_interval: float = _opt(_positive, default=2.0)
    legacy_timeout: float = _opt(_positive, default=10.0)
    legacy_connect_timeout: float = _opt(_positive, default=2.0)
    legacy_max_connections: int = _opt(_positive, default=64)
    legacy_max_body_bytes: int = _opt(_positive, default=8 * 1024 * 1024)
    shadow_max_concurrent: int = _opt(_non_negative, default=20)
    shadow_timeout: float = _opt(_positive, default=60.0)
    shadow_poll_interval: float = _opt(_positive, default=1.0)
    shadow_ignore_fields: tuple[str, ...] = ()
    shadow_max_samples: int = _opt(_non_negative, default=50)
    # docs/rollout-guardrails.md: the per-field counters, timing, noise calibration, guardrails.
    shadow_window: float = _opt(_positive, default=600.0)
    shadow_timing_margin: float = _opt(_non_negative, default=5.0)
    shadow_timing_ratio: float = _opt(_non_negative, default=1.0)
    shadow_noise_sample: float = _opt(_fraction, default=0.0)
    shadow_noise_per_minute: float = _opt(_non_negative, default=6.0)
    shadow_noise_relative: float = _opt(_non_negative, default=0.2)
    shadow_noise_absolute: float = _opt(_fraction, default=0.03)
    guardrail_interval: float = _opt(_positive, default=1.0)
    admin_token: str = _opt(_admin_token, default="", secret=True)
    # Wrong admin tokens allowed per minute from one client address, and from all together;
    # beyond them the admin routes answer 429 for the rest of the minute, right token or not.
    admin_failures_per_client: int = _opt(_positive, default=10)
    admin_failures_total: int = _opt(_positive, default=100)
    # true: the admin routes are served on the admin listener (metrics.host:metrics.port), not on
    # server.port (needs metrics.port != 0).
    admin_on_metrics_port: bool = False
    # Guesses: polls of GUIDs neither the gateway nor the legacy service knows (legacy answers
    # 404), per second and burst, per client address and in total (per replica). Beyond them,
    # polls of GUIDs the gateway does not hold answer 429 without reaching the legacy service.
    legacy_guess_rate_per_client: float = _opt(_positive, default=1.0)
    legacy_guess_burst_per_client: int = _opt(_positive, default=20)
    legacy_guess_rate: float = _opt(_positive, default=50.0)
    legacy_guess_burst: int = _opt(_positive, default=200)


@dataclass(frozen=True)
class TracingConfig:
    """OpenTelemetry spans (docs/metrics.md, "Tracing"), off by default and only with the `otel`
    extra installed. Without them the gateway still passes W3C trace context on."""

    opentelemetry: bool = False
    # OTLP/HTTP traces URL; empty: the SDK's OTEL_EXPORTER_OTLP_* variables (or http://localhost:4318).
    otlp_endpoint: str = _opt(_http_url, default="")
    service_name: str = _opt(_non_empty, default="visit-gateway")


def _flush_interval(v: float) -> str | None:
    # The ledger's promise: at most one Redis round trip per replica per second.
    return None if v >= 1.0 else "must be >= 1.0 (seconds)"


def _share(v: float) -> str | None:
    return None if 0 < v <= 1 else "must be a share in (0, 1]"


def _days(v: int) -> str | None:
    return None if 1 <= v <= 3650 else "must be 1..3650 days"


# The platforms a User-Agent names, in order: an Android browser is "android", not "web".
_PLATFORMS = {
    "(?i)android": "android",
    "(?i)iphone|ipad|ios|cfnetwork|darwin": "ios",
    "(?i)windows|macintosh|x11|mozilla": "web",
}


@dataclass(frozen=True)
class MigrationConfig:
    """Retiring the old path (docs/migration.md): the migration ledger, its report, and the
    guards of brownouts (the brownout windows themselves are in the rollout flags file)."""

    # Per-day buckets of the ledger are kept this many days.
    retention_days: int = _opt(_days, default=90)
    # A cohort silent this many days is "safe to retire"; silent this many is "silent for N days".
    retire_after_days: int = _opt(_days, default=30)
    silent_after_days: int = _opt(_days, default=3)
    # "fading": the last 7 days' daily volume is below this share of the 23 days before.
    fading_ratio: float = _opt(_share, default=0.5)
    # Seconds between the ledger's batched writes (one round trip each).
    flush_interval: float = _opt(_flush_interval, default=1.0)
    # Regular expression searched in User-Agent → platform name; first match in file order wins.
    platforms: dict[str, str] = field(
        metadata={"check": _names_by_pattern("platform")}, default_factory=lambda: dict(_PLATFORMS)
    )
    # Brownout guards, judged on this replica's creates over the last guard_window seconds once
    # at least guard_min_requests were seen: a cohort above max_share of all creates, or whose
    # own answers are 5xx above max_error_rate (brownout refusals aside), is not browned out.
    brownout_guard_window: float = _opt(_positive, default=300.0)
    brownout_guard_min_requests: int = _opt(_positive, default=20)
    brownout_max_share: float = _opt(_share, default=0.2)
    brownout_max_error_rate: float = _opt(_share, default=0.2)
    # Requests held by a soft brownout at once; beyond, requests pass undelayed.
    brownout_max_delayed: int = _opt(_positive, default=100)


@dataclass(frozen=True)
class Config:
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


SECRET_MASK = "***"


def masked(value: str) -> str:
    """A secret as check-config shows it: a URL keeps its scheme, user, host and path, but not its
    password; anything else non-empty is the mask."""
    if not value:
        return value
    scheme, sep, rest = value.partition("://")
    if not sep:
        return SECRET_MASK
    netloc, slash, tail = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    if not at:
        return value
    user, colon, _ = userinfo.partition(":")
    shown = f"{user}:{SECRET_MASK}" if colon else SECRET_MASK
    return f"{scheme}://{shown}@{hosts}{slash}{tail}"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        # A JSON string is a valid TOML basic string.
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(type(value))


def render_toml(config: Config, sources: Sources | None = None) -> str:
    """The effective configuration as a TOML file that loads back to the same Config, secrets
    masked (so it loads back only when no secret is set); a key that is not a default says where
    it came from in a comment."""
    sources = sources or {}

    def origin(section: str, key: str) -> str:
        return f"  # from {sources[(section, key)]}" if (section, key) in sources else ""

    blocks: list[str] = []
    for section in dataclasses.fields(Config):
        values = getattr(config, section.name)
        lines, tables = [f"[{section.name}]"], []
        for fdef in dataclasses.fields(values):
            value = getattr(values, fdef.name)
            if fdef.metadata.get("secret") and isinstance(value, str):
                value = masked(value)
            if isinstance(value, dict):
                # A table must follow its section's plain keys.
                rows = [f"{_toml_value(k)} = {_toml_value(v)}" for k, v in value.items()]
                tables.append("\n".join([f"[{section.name}.{fdef.name}]{origin(section.name, fdef.name)}", *rows]))
            else:
                lines.append(f"{fdef.name} = {_toml_value(value)}{origin(section.name, fdef.name)}")
        blocks.append("\n\n".join(["\n".join(lines), *tables]))
    return "\n\n".join(blocks) + "\n"
