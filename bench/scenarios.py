"""The figures. Each function measures one figure once (one "run") against processes the caller
started, and returns plain numbers; `bench.run` repeats runs and takes medians.

Every figure is measured as the apps see it: sessions are created and then polled over HTTP, the
same way against visit-gateway and the minimal gateway (bench/minimal.py); nothing reads a
server's insides."""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from dataclasses import dataclass

from bench.httpload import LoadClient, closed_loop
from bench.procs import Proc

CREATE = "/api/v2/old/visit/tickets"
POLL = "/api/v2/old/visit/tickets/{}"
POLL_EVERY = 0.02  # seconds between an app's polls, from its create response on
WAIT_LIMIT = 60.0  # no wait for a session lasts longer than this


def token(lpus: int, i: int) -> str:
    return f"bench-{lpus}-{i}"


def auth(lpus: int, i: int) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(lpus, i)}"}


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


@dataclass
class Target:
    """A server under test (visit-gateway or the minimal gateway) and the fake upstream."""

    upstream: Proc
    server: Proc

    def __post_init__(self) -> None:
        self.client = LoadClient(self.server.port)
        self.up = LoadClient(self.upstream.port)

    async def set_delay(self, delay: float, slow: list[str] | None = None, slow_delay: float = 0.0) -> None:
        spec = {"delay": delay, "slow": slow or [], "slow_delay": slow_delay}
        status, _ = await self.up.post("/_bench/delay", json.dumps(spec).encode())
        assert status == 200

    async def upstream_calls(self, reset: bool = True) -> int:
        status, body = await self.up.get("/_bench/stats" + ("?reset=1" if reset else ""))
        assert status == 200
        return int(json.loads(body)["calls"])

    async def create(self, lpus: int, i: int) -> str:
        status, body = await self.client.get(CREATE, auth(lpus, i))
        assert status == 200, (status, body[:200])
        return json.loads(body)["session"]

    async def until_final(self, guid: str, lpus: int, i: int) -> bytes:
        """Polls every POLL_EVERY seconds until no LPU is InProgress; the final body."""
        async with asyncio.timeout(WAIT_LIMIT):
            while True:
                status, body = await self.client.get(POLL.format(guid), auth(lpus, i))
                assert status == 200, (status, body[:200])
                if b'"InProgress"' not in body:
                    return body
                await asyncio.sleep(POLL_EVERY)

    def close(self) -> None:
        self.client.close()
        self.up.close()


async def overhead(t: Target, concurrent: int, bursts: int, lpus: int, delay: float) -> dict[str, float]:
    """Fan-out overhead as an app sees it: from the create response to the first poll answer with
    no LPU InProgress, minus one upstream delay (the three calls of an LPU run at once), every
    client polling every 20 ms from its create response. `concurrent` sessions (one patient
    each) are created at once; the next burst starts when all are final. Burst 0 is the cold one
    (the server's first contact with these LPUs' host); its p95 is reported apart."""
    p95s: list[float] = []

    async def one(i: int, out: list[float]) -> None:
        guid = await t.create(lpus, i)
        answered = time.monotonic()
        body = await t.until_final(guid, lpus, i)
        assert b'"Failed"' not in body, f"{t.server.kind}: an LPU failed: the figure would not be the fan-out's"
        out.append(time.monotonic() - answered - delay)

    for _ in range(bursts + 1):
        samples: list[float] = []
        await asyncio.gather(*(one(i, samples) for i in range(concurrent)))
        p95s.append(percentile(samples, 95) * 1000)
    return {"cold_p95": p95s[0], "p95": statistics.median(p95s[1:]), "worst_p95": max(p95s[1:]), "bursts": bursts}


async def fanout_calls(
    t: Target, sessions: int, concurrency: int, time_limit: float, lpus: int = 10
) -> dict[str, float]:
    """Upstream calls per server CPU-second while it fans out `sessions` sessions, `concurrency`
    patients at a time each creating and polling (every 20 ms) to the end; instant upstream."""

    async def one(i: int) -> None:
        p = i % 200
        await t.until_final(await t.create(lpus, p), lpus, p)

    await closed_loop(concurrency, concurrency * 2, 20, one)  # warm-up, not counted
    await t.upstream_calls(reset=True)
    cpu0, up_cpu0 = t.server.cpu(), t.upstream.cpu()
    done, wall = await closed_loop(concurrency, sessions, time_limit, one)
    cpu, up_cpu = t.server.cpu() - cpu0, t.upstream.cpu() - up_cpu0
    calls = await t.upstream_calls(reset=True)
    return {
        "calls": calls,
        "sessions": done,
        "per_cpu_s": calls / cpu,
        "per_s": calls / wall,
        "server_busy": cpu / wall,
        "upstream_busy": up_cpu / wall,
    }


async def polls(
    client: LoadClient,
    servers: list[Proc],
    path: str,
    headers: dict[str, str],
    count: int,
    workers: int,
    time_limit: float,
) -> dict[str, float]:
    """GETs of one path over `workers` keep-alive connections, each with one request in flight;
    the CPU of every process in `servers` (the gateway, and its redis-server where it has one)."""
    sizes: set[int] = set()

    async def one(_: int) -> None:
        status, body = await client.get(path, headers)
        assert status == 200, body[:200]
        sizes.add(len(body))

    await closed_loop(workers, workers * 20, 10, one)  # warm-up: open the connections
    cpu0 = sum(s.cpu() for s in servers)
    done, wall = await closed_loop(workers, count, time_limit, one)
    cpu = sum(s.cpu() for s in servers) - cpu0
    assert len(sizes) == 1, f"the polled body changed size: {sizes}"
    return {"polls": done, "per_s": done / wall, "cpu_us": cpu / done * 1e6, "bytes": sizes.pop()}


async def memory(t: Target, sessions: int, lpus: int = 5) -> dict[str, float]:
    """Resident bytes the server gains per cached session: create `sessions` sessions and poll
    each until final (as an app would), then RSS delta / sessions."""
    before = t.server.rss()
    sizes: list[int] = []

    async def one(i: int) -> None:
        p = i % 200
        sizes.append(len(await t.until_final(await t.create(lpus, p), lpus, p)))

    done, _ = await closed_loop(16, sessions, 120, one)
    after = t.server.rss()
    return {"per_session": (after - before) / done, "json": sum(sizes) / len(sizes), "sessions": done}


async def amplification(
    t: Target, patients: int, opens: int, spread: float, first: int, lpus: int = 5
) -> dict[str, float]:
    """The app pattern: each of `patients` (numbered from `first`: every run has its own, so no
    run shares an earlier run's fan-outs) opens the screen `opens` times at random moments within
    `spread` seconds (all within one minute); each open creates a session and polls it every
    100 ms until nothing is InProgress. Counts upstream calls."""
    rng = random.Random(6)
    await t.upstream_calls(reset=True)

    async def open_screen(patient: int, at: float) -> None:
        await asyncio.sleep(at)
        guid = await t.create(lpus, patient)
        async with asyncio.timeout(30):
            while True:
                status, body = await t.client.get(POLL.format(guid), auth(lpus, patient))
                assert status == 200
                if b'"InProgress"' not in body:
                    return
                await asyncio.sleep(0.1)

    await asyncio.gather(
        *(open_screen(p, rng.uniform(0, spread)) for p in range(first, first + patients) for _ in range(opens)),
    )
    calls = await t.upstream_calls(reset=True)
    one_fanout = 1 + 3 * lpus
    return {
        "calls": calls,
        "patients": patients,
        "opens": opens,
        "per_session": calls / (patients * opens),
        "amplification": calls / (patients * one_fanout),
    }
