"""The app factory: `create_app(config)` wires the task owner, the store, the upstream client,
the session service, the rollout and the migration ledger, each opened and closed in a cleanup context, in
dependency order (closed in reverse: what a component uses is still open while it closes)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from functools import partial

from aiohttp import web

from gateway.cohorts import ClientTable
from gateway.config import Config
from gateway.http import admin, console, health, keys, openapi, scrape, tickets
from gateway.http.middleware import errors, request_context, tracing_span, well_formed
from gateway.http.old_path import brownouts
from gateway.migration.clock import Clock, SystemClock
from gateway.migration.ledger import Ledger, MemoryLedger, RedisLedger
from gateway.migration.service import Migration
from gateway.observability.metrics import Metrics
from gateway.observability.otel import Tracing
from gateway.observability.tally import Tally
from gateway.rollout.flags import Rollout
from gateway.rollout.guardrails.board import Board, LocalBoard, RedisBoard
from gateway.rollout.guardrails.engine import Guardrails
from gateway.rollout.legacy import Legacy
from gateway.rollout.shadow import Shadow
from gateway.sessions.fanout import Fanout
from gateway.sessions.leases import Leases
from gateway.sessions.limits import SessionLimits
from gateway.sessions.service import SessionService
from gateway.store.base import SessionStore, TokenQuota
from gateway.store.finished import FinishedCache
from gateway.store.memory import MemoryStore
from gateway.store.redis import RedisStore
from gateway.store.redis_client import redis_client
from gateway.tasks import Tasks
from gateway.upstream.answers import AnswerCaps
from gateway.upstream.client import Upstream, new_client_session


async def _tasks(app: web.Application) -> AsyncIterator[None]:
    # First in, last out: each component cancels its own tasks as it closes; whatever is left
    # (a task of a component that failed to close) is cancelled and awaited here.
    app[keys.TASKS].every(1.0, app[keys.TALLY].tick, "metrics_fold")
    yield
    await app[keys.TASKS].close()
    app[keys.TALLY].fold()  # the last second's counts too


async def _store(app: web.Application) -> AsyncIterator[None]:
    config = app[keys.CONFIG]
    app[keys.METRICS].store_max_sessions.set(config.session.max_sessions)
    store: SessionStore
    if config.redis.url:
        redis_store = RedisStore(config.redis, config.session, app[keys.METRICS], app[keys.TASKS], limits=config.limits)
        await redis_store.start()
        store = redis_store
        if config.redis.finished_cache_sessions:
            hits = app[keys.METRICS].store_finished_cache_hits.inc
            store = FinishedCache(redis_store, config.redis.finished_cache_sessions, config.session.ttl, hits)
    else:
        store = MemoryStore(
            config.session.max_sessions,
            config.session.ttl,
            app[keys.METRICS],
            lease_ttl=config.redis.lease_ttl,
            quota=TokenQuota.of(config.session, config.limits),
        )
    app[keys.STORE] = store
    yield
    await store.close()


async def _sessions(app: web.Application) -> AsyncIterator[None]:
    config, metrics, store, tasks = app[keys.CONFIG], app[keys.METRICS], app[keys.STORE], app[keys.TASKS]
    tracing = app.get(keys.TRACING)
    client = new_client_session(config.upstream, tracing.trace_configs() if tracing else [])
    upstream = Upstream(config.upstream, client, metrics, config.limits)
    caps = AnswerCaps(config.upstream.max_json_values, config.upstream.max_records, config.session.max_entry_bytes)
    leases = Leases(store, tasks, config.redis.lease_ttl)
    fanout = Fanout(config.session, store, upstream, metrics, tasks, leases, caps, config.limits.upstream_per_session)
    limits = SessionLimits(config.limits, metrics)
    app[keys.SESSIONS] = SessionService(config.session, store, upstream, fanout, limits, metrics)
    yield
    # Cleanup runs after aiohttp has answered in-flight requests; the fan-outs go first, while
    # the client session and the store they use are still open.
    await fanout.close()
    await client.close()


def _guardrails(app: web.Application) -> Guardrails | None:
    """Per-cohort guardrails, shared through Redis when the sessions are; only with a legacy
    service to fall back to."""
    config = app[keys.CONFIG]
    if not config.rollout.legacy_url:
        return None
    board: Board = RedisBoard(config.redis) if config.redis.url else LocalBoard()
    return Guardrails(config.rollout, app[keys.METRICS], app[keys.TASKS], app[keys.CLIENTS].ordered(), board)


async def _rollout(app: web.Application) -> AsyncIterator[None]:
    config = app[keys.CONFIG].rollout
    metrics = app[keys.METRICS]
    rollout = Rollout(config, metrics, app[keys.TASKS], _guardrails(app))
    app[keys.ROLLOUT] = rollout
    await rollout.start()
    if rollout.enabled:
        tracing = app.get(keys.TRACING)
        legacy = Legacy(config, metrics, tracing.trace_configs() if tracing else [])
        sessions = app[keys.SESSIONS]
        shadow = Shadow(
            config,
            partial(sessions.create, admit=False),
            sessions.store,
            legacy,
            metrics,
            app[keys.TASKS],
            rollout.guardrails,
        )
        app[keys.LEGACY], app[keys.SHADOW] = legacy, shadow
    yield
    # Before the fan-outs close: a compare waits on them, and uses the legacy client.
    if rollout.enabled:
        await shadow.close()
        await legacy.close()
    await rollout.close()


async def _tracing(app: web.Application) -> AsyncIterator[None]:
    yield
    # Last: the spans of the final requests and calls are exported (the SDK blocks while it does).
    await asyncio.to_thread(app[keys.TRACING].close)


def _migration(clock: Clock) -> Callable[[web.Application], AsyncIterator[None]]:
    async def migration(app: web.Application) -> AsyncIterator[None]:
        config = app[keys.CONFIG]
        ledger: Ledger
        if config.redis.url:
            # Its own connections: the ledger's writes never wait behind, or mark down, the sessions'.
            redis = redis_client(dataclasses.replace(config.redis, max_connections=2))
            ledger = RedisLedger(redis, config.redis.prefix, config.migration.retention_days, config.redis.timeout)
        else:
            ledger = MemoryLedger(config.migration.retention_days)
        rollout = app[keys.ROLLOUT]
        migration = Migration(
            config.migration,
            app[keys.CLIENTS],
            ledger,
            clock,
            app[keys.TASKS],
            app[keys.METRICS],
            lambda: rollout.flags.migration,
        )
        app[keys.MIGRATION] = migration
        migration.start()
        yield
        await migration.close()

    return migration


def create_app(config: Config, metrics: Metrics | None = None, clock: Clock | None = None) -> web.Application:
    """`clock`: the migration's time source (gateway/migration/clock.py); tests move it."""
    # The parser's limits go with the app, so that every runner serving it (the CLI's, the
    # tests') applies them; see gateway/http/runner.py for how their refusals are answered.
    limits = {"max_line_size": config.server.max_line_size, "max_field_size": config.server.max_field_size}
    tracing = Tracing(config.tracing) if config.tracing.opentelemetry else None
    # well_formed before brownouts: nothing past it sees header bytes that are not UTF-8.
    middlewares = [request_context, errors, well_formed, brownouts]
    if tracing is not None:
        middlewares.insert(0, tracing_span)
    app = web.Application(middlewares=middlewares, handler_args=limits)
    app[keys.CONFIG] = config
    if tracing is not None:
        app[keys.TRACING] = tracing
        app.cleanup_ctx.append(_tracing)
    app[keys.METRICS] = metrics = metrics or Metrics()
    app[keys.TALLY] = Tally(metrics)
    app[keys.TASKS] = Tasks(on_crash=lambda group: metrics.task_failures.labels(group).inc())
    app[keys.CLIENTS] = clients = ClientTable(config.clients, config.migration.platforms)
    metrics.zero_client_series(str(cohort) for cohort in clients.ordered())
    app.cleanup_ctx.extend([_tasks, _store, _sessions, _rollout, _migration(clock or SystemClock())])
    tickets.add_routes(app)
    health.add_routes(app)
    if not admin.admin_listener(app):
        console.add_routes(app, app, admin.add_routes(app, app))
    if config.metrics.port == 0:
        scrape.add_routes(app)
    openapi.add_routes(app)
    return app


def create_metrics_app(gateway: web.Application) -> web.Application:
    """The admin listener's app: the gateway's own registry, off the route the apps use (a load
    balancer that forwards the public port never exposes it), and the admin routes when
    `rollout.admin_on_metrics_port` puts them here. No access log, no request metrics: a
    scrape every few seconds is not traffic. Errors answer in the standard shape."""
    app = web.Application(middlewares=[errors])
    app[keys.METRICS] = gateway[keys.METRICS]
    app[keys.CONFIG] = gateway[keys.CONFIG]
    scrape.add_routes(app)
    if admin.admin_listener(gateway):
        console.add_routes(app, gateway, admin.add_routes(app, gateway))
    return app
