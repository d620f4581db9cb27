"""The fan-out ceiling: a plain aiohttp client issuing the gateway's upstream calls itself.

Per "session": the MKAB list, then visit, calldoctor and disp for each LPU concurrently, with
the headers the gateway sends; bodies are read, not mapped. Prints one JSON line.

- mode "calls": `concurrency` sessions in flight at a time; it stops after `sessions` sessions
  or `time_limit` seconds; prints calls made, wall seconds, CPU seconds of this process.
- mode "bursts": `bursts` times, `concurrency` sessions started at once; prints each session's
  request id (`bench-...`, so the upstream times its calls) and its duration.

    python -m bench.plain --spec '{"upstream": "http://127.0.0.1:PORT", "tokens": [...], ...}'
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time
import uuid
from typing import Any

import aiohttp

from bench.httpload import closed_loop

METHOD_PATHS = ("/api/v2/visit", "/api/v2/calldoctor", "/api/v2/disp")


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    base: str = spec["upstream"]
    assert base.startswith("http://127."), "load is only ever sent to loopback"
    tokens: list[str] = spec["tokens"]
    calls = 0
    connector = aiohttp.TCPConnector(limit=spec.get("max_connections", 256), limit_per_host=0)
    async with aiohttp.ClientSession(connector=connector) as client:

        async def get(path: str, headers: dict[str, str], params: dict[str, str] | None = None) -> bytes:
            nonlocal calls
            async with client.get(base + path, params=params, headers=headers, allow_redirects=False) as resp:
                calls += 1
                return await resp.read()

        async def session(i: int, request_id: str = "plain") -> None:
            headers = {
                "Authorization": f"Bearer {tokens[i % len(tokens)]}",
                "X-Request-Id": request_id,
                "Accept": "application/json",
            }
            lpus = [entry["lpu"]["guid"] for entry in json.loads(await get("/api/v2/mkab", headers))]
            await asyncio.gather(*(get(path, headers, {"lpuGuid": g}) for g in lpus for path in METHOD_PATHS))

        if spec.get("mode") == "bursts":
            return await bursts(spec["concurrency"], spec["bursts"], session)
        await closed_loop(2, 2, 10, session)  # warm the connection pool, not counted
        calls = 0
        cpu0 = _cpu()
        done, wall = await closed_loop(spec["concurrency"], spec["sessions"], spec["time_limit"], session)
        cpu = _cpu() - cpu0
    return {"sessions": done, "calls": calls, "wall": wall, "cpu": cpu}


async def bursts(concurrency: int, count: int, session: Any) -> dict[str, Any]:
    samples: list[tuple[str, float]] = []

    async def timed(i: int, record: bool) -> None:
        rid = f"bench-{uuid.uuid4().hex}"
        started = time.monotonic()
        await session(i, rid)
        if record:
            samples.append((rid, time.monotonic() - started))

    for burst in range(count + 1):  # the first one warms the pool
        async with asyncio.timeout(60):
            await asyncio.gather(*(timed(i, burst > 0) for i in range(concurrency)))
    return {"samples": samples}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--spec", required=True)
    spec = json.loads(parser.parse_args().spec)
    loop_factory = None
    if spec.get("loop") == "uvloop":
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        print(json.dumps(runner.run(run(spec))), flush=True)


if __name__ == "__main__":
    main()
