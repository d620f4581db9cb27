"""Graceful drain (issue 11, row 11): on SIGTERM a `gateway serve` process says unready at once,
keeps serving for `server.drain_seconds`, then stops listening and exits 0; a rolling restart
of three replicas on Redis, behind a client that balances as a load balancer does, loses no
request.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from tests.support.gateway import QUOTA_OFF, TICKETS, bearer, patient, wait_until
from tests.support.redis_server import RedisServer
from tests.support.replicas import Replica, ReplicaFactory

DRAIN = 4.0
ANSWER_LIMIT = aiohttp.ClientTimeout(total=10)


async def status_of(http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None) -> int:
    async with http.get(url, headers=headers) as resp:
        await resp.read()
        return resp.status


async def refuses_connections(http: aiohttp.ClientSession, replica: Replica) -> bool:
    try:
        await status_of(http, f"{replica.url}/healthz")
    except aiohttp.ClientConnectionError:
        return True
    return False


async def exit_code(replica: Replica, within: float) -> int:
    return await asyncio.get_running_loop().run_in_executor(None, lambda: replica.proc.wait(timeout=within))


async def test_sigterm_says_unready_at_once_serves_through_the_drain_then_exits_0(
    upstream: Any, replicas: ReplicaFactory
) -> None:
    someone = patient(None, None)
    _, url = await upstream(someone)
    [replica] = await replicas(1, url, "", server={"drain_seconds": DRAIN})
    async with aiohttp.ClientSession(timeout=ANSWER_LIMIT) as http:
        async with http.get(replica.url + TICKETS, headers=bearer(someone.token)) as resp:
            assert resp.status == 200
            guid = (await resp.json())["session"]
        poll_url = f"{replica.url}{TICKETS}/{guid}"
        assert await status_of(http, f"{replica.url}/readyz") == 200

        replica.proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()

        async def unready() -> bool:
            return await status_of(http, f"{replica.url}/readyz") == 503

        await wait_until(unready, within=2.0, what="/readyz answering 503 after SIGTERM")
        unready_after = time.monotonic() - signalled
        # Through the drain: still unready, still serving polls (and a new patient's create).
        served: Counter[int] = Counter()
        while time.monotonic() - signalled < DRAIN - 1.5:
            served[await status_of(http, poll_url, bearer(someone.token))] += 1
            served[await status_of(http, f"{replica.url}/readyz")] += 1
            await asyncio.sleep(0.05)
        assert served[200] > 5 and set(served) == {200, 503}, served
        assert await status_of(http, replica.url + TICKETS, bearer(someone.token)) == 200

        await wait_until(
            lambda: refuses_connections(http, replica), within=DRAIN + 10, what="the listener closing after the drain"
        )
        closed_after = time.monotonic() - signalled
    assert await exit_code(replica, within=15) == 0
    # "At once", with room for a loaded machine: the flag is set by the signal handler itself.
    assert unready_after < 1.5, f"/readyz said 503 only {unready_after:.2f}s after SIGTERM"
    assert closed_after >= DRAIN - 0.2, f"the listener closed {closed_after:.2f}s after SIGTERM, before the drain"
    assert [e["seconds"] for e in replica.events("draining")] == [DRAIN]


# --- rolling restart ----------------------------------------------------------------------------


@dataclass
class Balancer:
    """Round-robin over the replicas whose last /readyz answered 200, checked every 0.1 s, as a
    load balancer's health check does; a replica is added once ready, dropped once unready."""

    http: aiohttp.ClientSession
    members: list[Replica] = field(default_factory=list)
    ready: set[str] = field(default_factory=set)
    _turn: itertools.count[int] = field(default_factory=itertools.count)

    def pick(self) -> Replica:
        live = [r for r in self.members if r.name in self.ready]
        assert live, "no replica is ready"
        return live[next(self._turn) % len(live)]

    async def check(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            for replica in list(self.members):
                try:
                    healthy = await status_of(self.http, f"{replica.url}/readyz") == 200
                except aiohttp.ClientError:
                    healthy = False
                (self.ready.add if healthy else self.ready.discard)(replica.name)
            await asyncio.sleep(0.1)


@dataclass
class Outcomes:
    answered: Counter[int] = field(default_factory=Counter)
    lost: Counter[str] = field(default_factory=Counter)
    sessions: int = 0
    final: int = 0


async def patient_loop(lb: Balancer, token: str, stop: asyncio.Event, seen: Outcomes) -> None:
    """Create, poll every 100 ms until final, again; each request through the balancer. A
    request without an answer (refused, reset, timed out) is lost."""

    async def get(path: str) -> tuple[int, object]:
        replica = lb.pick()
        try:
            async with lb.http.get(replica.url + path, headers=bearer(token)) as resp:
                seen.answered[resp.status] += 1
                return resp.status, await resp.json()
        except (aiohttp.ClientError, TimeoutError) as exc:
            seen.lost[type(exc).__name__] += 1
            return 0, None

    for _ in range(1000):
        if stop.is_set():
            return
        status, body = await get(TICKETS)
        if status != 200:
            await asyncio.sleep(0.1)
            continue
        seen.sessions += 1
        guid = body["session"]  # type: ignore[index]
        for _ in range(200):
            await asyncio.sleep(0.1)
            status, body = await get(f"{TICKETS}/{guid}")
            if status == 200 and all(e["state"] != "InProgress" for e in body):  # type: ignore[union-attr]
                seen.final += 1
                break


async def test_a_rolling_restart_of_three_replicas_on_redis_loses_no_request(
    upstream: Any, replicas: ReplicaFactory, redis_server: RedisServer
) -> None:
    patients = [patient(None, None, None) for _ in range(6)]
    _, url = await upstream(*patients)
    settings: dict[str, Any] = {
        "server": {"drain_seconds": 1.5},
        "redis": {"lease_ttl": 1.0},
        # Each patient creates again as soon as its session is final: far above a person's pace.
        "limits": QUOTA_OFF,
    }
    old = await replicas(3, url, redis_server.url, deadline=5.0, **settings)
    stop = asyncio.Event()
    seen = Outcomes()
    async with aiohttp.ClientSession(timeout=ANSWER_LIMIT) as http:
        lb = Balancer(http, list(old))
        checker = asyncio.create_task(lb.check(stop))
        await wait_until(lambda: len(lb.ready) == 3, within=5, what="the balancer seeing three ready replicas")
        load = [asyncio.create_task(patient_loop(lb, p.token, stop, seen)) for p in patients]
        await wait_until(lambda: seen.final >= 6, within=20, what="load under way")
        for replica in old:
            # maxSurge 1: the new replica first, then SIGTERM to the old one, as Kubernetes does.
            [new] = await replicas(1, url, redis_server.url, deadline=5.0, **settings)
            lb.members.append(new)
            await wait_until(
                lambda name=new.name: name in lb.ready, within=5, what=f"replica {new.name} in the balancer"
            )
            replica.proc.send_signal(signal.SIGTERM)
            assert await exit_code(replica, within=20) == 0
            lb.members.remove(replica)
        before = seen.final
        await wait_until(lambda: seen.final >= before + 6, within=20, what="load going on after the restart")
        stop.set()
        await asyncio.wait_for(asyncio.gather(*load, checker), timeout=30)
    assert not seen.lost, f"requests without an answer: {dict(seen.lost)} (answered: {dict(seen.answered)})"
    assert set(seen.answered) == {200}, dict(seen.answered)
    assert seen.sessions >= 12 and seen.final == seen.sessions, seen
    for replica in old:
        assert len(replica.events("draining")) == 1
