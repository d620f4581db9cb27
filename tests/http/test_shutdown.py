"""Shutdown with sessions in flight: in-flight requests are answered, fan-outs are cancelled,
nothing hangs."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
from aiohttp import web

from gateway.app import create_app
from gateway.config import Config
from gateway.http import keys
from gateway.sandbox.data import LpuKnobs
from tests.support.gateway import TICKETS, bearer, patient


async def test_shutdown_answers_in_flight_requests_then_cancels_fanouts(upstream: Any) -> None:
    slow_mkab = patient(LpuKnobs(delay=60.0))
    slow_mkab.mkab_delay = 0.5
    in_flight = patient(LpuKnobs(delay=60.0), LpuKnobs(fault="hang"))
    sandbox, url = await upstream(slow_mkab, in_flight)
    app = create_app(Config().replace(upstream={"url": url}, session={"deadline": 120.0}))
    runner = web.AppRunner(app, shutdown_timeout=5.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    base = f"http://127.0.0.1:{port}{TICKETS}"
    async with aiohttp.ClientSession() as http:
        async with http.get(base, headers=bearer(in_flight.token)) as resp:
            assert resp.status == 200
        await sandbox.wait_calls(1 + 3 * 2)  # the fan-out's calls are all waiting upstream
        assert app[keys.SESSIONS].fanout.running == 1

        pending = asyncio.ensure_future(http.get(base, headers=bearer(slow_mkab.token)))
        await sandbox.wait_calls(2, method="mkab")  # the second create is now in flight
        started = time.monotonic()
        await runner.cleanup()
        took = time.monotonic() - started
        resp = await pending
        assert resp.status == 200, "the request in flight at shutdown was answered"
        assert "session" in await resp.json()
    assert app[keys.SESSIONS].fanout.running == 0
    assert took < 5.0, f"shutdown took {took:.1f}s with sessions in flight"
