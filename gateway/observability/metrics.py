"""Prometheus instruments, one registry per app (no process-wide state).

Naming follows the Prometheus conventions: `gateway_` prefix, base units, counters end in
`_total`. Every label takes values from a closed set (route, side, outcome, reason, the cohorts
the configured client table can produce: gateway/cohorts.py), never from what a client sends
verbatim. A client is labelled one way everywhere: `cohort="app/platform/version"`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.multiprocess import MultiProcessCollector

from gateway import __version__
from gateway.contract import LPU_FAILURE_REASONS, OLD_ROUTES, SIDES, UPSTREAM_METHODS
from gateway.observability.cgroup import MemoryLimitCollector
from gateway.observability.counts import Counts

# Buckets sit on the time-to-complete SLO thresholds (seconds) so p50/p95/p99 are readable there.
SESSION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 10.0, 15.0, 20.0, 30.0, 60.0)
UPSTREAM_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True)
class Instrument:
    """One declared series family: the attribute of `Metrics` it becomes, and what it is."""

    attr: str
    kind: type[Counter] | type[Gauge] | type[Histogram]
    name: str
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] | None = None
    # How a gauge's samples from several workers merge (prometheus_client's multiprocess_mode).
    mode: str | None = None


# Every instrument the gateway exposes, in exposition order: names, help texts and label names
# are what dashboards, alert rules and docs/metrics.md read (tests/test_docs.py checks the docs).
INSTRUMENTS: tuple[Instrument, ...] = (
    # A gauge at 1 with the version as a label: `count by (version)` shows a rollout's progress.
    # (An Info metric would not work with several workers.)
    Instrument(
        "build_info",
        Gauge,
        "gateway_build_info",
        "Build of the running gateway (always 1).",
        ("version",),
        mode="livemax",
    ),
    Instrument(
        "old_requests",
        Counter,
        "gateway_old_requests_total",
        "Requests on the old session path, by route, serving side, client cohort and status class.",
        ("route", "side", "cohort", "status_class"),
    ),
    Instrument(
        "client_last_seen",
        Gauge,
        "gateway_client_last_seen_timestamp_seconds",
        "Unix time of the last old-path request from each client cohort on this replica.",
        ("cohort",),
        mode="max",
    ),
    Instrument(
        "http_requests",
        Counter,
        "gateway_http_requests_total",
        "All HTTP requests by route template and status class.",
        ("route", "status_class"),
    ),
    Instrument(
        "http_duration",
        Histogram,
        "gateway_http_request_duration_seconds",
        "Time to answer an HTTP request, by route template.",
        ("route",),
        buckets=UPSTREAM_BUCKETS,
    ),
    Instrument("sessions_created", Counter, "gateway_sessions_created_total", "Sessions created by the gateway.", ()),
    Instrument(
        "sessions_reused",
        Counter,
        "gateway_sessions_reused_total",
        "Sessions created from another session's fan-out within the reuse window (no upstream call).",
        (),
    ),
    Instrument(
        "sessions_in_flight",
        Gauge,
        "gateway_sessions_in_flight",
        "Sessions whose fan-out is still running on this replica.",
        (),
        mode="livesum",
    ),
    Instrument(
        "session_complete",
        Histogram,
        "gateway_session_complete_seconds",
        "Time from session creation until every LPU is terminal.",
        (),
        buckets=SESSION_BUCKETS,
    ),
    Instrument(
        "lpu_outcomes",
        Counter,
        "gateway_lpu_outcomes_total",
        "Terminal LPU states, by outcome and failure reason (ok for Complete).",
        ("outcome", "reason"),
    ),
    Instrument(
        "sessions_deadline",
        Counter,
        "gateway_sessions_deadline_total",
        "Sessions that reached their deadline with LPUs still unfinished.",
        (),
    ),
    Instrument(
        "polls",
        Counter,
        "gateway_session_polls_total",
        "Polls of existing sessions, by whether the session was final when read.",
        ("final",),
    ),
    Instrument(
        "upstream_duration",
        Histogram,
        "gateway_upstream_request_duration_seconds",
        "Duration of each attempt of an upstream call, by method and outcome (ok or the failure reason).",
        ("method", "outcome"),
        buckets=UPSTREAM_BUCKETS,
    ),
    Instrument(
        "upstream_retries", Counter, "gateway_upstream_retries_total", "Upstream calls retried, by method.", ("method",)
    ),
    Instrument(
        "retry_budget_exhausted",
        Counter,
        "gateway_upstream_retry_budget_exhausted_total",
        "Retries not made because the retry budget was spent.",
        (),
    ),
    Instrument("store_hits", Counter, "gateway_store_hits_total", "Session lookups that found the session.", ()),
    Instrument(
        "store_finished_cache_hits",
        Counter,
        "gateway_store_finished_cache_hits_total",
        "Polls of finished sessions answered from this replica's copy instead of the shared store.",
        (),
    ),
    Instrument(
        "store_misses",
        Counter,
        "gateway_store_misses_total",
        "Session lookups that found nothing (unknown or expired).",
        (),
    ),
    Instrument("store_expired", Counter, "gateway_store_expired_total", "Sessions dropped after their TTL.", ()),
    Instrument(
        "store_evictions",
        Counter,
        "gateway_store_evictions_total",
        "Sessions dropped before their TTL to make room.",
        (),
    ),
    Instrument(
        "store_rejected", Counter, "gateway_store_rejected_total", "Sessions refused because the store was full.", ()
    ),
    Instrument(
        "store_refused",
        Counter,
        "gateway_store_refused_total",
        "Store calls refused by a store that is up (oom: Redis at maxmemory; error: any other), by reason.",
        ("reason",),
    ),
    # docs/redis.md's `redis_setting_unsafe` lines, as a number an alert can watch.
    Instrument(
        "redis_settings_unsafe",
        Gauge,
        "gateway_redis_settings_unsafe",
        "Problems found in Redis's settings at the last check (redis_setting_unsafe log lines; 0: none).",
        (),
        mode="livemax",
    ),
    Instrument(
        "admin_failures",
        Counter,
        "gateway_admin_auth_failures_total",
        "Admin requests with a missing or wrong X-Admin-Token.",
        (),
    ),
    Instrument("store_sessions", Gauge, "gateway_store_sessions", "Sessions held by the store.", (), mode="livemax"),
    # The store's capacity beside its count, so an alert can say "near full" without a copy of the config.
    Instrument(
        "store_max_sessions",
        Gauge,
        "gateway_store_max_sessions",
        "Sessions the store accepts before creation answers 503 (session.max_sessions; with Redis, all replicas').",
        (),
        mode="livemax",
    ),
    # Rollout (legacy forwarding and shadow compare), declared here so that dashboards and alert
    # rules have one place to look; the rollout module records them.
    Instrument(
        "rollout_decisions",
        Counter,
        "gateway_rollout_decisions_total",
        "Session creations routed, by serving side and the rule that decided.",
        ("side", "reason"),
    ),
    Instrument(
        "shadow_results",
        Counter,
        "gateway_shadow_results_total",
        "Shadow comparisons of legacy and gateway answers, by result and reason.",
        ("result", "reason"),
    ),
    Instrument(
        "shadow_differences",
        Counter,
        "gateway_shadow_differences_total",
        "Compared shadow sessions in which a field differed, by difference class and field "
        "(positions left out; keys of pass-through objects as *).",
        ("class", "field"),
    ),
    Instrument(
        "shadow_verdicts",
        Counter,
        "gateway_shadow_verdicts_total",
        "Compared shadow sessions by verdict: match, noise (every difference within the noise margin) or regression.",
        ("verdict",),
    ),
    Instrument(
        "shadow_calibrations",
        Counter,
        "gateway_shadow_calibrations_total",
        "Second legacy reads of a shadow session's patient for noise calibration, by result.",
        ("result",),
    ),
    Instrument(
        "shadow_noise",
        Counter,
        "gateway_shadow_noise_differences_total",
        "Calibrations in which a field differed between two legacy reads of the same patient.",
        ("field",),
    ),
    Instrument(
        "guardrail_tripped",
        Gauge,
        "gateway_guardrail_tripped",
        "1 while a cohort's guardrail is tripped (its new sessions go to the legacy service).",
        ("cohort",),
    ),
    Instrument(
        "guardrail_trips",
        Counter,
        "gateway_guardrail_trips_total",
        "Guardrail trips decided by this replica, by cohort and signal.",
        ("cohort", "signal"),
    ),
    Instrument(
        "guardrail_rearms",
        Counter,
        "gateway_guardrail_rearms_total",
        "Tripped cohorts re-armed, by cohort and how (admin, flags).",
        ("cohort", "how"),
    ),
    Instrument(
        "guardrail_signal",
        Gauge,
        "gateway_guardrail_signal_ratio",
        "The latest value of each guardrail signal per cohort on this replica (NaN: too few sessions).",
        ("cohort", "signal"),
    ),
    Instrument(
        "guardrail_steps",
        Counter,
        "gateway_guardrail_steps_total",
        "Step-ups of a cohort's gateway percentage by a healthy guardrail window, by cohort.",
        ("cohort",),
    ),
    Instrument(
        "legacy_duration",
        Histogram,
        "gateway_legacy_request_duration_seconds",
        "Calls forwarded to the legacy service, by route and outcome.",
        ("route", "outcome"),
        buckets=UPSTREAM_BUCKETS,
    ),
    Instrument(
        "rollout_flags_valid",
        Gauge,
        "gateway_rollout_flags_valid",
        "1 if the last read of the flags file was valid, else 0.",
        (),
        mode="livemin",
    ),
    Instrument(
        "rollout_flags_reloads",
        Counter,
        "gateway_rollout_flags_reloads_total",
        "Reads of the flags file, by result.",
        ("result",),
    ),
    # Shared store (Redis) health and fan-out takeover between replicas.
    Instrument(
        "store_up", Gauge, "gateway_store_up", "1 if the session store is reachable, else 0.", (), mode="livemin"
    ),
    Instrument(
        "store_state_changes",
        Counter,
        "gateway_store_state_changes_total",
        "Store reachability changes, by new state.",
        ("state",),
    ),
    Instrument(
        "takeovers",
        Counter,
        "gateway_session_takeovers_total",
        "Orphaned sessions finished by this replica, by how (rerun, failed).",
        ("result",),
    ),
    # Limits that protect the service.
    Instrument(
        "rejected",
        Counter,
        "gateway_rejected_requests_total",
        "Requests refused by a protective limit, by limit.",
        ("limit",),
    ),
    Instrument(
        "client_connections",
        Gauge,
        "gateway_client_connections",
        "Client connections open on the gateway's listener (bounded by server.max_connections, per worker).",
        (),
        mode="livesum",
    ),
    Instrument(
        "idle_closed",
        Counter,
        "gateway_idle_connections_closed_total",
        "Idle client connections closed at server.max_connections to admit a new one (longest idle first).",
        (),
    ),
    Instrument(
        "task_failures",
        Counter,
        "gateway_background_task_failures_total",
        "Background tasks that ended with an unexpected exception, by task group.",
        ("task",),
    ),
    Instrument(
        "circuit_open",
        Counter,
        "gateway_upstream_circuit_open_total",
        "Upstream calls failed fast by an open circuit breaker.",
        (),
    ),
    Instrument(
        "upstream_pool_waits",
        Counter,
        "gateway_upstream_pool_waits_total",
        "Upstream calls that found every pooled connection taken and had to wait (size upstream.max_connections).",
        (),
    ),
    Instrument(
        "store_write_retries",
        Counter,
        "gateway_store_write_retries_total",
        "LPU result writes retried because the store was unavailable (retried until the deadline).",
        (),
    ),
    # Retiring the old path (gateway/migration/): the ledger's view, and brownouts. Workers read
    # the same ledger, so its gauge keeps the freshest reading (livemin).
    Instrument(
        "migration_since_last_seen",
        Gauge,
        "gateway_migration_since_last_seen_seconds",
        "Time since the last old-path request of each cohort, from the shared migration ledger "
        "(refreshed at least every 30 s; dashboards show it in days).",
        ("cohort",),
        mode="livemin",
    ),
    Instrument(
        "migration_ledger_flushes",
        Counter,
        "gateway_migration_ledger_flushes_total",
        "Batched writes of the migration ledger, by result (ok, failed: kept for the next one).",
        ("result",),
    ),
    Instrument(
        "brownout_decisions",
        Counter,
        "gateway_brownout_decisions_total",
        "Creates met by an open brownout window, by cohort and outcome (refused, delayed, dry_run, "
        "spared, paused_share, paused_errors, killed).",
        ("cohort", "outcome"),
    ),
)


def build(spec: Instrument, registry: CollectorRegistry) -> Any:
    """The prometheus-client instrument `spec` declares, registered on `registry`."""
    options: dict[str, Any] = {"registry": registry}
    if spec.buckets is not None:
        options["buckets"] = spec.buckets
    if spec.mode is not None:
        options["multiprocess_mode"] = spec.mode
    return spec.kind(spec.name, spec.help, spec.labels, **options)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        # Set for the workers of `gateway serve --workers N` (gateway/workers.py): samples go to
        # files there, and a scrape of any worker shows them all.
        self.multiprocess_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        # Run before each scrape: counts kept in process fold into the instruments first
        # (gateway/observability/tally.py), so what a scrape shows is exact.
        self.before_scrape: list[Callable[[], None]] = []
        self.counts = Counts(at_once=self.multiprocess_dir is not None)  # per-request increments
        self.before_scrape.append(self.counts.fold)
        # The process's memory, CPU and file descriptors (process_*) and the interpreter's version
        # and collections (python_*), on this registry rather than the library's global one: what a
        # pod's memory limit is watched with. Each reads the process when scraped. With several
        # workers a scrape shows the merged files only, without these: one worker's figures would
        # pass for the pod's (docs/metrics.md).
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        # The container's memory limit beside them, for GatewayMemoryNearLimit.
        r.register(MemoryLimitCollector())
        for spec in INSTRUMENTS:
            setattr(self, spec.attr, build(spec, r))
        self.build_info.labels(__version__).set(1)
        self.store_up.set(1)
        self._zero_series()

    def exposition(self) -> CollectorRegistry:
        """The registry a scrape renders: this one, or every worker's samples together."""
        for fold in self.before_scrape:
            fold()
        if self.multiprocess_dir is None:
            return self.registry
        merged = CollectorRegistry()
        MultiProcessCollector(merged, self.multiprocess_dir)
        return merged

    def child(self, metric: Any, *labels: str) -> Any:
        """`metric.labels(*labels)`, looked up once: labels() costs more than the observation
        itself, and every label value comes from a closed set, so the cache stays bounded."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def _zero_series(self) -> None:
        """Series that exist at 0 before the first event, so that dashboards and alert rules see
        every label value from the first scrape, and rate() sees the first increment."""
        for method in UPSTREAM_METHODS:
            self.upstream_retries.labels(method)
            self.upstream_duration.labels(method, "ok")
        for reason in LPU_FAILURE_REASONS:
            self.lpu_outcomes.labels("failed", reason)
        self.lpu_outcomes.labels("complete", "ok")
        for final in ("true", "false"):
            self.polls.labels(final)
        for reason in ("oom", "error"):
            self.store_refused.labels(reason)
        for result in ("ok", "failed"):
            self.migration_ledger_flushes.labels(result)
        # The rollout creates its own decision and shadow series (gateway/rollout/flags.py, shadow.py).

    def zero_client_series(self, cohorts: Iterable[str]) -> None:
        """Old-path series for every cohort the config can produce (the unknown one too): a
        cohort that never calls still has a line at 0 and a last-seen time of 0 ("not since
        start")."""
        for cohort in cohorts:
            self.client_last_seen.labels(cohort)
            for route in OLD_ROUTES.values():
                for side in SIDES:
                    self.old_requests.labels(route, side, cohort, "2xx")
