"""A gateway on Redis: outages and slowness answer 503 at once and heal by themselves; sessions
leave Redis at their TTL; a replica shutting down hands its sessions over at once."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from collections.abc import Awaitable
from typing import Any

from aiohttp.test_utils import TestClient

from gateway.http import keys
from gateway.sandbox.data import LpuKnobs
from tests.support.gateway import LOG, TICKETS, bearer, create, patient, poll_until_final, sample, wait_until

FAST_PROBE = {"probe_interval": 0.1, "timeout": 0.3}


async def status_of(client: TestClient, path: str, token: str | None = None) -> int:
    resp = await client.get(path, headers=bearer(token) if token else None)
    await resp.read()
    return resp.status


def events_since(mark: int, name: str) -> list[dict[str, Any]]:
    lines = LOG.getvalue()[mark:].splitlines()
    return [r for r in map(json.loads, filter(None, lines)) if r.get("event") == name]


async def assert_unavailable_at_once(client: TestClient, path: str, token: str) -> None:
    started = time.monotonic()
    resp = await client.get(path, headers=bearer(token))
    took = time.monotonic() - started
    assert resp.status == 503 and resp.headers["Retry-After"] == "1"
    assert await resp.json() == {"code": 503, "message": "Service temporarily unavailable", "message_code": "4513"}
    assert took < 1.0, f"{path} took {took:.2f}s to refuse"


async def test_redis_down_answers_503_at_once_and_service_resumes_when_it_is_back(
    upstream: Any, gateway: Any, redis_server: Any
) -> None:
    mark = len(LOG.getvalue())
    p, slow = patient(None), patient(LpuKnobs(delay=0.5))
    sandbox, url = await upstream(p, slow)
    client = await gateway(url, redis={"url": redis_server.url} | FAST_PROBE)
    done = await create(client, p.token)
    await poll_until_final(client, done)
    in_flight = await create(client, slow.token)
    await sandbox.wait_calls(2 + 3 + 3)

    await asyncio.to_thread(redis_server.stop)
    await wait_until(lambda: _is(status_of(client, "/readyz"), 503))
    mkab_calls = sandbox.count("mkab")
    await assert_unavailable_at_once(client, TICKETS, p.token)
    assert sandbox.count("mkab") == mkab_calls, "no upstream call for a session that cannot be kept"
    await assert_unavailable_at_once(client, f"{TICKETS}/{done}", p.token)
    # The fan-out that was running when Redis went away keeps retrying its result write (until
    # the session's deadline)...
    await wait_until(lambda: sample(client, "gateway_store_write_retries_total") > 0)
    assert client.app[keys.SESSIONS].fanout.running == 1
    assert sample(client, "gateway_store_up") == 0

    await asyncio.to_thread(redis_server.start)  # empty: Redis keeps no data across restarts here
    await wait_until(lambda: _is(status_of(client, "/readyz"), 200))
    # ...and ends once the store answers that the session is gone.
    await wait_until(lambda: _true(client.app[keys.SESSIONS].fanout.running == 0))
    body, _ = await poll_until_final(client, await create(client, p.token), bearer(p.token))
    assert [e["state"] for e in body] == ["Complete"]
    assert await status_of(client, f"{TICKETS}/{in_flight}", slow.token) == 404, "sessions did not survive Redis"
    assert sample(client, "gateway_store_up") == 1
    assert sample(client, "gateway_store_state_changes_total", state="down") == 1
    assert sample(client, "gateway_store_state_changes_total", state="up") == 1
    assert len(events_since(mark, "store_unreachable")) == 1 and len(events_since(mark, "store_reachable")) == 1


async def test_a_gateway_started_before_redis_serves_once_redis_is_up(
    upstream: Any, gateway: Any, redis_server: Any
) -> None:
    p = patient(None)
    _, url = await upstream(p)
    await asyncio.to_thread(redis_server.stop)
    client = await gateway(url, redis={"url": redis_server.url} | FAST_PROBE)
    assert await status_of(client, "/readyz") == 503
    await assert_unavailable_at_once(client, TICKETS, p.token)
    await asyncio.to_thread(redis_server.start)
    await wait_until(lambda: _is(status_of(client, "/readyz"), 200))
    body, _ = await poll_until_final(client, await create(client, p.token), bearer(p.token))
    assert [e["state"] for e in body] == ["Complete"]


async def test_redis_hanging_answers_503_within_the_timeout_then_at_once(
    upstream: Any, gateway: Any, redis_server: Any
) -> None:
    p = patient(None)
    _, url = await upstream(p)
    client = await gateway(url, redis={"url": redis_server.url} | FAST_PROBE)
    guid = await create(client, p.token)
    await poll_until_final(client, guid)
    redis_server.proc.send_signal(signal.SIGSTOP)  # accepts connections, answers nothing
    try:
        started = time.monotonic()
        # A GUID this replica holds no copy of: the poll asks Redis.
        assert await status_of(client, f"{TICKETS}/{uuid.uuid4()}", p.token) == 503
        assert time.monotonic() - started < 1.0, "the first call waits at most redis.timeout"
        await assert_unavailable_at_once(client, f"{TICKETS}/{guid}", p.token)
        await assert_unavailable_at_once(client, TICKETS, p.token)
        assert await status_of(client, "/readyz") == 503
    finally:
        redis_server.proc.send_signal(signal.SIGCONT)
    await wait_until(lambda: _is(status_of(client, "/readyz"), 200))
    body, _ = await poll_until_final(client, guid, bearer(p.token))
    assert [e["state"] for e in body] == ["Complete"], "the session outlived the stall"


PAUSE = 3.0


async def test_results_that_arrive_during_a_redis_pause_are_written_once_it_is_back(
    upstream: Any, gateway: Any, redis_server: Any
) -> None:
    """Row 10 of issue 11: Redis pauses for 3 s while the upstream answers; sessions polled
    without a token (no takeover can re-run them) must still end Complete."""
    patients = [patient(LpuKnobs(delay=0.5), LpuKnobs(delay=0.8)) for _ in range(5)]
    sandbox, url = await upstream(*patients)
    client = await gateway(url, redis={"url": redis_server.url} | FAST_PROBE, session={"deadline": 12.0})
    guids = [await create(client, p.token) for p in patients]
    loop = asyncio.get_running_loop()
    redis_server.proc.send_signal(signal.SIGSTOP)
    paused = loop.time()
    try:
        # Every answer arrives while Redis is paused, and its write is refused and retried.
        await sandbox.wait_calls(5 + 5 * 2 * 3, within=PAUSE)
        await wait_until(lambda: sample(client, "gateway_store_write_retries_total") >= 10, within=PAUSE)
        assert all([await status_of(client, f"{TICKETS}/{g}") == 503 for g in guids]), "polls while paused"
        await asyncio.sleep(max(0.0, paused + PAUSE - loop.time()))  # the fault's length: the workload
    finally:
        redis_server.proc.send_signal(signal.SIGCONT)
    await wait_until(lambda: _is(status_of(client, "/readyz"), 200))
    for guid in guids:
        body, _ = await poll_until_final(client, guid)  # without a token, as old apps poll
        assert [e["state"] for e in body] == ["Complete", "Complete"]
        assert all(e["visits"] for e in body)
    assert sample(client, "gateway_lpu_outcomes_total", outcome="failed", reason="deadline") == 0


async def test_sessions_leave_redis_at_their_ttl(upstream: Any, gateway: Any, redis_server: Any) -> None:
    p = patient(None, None)
    _, url = await upstream(p)
    client = await gateway(url, session={"ttl": 1.0}, redis={"url": redis_server.url, "lease_ttl": 0.3})
    guid = await create(client, p.token)
    await poll_until_final(client, guid)
    with redis_server.client() as r:
        assert r.exists(f"vg:s:{guid}") and r.zscore("vg:sessions", guid)
        # Nothing of the session is left; the migration ledger (vg:mig:*) is meant to stay.
        await wait_until(
            lambda: asyncio.to_thread(lambda: not [k for k in r.keys("*") if not k.startswith(b"vg:mig:")])
        )
    assert await status_of(client, f"{TICKETS}/{guid}", p.token) == 404


async def test_a_replica_shutting_down_hands_its_sessions_over_at_once(
    upstream: Any, gateway: Any, redis_server: Any
) -> None:
    p = patient(None, LpuKnobs(delay=1.0))
    sandbox, url = await upstream(p)
    # A long lease: only the release at shutdown can make the takeover this quick.
    shared = {"url": redis_server.url, "lease_ttl": 30.0}
    leaving, staying = [await gateway(url, redis=shared, session={"deadline": 10.0}) for _ in range(2)]
    guid = await create(leaving, p.token)
    await sandbox.wait_calls(1 + 3 * 2)
    await leaving.close()  # SIGTERM's path: in-flight requests answered, fan-outs cancelled
    body, _ = await poll_until_final(staying, guid, bearer(p.token), limit=8.0)
    assert [e["state"] for e in body] == ["Complete", "Complete"]
    assert sample(staying, "gateway_session_takeovers_total", result="rerun") == 1


async def test_a_sentinel_failover_is_followed_without_a_restart(
    upstream: Any, gateway: Any, redis_sentinel: Any
) -> None:
    p = patient(None, None)
    _, url = await upstream(p)
    client = await gateway(url, redis={"url": redis_sentinel.url} | FAST_PROBE)
    guid = await create(client, p.token)
    before, _ = await poll_until_final(client, guid, bearer(p.token))
    assert redis_sentinel.primary_port() == redis_sentinel.primary.port
    with redis_sentinel.replica.client() as replica:  # replication is asynchronous: let it arrive
        await wait_until(lambda: asyncio.to_thread(replica.exists, f"vg:s:{guid}"))

    await asyncio.to_thread(redis_sentinel.primary.stop)
    await wait_until(lambda: _is(status_of(client, "/readyz"), 503))
    await wait_until(lambda: _is(asyncio.to_thread(redis_sentinel.primary_port), redis_sentinel.replica.port), 30)
    await wait_until(lambda: _is(status_of(client, "/readyz"), 200), 30)
    after, _ = await poll_until_final(client, guid, bearer(p.token))
    assert after == before, "a session that reached the replica is still served by it as the new primary"
    body, _ = await poll_until_final(client, await create(client, p.token), bearer(p.token))
    assert [e["state"] for e in body] == ["Complete", "Complete"]


async def _is(value: Awaitable[Any], expected: Any) -> bool:
    return await value == expected


async def _true(value: bool) -> bool:
    return value
