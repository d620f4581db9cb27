"""/metrics after a scripted workload: valid for promtool, every metric the dashboards and alert
rules use is there, the counts are what the workload did, and no client input makes new series."""

from __future__ import annotations

import random
import shutil
import subprocess
import uuid
from typing import Any

import aiohttp
from conftest import TOKENS, bearer, new_token
from dashboards import used_metric_names
from prometheus_client.parser import text_string_to_metric_families
from workload import (
    CLIENTS,
    TICKETS,
    Patients,
    expected_lpu_outcomes,
    run_workload,
    serve_gateway,
    workload_config,
)

from gateway.sandbox.data import SandboxPatient, demo_lpu

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


async def test_metrics_after_the_workload(upstream: Any) -> None:
    patients = Patients()
    _, url = await upstream(*patients.all())
    async with serve_gateway(workload_config(url, deadline=1.0)) as gw:
        done = await run_workload(gw.url, patients)
        text = await scrape(gw.metrics_url)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{gw.url}/metrics") as resp:
                assert resp.status == 404, "with an admin listener, /metrics is not on the public port"

    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: `make test` installs Debian's prometheus package"
    check = subprocess.run(  # noqa: ASYNC221 (the gateway is stopped by now)
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert check.returncode == 0, check.stdout + check.stderr

    found = samples(text)
    exposed = {name.removesuffix("_bucket").removesuffix("_count").removesuffix("_sum") for name, _ in found}
    missing = used_metric_names() - exposed
    assert not missing, f"dashboards or alert rules use metrics /metrics does not have: {sorted(missing)}"

    old = {
        (dict(ls)["route"], dict(ls)["app"], dict(ls)["app_version"], dict(ls)["status_class"]): v
        for (name, ls), v in found.items()
        if name == "gateway_old_requests_total" and v > 0
    }
    assert old == done.requests
    assert total(found, "gateway_old_requests_total", side="gateway") == sum(done.requests.values())
    assert total(found, "gateway_old_requests_total", side="legacy") == 0
    for app in done.by_app():
        assert total(found, "gateway_client_last_seen_timestamp_seconds", app=app) > 0
    for (outcome, reason), n in expected_lpu_outcomes().items():
        assert total(found, "gateway_lpu_outcomes_total", outcome=outcome, reason=reason) == n, (outcome, reason)
    assert total(found, "gateway_sessions_created_total") == done.sessions_created
    assert total(found, "gateway_sessions_deadline_total") == 1
    assert total(found, "gateway_upstream_retries_total") >= 1
    assert total(found, "gateway_upstream_retry_budget_exhausted_total") >= 1
    assert total(found, "gateway_store_misses_total") == 2
    assert total(found, "gateway_session_polls_total") == total(found, "gateway_store_hits_total")
    assert total(found, "gateway_session_complete_seconds_count") == done.sessions_created
    assert total(found, "gateway_sessions_in_flight") == 0
    leaked = [t for t in TOKENS if t in text]
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
    await client.get("/metrics")  # with metrics.port = 0 a scrape is a request too: in the baseline
    before = await (await client.get("/metrics")).text()
    for p in patients[1:]:
        await one_round(p)
    after = await (await client.get("/metrics")).text()

    assert series(after) == series(before)
    found = samples(after)
    assert total(found, "gateway_old_requests_total", app="other") == 6 * (
        rounds + 1
    )  # the stray path is not old-path use
    assert total(found, "gateway_old_requests_total", app="unknown") == rounds + 1
    assert not [t for t in TOKENS if t in after]
    assert "app-" not in after, "a User-Agent reached a label"
