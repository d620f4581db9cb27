"""The figures. Each function measures one figure once (one "run") against processes the
caller started, and returns plain numbers; `bench.run` repeats runs and takes medians."""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from dataclasses import dataclass
from typing import Any

from bench.httpload import LoadClient, closed_loop
from bench.procs import Proc

CREATE = "/api/v2/old/visit/tickets"
POLL = "/api/v2/old/visit/tickets/{}"


def token(lpus: int, i: int) -> str:
    return f"bench-{lpus}-{i}"


def auth(lpus: int, i: int, request_id: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {token(lpus, i)}"}
    if request_id is not None:
        headers["X-Request-Id"] = request_id
    return headers


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


@dataclass
class Target:
    """The processes one group of figures runs against."""

    upstream: Proc
    gateway: Proc

    def __post_init__(self) -> None:
        self.gw = LoadClient(self.gateway.port)
        self.up = LoadClient(self.upstream.port)

    async def set_delay(self, delay: float) -> None:
        status, _ = await self.up.post("/_bench/delay", json.dumps({"delay": delay}).encode())
        assert status == 200

    async def upstream_stats(self, reset: bool = True) -> dict[str, Any]:
        status, body = await self.up.get("/_bench/stats" + ("?reset=1" if reset else ""))
        assert status == 200
        return json.loads(body)

    async def reset_recorder(self, keep_times: bool = True) -> None:
        status, _ = await self.gw.post(f"/_bench/reset?keep={int(keep_times)}")
        assert status == 200

    async def create(self, lpus: int, i: int, request_id: str | None = None) -> str:
        status, body = await self.gw.get(CREATE, auth(lpus, i, request_id))
        assert status == 200, (status, body[:200])
        return json.loads(body)["session"]

    async def done_at(self, guid: str) -> float:
        status, body = await self.gw.get(f"/_bench/done/{guid}")
        assert status == 200, body
        return json.loads(body)["t"]

    async def wait_completed(self, n: int) -> float:
        status, body = await self.gw.get(f"/_bench/completed?n={n}")
        assert status == 200, body
        return json.loads(body)["last"]

    def close(self) -> None:
        self.gw.close()
        self.up.close()


async def overhead(t: Target, concurrent: int, bursts: int, lpus: int = 10) -> dict[str, float]:
    """Fan-out overhead: create sent → last LPU result in the store, minus the slowest upstream
    call of that session (as timed by the upstream itself, handler start to answer).

    `concurrent` sessions are created at once (one patient each), then the next burst starts once
    all of them are terminal; `bursts` bursts, one warm-up burst first.
    """
    samples: list[float] = []
    slowest_calls: list[float] = []

    async def one(i: int, record: bool) -> None:
        rid = f"bench-{uuid.uuid4().hex}"
        sent = time.monotonic()
        guid = await t.create(lpus, i, rid)
        done = await t.done_at(guid)
        if record:
            pending.append((rid, done - sent))

    await t.reset_recorder(keep_times=True)
    await t.upstream_stats(reset=True)
    for burst in range(bursts + 1):
        pending: list[tuple[str, float]] = []
        await asyncio.gather(*(one(i, record=burst > 0) for i in range(concurrent)))
        by_request = (await t.upstream_stats(reset=True))["by_request"]
        for rid, total in pending:
            slowest = by_request[rid][1]
            slowest_calls.append(slowest)
            samples.append(total - slowest)
    return overhead_figures(samples, slowest_calls)


def overhead_figures(samples: list[float], slowest_calls: list[float]) -> dict[str, float]:
    return {
        "p50": percentile(samples, 50) * 1000,
        "p95": percentile(samples, 95) * 1000,
        "p99": percentile(samples, 99) * 1000,
        "n": len(samples),
        "slowest_call_ms": percentile(slowest_calls, 50) * 1000,
    }


async def plain_overhead(t: Target, result: dict[str, Any]) -> dict[str, float]:
    """The same figure for the plain client's bursts (`bench.plain`, mode "bursts")."""
    by_request = (await t.upstream_stats(reset=True))["by_request"]
    slowest = [by_request[rid][1] for rid, _ in result["samples"]]
    return overhead_figures([total - s for (_, total), s in zip(result["samples"], slowest, strict=True)], slowest)


async def fanout_calls(
    t: Target, sessions: int, concurrency: int, time_limit: float, lpus: int = 10
) -> dict[str, float]:
    """Upstream calls per CPU-second of the gateway while it fans out `sessions` sessions,
    `concurrency` in flight (create, then wait until all-terminal), instant upstream."""
    await t.reset_recorder(keep_times=True)

    async def one(i: int) -> None:
        await t.done_at(await t.create(lpus, i % 200))

    await closed_loop(2, 2, 10, one)  # warm-up, not counted
    await t.upstream_stats(reset=True)
    cpu0, up_cpu0 = t.gateway.cpu(), t.upstream.cpu()
    done, wall = await closed_loop(concurrency, sessions, time_limit, one)
    cpu, up_cpu = t.gateway.cpu() - cpu0, t.upstream.cpu() - up_cpu0
    calls = (await t.upstream_stats(reset=True))["calls"]
    return {
        "calls": calls,
        "sessions": done,
        "wall": wall,
        "cpu": cpu,
        "per_cpu_s": calls / cpu,
        "per_s": calls / wall,
        "gateway_busy": cpu / wall,
        "upstream_busy": up_cpu / wall,
    }


async def polls(
    client: LoadClient, server: Proc, path: str, headers: dict[str, str], count: int, workers: int, time_limit: float
) -> dict[str, float]:
    """GETs of one path, `workers` connections each with one request in flight."""
    sizes: set[int] = set()

    async def one(_: int) -> None:
        status, body = await client.get(path, headers)
        assert status == 200, body[:200]
        sizes.add(len(body))

    await closed_loop(workers, workers * 20, 10, one)  # warm-up: open the connections
    cpu0 = server.cpu()
    done, wall = await closed_loop(workers, count, time_limit, one)
    cpu = server.cpu() - cpu0
    assert len(sizes) == 1, f"the polled body changed size: {sizes}"
    size = sizes.pop()
    return {"polls": done, "wall": wall, "cpu": cpu, "per_s": done / wall, "per_cpu_s": done / cpu, "bytes": size}


async def creates(
    client: LoadClient,
    server: Proc,
    path: str,
    lpus: int,
    count: int,
    workers: int,
    time_limit: float,
    recorder: Target | None = None,
) -> dict[str, float]:
    """Sessions created per second, `workers` creates in flight; for the gateway the clock
    stops when the last session is all-terminal (its fan-out runs after the answer)."""

    async def one(i: int) -> None:
        status, body = await client.get(path, auth(lpus, i % 200))
        assert status == 200, body[:200]

    if recorder is not None:
        await recorder.reset_recorder(keep_times=False)
    await closed_loop(workers, workers * 2, 10, one)  # warm-up
    if recorder is not None:
        await recorder.wait_completed(workers * 2)
        await recorder.reset_recorder(keep_times=False)
    cpu0 = server.cpu()
    started = time.monotonic()
    done, wall = await closed_loop(workers, count, time_limit, one)
    if recorder is not None:
        wall = await recorder.wait_completed(done) - started
    cpu = server.cpu() - cpu0
    return {"sessions": done, "wall": wall, "cpu": cpu, "per_s": done / wall, "per_cpu_s": done / cpu}


async def memory(t: Target, sessions: int, lpus: int = 5) -> dict[str, float]:
    """Resident bytes the gateway gains per cached session: create `sessions` sessions, wait
    until all are terminal, poll each once (as an app would), then RSS delta / sessions."""
    await t.reset_recorder(keep_times=False)
    before = t.gateway.rss()
    guids: list[tuple[str, int]] = []

    async def one(i: int) -> None:
        guids.append((await t.create(lpus, i % 200), i % 200))

    await closed_loop(16, sessions, 120, one)
    await t.wait_completed(len(guids))
    sizes = []

    async def poll(i: int) -> None:
        guid, patient = guids[i]
        status, body = await t.gw.get(POLL.format(guid), auth(lpus, patient))
        assert status == 200
        sizes.append(len(body))

    await closed_loop(16, len(guids), 120, poll)
    after = t.gateway.rss()
    return {"per_session": (after - before) / len(guids), "json": sum(sizes) / len(sizes), "sessions": len(guids)}


async def amplification(
    t: Target, patients: int, opens: int, spread: float, first: int, lpus: int = 5
) -> dict[str, float]:
    """The app pattern: each of `patients` (numbered from `first`: every run has its own, so no
    run shares an earlier run's fan-outs) opens the screen `opens` times at random moments within
    `spread` seconds (all within one minute); each open creates a session and polls it every
    100 ms until nothing is InProgress. Counts upstream calls."""
    rng = random.Random(6)
    await t.upstream_stats(reset=True)

    async def open_screen(patient: int, at: float) -> None:
        await asyncio.sleep(at)
        guid = await t.create(lpus, patient)
        async with asyncio.timeout(30):
            while True:
                status, body = await t.gw.get(POLL.format(guid), auth(lpus, patient))
                assert status == 200
                if b'"InProgress"' not in body:
                    return
                await asyncio.sleep(0.1)

    await asyncio.gather(
        *(open_screen(p, rng.uniform(0, spread)) for p in range(first, first + patients) for _ in range(opens)),
    )
    calls = (await t.upstream_stats(reset=True))["calls"]
    one_fanout = 1 + 3 * lpus
    return {
        "calls": calls,
        "patients": patients,
        "opens": opens,
        "sessions": patients * opens,
        "per_session": calls / (patients * opens),
        "amplification": calls / (patients * one_fanout),
    }
