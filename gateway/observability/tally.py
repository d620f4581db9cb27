"""Per-request HTTP and old-path usage counts, kept exact but off the hot path: a request adds
to plain dicts (`Tally.request`, `Tally.old_path`), and `fold` moves what was added into the
prometheus children (`gateway_http_requests_total`, `gateway_http_request_duration_seconds`,
`gateway_old_requests_total`, `gateway_client_last_seen_timestamp_seconds`). The app folds once
a second (`Tasks.every`) and a scrape folds first, so /metrics is exact when it is read.
Under `gateway serve --workers N` a scrape reads every worker's files but folds only its own
tally, so there each request folds at once (the cost it had before the tally).

A prometheus child's increment takes a lock and its histogram observation a bucket search in
Python, per request; here a request costs a dict increment and one `bisect`.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

from gateway.observability.metrics import UPSTREAM_BUCKETS, Metrics


class _Durations:
    """One route's observations since the last fold: a count per bucket (the last for +Inf) and
    their sum."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(UPSTREAM_BUCKETS) + 1)
        self.total = 0.0


class Tally:
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._requests: dict[tuple[str, str], int] = {}
        self._durations: dict[str, _Durations] = {}
        self._old: dict[tuple[str, str, str, str], int] = {}
        self._last_seen: dict[str, float] = {}
        self._at_once = metrics.multiprocess_dir is not None
        metrics.before_scrape.append(self.fold)

    def request(self, route: str, status_class: str, duration: float) -> None:
        key = (route, status_class)
        requests = self._requests
        requests[key] = requests.get(key, 0) + 1
        durations = self._durations.get(route)
        if durations is None:
            durations = self._durations[route] = _Durations()
        # Prometheus buckets are "less than or equal": the first bound >= the value.
        durations.counts[bisect_left(UPSTREAM_BUCKETS, duration)] += 1
        durations.total += duration
        if self._at_once:
            self.fold()

    def old_path(self, route: str, side: str, cohort: str, status_class: str, now: float) -> None:
        key = (route, side, cohort, status_class)
        old = self._old
        old[key] = old.get(key, 0) + 1
        self._last_seen[cohort] = now
        if self._at_once:
            self.fold()

    def fold(self) -> None:
        """Everything added since the last fold, into the prometheus children."""
        metrics = self._metrics
        requests, self._requests = self._requests, {}
        for (route, status_class), n in requests.items():
            metrics.child(metrics.http_requests, route, status_class).inc(n)
        durations, self._durations = self._durations, {}
        for route, observed in durations.items():
            _add_to_histogram(metrics.child(metrics.http_duration, route), observed)
        old, self._old = self._old, {}
        for labels, n in old.items():
            metrics.child(metrics.old_requests, *labels).inc(n)
        last_seen, self._last_seen = self._last_seen, {}
        for cohort, when in last_seen.items():
            metrics.child(metrics.client_last_seen, cohort).set(when)
        metrics.counts.fold()

    async def tick(self) -> None:
        self.fold()


def _add_to_histogram(child: Any, observed: _Durations) -> None:
    # prometheus_client offers no batched observe; its child keeps one value per bucket
    # (non-cumulative) and the sum, which is what `observe` adds to.
    for index, n in enumerate(observed.counts):
        if n:
            child._buckets[index].inc(n)
    child._sum.inc(observed.total)
