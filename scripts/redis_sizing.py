"""Measures what sessions cost in Redis, for the README's sizing notes.

Starts a redis-server (127.0.0.1, free port, temp dir, no persistence), a sandbox upstream and a
gateway on it, all on loopback; creates sessions through the API for patients with 1, 3 and 5
LPUs (the seed's records), waits until every one is final, and prints MEMORY USAGE per session
hash, the index's share, Redis's used_memory growth per 1,000 sessions, and poll latency.

    .venv/bin/python scripts/redis_sizing.py [--sessions 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gateway.app import create_app
from gateway.config import Config, LogConfig
from gateway.observability.logs import configure_logging
from gateway.sandbox.app import Sandbox, create_sandbox_app
from gateway.sandbox.data import SandboxPatient, demo_lpu
from tests.support.redis_server import RedisServer

TICKETS = "/api/v2/old/visit/tickets"
TIME_LIMIT = 300.0


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


async def measure(redis: RedisServer, sessions: int) -> None:
    patients = {n: SandboxPatient(f"sizing-{n}", [demo_lpu(i) for i in range(n)]) for n in (1, 3, 5)}
    sandbox_runner, sandbox_url = await serve(create_sandbox_app(Sandbox(list(patients.values()))))
    config = Config().replace(
        upstream={"url": sandbox_url}, redis={"url": redis.url}, session={"max_sessions": sessions * 4}
    )
    gateway_runner, gateway_url = await serve(create_app(config))
    end = time.monotonic() + TIME_LIMIT
    try:
        with redis.client() as r:
            print(f"redis {r.info('server')['redis_version']}, {sessions} sessions per patient kind\n")
            print("LPUs  hash bytes/session  index bytes/session  used_memory per 1,000  poll body  poll p50/p99 ms")
            async with aiohttp.ClientSession() as http:
                for n, p in patients.items():
                    headers = {"Authorization": f"Bearer {p.token}"}
                    r.flushall()
                    base = r.info("memory")["used_memory"]
                    guids = []
                    for _ in range(sessions):
                        async with http.get(gateway_url + TICKETS, headers=headers) as resp:
                            guids.append((await resp.json())["session"])
                        assert time.monotonic() < end, "time limit"
                    latencies, body_size = [], 0
                    for guid in guids:
                        while True:
                            started = time.perf_counter()
                            async with http.get(f"{gateway_url}{TICKETS}/{guid}", headers=headers) as resp:
                                body = await resp.read()
                            latencies.append((time.perf_counter() - started) * 1000)
                            if b"InProgress" not in body:
                                break
                            assert time.monotonic() < end, "time limit"
                            await asyncio.sleep(0.01)
                        body_size = len(body)
                    used = r.info("memory")["used_memory"] - base
                    hashes = [r.memory_usage(f"vg:s:{g}", samples=0) or 0 for g in guids[:200]]
                    index = (r.memory_usage("vg:sessions", samples=0) or 0) / len(guids)
                    cuts = statistics.quantiles(latencies, n=100)
                    print(
                        f"{n:>4}  {statistics.mean(hashes):>18.0f}  {index:>19.0f}  "
                        f"{used / len(guids) * 1000 / 2**20:>18.2f} MiB  {body_size:>7} B  "
                        f"{cuts[49]:>6.2f} / {cuts[98]:.2f}"
                    )
    finally:
        await gateway_runner.cleanup()
        await sandbox_runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=1000, help="sessions per patient kind (1..10000)")
    args = parser.parse_args()
    if not 1 <= args.sessions <= 10_000:
        parser.error("--sessions must be 1..10000")
    configure_logging(LogConfig(level="warning", format="json"))
    with tempfile.TemporaryDirectory() as directory:
        redis = RedisServer(Path(directory))
        redis.start()
        try:
            asyncio.run(measure(redis, args.sessions))
        finally:
            redis.stop()


if __name__ == "__main__":
    main()
