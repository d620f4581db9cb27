"""Who still calls the old path: every answer on the two old routes is counted here, in one
place, by route, serving side, client app, app version and status class, and stamps the app's
last-seen time. The dashboards' "apps still calling" and the retirement alert read these."""

from __future__ import annotations

import time

from aiohttp import web

from gateway import keys
from gateway.api.tickets import CREATE_PATH, POLL_PATH
from gateway.clients import classify
from gateway.middleware import Handler, route_template

ROUTES = {CREATE_PATH: "create", POLL_PATH: "poll"}


@web.middleware
async def old_path_usage(request: web.Request, handler: Handler) -> web.StreamResponse:
    # Sits outside the error middleware, so error answers are counted with their status.
    response = await handler(request)
    route = ROUTES.get(route_template(request))
    if route is not None:
        record_old_request(request, route, response.status)
    return response


def record_old_request(request: web.Request, route: str, status: int) -> None:
    app, version = classify(
        request.app[keys.CLIENTS], request.headers.get("ClientApplication"), request.headers.get("User-Agent")
    )
    # The rollout marks requests it forwarded ("legacy") or shadowed; the rest the gateway served.
    side = request.get(keys.SERVED_BY, "gateway")
    metrics = request.app[keys.METRICS]
    metrics.old_requests.labels(route, side, app, version, f"{status // 100}xx").inc()
    metrics.client_last_seen.labels(app).set(time.time())
