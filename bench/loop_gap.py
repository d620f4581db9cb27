"""How long mapping one large upstream answer holds the event loop: all at once, in a worker
thread, and in the fan-out's time-bounded slices (docs/upstream-isolation.md, "Loop time").

`python -m bench.loop_gap [--runs 5]` prints, per way, the median over runs of the longest gap
a task ticking on the loop saw while one answer of 1000 seed visits (880 KB) was parsed, mapped
and serialized, and the median time the work took.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

import orjson

from gateway.sandbox.data import SEED_VISIT
from gateway.upstream.answers import AnswerCaps, map_answer, parse_answer, parse_body
from gateway.upstream.mapping import map_visits

RECORDS = 1000


async def longest_gap(work: Callable[[], Awaitable[object]]) -> tuple[float, float]:
    """(longest loop gap, duration of `work`), in seconds."""
    gaps: list[float] = []
    done = asyncio.Event()

    async def tick() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0.01)
    started = time.perf_counter()
    await work()
    took = time.perf_counter() - started
    done.set()
    await ticker
    return max(gaps), took


async def measure(runs: int) -> dict[str, tuple[float, float]]:
    body = orjson.dumps([SEED_VISIT] * RECORDS)
    caps = AnswerCaps(max_values=10**7, max_records=10**6, max_bytes=10**9)
    loop = asyncio.get_running_loop()
    results: dict[str, tuple[float, float]] = {}
    with ThreadPoolExecutor(max_workers=1) as thread:

        async def at_once() -> bytes:
            return orjson.dumps(map_visits(parse_body(body)))

        async def in_thread() -> bytes:
            return await loop.run_in_executor(thread, lambda: orjson.dumps(map_visits(parse_body(body))))

        async def in_slices() -> bytes:
            return await map_answer(parse_answer(body, caps), map_visits, caps)

        for name, work in (("all at once", at_once), ("worker thread", in_thread), ("2 ms slices", in_slices)):
            samples = [await longest_gap(work) for _ in range(runs)]
            results[name] = (statistics.median(g for g, _ in samples), statistics.median(t for _, t in samples))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    for name, (gap, took) in asyncio.run(measure(args.runs)).items():
        print(f"{name:>14}: longest loop gap {gap * 1000:6.1f} ms, work {took * 1000:6.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
