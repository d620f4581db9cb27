"""The reuse window: creates of one token within it share one fan-out (gateway/sessions/reuse.py)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from gateway.http import keys
from gateway.sandbox.data import LpuKnobs
from tests.support.gateway import TICKETS, bearer, create, patient, poll_until_final


def one_fanout(lpus: int) -> int:
    return 1 + 3 * lpus


async def test_creates_within_the_window_share_one_fanout(upstream: Any, gateway: Any) -> None:
    p = patient(None, None, LpuKnobs(delay=0.1))
    sandbox, url = await upstream(p)
    client = await gateway(url, session={"reuse_window": 60})
    first = await create(client, p.token)
    first_body, _ = await poll_until_final(client, first)
    second = await create(client, p.token)
    third = await create(client, p.token)
    assert len({first, second, third}) == 3, "every create gets its own GUID"
    for guid in (second, third):
        body, _ = await poll_until_final(client, guid)
        assert body == first_body
    assert sandbox.count() == one_fanout(3)
    assert sandbox.count("mkab") == 1


async def test_a_create_during_the_fanout_receives_its_results(upstream: Any, gateway: Any) -> None:
    p = patient(None, LpuKnobs(delay=0.4), LpuKnobs(delay=0.8))
    sandbox, url = await upstream(p)
    client = await gateway(url, session={"reuse_window": 60})
    first = await create(client, p.token)
    await sandbox.wait_calls(one_fanout(3))
    second = await create(client, p.token)
    resp = await client.get(f"{TICKETS}/{second}", headers=bearer(p.token))
    assert [e["state"] for e in await resp.json()][1:] == ["InProgress", "InProgress"]
    second_body, seen = await poll_until_final(client, second)
    first_body, _ = await poll_until_final(client, first)
    assert second_body == first_body
    assert [e["state"] for e in second_body] == ["Complete"] * 3
    assert len(seen) > 1, "the shared session was read while its fan-out was still running"
    assert sandbox.count() == one_fanout(3)


async def test_creates_during_the_first_ones_lpu_list_call_share_its_fanout(upstream: Any, gateway: Any) -> None:
    # An app that opens its screen twice within one MKAB call: the second create waits for the
    # first one's list instead of fetching its own.
    p = patient(None, LpuKnobs(delay=0.1))
    p.mkab_delay = 0.3
    sandbox, url = await upstream(p)
    client = await gateway(url, session={"reuse_window": 60})
    guids = await asyncio.gather(*(create(client, p.token) for _ in range(3)))
    assert len(set(guids)) == 3, "every create gets its own GUID"
    bodies = [(await poll_until_final(client, guid))[0] for guid in guids]
    assert bodies[0] == bodies[1] == bodies[2]
    assert [e["state"] for e in bodies[0]] == ["Complete", "Complete"]
    assert sandbox.count("mkab") == 1
    assert sandbox.count() == one_fanout(2)


async def test_a_failed_lpu_list_leaves_the_waiting_creates_to_fetch_on_their_own(upstream: Any, gateway: Any) -> None:
    p = patient(None)
    p.mkab_delay, p.mkab_status = 0.3, 503
    sandbox, url = await upstream(p)
    client = await gateway(url, session={"reuse_window": 60}, upstream={"retries": 0})
    statuses = [
        (await resp.read(), resp.status)[1]
        for resp in await asyncio.gather(*(client.get(TICKETS, headers=bearer(p.token)) for _ in range(2)))
    ]
    assert statuses == [502, 502]
    assert sandbox.count("mkab") == 2, "the waiting create made its own call once the first had failed"


async def test_window_off_fetches_for_every_create(upstream: Any, gateway: Any) -> None:
    p = patient(None, None)
    sandbox, url = await upstream(p)
    client = await gateway(url)  # reuse_window defaults to 0
    for _ in range(3):
        await poll_until_final(client, await create(client, p.token))
    assert sandbox.count() == 3 * one_fanout(2)


async def test_tokens_never_share(upstream: Any, gateway: Any) -> None:
    a, b = patient(None), patient(None)
    sandbox, url = await upstream(a, b)
    client = await gateway(url, session={"reuse_window": 60})
    guid_a = await create(client, a.token)
    guid_b = await create(client, b.token)
    await poll_until_final(client, guid_a)
    await poll_until_final(client, guid_b)
    assert sandbox.count("mkab") == 2
    # A shared session is bound to its own token like any other.
    shared = await create(client, a.token)
    resp = await client.get(f"{TICKETS}/{shared}", headers=bearer(b.token))
    assert resp.status == 404


async def test_a_failed_lpu_forces_a_fresh_fetch(upstream: Any, gateway: Any) -> None:
    p = patient(None, LpuKnobs(fault="status", status=500))
    sandbox, url = await upstream(p)
    client = await gateway(url, session={"reuse_window": 60}, upstream={"retries": 0})
    body, _ = await poll_until_final(client, await create(client, p.token))
    assert [e["state"] for e in body] == ["Complete", "Failed"]
    body, _ = await poll_until_final(client, await create(client, p.token))
    assert sandbox.count("mkab") == 2, "the second open fetched again instead of sharing a failure"
    assert sandbox.count() == 2 * one_fanout(2)


# An app opening the screen every 50 ms is far above the per-token create rate (a test's pace).
OPEN_OFTEN = {"create_rate_per_token": 100.0, "create_burst_per_token": 100}


async def opens_until_fetched_again(client: Any, sandbox: Any, token: str) -> int:
    """Opens the screen every 50 ms until a create calls the upstream again; returns how many
    opens that took."""
    opens = 0
    async with asyncio.timeout(10):
        while sandbox.count("mkab") == 1:
            await create(client, token)
            opens += 1
            await asyncio.sleep(0.05)  # the app's pace, not a wait for the gateway
    return opens


async def test_the_window_expires(upstream: Any, gateway: Any) -> None:
    window = 0.5
    p = patient(None)
    sandbox, url = await upstream(p)
    client = await gateway(url, session={"reuse_window": window}, limits=OPEN_OFTEN)
    started = time.monotonic()
    await poll_until_final(client, await create(client, p.token))
    opens = await opens_until_fetched_again(client, sandbox, p.token)
    assert time.monotonic() - started >= window
    assert opens > 2, "creates within the window were shared"
    await sandbox.wait_calls(2 * one_fanout(1))


async def test_an_expired_shared_session_forces_a_fresh_fetch(upstream: Any, gateway: Any) -> None:
    p = patient(None)
    sandbox, url = await upstream(p)
    client = await gateway(url, session={"reuse_window": 60, "ttl": 0.5}, limits=OPEN_OFTEN)
    first = await create(client, p.token)
    await poll_until_final(client, first)
    await opens_until_fetched_again(client, sandbox, p.token)
    assert (await client.get(f"{TICKETS}/{first}")).status == 404, "fetched again only once the first expired"


async def test_reused_sessions_are_counted(upstream: Any, gateway: Any) -> None:
    p = patient(None)
    _, url = await upstream(p)
    client = await gateway(url, session={"reuse_window": 60})
    await poll_until_final(client, await create(client, p.token))
    await create(client, p.token)
    await create(client, p.token)
    registry = client.server.app[keys.METRICS].registry
    assert registry.get_sample_value("gateway_sessions_reused_total") == 2
    assert registry.get_sample_value("gateway_sessions_created_total") == 3


async def test_on_redis_a_shared_session_is_not_taken_over_while_its_fanout_runs(
    upstream: Any, gateway: Any, redis_server: Any
) -> None:
    # The LPU answers after several lease periods: a sharer whose lease were not renewed would
    # read as orphaned, and a poll with its token would fetch its LPUs again.
    p = patient(LpuKnobs(delay=1.2), None)
    sandbox, url = await upstream(p)
    client = await gateway(url, session={"reuse_window": 60}, redis={"url": redis_server.url, "lease_ttl": 0.3})
    first = await create(client, p.token)
    await sandbox.wait_calls(one_fanout(2))
    second = await create(client, p.token)
    second_body, seen = await poll_until_final(client, second, headers=bearer(p.token))
    assert len(seen) > 5, "polled across several lease periods"
    first_body, _ = await poll_until_final(client, first, headers=bearer(p.token))
    assert second_body == first_body
    assert [e["state"] for e in second_body] == ["Complete", "Complete"]
    assert sandbox.count() == one_fanout(2)
    registry = client.server.app[keys.METRICS].registry
    assert not registry.get_sample_value("gateway_session_takeovers_total", {"result": "rerun"})
