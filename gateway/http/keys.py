"""Typed application keys: the instances the handlers use, each under one key. A handler
imports the class it calls and finds its instance here; nothing else is shared."""

from __future__ import annotations

import asyncio

from aiohttp import web

from gateway.cohorts import ClientTable, Cohort
from gateway.config import Config
from gateway.migration.brownout import BrownoutDecision
from gateway.migration.service import Migration
from gateway.observability.metrics import Metrics
from gateway.observability.otel import Tracing
from gateway.observability.tally import Tally
from gateway.observability.trace import TraceContext
from gateway.rollout.flags import Rollout
from gateway.rollout.legacy import Legacy
from gateway.rollout.shadow import Shadow
from gateway.sessions.service import Poll, SessionService
from gateway.store.base import SessionStore
from gateway.tasks import Tasks

CONFIG = web.AppKey("config", Config)
METRICS = web.AppKey("metrics", Metrics)
# The request counts kept in process until folded into METRICS (once a second and at a scrape).
TALLY = web.AppKey("tally", Tally)
TASKS = web.AppKey("tasks", Tasks)
# Readiness asks the store directly; everything else about sessions goes through the service.
STORE = web.AppKey("store", SessionStore)
SESSIONS = web.AppKey("sessions", SessionService)
# The rollout's flags (always present) and, only when rollout.legacy_url is set, the legacy
# client and the shadow compare.
ROLLOUT = web.AppKey("rollout", Rollout)
LEGACY = web.AppKey("legacy", Legacy)
SHADOW = web.AppKey("shadow", Shadow)
# Set when the process has been told to stop (SIGTERM): /readyz answers 503 from then on, while
# requests are still served for server.drain_seconds (gateway/cli.py).
DRAINING = web.AppKey("draining", asyncio.Event)
# The configured client apps, platforms and versions: what a request's cohort is classified by.
CLIENTS = web.AppKey("clients", ClientTable)
# Only with tracing.opentelemetry = true: the app's OpenTelemetry tracing.
TRACING = web.AppKey("tracing", Tracing)
# Per request: the id logged on every line and sent upstream as X-Request-Id.
REQUEST_ID = web.RequestKey("request_id", str)
# Per request: the gateway's hop of the caller's W3C trace (or a new trace), sent to the new API
# and the legacy service; its trace id is on every log line.
TRACE = web.RequestKey("trace", TraceContext)
# Per request: which side served an old-path request ("gateway", "legacy" or "shadow"); the
# rollout sets it, the old-path metrics read it.
SERVED_BY = web.RequestKey("served_by", str)
# Retiring the old path: the ledger, deprecation signals and brownouts (gateway/migration/).
MIGRATION = web.AppKey("migration", Migration)
# Per request: the brownout decision a create met (the old-path accounting counts it).
BROWNOUT = web.RequestKey("brownout", BrownoutDecision)
# Per old-path request: its client cohort, classified once by the request context.
COHORT = web.RequestKey("cohort", Cohort)
# Per poll the gateway answered: the poll's result, which the old-path accounting reads.
POLL = web.RequestKey("poll", Poll)
