"""Measures what a session costs in the in-process store, for docs/sizing.md.

For patients with 1, 5 and 10 LPUs (the sandbox's demo records), each figure in a fresh child
process (memory an earlier run freed would hide a later run's growth): a sandbox upstream and a
gateway (in-process store) on loopback; sessions created through the API, each waited for until
final and polled once (the sandbox's record of calls is dropped as it goes). Prints per session
the Python heap it retains (tracemalloc, after a collection) and the resident set growth (RSS,
which includes the allocator's overhead and fragmentation: the figure a pod's memory limit sees;
measured without tracemalloc), next to the size of the session's poll answer.

    .venv/bin/python scripts/memory_sizing.py [--sessions 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import resource
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import aiohttp
from aiohttp import web

from gateway.app import create_app
from gateway.config import Config, LogConfig
from gateway.observability.logs import configure_logging
from gateway.sandbox.app import Sandbox, create_sandbox_app
from gateway.sandbox.data import SandboxPatient, demo_lpu

TICKETS = "/api/v2/old/visit/tickets"
TIME_LIMIT = 600.0
LPU_COUNTS = (1, 5, 10)
WARMUP = 100


def rss_bytes() -> int:
    """Resident set now (Linux: /proc), not the peak getrusage gives."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize()


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


async def fill(http: aiohttp.ClientSession, url: str, token: str, count: int, end: float, sandbox: Sandbox) -> int:
    """`count` final sessions of one patient, each polled once; the last poll body's size. The
    sandbox's record of calls is dropped after each session: it is not the gateway's memory."""
    headers = {"Authorization": f"Bearer {token}"}
    body = b""
    for _ in range(count):
        async with http.get(url + TICKETS, headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            guid = (await resp.json())["session"]
        while True:
            async with http.get(f"{url}{TICKETS}/{guid}", headers=headers) as resp:
                body = await resp.read()
            if b"InProgress" not in body:
                break
            assert time.monotonic() < end, "time limit"
            await asyncio.sleep(0.005)
        sandbox.calls.clear()
    return len(body)


def traced_bytes() -> int:
    return tracemalloc.get_traced_memory()[0]


async def grow(
    http: aiohttp.ClientSession,
    sandbox: Sandbox,
    config: Config,
    token: str,
    sessions: int,
    end: float,
    probe: Callable[[], int],
) -> tuple[float, int]:
    """A fresh gateway's growth per session by `probe`, after a warm-up; and the poll body's size."""
    runner, url = await serve(create_app(config))
    try:
        await fill(http, url, token, WARMUP, end, sandbox)  # pools, caches, first-use allocations
        gc.collect()
        before = probe()
        body = await fill(http, url, token, sessions, end, sandbox)
        gc.collect()
        return (probe() - before) / sessions, body
    finally:
        await runner.cleanup()


async def measure(lpus: int, sessions: int, probe: str) -> tuple[float, int]:
    """One figure in this process: growth per session by `probe` (rss or heap), and the body size."""
    patient = SandboxPatient(f"sizing-{lpus}", [demo_lpu(i + 1) for i in range(lpus)])
    sandbox = Sandbox([patient])
    sandbox_runner, sandbox_url = await serve(create_sandbox_app(sandbox))
    config = Config().replace(
        upstream={"url": sandbox_url},
        session={"max_sessions": sessions + WARMUP + 1, "memory_budget_mb": 0},
        limits={"sessions_per_token": 1000, "poll_rate": 1000.0, "poll_burst": 1000},
    )
    end = time.monotonic() + TIME_LIMIT
    if probe == "heap":
        tracemalloc.start()
    try:
        async with aiohttp.ClientSession() as http:
            return await grow(
                http, sandbox, config, patient.token, sessions, end, traced_bytes if probe == "heap" else rss_bytes
            )
    finally:
        tracemalloc.stop()
        await sandbox_runner.cleanup()


def child(lpus: int, sessions: int, probe: str) -> tuple[float, int]:
    """Each figure in a fresh process: memory freed by an earlier run would hide a later one's growth."""
    result = subprocess.run(
        [sys.executable, __file__, "--sessions", str(sessions), "--one", f"{lpus}:{probe}"],
        capture_output=True,
        text=True,
        timeout=TIME_LIMIT + 60,
        check=True,
    )
    per, body = json.loads(result.stdout)
    return per, body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=1000, help="sessions per LPU count (100..20000)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # LPUS:rss|heap, the child's figure
    args = parser.parse_args()
    if not 100 <= args.sessions <= 20_000:
        parser.error("--sessions must be 100..20000")
    configure_logging(LogConfig(level="warning", format="json"))
    if args.one:
        lpus, probe = args.one.split(":")
        print(json.dumps(asyncio.run(measure(int(lpus), args.sessions, probe))))
        return
    print(f"{args.sessions} sessions per LPU count, in-process store, each figure in a fresh process\n")
    print("LPUs  poll body  heap (tracemalloc)/session  RSS growth/session  RSS ÷ body")
    for lpus in LPU_COUNTS:
        # RSS without tracemalloc (its own bookkeeping would count), the heap in another process.
        rss_per, body = child(lpus, args.sessions, "rss")
        heap_per, _ = child(lpus, args.sessions, "heap")
        print(
            f"{lpus:>4}  {body / 1024:>7.1f} KiB  {heap_per / 1024:>22.1f} KiB  "
            f"{rss_per / 1024:>14.1f} KiB  {rss_per / body:>10.2f}"
        )


if __name__ == "__main__":
    main()
