"""The background-task owner: a task that dies is logged and counted; shutdown cancels and awaits
every task, and an app leaves none behind."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from gateway.app import create_app
from gateway.config import Config
from gateway.http import keys
from gateway.tasks import Tasks
from tests.support.gateway import LOG


async def test_a_task_that_dies_is_logged_and_counted() -> None:
    crashed: list[str] = []
    tasks = Tasks(on_crash=crashed.append)
    mark = len(LOG.getvalue())

    async def broken() -> None:
        raise RuntimeError("bug")

    task = tasks.spawn(broken(), "probe")
    await asyncio.gather(task, return_exceptions=True)
    # The owner's done callback was registered first, so it has run by the time gather returns.
    assert crashed == ["probe"] and tasks.count("probe") == 0
    lines = [json.loads(line) for line in LOG.getvalue()[mark:].splitlines() if line]
    [line] = [r for r in lines if r.get("event") == "background_task_failed"]
    assert line["task"] == "probe" and line["error"] == "RuntimeError"


async def test_close_cancels_and_awaits_every_group() -> None:
    tasks = Tasks()
    ended: list[str] = []
    started = asyncio.Semaphore(0)

    async def forever(name: str) -> None:
        try:
            started.release()
            await asyncio.Event().wait()
        finally:
            ended.append(name)

    for group in ("fanout", "shadow_compare", "flags_watcher"):
        tasks.spawn(forever(group), group)
    for _ in range(3):
        await started.acquire()
    assert await tasks.cancel("fanout") == 1 and ended == ["fanout"]
    await tasks.close()
    assert sorted(ended) == ["fanout", "flags_watcher", "shadow_compare"]
    assert all(tasks.count(g) == 0 for g in ("fanout", "shadow_compare", "flags_watcher"))


async def test_an_app_crash_is_counted_in_its_metrics(aiohttp_client: Any) -> None:
    client = await aiohttp_client(create_app(Config()))
    app = client.server.app

    async def broken() -> None:
        raise ValueError("bug")

    await asyncio.gather(app[keys.TASKS].spawn(broken(), "lease_keeper"), return_exceptions=True)
    await asyncio.sleep(0)
    value = app[keys.METRICS].registry.get_sample_value(
        "gateway_background_task_failures_total", {"task": "lease_keeper"}
    )
    assert value == 1


async def test_every_runs_on_its_interval_survives_a_bad_tick_and_stops_on_cancel() -> None:
    crashed: list[str] = []
    tasks = Tasks(on_crash=crashed.append)
    ticks: list[int] = []
    third = asyncio.Event()

    async def tick() -> None:
        ticks.append(len(ticks))
        if len(ticks) == 2:
            raise RuntimeError("one bad tick")
        if len(ticks) == 3:
            third.set()

    tasks.every(0.001, tick, "probe")
    async with asyncio.timeout(5):
        await third.wait()
    # The second tick raised: it was counted, and the loop went on to the third.
    assert crashed == ["probe"] and ticks[:3] == [0, 1, 2]
    assert await tasks.cancel("probe") == 1 and tasks.count("probe") == 0


async def test_every_wakes_at_once_and_stops_when_the_tick_says_so() -> None:
    tasks = Tasks()
    wake = asyncio.Event()
    ran = asyncio.Event()

    async def tick() -> object:
        ran.set()
        return Tasks.STOP

    # An hour's interval: only the wake can run the tick within the test's bound.
    task = tasks.every(3600, tick, "flags_watcher", wake=wake)
    wake.set()
    async with asyncio.timeout(5):
        await ran.wait()
        await task
    # The loop ended by itself, not by a cancel, and the wake was consumed.
    assert not task.cancelled() and not wake.is_set()


async def test_every_stops_on_a_cancel_that_its_tick_swallowed() -> None:
    """redis-py finishes a command it is cancelled in and returns its answer: the loop must
    still end, or `cancel` (and so the app's shutdown) waits for it forever."""
    tasks = Tasks()
    in_tick = asyncio.Event()
    cancelled = asyncio.Event()

    async def tick() -> None:
        in_tick.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()  # and, like the library, carry on as if nothing had happened

    task = tasks.every(0.001, tick, "redis_probe")
    async with asyncio.timeout(5):
        await in_tick.wait()
        assert await tasks.cancel("redis_probe") == 1
    assert cancelled.is_set() and task.cancelled() and tasks.count("redis_probe") == 0
