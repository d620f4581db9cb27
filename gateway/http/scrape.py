"""`GET /metrics` for Prometheus, on the admin listener (server `metrics.port`) or, with
`metrics.port = 0`, on the main port."""

from __future__ import annotations

from aiohttp import web
from prometheus_client.exposition import choose_encoder

from gateway.http import admin, keys
from gateway.http.middleware import errors

METRICS_PATH = "/metrics"


async def metrics(request: web.Request) -> web.Response:
    # Text format, or OpenMetrics when the scraper asks for it (Prometheus does).
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    body = encode(request.app[keys.METRICS].exposition())
    return web.Response(body=body, headers={"Content-Type": content_type})


def add_routes(app: web.Application) -> None:
    app.router.add_get(METRICS_PATH, metrics, allow_head=False)


def create_metrics_app(gateway: web.Application) -> web.Application:
    """The admin listener's app: the gateway's own registry, off the route the apps use (a load
    balancer that forwards the public port never exposes it), and the admin routes when
    `rollout.admin_on_metrics_port` puts them here. No access log, no request metrics: a
    scrape every few seconds is not traffic. Errors answer in the standard shape."""
    app = web.Application(middlewares=[errors])
    app[keys.METRICS] = gateway[keys.METRICS]
    app[keys.CONFIG] = gateway[keys.CONFIG]
    add_routes(app)
    if admin.admin_listener(gateway):
        admin.add_routes(app, gateway)
    return app
