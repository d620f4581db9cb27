"""Several gateway processes sharing one Redis, behind no sticky routing: any replica answers any
poll, and a replica killed mid-run leaves no session InProgress past its deadline."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import aiohttp

from gateway.sandbox.data import LpuKnobs, SandboxPatient
from tests.support.gateway import TICKETS, bearer, create, patient, poll_until_final
from tests.support.replicas import Replica

LIMIT = 30.0  # no wait in this module lasts longer


async def open_session(http: aiohttp.ClientSession, replica: Replica, token: str) -> str:
    async with http.get(replica.url + TICKETS, headers=bearer(token)) as resp:
        assert resp.status == 200, await resp.text()
        return (await resp.json())["session"]


async def read(http: aiohttp.ClientSession, replica: Replica, guid: str, token: str | None) -> list[dict[str, Any]]:
    headers = bearer(token) if token else None
    async with http.get(f"{replica.url}{TICKETS}/{guid}", headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


def states(body: list[dict[str, Any]]) -> list[str]:
    return [entry["state"] for entry in body]


async def read_until_final(
    http: aiohttp.ClientSession, replicas: list[Replica], guid: str, token: str | None
) -> tuple[list[dict[str, Any]], list[tuple[float, list[str]]]]:
    """Polls round-robin over `replicas` until no LPU is InProgress; returns the final body and
    every (time sent, states) seen."""
    seen: list[tuple[float, list[str]]] = []
    end = time.monotonic() + LIMIT
    for replica in itertools.cycle(replicas):
        sent = time.time()
        body = await read(http, replica, guid, token)
        seen.append((sent, states(body)))
        if "InProgress" not in seen[-1][1]:
            return body, seen
        assert time.monotonic() < end, f"still InProgress after {LIMIT}s: {seen[-1]}"
        await asyncio.sleep(0.06)  # under limits.poll_rate (20/s per session)
    raise AssertionError("unreachable")


async def read_until(http: aiohttp.ClientSession, replica: Replica, guid: str, done: Any) -> None:
    end = time.monotonic() + LIMIT
    while not done(states(await read(http, replica, guid, None))):
        assert time.monotonic() < end
        await asyncio.sleep(0.06)  # under limits.poll_rate (20/s per session)


def lpu_calls(sandbox: Any, p: SandboxPatient, lpu_index: int) -> dict[str, int]:
    """Calls the sandbox received for one LPU of one patient, by method."""
    guid = p.lpus[lpu_index].info["guid"]
    auth = f"Bearer {p.token}"
    found = [c.method for c in sandbox.calls if c.lpu_guid == guid and c.authorization == auth]
    return {method: found.count(method) for method in ("visit", "calldoctor", "disp")}


async def reference(gateway: Any, url: str, p: SandboxPatient) -> list[dict[str, Any]]:
    """What one replica alone (in-process store) answers for this patient."""
    client = await gateway(url)
    body, _ = await poll_until_final(client, await create(client, p.token), bearer(p.token))
    return body


async def test_created_on_one_replica_read_on_another(
    upstream: Any, gateway: Any, redis_server: Any, replicas: Any
) -> None:
    p = patient(None, LpuKnobs(delay=0.6), LpuKnobs(fault="status", status=500), LpuKnobs(pascal_case=True))
    sandbox, url = await upstream(p)
    expected = await reference(gateway, url, p)
    assert states(expected) == ["Complete", "Complete", "Failed", "Complete"]
    a, b = await replicas(2, url, redis_server.url)
    async with aiohttp.ClientSession() as http:
        guid = await open_session(http, a, p.token)
        first = await read(http, b, guid, p.token)
        assert states(first)[1] == "InProgress", "B sees the slow LPU in progress while A runs it"
        body, _ = await read_until_final(http, [b], guid, p.token)
        assert body == expected
        assert await read(http, a, guid, None) == expected, "and A, without the token, reads the same"
        # The other way round, polled by both in turn.
        guid = await open_session(http, b, p.token)
        body, _ = await read_until_final(http, [a, b], guid, p.token)
        assert body == expected
    # One fan-out per session (the reference's and the two above): no replica re-ran anything.
    # (LPU 2 fails on its first answer, which may cancel its other calls before they are sent.)
    assert all(lpu_calls(sandbox, p, i) == {"visit": 3, "calldoctor": 3, "disp": 3} for i in (0, 1, 3))
    assert not a.events("session_takeover") and not b.events("session_takeover")


async def test_sessions_of_a_killed_replica_complete_with_the_token_or_fail_at_the_deadline(
    upstream: Any, redis_server: Any, replicas: Any
) -> None:
    deadline = 5.0
    slow = LpuKnobs(delay=1.5)
    with_token, without_token = patient(None, slow, slow), patient(None, slow, slow)
    sandbox, url = await upstream(with_token, without_token)
    a, b = await replicas(2, url, redis_server.url, deadline=deadline, redis={"lease_ttl": 1.0})
    async with aiohttp.ClientSession() as http:
        before = time.time()
        guids = [await open_session(http, a, p.token) for p in (with_token, without_token)]
        created = time.time()  # both sessions' deadlines fall between before and created, + deadline
        await sandbox.wait_calls(2 + 2 * 3 * 3)  # A's whole fan-out is in flight...
        for guid in guids:  # ...and its fast LPU is in (a result that must not be fetched twice)
            await read_until(http, b, guid, lambda s: s[0] == "Complete")
        a.kill()
        (done, seen_done), (failed, seen_failed) = await asyncio.gather(
            read_until_final(http, [b], guids[0], with_token.token),
            read_until_final(http, [b], guids[1], None),
        )
    assert states(done) == ["Complete"] * 3, "B re-ran the two unfinished LPUs for the token's poll"
    assert [lpu_calls(sandbox, with_token, i)["visit"] for i in range(3)] == [1, 2, 2]
    assert states(failed) == ["Complete", "Failed", "Failed"], "without the token: Failed at the deadline"
    assert [lpu_calls(sandbox, without_token, i)["visit"] for i in range(3)] == [1, 1, 1]
    in_progress = [sent for sent, s in seen_done + seen_failed if "InProgress" in s]
    assert max(in_progress) < created + deadline, "nothing reads InProgress past the deadline"
    assert seen_failed[-1][0] > before + deadline - 0.5, "and nothing is failed before it"
    takeovers = {(e["session"], e["result"]) for e in b.events("session_takeover")}
    assert takeovers == {(guids[0], "rerun"), (guids[1], "failed")}


async def test_replicas_polling_an_orphan_at_the_same_instant_rerun_it_once(
    upstream: Any, redis_server: Any, replicas: Any
) -> None:
    slow = LpuKnobs(delay=1.0)
    p = patient(slow, slow, slow)
    sandbox, url = await upstream(p)
    # Bursts of polls are the point here, so the per-session poll rate limit is lifted.
    a, b, c = await replicas(
        3,
        url,
        redis_server.url,
        deadline=8.0,
        redis={"lease_ttl": 1.0},
        limits={"poll_rate": 1000.0, "poll_burst": 1000},
    )
    async with aiohttp.ClientSession() as http:
        guid = await open_session(http, c, p.token)
        await sandbox.wait_calls(1 + 3 * 3)
        c.kill()
        end = time.monotonic() + LIMIT
        while True:
            # Four polls on each survivor, all sent at once, round after round: when the lease
            # lapses, the first round races for it.
            bodies = await asyncio.gather(*(read(http, r, guid, p.token) for r in (a, b) * 4))
            if all("InProgress" not in states(body) for body in bodies):
                break
            assert time.monotonic() < end, "the orphan was never finished"
            await asyncio.sleep(0.02)
    assert all(states(body) == ["Complete"] * 3 for body in bodies)
    assert [lpu_calls(sandbox, p, i) for i in range(3)] == [{"visit": 2, "calldoctor": 2, "disp": 2}] * 3, (
        "C's calls and exactly one re-run"
    )
    assert len(a.events("session_takeover") + b.events("session_takeover")) == 1


async def test_three_replicas_round_robin_one_killed_every_session_completes_as_one_replica_gives(
    upstream: Any, gateway: Any, redis_server: Any, replicas: Any
) -> None:
    """The issue's acceptance check: three replicas behind a round-robin client, one killed
    mid-run, every session completes with the answer a single replica gives."""
    patients = [
        patient(None, LpuKnobs(delay=1.0), LpuKnobs(fault="status", status=404)),
        patient(LpuKnobs(delay=0.8), LpuKnobs(delay=1.2)),
        patient(LpuKnobs(pascal_case=True, delay=1.0), None, None),
    ]
    sandbox, url = await upstream(*patients)
    expected = {p.token: await reference(gateway, url, p) for p in patients}
    pool = await replicas(3, url, redis_server.url, deadline=10.0, redis={"lease_ttl": 1.0})
    live = list(pool)
    turn = itertools.count()

    async def call(path: str, token: str) -> list[dict[str, Any]] | dict[str, Any]:
        # A round-robin balancer with health checks: a dead replica's turn goes to the next one.
        for _ in range(len(pool)):
            replica = live[next(turn) % len(live)]
            try:
                async with http.get(replica.url + path, headers=bearer(token)) as resp:
                    assert resp.status == 200, await resp.text()
                    return await resp.json()
            except aiohttp.ClientConnectionError:
                continue
        raise AssertionError("no replica answered")

    async with aiohttp.ClientSession() as http:
        before = sandbox.count()
        sessions = [(p.token, (await call(TICKETS, p.token))["session"]) for p in patients for _ in range(3)]
        # Every fan-out's calls have arrived (the slow ones are still running) before the kill.
        await sandbox.wait_calls(before + 3 * sum(1 + 3 * len(p.lpus) for p in patients))
        pool[1].kill()
        live.remove(pool[1])
        end = time.monotonic() + LIMIT
        final: dict[str, Any] = {}
        while len(final) < len(sessions):
            for token, guid in sessions:
                if guid not in final:
                    body = await call(f"{TICKETS}/{guid}", token)
                    if all(entry["state"] != "InProgress" for entry in body):
                        final[guid] = (token, body)
            assert time.monotonic() < end, f"{len(sessions) - len(final)} sessions never finished"
            await asyncio.sleep(0.06)  # under limits.poll_rate (20/s per session)
    assert all(body == expected[token] for token, body in final.values())
    reruns = pool[0].events("session_takeover") + pool[2].events("session_takeover")
    assert len(reruns) == 3, "the killed replica's three sessions were each taken over once"
