"""The sections an operator sets: one frozen dataclass per `[section]` of the file, each field a
key with its default, its check (gateway/config/checks.py) and why it has that default. Adding a
key here is the whole of adding it: its environment name, loading and rendering follow.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.config import checks


def _opt(check: Callable[[Any], str | None] | None = None, secret: bool = False, **kw: Any) -> Any:
    """A field with its check; a `secret` one (it may hold a password) is never echoed in errors."""
    return field(metadata={"check": check, "secret": secret}, **kw)


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = _opt(checks.port_number, default=8080)
    # aiohttp waits this long for in-flight client requests before closing resources.
    shutdown_timeout: float = _opt(checks.non_negative, default=10.0)
    # On SIGTERM /readyz answers 503 at once and requests are still served this long, so that
    # the load balancer stops sending before the listener closes (docs/connections.md).
    drain_seconds: float = _opt(checks.non_negative, default=5.0)
    max_line_size: int = _opt(checks.positive, default=8190)
    max_field_size: int = _opt(checks.positive, default=8190)
    # An idle keep-alive connection is closed after this long: above the idle timeout of the
    # load balancers in front (nginx and AWS ALB: 60 s), so that they, not we, close first.
    keepalive_timeout: float = _opt(checks.positive, default=75.0)
    # A request head (request line and headers) must arrive whole within this long from the
    # connection's start, or from its first byte on a kept-alive connection.
    head_timeout: float = _opt(checks.positive, default=10.0)
    # Bytes of one request head; more is a 431, so an unfinished head holds at most this much.
    max_head_bytes: int = _opt(checks.positive, default=32768)
    # Connections with a request head still unfinished; beyond, the oldest is closed.
    max_unfinished_heads: int = _opt(checks.positive, default=256)
    # Open client connections on this listener; a connection beyond it gets 503 and is closed.
    # Lowered at start to what the file-descriptor limit leaves after the outgoing pools.
    max_connections: int = _opt(checks.positive, default=4096)


@dataclass(frozen=True)
class UpstreamConfig:
    url: str = _opt(checks.http_url, default="http://127.0.0.1:8081")
    mkab_path: str = _opt(checks.url_path, default="/api/v2/mkab")
    visit_path: str = _opt(checks.url_path, default="/api/v2/visit")
    calldoctor_path: str = _opt(checks.url_path, default="/api/v2/calldoctor")
    disp_path: str = _opt(checks.url_path, default="/api/v2/disp")
    lpu_query_param: str = "lpuGuid"
    call_timeout: float = _opt(checks.positive, default=5.0)
    connect_timeout: float = _opt(checks.positive, default=2.0)
    # Bytes of one answer after decoding (gzip/deflate are inflated within this bound).
    max_body_bytes: int = _opt(checks.positive, default=2 * 1024 * 1024)
    # JSON values (counted before parsing) and top-level records of one per-LPU answer.
    max_json_values: int = _opt(checks.positive, default=100_000)
    max_records: int = _opt(checks.positive, default=1000)
    # Connections shared by every fan-out; size it as peak concurrent sessions ×
    # limits.upstream_per_session (docs/upstream-isolation.md, "Upstream pool").
    max_connections: int = _opt(checks.positive, default=1024)
    # Seconds a call waits for one of them; then its LPU fails (`pool_wait`). Not part of
    # call_timeout, which starts once the call has its connection. As long as the call timeout:
    # a burst that fills the pool drains at the upstream's pace, and the session's deadline
    # bounds the whole anyway; any wait at all is counted (gateway_upstream_pool_waits_total).
    pool_wait: float = _opt(checks.positive, default=5.0)
    retries: int = _opt(checks.non_negative, default=2)
    retry_backoff: float = _opt(checks.non_negative, default=0.05)
    # Retries may add at most this fraction of first attempts (plus a small floor), so that an
    # upstream in trouble is not hit with three times the traffic.
    retry_budget_ratio: float = _opt(checks.non_negative, default=0.2)
    retry_budget_floor: int = _opt(checks.non_negative, default=20)


# What one finished session costs the in-process store, resident (RSS), for a 5-LPU patient:
# measured 20.6 KiB (docs/sizing.md, scripts/memory_sizing.py), rounded up for allocator slack.
SESSION_MEMORY_KIB = 24


@dataclass(frozen=True)
class SessionConfig:
    deadline: float = _opt(checks.positive, default=20.0)
    ttl: float = _opt(checks.positive, default=600.0)
    # 40,000 × SESSION_MEMORY_KIB fits the default memory_budget_mb (docs/sizing.md).
    max_sessions: int = _opt(checks.positive, default=40_000)
    require_token_on_poll: bool = False
    # Seconds in which sessions created with the same token share one fan-out (gateway/sessions/reuse.py);
    # 0 turns sharing off.
    reuse_window: float = _opt(checks.non_negative, default=0.0)
    # LPUs in one patient's MKAB list; a longer list fails the creation (502 `4502`): no patient
    # has that many, and its fan-out would cost the upstream thousands of calls.
    max_lpus: int = _opt(checks.positive, default=100)
    # Bytes of one LPU's finished entry and of all of a session's entries; beyond, that LPU
    # is Failed (`too_large`), so one hospital's huge answer cannot make every poll huge.
    max_entry_bytes: int = _opt(checks.positive, default=2 * 1024 * 1024)
    max_session_bytes: int = _opt(checks.positive, default=8 * 1024 * 1024)
    # MiB the in-process store may take at max_sessions; the gateway refuses to start when
    # max_sessions × SESSION_MEMORY_KIB exceeds it, rather than be OOM-killed when the store
    # fills. Not checked with Redis (sessions live there); 0: not checked.
    memory_budget_mb: int = _opt(checks.non_negative, default=1024)


def store_memory_mib(max_sessions: int) -> float:
    """Memory the in-process store needs at max_sessions, by the measured per-session size."""
    return max_sessions * SESSION_MEMORY_KIB / 1024


@dataclass(frozen=True)
class RedisConfig:
    """The shared session store. An empty url keeps sessions in the process (one replica only)."""

    url: str = _opt(checks.redis_url, default="", secret=True)
    prefix: str = _opt(checks.key_prefix, default="vg")
    # Bounds every Redis call: connect, each command, and the wait for a pooled connection.
    timeout: float = _opt(checks.positive, default=0.5)
    max_connections: int = _opt(checks.positive, default=64)
    # A replica's claim on a running fan-out lasts this long unless renewed (every third of it).
    lease_ttl: float = _opt(checks.positive, default=3.0)
    # How often reachability is checked, and so how soon a recovered Redis is used again.
    probe_interval: float = _opt(checks.positive, default=1.0)
    # Consecutive timed-out calls that mark the store down. A timeout of a cheap call (the probe,
    # a lease), or one followed by an unanswered PING, marks it down at once; a slow read or write
    # of one big session does not, alone.
    down_after_timeouts: int = _opt(checks.positive, default=3)
    # Finished sessions each replica answers from memory instead of Redis (a finished session
    # never changes); 0 turns the copy off. About 20 KiB per 5-LPU session (docs/sizing.md).
    finished_cache_sessions: int = _opt(checks.non_negative, default=2000)


@dataclass(frozen=True)
class LimitsConfig:
    """Limits that protect the service (docs/reliability.md, "Limits")."""

    # Fan-outs still running on this replica, per token and in total; beyond them creation
    # answers 429 (per token) or 503 (in total) at once, before any upstream call.
    sessions_per_token: int = _opt(checks.positive, default=5)
    sessions_in_flight: int = _opt(checks.positive, default=5000)
    # Per token, for the sessions' whole TTL, reused ones included: live sessions (never more than
    # `token_share` of session.max_sessions) and the create rate (token bucket: per second,
    # burst). Counted across replicas with Redis. Beyond them creation answers 429 with the
    # seconds until it would be admitted.
    live_sessions_per_token: int = _opt(checks.positive, default=60)
    token_share: float = _opt(checks.fraction_of_capacity, default=0.01)
    create_rate_per_token: float = _opt(checks.positive, default=0.2)
    create_burst_per_token: int = _opt(checks.positive, default=10)
    # Token bucket per session: refill per second, and burst.
    poll_rate: float = _opt(checks.positive, default=20.0)
    poll_burst: int = _opt(checks.positive, default=20)
    # Upstream calls in flight for one LPU; more wait (up to upstream.call_timeout) for a slot.
    upstream_per_lpu: int = _opt(checks.positive, default=32)
    # Upstream calls in flight for one session (its LPUs' calls wait their turn, within the
    # deadline), so one patient with a long LPU list cannot take the whole pool.
    upstream_per_session: int = _opt(checks.positive, default=48)
    # Consecutive failed calls (timeout, connection error) that open an LPU's circuit, and how long
    # it stays open before one probe call is let through.
    breaker_failures: int = _opt(checks.positive, default=5)
    breaker_cooldown: float = _opt(checks.positive, default=10.0)
    # Tokens, sessions and LPUs remembered per limit; the least recently used are forgotten
    # beyond it, so a flood of distinct keys cannot grow memory.
    tracked_keys: int = _opt(checks.positive, default=100_000)


@dataclass(frozen=True)
class LogConfig:
    level: str = _opt(checks.one_of("debug", "info", "warning", "error"), default="info")
    format: str = _opt(checks.one_of("json", "console"), default="json")
    # Share of the successful polls other than a session's first final answer that get an access
    # line (docs/metrics.md, "Logs"): creates, errors and first final answers always do.
    poll_sample: float = _opt(checks.fraction, default=0.0)


@dataclass(frozen=True)
class MetricsConfig:
    # /metrics has its own listener by default, so that it is not on the public route the apps
    # use; port 0 serves it on the main port instead.
    host: str = ""  # empty: the same as server.host
    port: int = _opt(checks.port_number, default=9102)


@dataclass(frozen=True)
class ClientsConfig:
    """Which app a request comes from, as a metric label: a closed set, never the raw header."""

    # ClientApplication GUID → app name.
    by_guid: dict[str, str] = field(metadata={"check": checks.apps_by_guid}, default_factory=dict)
    # Regular expression searched in User-Agent → app name; the first match in file order wins.
    by_user_agent: dict[str, str] = field(metadata={"check": checks.names_by_pattern("app")}, default_factory=dict)
    # App versions (major.minor) kept as labels; any other version is counted as "other".
    versions: tuple[str, ...] = _opt(checks.versions, default=())


@dataclass(frozen=True)
class RolloutConfig:
    """Putting the gateway in front of the legacy service (docs/rollout.md). Without a
    legacy_url every session is the gateway's, exactly as if this section did not exist."""

    legacy_url: str = _opt(checks.http_url, default="")
    # The side for sessions no rule of the flags file decides, unless the file sets `mode`.
    mode: str = _opt(checks.one_of("legacy", "gateway", "shadow"), default="legacy")
    flags_file: str = ""
    flags_poll_interval: float = _opt(checks.positive, default=2.0)
    legacy_timeout: float = _opt(checks.positive, default=10.0)
    legacy_connect_timeout: float = _opt(checks.positive, default=2.0)
    legacy_max_connections: int = _opt(checks.positive, default=64)
    legacy_max_body_bytes: int = _opt(checks.positive, default=8 * 1024 * 1024)
    shadow_max_concurrent: int = _opt(checks.non_negative, default=20)
    shadow_timeout: float = _opt(checks.positive, default=60.0)
    shadow_poll_interval: float = _opt(checks.positive, default=1.0)
    shadow_ignore_fields: tuple[str, ...] = ()
    shadow_max_samples: int = _opt(checks.non_negative, default=50)
    # docs/rollout-guardrails.md: the per-field counters, timing, noise calibration, guardrails.
    shadow_window: float = _opt(checks.positive, default=600.0)
    shadow_timing_margin: float = _opt(checks.non_negative, default=5.0)
    shadow_timing_ratio: float = _opt(checks.non_negative, default=1.0)
    shadow_noise_sample: float = _opt(checks.fraction, default=0.0)
    shadow_noise_per_minute: float = _opt(checks.non_negative, default=6.0)
    shadow_noise_relative: float = _opt(checks.non_negative, default=0.2)
    shadow_noise_absolute: float = _opt(checks.fraction, default=0.03)
    guardrail_interval: float = _opt(checks.positive, default=1.0)
    admin_token: str = _opt(checks.admin_token, default="", secret=True)
    # Wrong admin tokens allowed per minute from one client address, and from all together;
    # beyond them the admin routes answer 429 for the rest of the minute, right token or not.
    admin_failures_per_client: int = _opt(checks.positive, default=10)
    admin_failures_total: int = _opt(checks.positive, default=100)
    # true: the admin routes are served on the admin listener (metrics.host:metrics.port), not on
    # server.port (needs metrics.port != 0).
    admin_on_metrics_port: bool = False
    # Guesses: polls of GUIDs neither the gateway nor the legacy service knows (legacy answers
    # 404), per second and burst, per client address and in total (per replica). Beyond them,
    # polls of GUIDs the gateway does not hold answer 429 without reaching the legacy service.
    legacy_guess_rate_per_client: float = _opt(checks.positive, default=1.0)
    legacy_guess_burst_per_client: int = _opt(checks.positive, default=20)
    legacy_guess_rate: float = _opt(checks.positive, default=50.0)
    legacy_guess_burst: int = _opt(checks.positive, default=200)


