"""A real Prometheus scrapes two running gateways (one alone, one in front of a legacy service
with rollout flags) under the scripted workload; then every panel query of both dashboards is
evaluated through Prometheus' HTTP API, and the alert rules are loaded and evaluated by it.

Each panel query returns at least one series. Panels the workload exercises show it (a value
above 0 somewhere in the run); the per-app counts, the last-seen panel and the side-share panel
match what the workload sent, side by side.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.dashboards import ALERT_NAMES, RULE_FILES, panel_queries, substitute
from tests.support.fake_legacy import start_legacy
from tests.support.gateway import create, patient, poll_until_final
from tests.support.prometheus_server import SCRAPE_INTERVAL
from tests.support.workload import Done, Patients, rollout_section, run_workload, serve_gateway, workload_config

# Panels this workload cannot move: sessions outliving their TTL or filling the store, and the
# saturation panels (limits, pool waits, circuits, takeovers, Redis retries; connections are
# counted by `gateway serve`'s own runner, not the test's). They must still return series.
IDLE_PANELS = {
    "Store expiries, evictions and refusals",
    "Rejections by limit",
    "Upstream pool waits and circuit opens",
    "Client connections",
    "Sessions reused and taken over",
    "Store write retries and reachability changes",
}
# Grafana's $__interval for the run; $__rate_interval follows Grafana's rule from it (10s here).
# Range queries are then read every second, so no point of the short run is skipped.
INTERVAL = 9


def value(sample: list[Any]) -> float:
    return float(sample[1])


def first_value(result: list[dict[str, Any]]) -> float:
    return value(result[0]["value"]) if result else math.nan


async def test_every_panel_has_data_from_a_real_prometheus(
    upstream: Any, aiohttp_server: Any, prometheus: Any, tmp_path: Path
) -> None:
    patients = Patients()
    _, url = await upstream(*patients.all())
    _, legacy_url = await start_legacy(aiohttp_server)
    in_front = workload_config(url, rollout=rollout_section(legacy_url, tmp_path))
    async with serve_gateway(workload_config(url)) as gw, serve_gateway(in_front) as gw_rollout:
        targets = [g.metrics_url.removeprefix("http://") for g in (gw, gw_rollout)]
        prom = await prometheus(targets, rule_files=RULE_FILES)
        await prom.wait_for('sum(up{job="gateway"})', lambda r: first_value(r) == 2)
        started = time.time()

        async def scraped(done: Done) -> None:
            # Each round is in a scrape before the next starts, and the hanging session (in
            # flight until its deadline) has been seen.
            sent = sum(done.requests.values())
            await prom.wait_for("sum(gateway_old_requests_total)", lambda r: first_value(r) == sent)
            await prom.wait_for("max(max_over_time(gateway_sessions_in_flight[1m]))", lambda r: first_value(r) >= 1)

        done = await run_workload(gw.url, patients, between_rounds=scraped, rollout_url=gw_rollout.url)
        sent = sum(done.requests.values())
        compared = sum(done.shadow_compares.values())
        # Wait for a scrape that has all of it (the deadline is recorded as the session ends,
        # shadow compares finish in the background).
        await prom.wait_for("sum(gateway_old_requests_total)", lambda r: first_value(r) == sent)
        await prom.wait_for("sum(gateway_sessions_deadline_total)", lambda r: first_value(r) == 1)
        await prom.wait_for(
            'sum(gateway_shadow_results_total{result=~"match|mismatch"})', lambda r: first_value(r) == compared
        )
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

        # Prometheus holds the workload's own counts, cohort by cohort and side by side (increase()
        # on a panel is approximate by design: a series born at 1 hides its first request).
        for label in ("cohort", "side"):
            counted = {
                s["metric"][label]: value(s["value"])
                for s in await prom.query(f"sum by ({label}) (gateway_old_requests_total)", at=ended)
            }
            assert {k: n for k, n in counted.items() if n} == dict(done.by(label))
        last_seen = await prom.query(panel("Cohorts still calling: last seen"), at=ended)
        assert {s["metric"]["cohort"] for s in last_seen} == set(done.by("cohort"))
        by_app = await prom.query(panel("Old-path requests by app"), at=ended)
        assert {s["metric"]["app"] for s in by_app} == {c.split("/")[0] for c in done.by("cohort")}
        assert all(started * 1000 <= value(s["value"]) <= ended * 1000 for s in last_seen)
        share = await prom.query_range(panel("Share served by each side"), started, ended)
        peaks = {s["metric"]["side"]: max(v for p in s["values"] if math.isfinite(v := value(p))) for s in share}
        assert set(peaks) == {"gateway", "legacy", "shadow"} and all(0 < peak <= 1 for peak in peaks.values()), peaks
        results = {
            s["metric"]["result"]: value(s["value"])
            for s in await prom.query('sum by (result) (gateway_shadow_results_total{result!="incomplete"})', at=ended)
        }
        assert results == done.shadow_compares

        # The alert and recording rules load and evaluate against the real series without errors.
        rules = await prom.wait_for_rules()
        assert {r["name"] for r in rules if r["type"] == "alerting"} == ALERT_NAMES
        assert all(r["health"] == "ok" and not r.get("lastError") for r in rules), rules


# Ratios whose numerator counts something that may never have happened on a healthy service.
RATIOS_OF_FAILURES = {"Server error ratio (5xx)", "LPU failure ratio", "Sessions reaching the deadline"}


async def test_failure_ratio_panels_show_zero_not_no_data_when_nothing_failed(upstream: Any, prometheus: Any) -> None:
    healthy = patient(None, None)
    _, url = await upstream(healthy)
    async with serve_gateway(workload_config(url)) as gw:
        prom = await prometheus([gw.metrics_url.removeprefix("http://")])
        await prom.wait_for('sum(up{job="gateway"})', lambda r: first_value(r) == 1)

        async def traffic() -> None:
            # Sessions that all complete, spread over several scrapes so every rate() has two points.
            async with aiohttp.ClientSession(base_url=gw.url) as http:
                for _ in range(300):
                    await poll_until_final(http, await create(http, healthy.token))
                    await asyncio.sleep(0.1)

        running = asyncio.create_task(traffic())
        try:
            for query in (q for q in panel_queries() if q.panel in RATIOS_OF_FAILURES):
                expr = substitute(query.expr, interval_s=INTERVAL, scrape_s=int(SCRAPE_INTERVAL), range_s=60)
                # Before the denominator has two points the panel is empty ("No data") either way.
                result = await prom.wait_for(expr, lambda r: bool(r) and math.isfinite(first_value(r)), within=30)
                assert [value(s["value"]) for s in result] == [0.0], str(query)
            assert not running.done(), "the traffic ended before every panel was read"
        finally:
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running
