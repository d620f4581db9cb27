"""/metrics after a scripted workload: valid for promtool, every metric the dashboards and alert
rules use is there, the counts are what the workload did, and no client input makes new series."""

from __future__ import annotations

import random
import shutil
import subprocess
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from gateway import __version__
from gateway.http import keys
from gateway.sandbox.data import SandboxPatient, demo_lpu
from tests.support.dashboards import families, used_metric_names
from tests.support.fake_legacy import start_legacy
from tests.support.gateway import TOKENS, bearer, new_token, wait_until
from tests.support.workload import (
    CLIENTS,
    ROUNDS,
    TICKETS,
    Patients,
    expected_lpu_outcomes,
    rollout_section,
    run_workload,
    serve_gateway,
    workload_config,
)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def total(found: Samples, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in found.items() if n == name and want <= ls)


async def scrape(url: str) -> str:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/metrics") as resp:
            assert resp.status == 200
            assert resp.content_type == "text/plain"
            return await resp.text()


async def test_metrics_after_the_workload(upstream: Any, aiohttp_server: Any, tmp_path: Path) -> None:
    patients = Patients()
    _, url = await upstream(*patients.all())
    _, legacy_url = await start_legacy(aiohttp_server)
    plain = workload_config(url, deadline=1.0)
    in_front = workload_config(url, deadline=1.0, rollout=rollout_section(legacy_url, tmp_path))
    async with serve_gateway(plain) as gw, serve_gateway(in_front) as gw_rollout:
        done = await run_workload(gw.url, patients, rollout_url=gw_rollout.url)

        async def compared() -> bool:
            found = samples(await scrape(gw_rollout.metrics_url))
            return all(
                total(found, "gateway_shadow_results_total", result=r) == n for r, n in done.shadow_compares.items()
            )

        await wait_until(compared, what="the shadow compares")
        text, rollout_text = await scrape(gw.metrics_url), await scrape(gw_rollout.metrics_url)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{gw.url}/metrics") as resp:
                assert resp.status == 404, "with an admin listener, /metrics is not on the public port"

    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: `make test` installs Debian's prometheus package"
    for exposition in (text, rollout_text):
        check = subprocess.run(  # noqa: ASYNC221 (the gateways are stopped by now)
            [promtool, "check", "metrics"], input=exposition, capture_output=True, text=True, timeout=30
        )
        assert check.returncode == 0, check.stdout + check.stderr

    found, found_rollout = samples(text), samples(rollout_text)
    exposed = {name.removesuffix("_bucket").removesuffix("_count").removesuffix("_sum") for name, _ in found}
    exposed |= {name.removesuffix("_bucket").removesuffix("_count").removesuffix("_sum") for name, _ in found_rollout}
    # A family declared but without a sample yet (a labelled counter nothing has incremented) is there too.
    exposed |= families(text) | families(rollout_text)
    missing = used_metric_names() - exposed
    assert not missing, f"dashboards or alert rules use metrics /metrics does not have: {sorted(missing)}"

    # Old-path use, both gateways together, is exactly what the workload sent, side by side.
    labels = ("route", "side", "cohort", "status_class")
    old: Counter[tuple[str, ...]] = Counter()
    for (name, ls), v in [*found.items(), *found_rollout.items()]:
        if name == "gateway_old_requests_total" and v > 0:
            old[tuple(dict(ls)[label] for label in labels)] += int(v)
    assert old == done.requests
    assert set(done.by("side")) == {"gateway", "legacy", "shadow"}
    for cohort in done.by("cohort"):
        assert total(found, "gateway_client_last_seen_timestamp_seconds", cohort=cohort) > 0

    # The gateway without a legacy service ran the scripted sessions alone.
    for (outcome, reason), n in expected_lpu_outcomes().items():
        assert total(found, "gateway_lpu_outcomes_total", outcome=outcome, reason=reason) == n, (outcome, reason)
    assert total(found, "gateway_sessions_deadline_total") == 1
    assert total(found, "gateway_upstream_retries_total") >= 1
    assert total(found, "gateway_upstream_retry_budget_exhausted_total") >= 1
    assert total(found, "gateway_store_misses_total") == ROUNDS
    assert total(found, "gateway_session_polls_total") == total(found, "gateway_store_hits_total")
    assert total(found, "gateway_sessions_in_flight") == 0
    # Capacity beside the count, for the store-near-full alert.
    assert total(found, "gateway_store_max_sessions") == plain.session.max_sessions
    assert total(found_rollout, "gateway_rollout_decisions_total", side="legacy", reason="deny_list") == ROUNDS
    assert total(found_rollout, "gateway_rollout_decisions_total", side="gateway", reason="allow_list") == ROUNDS
    assert total(found_rollout, "gateway_rollout_decisions_total", side="shadow", reason="default") == 3 * ROUNDS
    shadow_candidates = sum(done.shadow_compares.values())
    created = total(found, "gateway_sessions_created_total") + total(found_rollout, "gateway_sessions_created_total")
    assert created == done.sessions_created + shadow_candidates
    for f in (found, found_rollout):
        assert total(f, "gateway_session_complete_seconds_count") == total(f, "gateway_sessions_created_total")
    leaked = [t for t in TOKENS if t in text or t in rollout_text]
    assert not leaked, "a token appears in /metrics"


