"""Read-only inspection of the rollout, off the public route: `GET /admin/rollout` (effective flags
and the flags file's version), `GET /admin/rollout/shadow` (latest shadow mismatches) and
`GET /admin/migration` (the "safe to retire" report: docs/migration.md).

Both need `X-Admin-Token: <rollout.admin_token>`. Without a configured token the routes do not
exist; with a wrong or missing token they answer exactly like a route that does not exist.
"""

from __future__ import annotations

import hmac

from aiohttp import web

from gateway.contract import GatewayError
from gateway.http import keys

ADMIN_HEADER = "X-Admin-Token"
ROLLOUT_PATH = "/admin/rollout"
SHADOW_PATH = "/admin/rollout/shadow"
MIGRATION_PATH = "/admin/migration"


def _authorize(request: web.Request) -> None:
    """The token first, then the method: without the token not even a 405 tells the route exists."""
    expected = request.app[keys.CONFIG].rollout.admin_token
    given = request.headers.get(ADMIN_HEADER, "")
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise GatewayError("route_not_found")
    if request.method != "GET":
        raise web.HTTPMethodNotAllowed(request.method, ["GET"])


async def rollout_state(request: web.Request) -> web.Response:
    _authorize(request)
    state = request.app[keys.ROLLOUT].describe()
    shadow = request.app.get(keys.SHADOW)
    state["shadow"] = {"running": shadow.running} if shadow is not None else None
    return web.json_response(state)


async def shadow_samples(request: web.Request) -> web.Response:
    _authorize(request)
    shadow = request.app.get(keys.SHADOW)
    return web.json_response({"mismatches": shadow.samples() if shadow is not None else []})


async def migration_report(request: web.Request) -> web.Response:
    _authorize(request)
    return web.json_response(await request.app[keys.MIGRATION].report())


def add_routes(app: web.Application) -> None:
    if not app[keys.CONFIG].rollout.admin_token:
        return
    app.router.add_route("*", ROLLOUT_PATH, rollout_state)
    app.router.add_route("*", SHADOW_PATH, shadow_samples)
    app.router.add_route("*", MIGRATION_PATH, migration_report)
