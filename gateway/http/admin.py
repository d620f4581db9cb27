"""Read-only inspection of the rollout, off the public route: `GET /admin/rollout` (effective flags
and the flags file's version) and `GET /admin/rollout/shadow` (latest shadow mismatches).

Both need `X-Admin-Token: <rollout.admin_token>` (a random string of 32+ characters, checked at
start by gateway/config.py). Without a configured token the routes do not exist; with a wrong or
missing token they answer exactly like a route that does not exist. Wrong tokens are counted
(`gateway_admin_auth_failures_total`) and limited per client address and in total
(`rollout.admin_failures_per_client`, `admin_failures_total` per minute): beyond, the routes
answer 429 until the allowance refills, so guessing runs at a few attempts a minute. With
`rollout.admin_on_metrics_port` they live on the admin listener instead of the public port.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway.buckets import KeyedBuckets
from gateway.config import RolloutConfig
from gateway.contract import GatewayError
from gateway.http import keys

ADMIN_HEADER = "X-Admin-Token"
ROLLOUT_PATH = "/admin/rollout"
SHADOW_PATH = "/admin/rollout/shadow"
# The one key of the all-clients allowance.
_ALL = ""
# Client addresses remembered for the per-client allowance (least recently used forgotten).
_TRACKED_CLIENTS = 10_000


class AdminGuard:
    """The admin token check and its failure allowances."""

    def __init__(self, config: RolloutConfig) -> None:
        self._token = config.admin_token.encode()
        per_client, total = config.admin_failures_per_client, config.admin_failures_total
        self._per_client = KeyedBuckets(per_client / 60, per_client, _TRACKED_CLIENTS)
        self._total = KeyedBuckets(total / 60, total, 1)

    def authorize(self, request: web.Request, gateway: web.Application) -> None:
        """The allowance first, then the token, then the method: without the token not even a
        405 tells the route exists."""
        client = request.remote or "unknown"
        metrics = gateway[keys.METRICS]
        wait = max(self._per_client.wait(client), self._total.wait(_ALL))
        if wait:
            metrics.rejected.labels("admin_failures").inc()
            raise GatewayError("too_many_requests", retry_after=wait)
        given = request.headers.get(ADMIN_HEADER, "").encode("utf-8", "surrogateescape")
        if not hmac.compare_digest(given, self._token):
            metrics.admin_failures.inc()
            self._per_client.spend(client)
            self._total.spend(_ALL)
            raise GatewayError("route_not_found")
        if request.method != "GET":
            raise web.HTTPMethodNotAllowed(request.method, ["GET"])


async def rollout_state(request: web.Request, gateway: web.Application) -> web.Response:
    state = gateway[keys.ROLLOUT].describe()
    shadow = gateway.get(keys.SHADOW)
    state["shadow"] = {"running": shadow.running} if shadow is not None else None
    return web.json_response(state)


async def shadow_samples(request: web.Request, gateway: web.Application) -> web.Response:
    shadow = gateway.get(keys.SHADOW)
    return web.json_response({"mismatches": shadow.samples() if shadow is not None else []})


def admin_listener(gateway: web.Application) -> bool:
    """Whether the admin routes are on the admin listener rather than the gateway's own port."""
    config = gateway[keys.CONFIG]
    return config.rollout.admin_on_metrics_port and config.metrics.port != 0


def add_routes(app: web.Application, gateway: web.Application) -> None:
    """Adds the admin routes to `app` (the gateway itself, or its admin listener's app), serving
    `gateway`'s rollout."""
    config = gateway[keys.CONFIG].rollout
    if not config.admin_token:
        return
    guard = AdminGuard(config)

    def guarded(
        view: Callable[[web.Request, web.Application], Awaitable[web.Response]],
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            guard.authorize(request, gateway)
            return await view(request, gateway)

        return handler

    app.router.add_route("*", ROLLOUT_PATH, guarded(rollout_state))
    app.router.add_route("*", SHADOW_PATH, guarded(shadow_samples))
