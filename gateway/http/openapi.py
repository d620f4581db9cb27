"""The old contract as an OpenAPI 3.1 document (gateway/http/openapi.json), at GET /openapi.json.

Outside `/api/v2/old`, so that the rollout never forwards it to the legacy service."""

from __future__ import annotations

from importlib import resources

from aiohttp import web

PATH = "/openapi.json"


def document() -> bytes:
    return resources.files("gateway.http").joinpath("openapi.json").read_bytes()


def add_routes(app: web.Application) -> None:
    body = document()

    async def openapi(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    app.router.add_get(PATH, openapi, allow_head=False)
