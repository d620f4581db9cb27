"""Liveness and readiness for the orchestrator, and the drain before a stop: once the process
is told to stop, `/readyz` answers 503 (so the load balancer takes the replica out) while
requests are still served, each answer saying `Connection: close` so that kept-alive clients
reconnect, through the balancer, to a replica that is staying."""

from __future__ import annotations

import asyncio

from aiohttp import web

from gateway.contract import GatewayError
from gateway.http import keys


async def healthz(request: web.Request) -> web.Response:
    # Alive while draining too: the orchestrator must not kill a replica that is finishing.
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    if request.app[keys.DRAINING].is_set():
        raise GatewayError("unavailable")
    if not await request.app[keys.STORE].ready():
        raise GatewayError("unavailable")
    return web.json_response({"status": "ready"})


def start_draining(app: web.Application) -> None:
    """From now on /readyz answers 503 and every answer closes its connection (the request
    context's doing: gateway/http/middleware.py)."""
    app[keys.DRAINING].set()


def add_routes(app: web.Application) -> None:
    app[keys.DRAINING] = asyncio.Event()
    app.router.add_get("/healthz", healthz, allow_head=False)
    app.router.add_get("/readyz", readyz, allow_head=False)
