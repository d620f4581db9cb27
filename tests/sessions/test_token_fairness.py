"""Per-token fairness (issue 11, row 3): one valid token looping creates cannot fill the store.
Its live sessions (for their TTL, reused ones included) and its create rate are bounded, it
never holds more than `limits.token_share` of `session.max_sessions`, and beyond that it gets
429 `4429` with a Retry-After after which a create is admitted. Other patients keep creating
and polling. Each test runs on the in-process store and on a real Redis; on Redis the counts
hold across replicas."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tests.support.gateway import TICKETS, bearer, create, patient, poll_until_final, sample

STANDARD_429 = {"code": 429, "message": "Too many requests, retry later", "message_code": "4429"}


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The [redis] section of the gateways under test: none, or a real redis-server."""
    if request.param == "memory":
        return {}
    return {"url": request.getfixturevalue("redis_server").url}


async def refused(client: Any, token: str) -> int:
    """Creates once and expects 429 in the standard shape; returns its Retry-After."""
    resp = await client.get(TICKETS, headers=bearer(token))
    assert resp.status == 429, await resp.text()
    assert await resp.json() == STANDARD_429
    return int(resp.headers["Retry-After"])


async def neighbours_served(client: Any, tokens: list[str], rounds: int) -> int:
    """Other patients creating and polling to the end, `rounds` times each; returns how many
    sessions they completed (any non-200 fails the test)."""
    done = 0
    for _ in range(rounds):
        for token in tokens:
            body, _ = await poll_until_final(client, await create(client, token))
            assert [lpu["state"] for lpu in body] == ["Complete"]
            done += 1
    return done


@pytest.mark.parametrize("reuse_window", [0, 30])
async def test_a_token_looping_creates_is_held_to_its_rate_while_others_create_and_poll(
    upstream: Any, gateway: Any, store: dict[str, Any], reuse_window: float
) -> None:
    attacker, *others = [patient(None) for _ in range(4)]
    _, url = await upstream(attacker, *others)
    rate, burst = 2.0, 5
    client = await gateway(
        url,
        session={"reuse_window": reuse_window},
        limits={"create_rate_per_token": rate, "create_burst_per_token": burst},
        redis=store,
    )

    async def loop() -> tuple[int, list[int]]:
        admitted, retry_afters = 0, []
        started = time.monotonic()
        for _ in range(300):  # bounded in count...
            if time.monotonic() - started > 3.0:  # ...and in time
                break
            resp = await client.get(TICKETS, headers=bearer(attacker.token))
            if resp.status == 200:
                admitted += 1
            else:
                assert resp.status == 429 and await resp.json() == STANDARD_429
                retry_afters.append(int(resp.headers["Retry-After"]))
        return admitted, retry_afters

    started = time.monotonic()
    (admitted, retry_afters), served = await asyncio.gather(
        loop(), neighbours_served(client, [p.token for p in others], 3)
    )
    elapsed = time.monotonic() - started
    assert served == 9, "other patients created and polled to the end throughout"
    assert retry_afters, "the looping token was refused"
    assert admitted <= burst + rate * elapsed + 1
    assert set(retry_afters) == {1}, "Retry-After: the seconds until one create refills (1 / rate, rounded up)"
    assert sample(client, "gateway_rejected_requests_total", limit="create_rate_per_token") == len(retry_afters)
    # A true Retry-After: a client that waits it is admitted (the wait is the client's pace). The
    # bucket refilled while the neighbours finished: spend it again first (bounded).
    for _ in range(burst + 10):
        resp = await client.get(TICKETS, headers=bearer(attacker.token))
        if resp.status == 429:
            break
    assert resp.status == 429
    await asyncio.sleep(int(resp.headers["Retry-After"]))
    await create(client, attacker.token)


@pytest.mark.parametrize("reuse_window", [0, 30])
async def test_a_tokens_live_sessions_are_capped_for_their_ttl_reused_ones_included(
    upstream: Any, gateway: Any, store: dict[str, Any], reuse_window: float
) -> None:
    p, other = patient(None), patient(None)
    _, url = await upstream(p, other)
    client = await gateway(
        url,
        session={"ttl": 3.0, "reuse_window": reuse_window},
        limits={"live_sessions_per_token": 2, "create_rate_per_token": 100.0, "create_burst_per_token": 100},
        redis=store,
    )
    first = await create(client, p.token)
    await poll_until_final(client, first)
    await create(client, p.token)
    if reuse_window:
        assert sample(client, "gateway_sessions_reused_total") == 1, "the second session shares the first's fan-out"
    created_at = time.monotonic()
    wait = await refused(client, p.token)
    assert 1 <= wait <= 3, "the seconds until the token's oldest session expires"
    assert sample(client, "gateway_rejected_requests_total", limit="live_sessions_per_token") == 1
    assert await neighbours_served(client, [other.token], 2) == 2
    await asyncio.sleep(max(0.0, wait - (time.monotonic() - created_at)))
    await create(client, p.token)  # the oldest expired: its place is free


async def test_a_token_never_holds_more_than_its_share_of_the_store(
    upstream: Any, gateway: Any, store: dict[str, Any]
) -> None:
    p, *others = [patient(None) for _ in range(3)]
    _, url = await upstream(p, *others)
    client = await gateway(
        url,
        session={"max_sessions": 20},
        limits={"token_share": 0.1, "live_sessions_per_token": 60, "create_burst_per_token": 100},
        redis=store,
    )
    await create(client, p.token)
    await create(client, p.token)
    await refused(client, p.token)  # 10 % of 20 sessions: 2
    assert await neighbours_served(client, [o.token for o in others], 2) == 4


async def test_on_redis_a_tokens_quota_holds_across_replicas(upstream: Any, gateway: Any, redis_server: Any) -> None:
    p, other = patient(None), patient(None)
    _, url = await upstream(p, other)
    limits = {"create_rate_per_token": 0.01, "create_burst_per_token": 4, "live_sessions_per_token": 3}
    replicas = [await gateway(url, limits=limits, redis={"url": redis_server.url}) for _ in range(2)]
    statuses = []
    for i in range(8):  # alternately on either replica
        resp = await replicas[i % 2].get(TICKETS, headers=bearer(p.token))
        statuses.append(resp.status)
    assert statuses == [200, 200, 200] + [429] * 5, "3 live sessions in all, not 3 per replica"
    limits_rate = {"create_rate_per_token": 0.01, "create_burst_per_token": 4, "live_sessions_per_token": 60}
    replicas = [await gateway(url, limits=limits_rate, redis={"url": redis_server.url}) for _ in range(2)]
    statuses = []
    for i in range(8):
        resp = await replicas[i % 2].get(TICKETS, headers=bearer(other.token))
        statuses.append(resp.status)
    assert statuses == [200] * 4 + [429] * 4, "a burst of 4 creates in all, not 4 per replica"
