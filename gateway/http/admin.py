"""Inspection of the rollout, off the public route: `GET /admin/rollout` (effective flags, the
flags file's version, the guardrails and each cohort's state, why and since when),
`GET /admin/rollout/shadow` (latest shadow mismatches, and regression against noise per field),
`GET /admin/migration` (the "safe to retire" report: docs/migration.md), and the one action,
`POST /admin/rollout/guardrails/<app>/<platform>/<version>/rearm` (a tripped cohort, named by its
text form `app/platform/version` (gateway/cohorts.py), back to what the flags say;
docs/rollout-guardrails.md).

All need `X-Admin-Token: <rollout.admin_token>` (a random string of 32+ characters, checked at
start by gateway/config/checks.py). Without a configured token the routes do not exist; with a wrong or
missing token they answer exactly like a route that does not exist. Wrong tokens are counted
(`gateway_admin_auth_failures_total`) and limited per client address and in total
(`rollout.admin_failures_per_client`, `admin_failures_total` per minute): beyond, the routes
answer 429 until the allowance refills, so guessing runs at a few attempts a minute. With
`rollout.admin_on_metrics_port` they live on the admin listener instead of the public port.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from gateway.buckets import KeyedBuckets
from gateway.cohorts import Cohort
from gateway.config import RolloutConfig
from gateway.contract import GatewayError
from gateway.http import keys

log = structlog.get_logger("gateway.admin")
ADMIN_HEADER = "X-Admin-Token"
ROLLOUT_PATH = "/admin/rollout"
SHADOW_PATH = "/admin/rollout/shadow"
# The cohort's text form is the path: /admin/rollout/guardrails/android/ios/4.11/rearm.
REARM_PATH = "/admin/rollout/guardrails/{app}/{platform}/{version}/rearm"
MIGRATION_PATH = "/admin/migration"
# The one key of the all-clients allowance.
_ALL = ""
# Client addresses remembered for the per-client allowance (least recently used forgotten).
_TRACKED_CLIENTS = 10_000

View = Callable[[web.Request, web.Application], Awaitable[web.Response]]


class AdminGuard:
    """The admin token check and its failure allowances."""

    def __init__(self, config: RolloutConfig) -> None:
        self._token = config.admin_token.encode()
        per_client, total = config.admin_failures_per_client, config.admin_failures_total
        self._per_client = KeyedBuckets(per_client / 60, per_client, _TRACKED_CLIENTS)
        self._total = KeyedBuckets(total / 60, total, 1)

    def throttled(self, request: web.Request, gateway: web.Application) -> int:
        """Seconds until this client may try a token again (0: now). Header and sign-in form
        draw on the same allowances."""
        wait = max(self._per_client.wait(request.remote or "unknown"), self._total.wait(_ALL))
        if wait:
            gateway[keys.METRICS].rejected.labels("admin_failures").inc()
        return wait

    def accepts(self, request: web.Request, gateway: web.Application, given: str) -> bool:
        """Whether `given` is the admin token; a wrong one is counted and spends the allowances."""
        if hmac.compare_digest(given.encode("utf-8", "surrogateescape"), self._token):
            return True
        gateway[keys.METRICS].admin_failures.inc()
        self._per_client.spend(request.remote or "unknown")
        self._total.spend(_ALL)
        return False

    def authorize(self, request: web.Request, gateway: web.Application, method: str) -> None:
        """The allowance first, then the token, then the method: without the token not even a
        405 tells the route exists."""
        wait = self.throttled(request, gateway)
        if wait:
            raise GatewayError("too_many_requests", retry_after=wait)
        if not self.accepts(request, gateway, request.headers.get(ADMIN_HEADER, "")):
            raise GatewayError("route_not_found")
        if request.method != method:
            raise web.HTTPMethodNotAllowed(request.method, [method])


async def rollout_state(request: web.Request, gateway: web.Application) -> web.Response:
    state = gateway[keys.ROLLOUT].describe()
    shadow = gateway.get(keys.SHADOW)
    state["shadow"] = {"running": shadow.running} if shadow is not None else None
    return web.json_response(state)


async def shadow_samples(request: web.Request, gateway: web.Application) -> web.Response:
    shadow = gateway.get(keys.SHADOW)
    if shadow is None:
        return web.json_response({"mismatches": [], "fields": None})
    return web.json_response({"mismatches": shadow.samples(), "fields": shadow.report()})


async def rearm_cohort(request: web.Request, gateway: web.Application, cohort: Cohort, via: str) -> bool:
    """The re-arm, from the API route or the console, audited alike: one `admin_rearm` line
    (cohort, outcome, which door, the client's address) besides the guardrails' own."""
    rails = gateway[keys.ROLLOUT].guardrails
    rearmed = rails is not None and await rails.rearm(cohort)
    log.info("admin_rearm", cohort=str(cohort), rearmed=rearmed, via=via, client=request.remote)
    return rearmed


async def rearm(request: web.Request, gateway: web.Application) -> web.Response:
    match = request.match_info
    cohort = Cohort(match["app"], match["platform"], match["version"])
    if not await rearm_cohort(request, gateway, cohort, "api"):
        # Not tripped (or no such cohort): nothing to do, and the answer says so.
        return web.json_response({"cohort": str(cohort), "rearmed": False}, status=409)
    return web.json_response({"cohort": str(cohort), "rearmed": True})


async def migration_report(request: web.Request, gateway: web.Application) -> web.Response:
    return web.json_response(await gateway[keys.MIGRATION].report())


def admin_listener(gateway: web.Application) -> bool:
    """Whether the admin routes are on the admin listener rather than the gateway's own port."""
    config = gateway[keys.CONFIG]
    return config.rollout.admin_on_metrics_port and config.metrics.port != 0


def add_routes(app: web.Application, gateway: web.Application) -> AdminGuard | None:
    """Adds the admin routes to `app` (the gateway itself, or its admin listener's app), serving
    `gateway`'s rollout; returns their guard (None: no admin token, no routes), which the
    console shares."""
    config = gateway[keys.CONFIG].rollout
    if not config.admin_token:
        return None
    guard = AdminGuard(config)

    def guarded(view: View, method: str = "GET") -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            guard.authorize(request, gateway, method)
            return await view(request, gateway)

        return handler

    app.router.add_route("*", ROLLOUT_PATH, guarded(rollout_state))
    app.router.add_route("*", SHADOW_PATH, guarded(shadow_samples))
    app.router.add_route("*", REARM_PATH, guarded(rearm, "POST"))
    app.router.add_route("*", MIGRATION_PATH, guarded(migration_report))
    return guard
