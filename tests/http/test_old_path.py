"""The old-path accounting in one pass (gateway/http/old_path.py): a request is classified once,
however many of the rollout, brownouts, guardrails, ledger, signals and metrics read its cohort;
a poll's result carries what is counted of it, so no answer is read twice."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.cohorts import Cohort
from gateway.http import keys
from gateway.sandbox.data import LpuKnobs
from tests.support.fake_legacy import start_legacy, write_flags
from tests.support.gateway import bearer, create, patient, poll_until_final, sample
from tests.support.shadow import ADMIN

AGENT = {"User-Agent": "app-a/4.11 (Android 14)"}
COHORT = Cohort("app-a", "android", "4.11")


def flags(now: float) -> str:
    """Every reader of the cohort at work: the lists, a guardrail rule, an open brownout window
    (a dry run: it is decided, counted and logged, and the create is served) and a deprecation."""
    start = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 60))
    return f"""mode = "legacy"
allow_cohorts = ["app-a/*/*"]
deny_cohorts = ["app-b/*/*"]
version = 1
[guardrails]
[[guardrails.rule]]
signal = "failed_lpu_ratio"
above = 0.9
cohorts = ["app-a/*/4.11"]
[migration]
[[migration.deprecation]]
cohorts = ["app-a/*/*"]
deprecated = 1700000000
[[migration.brownout]]
name = "dry"
cohorts = ["app-a/android/*"]
start = {start}
duration = 3600
"""


async def in_front_of_legacy(aiohttp_server: Any, upstream: Any, gateway: Any, tmp_path: Path, p: Any) -> Any:
    """A gateway in front of a fake legacy service, running `flags` for the app-a and app-b apps."""
    _, url = await upstream(p)
    _, legacy_url = await start_legacy(aiohttp_server)
    path = tmp_path / "flags.toml"
    write_flags(path, flags(time.time()))
    return await gateway(
        url,
        rollout={"legacy_url": legacy_url, "flags_file": str(path), "admin_token": ADMIN["X-Admin-Token"]},
        clients={"by_user_agent": {"^app-a/": "app-a", "^app-b/": "app-b"}, "versions": ["4.11"]},
    )


def recording(owner: Any, name: str) -> list[tuple[Any, ...]]:
    """Wraps `owner.name` (an instance's method) so that every call's arguments are kept."""
    calls: list[tuple[Any, ...]] = []
    method: Callable[..., Any] = getattr(owner, name)

    def recorded(*args: Any) -> Any:
        calls.append(args)
        return method(*args)

    setattr(owner, name, recorded)
    return calls


async def test_a_request_is_classified_once_per_create_and_once_per_poll(
    aiohttp_server: Any, upstream: Any, gateway: Any, tmp_path: Path
) -> None:
    p = patient(None)
    client = await in_front_of_legacy(aiohttp_server, upstream, gateway, tmp_path, p)
    classified = recording(client.app[keys.CLIENTS], "classify")
    guid = await create(client, p.token, **AGENT)
    assert len(classified) == 1, "one classification for the create"
    assert sample(client, "gateway_rollout_decisions_total", side="gateway", reason="allow_list") == 1
    assert sample(client, "gateway_brownout_decisions_total", cohort=str(COHORT), outcome="dry_run") == 1
    body, seen = await poll_until_final(client, guid, headers=bearer(p.token) | AGENT)
    assert body[0]["state"] == "Complete"
    assert len(classified) == 1 + len(seen), "one classification per poll"
    resp = await client.get(f"/api/v2/old/visit/tickets/{guid}", headers=bearer(p.token) | AGENT)
    assert resp.status == 200 and resp.headers["Deprecation"] == "@1700000000"
    assert len(classified) == 2 + len(seen)
    polls = sample(
        client, "gateway_old_requests_total", route="poll", side="gateway", cohort=str(COHORT), status_class="2xx"
    )
    assert polls == 1 + len(seen)
    # Requests off the old path are not classified at all.
    assert (await client.get("/healthz")).status == 200
    assert len(classified) == 2 + len(seen)


async def test_a_poll_carries_its_failed_lpus_and_whether_it_is_the_first_final_answer(
    upstream: Any, gateway: Any
) -> None:
    p = patient(None, LpuKnobs(fault="status"), LpuKnobs(fault="status"))
    _, url = await upstream(p)
    client = await gateway(url)
    guid = await create(client, p.token)
    await poll_until_final(client, guid, headers=bearer(p.token))
    sessions = client.app[keys.SESSIONS]
    # The HTTP polls above served the first final answer: a later one is not the first.
    again = await sessions.poll(guid, p.token, None)
    assert again is not None and again.final and not again.first_final and (again.lpus, again.failed) == (0, 0)
    # The count is the stored entries' states, which the body says too.
    session = await sessions.store.load(guid)
    assert session is not None and session.failed(session.read_at) == 2
    assert again.body.count(b'"state":"Failed"') == 2


async def test_the_first_final_poll_feeds_the_guardrails_its_lpus_and_failed_ones(
    aiohttp_server: Any, upstream: Any, gateway: Any, tmp_path: Path
) -> None:
    p = patient(None, LpuKnobs(fault="status"))
    client = await in_front_of_legacy(aiohttp_server, upstream, gateway, tmp_path, p)
    fed = recording(client.app[keys.ROLLOUT].guardrails, "record_final")
    guid = await create(client, p.token, **AGENT)
    await poll_until_final(client, guid, headers=bearer(p.token) | AGENT)
    for _ in range(3):
        assert (await client.get(f"/api/v2/old/visit/tickets/{guid}", headers=AGENT)).status == 200
    assert fed == [(COHORT, 2, 1)], "once per session, counted without reading the answer"
