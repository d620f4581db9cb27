"""Serving apps from synchronous code: `ThreadedServer` runs them with the gateway's own runner
on an event loop in a thread of its own, for the tools and tests that drive a server from
another loop or none (the HTTP fuzz tests, `scripts/soak.py`).

A harness, not part of serving: it lives here rather than in tests/support/ because
scripts/soak.py uses it too, and the scripts import the installed package, not the tests; and
under gateway/http/ because it drives `aiohttp.web`, which only the HTTP edge imports.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from aiohttp import web

from gateway.http.runner import GatewayRunner

T = TypeVar("T")


class ThreadedServer:
    """Serves apps with GatewayRunner on an event loop in a thread of its own (loopback, a free
    port each), for tools and tests that drive them from synchronous code or another loop."""

    def __init__(self, handler_cancellation: bool = False) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="served-apps", daemon=True)
        self._thread.start()
        self._runners: list[web.AppRunner] = []
        self._handler_cancellation = handler_cancellation

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        """Runs a coroutine on the server's loop and returns its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def serve(self, app: web.Application) -> int:
        """Starts serving `app` on 127.0.0.1; returns its port."""
        return self.run(self._serve(app))

    async def _serve(self, app: web.Application) -> int:
        runner = GatewayRunner(app, access_log=None, handler_cancellation=self._handler_cancellation)
        await runner.setup()
        self._runners.append(runner)
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        return int(runner.addresses[0][1])

    async def _cleanup(self) -> None:
        for runner in reversed(self._runners):
            await runner.cleanup()

    def stop(self) -> None:
        try:
            self.run(self._cleanup())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()