@dataclass(frozen=True)
class TracingConfig:
    """OpenTelemetry spans (docs/metrics.md, "Tracing"), off by default and only with the `otel`
    extra installed. Without them the gateway still passes W3C trace context on."""

    opentelemetry: bool = False
    # OTLP/HTTP traces URL; empty: the SDK's OTEL_EXPORTER_OTLP_* variables (or http://localhost:4318).
    otlp_endpoint: str = _opt(checks.http_url, default="")
    service_name: str = _opt(checks.non_empty, default="visit-gateway")


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
    retention_days: int = _opt(checks.days, default=90)
    # A cohort silent this many days is "safe to retire"; silent this many is "silent for N days".
    retire_after_days: int = _opt(checks.days, default=30)
    silent_after_days: int = _opt(checks.days, default=3)
    # "fading": the last 7 days' daily volume is below this share of the 23 days before.
    fading_ratio: float = _opt(checks.share_of_traffic, default=0.5)
    # Seconds between the ledger's batched writes (one round trip each).
    flush_interval: float = _opt(checks.flush_interval, default=1.0)
    # Regular expression searched in User-Agent → platform name; first match in file order wins.
    platforms: dict[str, str] = field(
        metadata={"check": checks.names_by_pattern("platform")}, default_factory=lambda: dict(_PLATFORMS)
    )
    # Brownout guards, judged on this replica's creates over the last guard_window seconds once
    # at least guard_min_requests were seen: a cohort above max_share of all creates, or whose
    # own answers are 5xx above max_error_rate (brownout refusals aside), is not browned out.
    brownout_guard_window: float = _opt(checks.positive, default=300.0)
    brownout_guard_min_requests: int = _opt(checks.positive, default=20)
    brownout_max_share: float = _opt(checks.share_of_traffic, default=0.2)
    brownout_max_error_rate: float = _opt(checks.share_of_traffic, default=0.2)
    # Requests held by a soft brownout at once; beyond, requests pass undelayed.
    brownout_max_delayed: int = _opt(checks.positive, default=100)
