"""`GET /metrics` for Prometheus, on the admin listener (server `metrics.port`) or, with
`metrics.port = 0`, on the main port."""

from __future__ import annotations

from aiohttp import web
from prometheus_client.exposition import choose_encoder

from gateway.http import keys

METRICS_PATH = "/metrics"


async def metrics(request: web.Request) -> web.Response:
    # Text format, or OpenMetrics when the scraper asks for it (Prometheus does).
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    body = encode(request.app[keys.METRICS].exposition())
    return web.Response(body=body, headers={"Content-Type": content_type})


def add_routes(app: web.Application) -> None:
    app.router.add_get(METRICS_PATH, metrics, allow_head=False)
