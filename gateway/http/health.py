"""Liveness and readiness for the orchestrator."""

from __future__ import annotations

from aiohttp import web

from gateway.contract import GatewayError
from gateway.http import keys


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    if not await request.app[keys.STORE].ready():
        raise GatewayError("unavailable")
    return web.json_response({"status": "ready"})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz, allow_head=False)
    app.router.add_get("/readyz", readyz, allow_head=False)
