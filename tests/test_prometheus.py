"""A real Prometheus scrapes a running gateway under the scripted workload; then every panel
query of both dashboards is evaluated through Prometheus' HTTP API, and the alert rules are
loaded and evaluated by it.

Each panel query returns at least one series. Panels the workload exercises show it (a value
above 0 somewhere in the run); the per-app counts, the last-seen panel and the side-share panel
match what the workload sent.
"""

from __future__ import annotations

import math
import time
from typing import Any

from dashboards import ALERTS, panel_queries, substitute
from prometheus_server import SCRAPE_INTERVAL
from workload import Done, Patients, run_workload, serve_gateway, workload_config

# Panels this workload cannot move: they wait for the rollout (legacy forwarding, shadow, flags),
# or for sessions to outlive their TTL or fill the store. They must still return series.
IDLE_PANELS = {
    "Rollout decisions by side and reason",
    "Shadow match rate",
    "Shadow results by result and reason",
    "Legacy service latency p95 by route",
    "Rollout flags file valid",
    "Store expiries, evictions and refusals",
}
# Grafana's $__interval for the run; $__rate_interval follows Grafana's rule from it (10s here).
# Range queries are then read every second, so no point of the short run is skipped.
INTERVAL = 9


def value(sample: list[Any]) -> float:
    return float(sample[1])


def first_value(result: list[dict[str, Any]]) -> float:
    return value(result[0]["value"]) if result else math.nan


async def test_every_panel_has_data_from_a_real_prometheus(upstream: Any, prometheus: Any) -> None:
    patients = Patients()
    _, url = await upstream(*patients.all())
    async with serve_gateway(workload_config(url)) as gw:
        target = gw.metrics_url.removeprefix("http://")
        prom = await prometheus([target], rule_files=(ALERTS,))
        await prom.wait_for('up{job="gateway"}', lambda r: first_value(r) == 1)
        started = time.time()

        async def scraped(done: Done) -> None:
            # Each round is in a scrape before the next starts, and the hanging session (in
            # flight until its deadline) has been seen.
            sent = sum(done.requests.values())
            await prom.wait_for("sum(gateway_old_requests_total)", lambda r: first_value(r) == sent)
            await prom.wait_for("max_over_time(gateway_sessions_in_flight[1m])", lambda r: first_value(r) >= 1)

        done = await run_workload(gw.url, patients, between_rounds=scraped)
        sent = sum(done.requests.values())
        # Wait for a scrape that has all of it (the deadline is recorded as the session ends).
        await prom.wait_for("sum(gateway_old_requests_total)", lambda r: first_value(r) == sent)
        await prom.wait_for("sum(gateway_sessions_deadline_total)", lambda r: first_value(r) == 1)
        ended = time.time()
        # Range queries read every second back from `ended`, so the last point has everything.
        started = ended - math.ceil(ended - started)

        range_s = math.ceil(ended - started) + 2 * INTERVAL

        def grafana(expr: str) -> str:
            return substitute(expr, interval_s=INTERVAL, scrape_s=int(SCRAPE_INTERVAL), range_s=range_s)

        failures = []
        active: dict[tuple[str, str], bool] = {}
        for query in panel_queries():
            now = await prom.query(grafana(query.expr), at=ended)
            if not now:
                failures.append(f"no series: {query}")
            if query.instant:
                points = [value(s["value"]) for s in now]
            else:
                result = await prom.query_range(grafana(query.expr), started, ended)
                points = [value(p) for s in result for p in s["values"]]
            key = (query.dashboard, query.panel)
            active[key] = active.get(key, False) or any(math.isfinite(v) and v > 0 for v in points)
        assert not failures, "\n".join(failures)
        quiet = {panel for (_, panel), moved in active.items() if not moved}
        assert quiet == IDLE_PANELS, f"panels without data from the workload: {sorted(quiet - IDLE_PANELS)}"

        def panel(title: str) -> str:
            return grafana(next(q.expr for q in panel_queries() if q.panel == title))

        # Prometheus holds the workload's own counts, app by app (increase() on a panel is
        # approximate by design: a series born at 1 hides its first request).
        by_app = {
            s["metric"]["app"]: value(s["value"])
            for s in await prom.query("sum by (app) (gateway_old_requests_total)", at=ended)
        }
        assert {app: n for app, n in by_app.items() if n} == dict(done.by_app())
        last_seen = await prom.query(panel("Apps still calling: last seen"), at=ended)
        assert {s["metric"]["app"] for s in last_seen} == set(done.by_app())
        assert all(started * 1000 <= value(s["value"]) <= ended * 1000 for s in last_seen)
        share = await prom.query_range(panel("Share served by each side"), started, ended)
        peaks = {s["metric"]["side"]: max(v for p in s["values"] if math.isfinite(v := value(p))) for s in share}
        assert peaks == {"gateway": 1.0, "legacy": 0.0, "shadow": 0.0}

        # The alert rules load and evaluate against the real series without errors.
        rules = await prom.wait_for_rules()
        assert {r["name"] for r in rules} == {
            "GatewayLpuFailureRatioHigh",
            "GatewaySessionsHittingDeadline",
            "GatewayUpstreamErrorRateHigh",
            "GatewayRetiredAppCallingAgain",
        }
        assert all(r["health"] == "ok" and not r.get("lastError") for r in rules), rules
