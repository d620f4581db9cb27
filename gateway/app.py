"""The app factory: create_app(config) wires the store, the upstream client and the fan-out,
each opened and closed in a cleanup context, in dependency order."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from gateway import keys
from gateway.api import admin, health, openapi, tickets
from gateway.api import metrics as metrics_api
from gateway.clients import client_table
from gateway.config import Config
from gateway.fanout import Fanout
from gateway.legacy import Legacy
from gateway.limits import SessionLimits
from gateway.metrics import Metrics
from gateway.middleware import errors, request_context
from gateway.rollout import Rollout
from gateway.shadow import Shadow
from gateway.store.base import SessionStore
from gateway.store.memory import MemoryStore
from gateway.store.redis import RedisStore
from gateway.upstream import Upstream, new_client_session
from gateway.usage import old_path_usage


async def _store(app: web.Application) -> AsyncIterator[None]:
    config = app[keys.CONFIG]
    store: SessionStore
    if config.redis.url:
        redis_store = RedisStore(config.redis, config.session, app[keys.METRICS])
        await redis_store.start()
        store = redis_store
    else:
        store = MemoryStore(
            config.session.max_sessions, config.session.ttl, app[keys.METRICS], lease_ttl=config.redis.lease_ttl
        )
    app[keys.STORE] = store
    yield
    await store.close()


async def _upstream(app: web.Application) -> AsyncIterator[None]:
    config = app[keys.CONFIG]
    client = new_client_session(config.upstream)
    app[keys.CLIENT] = client
    app[keys.UPSTREAM] = Upstream(config.upstream, client, app[keys.METRICS], config.limits)
    yield
    await client.close()


async def _fanout(app: web.Application) -> AsyncIterator[None]:
    config = app[keys.CONFIG]
    fanout = Fanout(
        config.session, app[keys.STORE], app[keys.UPSTREAM], app[keys.METRICS], lease_ttl=config.redis.lease_ttl
    )
    app[keys.FANOUT] = fanout
    yield
    # Cleanup runs after aiohttp has answered in-flight requests; the fan-outs go first, while
    # the client session and the store they use are still open.
    await fanout.close()


async def _rollout(app: web.Application) -> AsyncIterator[None]:
    config = app[keys.CONFIG].rollout
    metrics = app[keys.METRICS]
    rollout = Rollout(config, metrics)
    app[keys.ROLLOUT] = rollout
    await rollout.start()
    if rollout.enabled:
        legacy = Legacy(config, metrics)
        shadow = Shadow(config, app[keys.FANOUT], app[keys.STORE], legacy, metrics)
        app[keys.LEGACY], app[keys.SHADOW] = legacy, shadow
    yield
    # Before the fan-outs close: a compare waits on them, and uses the legacy client.
    if rollout.enabled:
        await shadow.close()
        await legacy.close()
    await rollout.close()


def create_app(config: Config, metrics: Metrics | None = None) -> web.Application:
    # The parser's limits go with the app, so that every runner serving it (the CLI's, the
    # tests') applies them; see gateway/server.py for how their refusals are answered.
    limits = {"max_line_size": config.server.max_line_size, "max_field_size": config.server.max_field_size}
    app = web.Application(middlewares=[request_context, old_path_usage, errors], handler_args=limits)
    app[keys.CONFIG] = config
    app[keys.METRICS] = metrics or Metrics()
    app[keys.CLIENTS] = client_table(config.clients)
    app[keys.METRICS].zero_client_series(app[keys.CLIENTS].apps)
    app[keys.LIMITS] = SessionLimits(config.limits, app[keys.METRICS], config.session.ttl)
    app.cleanup_ctx.extend([_store, _upstream, _fanout, _rollout])
    tickets.add_routes(app)
    health.add_routes(app)
    admin.add_routes(app)
    if config.metrics.port == 0:
        metrics_api.add_routes(app)
    openapi.add_routes(app)
    return app
