"""The sandbox upstream served for bursts of new connections: a listen backlog of 2048.

The `upstream` fixture's test server listens with aiohttp's default backlog of 128; a burst of
hundreds of connects at once then sees SYNs dropped and retried a second later, which a real
upstream sized for its clients does not do and which would make every call in a burst test
late for a reason that is not the gateway's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web

from gateway.sandbox.app import Sandbox, create_sandbox_app
from tests.support.gate import UpstreamGate

BACKLOG = 2048


@asynccontextmanager
async def burst_upstream(
    sandbox: Sandbox, backlog: int = BACKLOG, gate: UpstreamGate | None = None
) -> AsyncIterator[str]:
    """Serves `sandbox` on 127.0.0.1 (a free port) for the block, its LPUs' answers behind
    `gate` if given (tests/support/gate.py); yields its base URL."""
    app = create_sandbox_app(sandbox)
    if gate is not None:
        app.middlewares.append(gate.middleware)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=backlog)
        await site.start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()
