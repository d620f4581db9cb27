"""Redis faults scoped to the call they hit (issue 11, row 4): a Redis at `maxmemory` with
`noeviction` refuses writes, which fails those writes (503 `store_full` on create, nothing
stored) and never marks the store down for the polls Redis can still answer; a slow read of one
big session is that poll's failure only; unsafe Redis settings are reported at start."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

from gateway.config import RedisConfig, SessionConfig
from gateway.observability.metrics import Metrics
from gateway.sandbox.data import LpuKnobs
from gateway.store.redis import RedisStore
from tests.support.faultnet import StallingProxy
from tests.support.gateway import LOG, TICKETS, bearer, create, patient, poll_until_final, sample
from tests.support.redis_server import RedisServer

FAST_PROBE = {"probe_interval": 0.1, "timeout": 0.3}


def at_maxmemory(server: RedisServer) -> None:
    """Sets maxmemory well below what Redis uses now: every write that needs memory is refused
    (OOM), as on a Redis that filled up, while reads and deletes go on."""
    with server.client() as r:
        r.config_set("maxmemory-policy", "noeviction")
        r.config_set("maxmemory", max(1, int(r.info("memory")["used_memory"]) // 2))


def memory_freed(server: RedisServer) -> None:
    with server.client() as r:
        r.config_set("maxmemory", 0)


def stored_sessions(server: RedisServer) -> int:
    with server.client() as r:
        return len(r.keys("vg:s:*"))


async def test_redis_at_maxmemory_refuses_creates_with_503_and_keeps_serving_polls(
    upstream: Any, gateway: Any, redis_server: RedisServer
) -> None:
    p, late, newcomer = patient(None, None), patient(LpuKnobs(delay=1.5)), patient(None)
    _, url = await upstream(p, late, newcomer)
    client = await gateway(url, session={"deadline": 3.0}, redis={"url": redis_server.url} | FAST_PROBE)
    done = await create(client, p.token)
    await poll_until_final(client, done)
    running = await create(client, late.token)  # its LPU answers after Redis is full

    with redis_server.client() as r:
        # An expired entry in the index: removing it is a write Redis allows when out of memory,
        # after which it would let the rest of a create script write too.
        r.zadd("vg:sessions", {"00000000-0000-0000-0000-00000000dead": 1})
    await asyncio.to_thread(at_maxmemory, redis_server)
    before = await asyncio.to_thread(stored_sessions, redis_server)
    for _ in range(5):
        resp = await client.get(TICKETS, headers=bearer(newcomer.token))
        assert resp.status == 503, await resp.text()
        assert (await resp.json())["message_code"] == "4503" and int(resp.headers["Retry-After"]) >= 1
    assert await asyncio.to_thread(stored_sessions, redis_server) == before, "a refused create stored nothing"

    # The sessions Redis holds are still served: 100 % of polls, not "store down".
    for _ in range(20):
        resp = await client.get(f"{TICKETS}/{done}", headers=bearer(p.token))
        assert resp.status == 200 and [e["state"] for e in await resp.json()] == ["Complete", "Complete"]
    # The running fan-out's result write is refused: that session alone ends Failed at its deadline.
    body, _ = await poll_until_final(client, running, bearer(late.token))
    assert [e["state"] for e in body] == ["Failed"]
    assert (await client.get("/readyz")).status == 200
    assert sample(client, "gateway_store_up") == 1
    assert sample(client, "gateway_store_state_changes_total", state="down") == 0
    assert sample(client, "gateway_store_refused_total", reason="oom") >= 5

    await asyncio.to_thread(memory_freed, redis_server)
    await poll_until_final(client, await create(client, newcomer.token))


async def test_a_slow_read_of_one_big_session_does_not_mark_the_store_down(
    upstream: Any, gateway: Any, redis_server: RedisServer
) -> None:
    p, other = patient(None), patient(None)
    _, url = await upstream(p, other)
    # The gateway reaches Redis through a proxy that holds any reply carrying the marker, which
    # only the big session below holds: its read outlasts redis.timeout by construction (the
    # proxy holds it; its size slows nothing), while Redis itself answers everyone else at once.
    marker = f"held-{uuid.uuid4().hex}".encode()
    proxy = StallingProxy("127.0.0.1", redis_server.port, marker)
    await proxy.start()
    try:
        # 0.15 s for every call; no in-process copy of finished sessions: every poll reads Redis.
        redis = {
            "url": f"redis://127.0.0.1:{proxy.port}/0",
            "timeout": 0.15,
            "probe_interval": 0.1,
            "finished_cache_sessions": 0,
        }
        client = await gateway(url, redis=redis)
        big = await create(client, p.token)
        await poll_until_final(client, big)
        small = await create(client, other.token)
        await poll_until_final(client, small)
        visits = [marker.decode() + "x" * 2**16]
        with redis_server.client() as r:
            r.hset(f"vg:s:{big}", "r0", json.dumps({"lpu": {}, "state": "Complete", "visits": visits}))
        for _ in range(2):
            resp = await client.get(f"{TICKETS}/{big}", headers=bearer(p.token))
            assert resp.status == 503, "the big read timed out"
            await resp.read()
            for _ in range(3):
                resp = await client.get(f"{TICKETS}/{small}", headers=bearer(other.token))
                assert resp.status == 200, "a neighbour's poll right after it is served"
                await resp.read()
        assert proxy.stalled == 2, "each 503 was the held read, not another failure"
        assert sample(client, "gateway_store_state_changes_total", state="down") == 0
        assert sample(client, "gateway_store_up") == 1
    finally:
        await proxy.close()


async def test_unsafe_redis_settings_are_reported_at_start(tmp_path: Any) -> None:
    evicting = RedisServer(tmp_path, "--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru")
    evicting.start()
    try:
        mark = len(LOG.getvalue())
        metrics = Metrics()
        store = RedisStore(RedisConfig(url=evicting.url), SessionConfig(), metrics)
        await store.start()
        try:
            [problem] = await store.check_settings()
            assert "maxmemory-policy is allkeys-lru" in problem
            # The same, as the number the GatewayRedisSettingsUnsafe alert watches.
            assert metrics.registry.get_sample_value("gateway_redis_settings_unsafe") == 1
            warnings = [
                json.loads(line) for line in LOG.getvalue()[mark:].splitlines() if "redis_setting_unsafe" in line
            ]
            assert warnings and "allkeys-lru" in warnings[0]["problem"]
            with evicting.client() as r:
                r.config_set("maxmemory-policy", "noeviction")
            assert await store.check_settings() == []
            assert metrics.registry.get_sample_value("gateway_redis_settings_unsafe") == 0
            with evicting.client() as r:
                r.config_set("maxmemory", 0)
            [problem] = await store.check_settings()
            assert "maxmemory is 0" in problem
        finally:
            await store.close()
    finally:
        evicting.stop()
