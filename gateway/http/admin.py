"""Inspection of the rollout, off the public route: `GET /admin/rollout` (effective flags, the
flags file's version, the guardrails and each cohort's state, why and since when),
`GET /admin/rollout/shadow` (latest shadow mismatches, and regression against noise per field),
`GET /admin/migration` (the "safe to retire" report: docs/migration.md), and the one action,
`POST /admin/rollout/guardrails/<cohort>/rearm` (a tripped cohort back to what the flags say;
docs/rollout-guardrails.md).

All need `X-Admin-Token: <rollout.admin_token>`. Without a configured token the routes do not
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
REARM_PATH = "/admin/rollout/guardrails/{cohort}/rearm"
MIGRATION_PATH = "/admin/migration"


def _authorize(request: web.Request, method: str = "GET") -> None:
    """The token first, then the method: without the token not even a 405 tells the route exists."""
    expected = request.app[keys.CONFIG].rollout.admin_token
    given = request.headers.get(ADMIN_HEADER, "")
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise GatewayError("route_not_found")
    if request.method != method:
        raise web.HTTPMethodNotAllowed(request.method, [method])


async def rollout_state(request: web.Request) -> web.Response:
    _authorize(request)
    state = request.app[keys.ROLLOUT].describe()
    shadow = request.app.get(keys.SHADOW)
    state["shadow"] = {"running": shadow.running} if shadow is not None else None
    return web.json_response(state)


async def shadow_samples(request: web.Request) -> web.Response:
    _authorize(request)
    shadow = request.app.get(keys.SHADOW)
    if shadow is None:
        return web.json_response({"mismatches": [], "fields": None})
    return web.json_response({"mismatches": shadow.samples(), "fields": shadow.report()})


async def rearm(request: web.Request) -> web.Response:
    _authorize(request, "POST")
    rails = request.app[keys.ROLLOUT].guardrails
    cohort = request.match_info["cohort"]
    if rails is None or not await rails.rearm(cohort):
        # Not tripped (or no such cohort): nothing to do, and the answer says so.
        return web.json_response({"cohort": cohort, "rearmed": False}, status=409)
    return web.json_response({"cohort": cohort, "rearmed": True})


async def migration_report(request: web.Request) -> web.Response:
    _authorize(request)
    return web.json_response(await request.app[keys.MIGRATION].report())


def add_routes(app: web.Application) -> None:
    if not app[keys.CONFIG].rollout.admin_token:
        return
    app.router.add_route("*", ROLLOUT_PATH, rollout_state)
    app.router.add_route("*", SHADOW_PATH, shadow_samples)
    app.router.add_route("*", REARM_PATH, rearm)
    app.router.add_route("*", MIGRATION_PATH, migration_report)
