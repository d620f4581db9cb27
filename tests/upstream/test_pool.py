"""Issue 11, row 6: the upstream connection pool is shared fairly. The wait for a connection is
bounded apart from the call, one session's calls in flight are capped, an MKAB list's length is
capped, and the default pool takes an ordinary burst without anyone waiting."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from gateway.contract import LPU_FAILURE_REASONS
from gateway.sandbox.app import Sandbox
from gateway.sandbox.data import LpuKnobs, SandboxPatient, demo_lpu
from tests.support.burst_upstream import burst_upstream
from tests.support.gate import UpstreamGate
from tests.support.gateway import TICKETS, bearer, create, new_token, patient, poll_until_final, sample, wait_until


async def test_a_call_that_gets_no_connection_fails_fast_with_its_own_reason(gateway: Any) -> None:
    # Three connections: the first LPU's three calls take them all, held at the gate until the
    # test says; the second LPU's calls find none. They must fail after pool_wait (0.3 s), while
    # the first LPU still waits: not after the call timeout, which is out of reach here.
    p = patient(None, None)
    gate = UpstreamGate([p.lpus[0].info["guid"]])
    async with burst_upstream(Sandbox([p]), gate=gate) as url:
        client = await gateway(
            url, upstream={"max_connections": 3, "pool_wait": 0.3, "call_timeout": 60.0}, session={"deadline": 120.0}
        )
        guid = await create(client, p.token)
        await wait_until(
            lambda: sample(client, "gateway_lpu_outcomes_total", outcome="failed", reason="pool_wait") == 1,
            within=30,
            what="the second LPU failed for want of a connection",
        )
        assert gate.waiting[p.lpus[0].info["guid"]] == 3, "the first LPU's calls are still held"
        resp = await client.get(f"{TICKETS}/{guid}")
        assert [e["state"] for e in await resp.json()] == ["InProgress", "Failed"]
        gate.open_all()
        body, _ = await poll_until_final(client, guid, limit=60)
    assert [e["state"] for e in body] == ["Complete", "Failed"]
    assert sample(client, "gateway_lpu_outcomes_total", outcome="failed", reason="pool_wait") == 1
    assert sample(client, "gateway_rejected_requests_total", limit="upstream_pool") >= 1
    assert sample(client, "gateway_upstream_pool_waits_total") >= 1
    # Nothing counted against the LPU's circuit: waiting for our own pool says nothing about it.
    assert sample(client, "gateway_upstream_circuit_open_total") == 0


def many_lpus(count: int, first: int, knobs: LpuKnobs | None = None) -> SandboxPatient:
    return SandboxPatient(new_token(), [demo_lpu(first + i, knobs) for i in range(count)])


@pytest.mark.parametrize("per_session", [5])
async def test_a_victim_completes_beside_five_sessions_of_many_lpus(
    per_session: int, upstream: Any, gateway: Any
) -> None:
    """Scaled down from 5 × 1,000 LPUs against 256 connections: 5 × 200 LPUs (3,000 calls)
    against 30, each session capped at `per_session` calls in flight."""
    hogs = [many_lpus(200, 1000 * (n + 1), LpuKnobs(delay=0.3)) for n in range(5)]
    victim = many_lpus(3, 1)
    sandbox, url = await upstream(*hogs, victim)
    client = await gateway(
        url,
        upstream={"max_connections": 30, "pool_wait": 1.0, "call_timeout": 3.0},
        session={"deadline": 8.0, "max_lpus": 1000},
        limits={"upstream_per_session": per_session},
    )
    await asyncio.gather(*(create(client, h.token) for h in hogs))
    await wait_until(lambda: sum(sandbox.in_flight.values()) >= 5 * per_session, what="the hogs' calls in flight")
    started = time.monotonic()
    body, _ = await poll_until_final(client, await create(client, victim.token), bearer(victim.token))
    took = time.monotonic() - started
    print(f"\nvictim beside 5 × 200 LPUs: {[e['state'] for e in body]} in {took:.2f}s")
    assert [e["state"] for e in body] == ["Complete"] * 3
    # Not slowed by the hogs, counted rather than timed: no call (the victim's or a hog's)
    # ever waited for a pooled connection. Without the per-session cap the hogs' 3,000 calls
    # take all 30 connections and every later call queues behind them.
    assert sample(client, "gateway_upstream_pool_waits_total") == 0, f"the victim took {took:.2f}s"
    assert sum(sandbox.in_flight.values()) <= 5 * per_session


def failures(client: Any) -> dict[str, float]:
    """The gateway's failed-LPU counts, by reason (those not 0)."""
    counts = {r: sample(client, "gateway_lpu_outcomes_total", outcome="failed", reason=r) for r in LPU_FAILURE_REASONS}
    return {reason: count for reason, count in counts.items() if count}


