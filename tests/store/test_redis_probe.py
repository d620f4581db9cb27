"""The Redis store's reachability probe runs on `Tasks.every`: a probe that raises (a bug) is
logged and counted, and the probes go on, so the store is never left marked down for good; and
closing the store ends the probes even when it lands in one (redis-py finishes that call)."""

from __future__ import annotations

import asyncio
import json

from gateway.config import RedisConfig, SessionConfig
from gateway.observability.metrics import Metrics
from gateway.store.redis import RedisStore
from gateway.tasks import Tasks
from tests.support.gateway import LOG
from tests.support.redis_server import RedisServer


async def test_a_probe_that_raises_is_logged_and_the_probes_go_on(redis_server: RedisServer) -> None:
    crashed: list[str] = []
    tasks = Tasks(on_crash=crashed.append)
    store = RedisStore(RedisConfig(url=redis_server.url, probe_interval=0.01), SessionConfig(), Metrics(), tasks)
    calls = 0
    probed_again = asyncio.Event()
    real_probe = store.probe

    async def probe() -> bool:
        nonlocal calls
        calls += 1
        if calls == 2:  # the first periodic one: the first call is start's own check
            raise RuntimeError("bug")
        if calls == 3:
            probed_again.set()
        return await real_probe()

    store.probe = probe  # type: ignore[method-assign]
    mark = len(LOG.getvalue())
    await store.start()
    try:
        async with asyncio.timeout(10):
            await probed_again.wait()
        assert await store.ready()
    finally:
        async with asyncio.timeout(10):
            # The probe set the event and went on into its Redis call: the close lands in it.
            await store.close()
    assert crashed == ["redis_probe"] and tasks.count("redis_probe") == 0
    lines = [json.loads(line) for line in LOG.getvalue()[mark:].splitlines() if line]
    [line] = [r for r in lines if r.get("event") == "background_tick_failed"]
    assert line["task"] == "redis_probe" and line["error"] == "RuntimeError"