def series(text: str) -> set[tuple[str, frozenset[tuple[str, str]]]]:
    return set(samples(text))


async def test_a_flood_of_distinct_clients_tokens_and_guids_adds_no_series(upstream: Any, gateway: Any) -> None:
    rounds = 150
    patients = [SandboxPatient(new_token(), [demo_lpu(1)]) for _ in range(rounds + 1)]
    _, url = await upstream(*patients)
    client = await gateway(url, clients=CLIENTS, metrics={"port": 0})
    rng = random.Random(7)

    async def one_round(p: SandboxPatient) -> None:
        # Every value a client chooses is new each round: app GUID, User-Agent and its version,
        # request id, token, session GUID, path. Versions start at 100: never a configured one.
        headers = {
            "ClientApplication": str(uuid.uuid4()),
            "User-Agent": f"app-{uuid.uuid4().hex[:8]}/{rng.randint(100, 999)}.{rng.randint(0, 99)}.1 (x)",
            "X-Request-Id": uuid.uuid4().hex,
        }
        resp = await client.get(TICKETS, headers=headers | bearer(p.token))
        assert resp.status == 200
        guid = (await resp.json())["session"]
        assert (await client.get(f"{TICKETS}/{guid}", headers=headers | bearer(p.token))).status == 200
        assert (await client.get(f"{TICKETS}/{guid}", headers=headers)).status == 200
        assert (await client.get(TICKETS, headers=headers | bearer(new_token()))).status == 401
        assert (await client.get(f"{TICKETS}/{uuid.uuid4()}", headers=headers)).status == 404
        assert (await client.get(f"{TICKETS}/{uuid.uuid4().hex}", headers=headers)).status == 400
        assert (await client.get(f"/api/v2/old/{uuid.uuid4()}", headers=headers)).status == 404
        no_app = await client.get(TICKETS, headers=bearer(new_token()), skip_auto_headers=("User-Agent",))
        assert no_app.status == 401

    await one_round(patients[0])
    # The migration ledger's gauge has the one cohort of every unnamed client once it is flushed.
    assert await client.app[keys.MIGRATION].writer.flush()
    await client.get("/metrics")  # with metrics.port = 0 a scrape is a request too: in the baseline
    before = await (await client.get("/metrics")).text()
    for p in patients[1:]:
        await one_round(p)
    after = await (await client.get("/metrics")).text()

    assert series(after) == series(before)
    found = samples(after)
    # Every unnamed client is the one unknown cohort: 6 requests a round with headers, 1 without
    # (the stray path is not old-path use).
    assert total(found, "gateway_old_requests_total", cohort="unknown/unknown/unknown") == 7 * (rounds + 1)
    assert not [t for t in TOKENS if t in after]
    assert "app-" not in after, "a User-Agent reached a label"


async def test_process_python_and_build_series_are_on_metrics(upstream: Any, gateway: Any) -> None:
    """What a pod's memory limit and a rollout's progress are watched with."""
    _, url = await upstream()
    client = await gateway(url, metrics={"port": 0})
    found = samples(await (await client.get("/metrics")).text())
    resident = total(found, "process_resident_memory_bytes")
    assert 1024 * 1024 < resident < 64 * 1024**3, resident
    assert total(found, "process_cpu_seconds_total") > 0
    assert total(found, "process_open_fds") > 0
    assert {dict(ls)["generation"] for n, ls in found if n == "python_gc_collections_total"} == {"0", "1", "2"}
    assert next(dict(ls) for n, ls in found if n == "python_info")["major"] == "3"
    assert found[("gateway_build_info", frozenset({("version", __version__)}))] == 1.0


async def test_request_counts_are_exact_at_a_scrape_that_comes_right_after_the_requests(
    upstream: Any, gateway: Any
) -> None:
    """The per-request counts are kept in process and folded once a second; a scrape folds
    first, so it never shows fewer requests than were answered."""
    someone = SandboxPatient(token=new_token(), lpus=[demo_lpu(0)])
    _, url = await upstream(someone)
    client = await gateway(url, metrics={"port": 0}, limits={"poll_rate": 1000.0, "poll_burst": 1000})
    resp = await client.get("/api/v2/old/visit/tickets", headers=bearer(someone.token))
    guid = (await resp.json())["session"]
    for _ in range(37):
        assert (await client.get(f"/api/v2/old/visit/tickets/{guid}", headers=bearer(someone.token))).status == 200
    assert (await client.get("/api/v2/old/visit/tickets/not-a-guid", headers=bearer(someone.token))).status == 400
    text = await (await client.get("/metrics")).text()
    found = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    poll = "/api/v2/old/visit/tickets/{session}"

    def value(name: str, **labels: str) -> float:
        return found.get((name, tuple(sorted(labels.items()))), 0.0)

    assert value("gateway_http_requests_total", route=poll, status_class="2xx") == 37
    assert value("gateway_http_requests_total", route=poll, status_class="4xx") == 1
    assert value("gateway_http_request_duration_seconds_count", route=poll) == 38
    assert value("gateway_http_request_duration_seconds_bucket", route=poll, le="+Inf") == 38
    assert value("gateway_http_requests_total", route="/api/v2/old/visit/tickets", status_class="2xx") == 1
    old = sum(
        v for (name, labels), v in found.items() if name == "gateway_old_requests_total" and ("route", "poll") in labels
    )
    assert old == 38
