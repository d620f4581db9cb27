"""A guardrail on two gateway processes sharing Redis: one cohort failing on the gateway side trips
on the sessions of both replicas together and moves to legacy on both, within a stated time; too
few sessions moves nothing; the other cohort stays; a re-arm on either replica re-arms both."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

import aiohttp

from gateway.sandbox.data import LpuKnobs
from tests.support.fake_legacy import start_legacy, write_flags
from tests.support.gateway import TICKETS, bearer, patient
from tests.support.replicas import Replica
from tests.support.shadow import ADMIN

LIMIT = 30.0
# Both replicas follow a trip within this: an evaluation interval on the replica that trips, one
# read of the board on the other (0.5 s each), with a wide margin for a loaded machine.
FOLLOW_WITHIN = 8.0
INTERVAL = 0.5
AGENT_A, AGENT_B = {"User-Agent": "app-a/1.0"}, {"User-Agent": "app-b/1.0"}
COHORT = "app-a/other/other"
FLAGS = """
mode = "gateway"
version = 1
[guardrails]
cooldown = 0
[[guardrails.rule]]
signal = "failed_lpu_ratio"
above = 0.5
window = 120
min_sessions = 5
"""


async def session(http: aiohttp.ClientSession, replica: Replica, token: str, agent: dict[str, str]) -> str:
    async with http.get(replica.url + TICKETS, headers=bearer(token) | agent) as resp:
        assert resp.status == 200, await resp.text()
        return (await resp.json())["session"]


async def until_final(http: aiohttp.ClientSession, replica: Replica, guid: str, token: str) -> None:
    end = time.monotonic() + LIMIT
    while True:
        async with http.get(f"{replica.url}{TICKETS}/{guid}", headers=bearer(token) | AGENT_A) as resp:
            assert resp.status == 200, await resp.text()
            body = await resp.json()
        if all(e["state"] != "InProgress" for e in body):
            return
        assert time.monotonic() < end
        await asyncio.sleep(0.06)  # under limits.poll_rate


async def until_reading(http: aiohttp.ClientSession, replica: Replica, sample: int) -> None:
    """Waits until the replica's reading of the cohort counts `sample` sessions and is inconclusive."""
    end = time.monotonic() + FOLLOW_WITHIN
    while True:
        async with http.get(replica.url + "/admin/rollout", headers=ADMIN) as resp:
            cohort = (await resp.json())["guardrails"]["cohorts"].get(COHORT)
        reading = cohort["signals"][0] if cohort else None
        if reading and reading["sample"] == sample:
            assert reading["outcome"] == "inconclusive" and cohort["state"] == "armed"
            return
        assert time.monotonic() < end, f"{replica.name} never read {sample} sessions: {cohort}"
        await asyncio.sleep(0.05)


async def tripped(http: aiohttp.ClientSession, replica: Replica) -> float:
    async with http.get(replica.url + "/metrics") as resp:
        text = await resp.text()
    match = re.search(r'^gateway_guardrail_tripped\{cohort="app-a/other/other"\} (\S+)$', text, re.M)
    assert match, "the cohort's series exists from the start"
    return float(match.group(1))


async def until_tripped(http: aiohttp.ClientSession, replicas: list[Replica], value: float) -> float:
    """Seconds until every replica reads `value`; fails after FOLLOW_WITHIN."""
    started = time.monotonic()
    while True:
        if all([await tripped(http, r) == value for r in replicas]):
            return time.monotonic() - started
        assert time.monotonic() - started < FOLLOW_WITHIN, f"not every replica at {value} in {FOLLOW_WITHIN}s"
        await asyncio.sleep(0.05)


async def test_a_tripped_cohort_moves_to_legacy_on_both_replicas(
    aiohttp_server: Any, upstream: Any, redis_server: Any, replicas: Any, tmp_path: Path
) -> None:
    broken = patient(LpuKnobs(fault="status"))
    healthy = patient(None)
    _, url = await upstream(broken, healthy)
    fake, legacy_url = await start_legacy(aiohttp_server)
    flags = tmp_path / "flags.toml"
    write_flags(flags, FLAGS)
    rollout = {
        "legacy_url": legacy_url,
        "flags_file": str(flags),
        "admin_token": ADMIN["X-Admin-Token"],
        "guardrail_interval": INTERVAL,
    }
    clients = {"by_user_agent": {"^app-a/": "app-a", "^app-b/": "app-b"}}
    a, b = await replicas(2, url, redis_server.url, rollout=rollout, clients=clients)
    async with aiohttp.ClientSession() as http:
        # Three sessions of the cohort on A, all Failed, and one on B: four sessions in all, fewer
        # than min_sessions, however bad, holds.
        for _ in range(3):
            await until_final(http, a, await session(http, a, broken.token, AGENT_A), broken.token)
        await session(http, b, broken.token, AGENT_A)
        assert not fake.creates()
        for replica in (a, b):
            await until_reading(http, replica, sample=4)
        assert await tripped(http, a) == 0 and await tripped(http, b) == 0, "an inconclusive sample moved nothing"
        await session(http, b, healthy.token, AGENT_B)
        assert not fake.creates()

        # The fifth session of the cohort: a conclusive 100 % Failed, counted over both replicas.
        await until_final(http, a, await session(http, a, broken.token, AGENT_A), broken.token)
        finished = time.monotonic()
        await until_tripped(http, [a, b], 1.0)
        time_to_trip = time.monotonic() - finished
        for replica in (a, b):
            await session(http, replica, broken.token, AGENT_A)
        assert len(fake.creates()) == 2, "the tripped cohort's new sessions went to legacy on both replicas"
        for replica in (a, b):
            await session(http, replica, healthy.token, AGENT_B)
        assert len(fake.creates()) == 2, "the other cohort stays on the gateway"
        async with http.get(b.url + "/admin/rollout", headers=ADMIN) as resp:
            cohort = (await resp.json())["guardrails"]["cohorts"][COHORT]
        assert cohort["state"] == "tripped" and cohort["why"]["signal"] == "failed_lpu_ratio"
        assert cohort["why"]["sample"] == 5

        # Re-armed on B: both replicas follow, and the cohort is on the gateway again.
        async with http.post(f"{b.url}/admin/rollout/guardrails/{COHORT}/rearm", headers=ADMIN) as resp:
            assert resp.status == 200
        time_to_rearm = await until_tripped(http, [a, b], 0.0)
        for replica in (a, b):
            await session(http, replica, healthy.token, AGENT_A)
        assert len(fake.creates()) == 2
    tripped_on = [r.name for r in (a, b) if r.events("guardrail_tripped")]
    followed_on = [r.name for r in (a, b) if r.events("guardrail_followed")]
    assert len(tripped_on) == 1 and sorted(tripped_on + followed_on) == ["A", "B"], "one decided, one followed"
    print(f"\ntime to trip on both replicas {time_to_trip:.2f}s; re-armed on both in {time_to_rearm:.2f}s")