@pytest.mark.parametrize(("sessions", "lpus"), [(40, 8), (20, 10)])
async def test_an_ordinary_burst_under_the_default_config_never_waits_for_a_connection(
    sessions: int, lpus: int, gateway: Any
) -> None:
    # Each patient their own LPUs (demo LPU numbers are GUIDs): the burst is about the pool,
    # not about many patients of one hospital sharing its per-LPU slots.
    patients = [many_lpus(lpus, 1 + n * lpus) for n in range(sessions)]
    sandbox = Sandbox(patients)
    calls = sessions * lpus
    # Every answer held until the whole burst's calls are in flight: all of them at once by
    # construction, however long a loaded machine takes to send them.
    gate = UpstreamGate(lpu.info["guid"] for p in patients for lpu in p.lpus)
    async with burst_upstream(sandbox, gate=gate) as url:
        # The pool's defaults (upstream.max_connections, upstream.pool_wait), bar the test
        # upstream's URL; the timers out of the way: how long the machine takes to make
        # 3 × `calls` calls is not what this test is about. (Here the sandbox, the client and
        # the gateway share one loop: on a loaded machine that loop's lag alone makes a burst's
        # connects outlast the 2 s connect timeout.)
        timers = {"call_timeout": 120.0, "connect_timeout": 120.0}
        client = await gateway(url, upstream=timers, session={"deadline": 180.0})
        guids = await asyncio.gather(*(create(client, p.token) for p in patients))
        # Until the whole burst waits at the gate, or an LPU failed (its siblings never come).
        await wait_until(lambda: gate.arrived >= 3 * calls or failures(client), within=120, what="the burst in flight")
        assert gate.arrived == 3 * calls, (gate.arrived, failures(client))
        assert sum(gate.waiting.values()) == 3 * calls
        gate.open_all()
        bodies = await asyncio.gather(
            *(poll_until_final(client, g, bearer(p.token), limit=120) for g, p in zip(guids, patients, strict=True))
        )
        assert all(e["state"] == "Complete" for body, _ in bodies for e in body), failures(client)
        assert [sandbox.count(m) for m in ("mkab", "visit", "calldoctor", "disp")] == [sessions, calls, calls, calls]
        assert sample(client, "gateway_upstream_pool_waits_total") == 0
        assert sample(client, "gateway_upstream_retries_total", method="visit") == 0
        assert set(gate.peak.values()) == {3}  # every LPU's three calls ran at once


async def test_an_mkab_list_longer_than_max_lpus_fails_the_creation_clearly(upstream: Any, gateway: Any) -> None:
    long_list, short_list = many_lpus(4, 1), many_lpus(3, 1)
    sandbox, url = await upstream(long_list, short_list)
    client = await gateway(url, session={"max_lpus": 3})
    resp = await client.get("/api/v2/old/visit/tickets", headers=bearer(long_list.token))
    assert resp.status == 502 and (await resp.json())["message_code"] == "4502"
    assert sandbox.count("visit") == 0, "no per-LPU call for a refused list"
    assert sample(client, "gateway_rejected_requests_total", limit="max_lpus") == 1
    body, _ = await poll_until_final(client, await create(client, short_list.token))
    assert [e["state"] for e in body] == ["Complete"] * 3
