"""Finished sessions on the Redis store are answered from the replica's own copy: no Redis round
trip, the token binding still checked, in-progress sessions always read from Redis, and a copy
never outlives its session or a Redis outage."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from gateway.observability.metrics import Metrics
from gateway.sandbox.data import LpuKnobs
from gateway.store.finished import FinishedCache
from gateway.store.memory import MemoryStore
from gateway.store.session import Session, failed_entry
from tests.support.gateway import TICKETS, bearer, create, new_token, patient, poll_until_final, sample


async def test_a_finished_session_is_polled_without_redis_and_keeps_its_token_binding(
    upstream: Any, gateway: Any, redis_server: Any
) -> None:
    p = patient(None, None)
    _, url = await upstream(p)
    client = await gateway(url, redis={"url": redis_server.url})
    guid = await create(client, p.token)
    body, _ = await poll_until_final(client, guid, bearer(p.token))
    hits = sample(client, "gateway_store_finished_cache_hits_total")
    redis_calls = redis_server.client().info("commandstats")
    for _ in range(5):
        resp = await client.get(f"{TICKETS}/{guid}", headers=bearer(p.token))
        assert resp.status == 200 and await resp.json() == body
    assert sample(client, "gateway_store_finished_cache_hits_total") == hits + 5
    after = redis_server.client().info("commandstats")
    assert after.get("cmdstat_hgetall", {}).get("calls") == redis_calls.get("cmdstat_hgetall", {}).get("calls")
    # Another patient's token is refused on the copy exactly as on Redis.
    resp = await client.get(f"{TICKETS}/{guid}", headers=bearer(new_token()))
    assert resp.status == 404 and (await resp.json())["message_code"] == "4404"


async def test_an_in_progress_session_is_read_from_redis_until_it_is_final(
    upstream: Any, gateway: Any, redis_server: Any
) -> None:
    p = patient(None, LpuKnobs(delay=0.5))
    _, url = await upstream(p)
    client = await gateway(url, redis={"url": redis_server.url})
    guid = await create(client, p.token)
    _, seen = await poll_until_final(client, guid, bearer(p.token))
    assert ["Complete", "InProgress"] in seen, "the poll before the slow LPU finished saw it in progress"
    assert seen[-1] == ["Complete", "Complete"]


async def test_no_copy_is_served_while_redis_is_down(upstream: Any, gateway: Any, redis_server: Any) -> None:
    p = patient(None)
    _, url = await upstream(p)
    client = await gateway(url, redis={"url": redis_server.url, "probe_interval": 0.1, "timeout": 0.3})
    guid = await create(client, p.token)
    await poll_until_final(client, guid, bearer(p.token))
    await asyncio.to_thread(redis_server.stop)
    try:
        # The first poll that reaches Redis (a GUID without a copy) finds it gone; from then on
        # the copy is not served either, as no other replica could serve it.
        resp = await client.get(f"{TICKETS}/{uuid.uuid4()}", headers=bearer(p.token))
        assert resp.status == 503
        resp = await client.get(f"{TICKETS}/{guid}", headers=bearer(p.token))
        assert resp.status == 503 and (await resp.json())["message_code"] == "4513"
    finally:
        await asyncio.to_thread(redis_server.start)


def _session(guid: str, created_at: float, finished: bool) -> Session:
    lpu = b'{"guid":"l","name":"x"}'
    results = {0: failed_entry(lpu)} if finished else {}
    return Session(guid, "h", created_at, created_at + 20, (lpu,), ("l",), results=results)


async def test_copies_are_bounded_and_end_with_their_session() -> None:
    now = [1000.0]
    inner = MemoryStore(100, 600.0, Metrics())
    cache = FinishedCache(inner, max_sessions=2, ttl=60.0, clock=lambda: now[0])
    for i in range(3):
        await inner.create(_session(f"s{i}", now[0], finished=True))
        assert await cache.load(f"s{i}") is not None
    await inner.create(_session("running", now[0], finished=False))
    await cache.load("running")
    assert len(cache) == 2, "at most max_sessions copies; an unfinished session is never copied"
    now[0] += 61.0  # past every session's ttl: the copies are gone with them
    assert len(cache) == 0
