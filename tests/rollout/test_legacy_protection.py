"""Protecting the one-replica legacy service and the poll limit (issue 11, row 13): polls of GUIDs
the gateway does not hold are forwarded within an allowance of guesses (GUIDs legacy does not
know either) per client address and in total (429 beyond, in the standard shape), and on Redis
the per-session poll limit holds across replicas."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import aiohttp
import pytest

from gateway.sandbox.data import LpuKnobs
from tests.support.fake_legacy import start_legacy
from tests.support.gateway import TICKETS, bearer, create, patient, poll_until_final, sample
from tests.support.netutil import get_from

STANDARD_429 = {"code": 429, "message": "Too many requests, retry later", "message_code": "4429"}


async def poll_from(base: str, guid: str, local: str = "127.0.0.1", token: str | None = None) -> tuple[int, Any, Any]:
    """GET the poll path from the loopback address `local`: (status, body, Retry-After)."""
    return await get_from(local, f"{base}{TICKETS}/{guid}", bearer(token) if token else None)


async def test_guessed_guids_reach_legacy_only_within_the_clients_allowance(
    aiohttp_server: Any, upstream: Any, gateway: Any
) -> None:
    p = patient(None)
    _, url = await upstream(p)
    fake, legacy_url = await start_legacy(aiohttp_server)
    existing = fake.existing(p.token)
    rate, burst = 5.0, 10
    rollout = {"legacy_url": legacy_url, "legacy_guess_rate_per_client": rate, "legacy_guess_burst_per_client": burst}
    client = await gateway(url, rollout=rollout)
    base = str(client.make_url("")).rstrip("/")
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.1", 0))
    statuses: list[int] = []
    started = time.monotonic()
    async with aiohttp.ClientSession(connector=connector) as http:
        for _ in range(500):  # bounded in count and in time
            if time.monotonic() - started > 3.0:
                break
            async with http.get(f"{base}{TICKETS}/{uuid.uuid4()}") as resp:
                statuses.append(resp.status)
                if resp.status == 429:
                    assert await resp.json() == STANDARD_429 and int(resp.headers["Retry-After"]) >= 1
    elapsed = time.monotonic() - started
    forwarded = len(fake.polls())
    assert statuses.count(404) == forwarded, "every forwarded guess got legacy's 404"
    assert forwarded <= burst + rate * elapsed + 1, f"{forwarded} guesses reached legacy in {elapsed:.1f}s"
    assert statuses.count(429) == len(statuses) - forwarded > 0
    assert sample(client, "gateway_rejected_requests_total", limit="legacy_guesses_per_client") == statuses.count(429)
    # Another client polling its real legacy session meanwhile is served.
    status, body, _ = await poll_from(base, existing, local="127.0.0.2", token=p.token)
    assert status == 200 and body


async def test_polls_of_a_real_legacy_session_spend_no_guesses(
    aiohttp_server: Any, upstream: Any, gateway: Any
) -> None:
    """Clients behind one address (a NAT, the load balancer) polling their legacy sessions are
    not limited by each other: only polls legacy answers 404 count as guesses."""
    p = patient(None)
    _, url = await upstream(p)
    fake, legacy_url = await start_legacy(aiohttp_server)
    existing = [fake.existing(p.token) for _ in range(3)]
    rollout = {"legacy_url": legacy_url, "legacy_guess_burst_per_client": 2, "legacy_guess_burst": 2}
    client = await gateway(url, rollout=rollout)
    for _ in range(20):  # 60 polls of real legacy sessions from one address, far above the guess burst
        for guid in existing:
            resp = await client.get(f"{TICKETS}/{guid}", headers=bearer(p.token))
            assert resp.status == 200
    assert len(fake.polls()) == 60
    for expected in (404, 404, 429):  # two guesses, then none reach legacy
        resp = await client.get(f"{TICKETS}/{uuid.uuid4()}")
        assert resp.status == expected
    assert len(fake.polls()) == 62


async def test_guessed_guids_reach_legacy_only_within_the_total_allowance(
    aiohttp_server: Any, upstream: Any, gateway: Any
) -> None:
    _, url = await upstream()
    fake, legacy_url = await start_legacy(aiohttp_server)
    rollout = {"legacy_url": legacy_url, "legacy_guess_rate": 0.1, "legacy_guess_burst": 8}
    client = await gateway(url, rollout=rollout)
    base = str(client.make_url("")).rstrip("/")
    statuses = [(await poll_from(base, str(uuid.uuid4()), local=f"127.0.0.{10 + i}"))[0] for i in range(20)]
    assert statuses == [404] * 8 + [429] * 12, "20 addresses, 8 guesses forwarded in all"
    assert len(fake.polls()) == 8
    assert sample(client, "gateway_rejected_requests_total", limit="legacy_guesses") == 12


@pytest.mark.parametrize("finished", [False, True], ids=["running", "finished-no-copy"])
async def test_on_redis_the_poll_limit_of_a_session_holds_across_replicas(
    upstream: Any, gateway: Any, redis_server: Any, finished: bool
) -> None:
    """A running session's polls all reach Redis. A finished one's are answered from each
    replica's in-process copy when `redis.finished_cache_sessions` keeps one, and limited by that
    replica's own bucket (they cost neither Redis nor the upstream); without a copy, by Redis."""
    p, other = patient(None if finished else LpuKnobs(delay=8.0)), patient(None)
    _, url = await upstream(p, other)
    rate, burst = 5.0, 5
    limits = {"poll_rate": rate, "poll_burst": burst}
    redis = {"url": redis_server.url} | ({"finished_cache_sessions": 0} if finished else {})
    replicas = [await gateway(url, limits=limits, redis=redis) for _ in range(2)]
    guid = await create(replicas[0], p.token)
    if finished:
        await poll_until_final(replicas[0], guid, bearer(p.token))
    # Another token's polls (404) and polls of other sessions spend nothing of this session's.
    for replica in replicas:
        resp = await replica.get(f"{TICKETS}/{guid}", headers=bearer(other.token))
        assert resp.status == 404
    served, refused, retry_afters = 0, 0, set()
    started = time.monotonic()
    for i in range(200):  # bounded in count and in time, alternately on either replica
        if time.monotonic() - started > 2.5:
            break
        resp = await replicas[i % 2].get(f"{TICKETS}/{guid}", headers=bearer(p.token))
        await resp.read()
        if resp.status == 200:
            served += 1
        else:
            assert resp.status == 429 and await resp.json() == STANDARD_429
            refused += 1
            retry_afters.add(resp.headers["Retry-After"])
    elapsed = time.monotonic() - started
    # One bucket for the session, whichever replica serves: not one per replica.
    assert served <= burst + rate * elapsed + 1, f"{served} polls served in {elapsed:.1f}s on two replicas"
    assert refused > 0 and retry_afters == {"1"}
    assert sum(sample(r, "gateway_rejected_requests_total", limit="poll_rate") for r in replicas) == refused
    await asyncio.sleep(1)  # the client obeys Retry-After: 1 (1 / rate rounded up)
    resp = await replicas[1].get(f"{TICKETS}/{guid}", headers=bearer(p.token))
    assert resp.status == 200
