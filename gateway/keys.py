"""Typed application keys: everything a handler needs hangs off the app under one of these."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from gateway.clients import ClientTable
from gateway.config import Config
from gateway.fanout import Fanout
from gateway.legacy import Legacy
from gateway.limits import SessionLimits
from gateway.metrics import Metrics
from gateway.rollout import Rollout
from gateway.shadow import Shadow
from gateway.store.base import SessionStore
from gateway.upstream import Upstream

CONFIG = web.AppKey("config", Config)
METRICS = web.AppKey("metrics", Metrics)
STORE = web.AppKey("store", SessionStore)
CLIENT = web.AppKey("client_session", aiohttp.ClientSession)
UPSTREAM = web.AppKey("upstream", Upstream)
FANOUT = web.AppKey("fanout", Fanout)
LIMITS = web.AppKey("limits", SessionLimits)
# The rollout's flags (always present) and, only when rollout.legacy_url is set, the legacy
# client and the shadow compare.
ROLLOUT = web.AppKey("rollout", Rollout)
LEGACY = web.AppKey("legacy", Legacy)
SHADOW = web.AppKey("shadow", Shadow)
# The configured client apps and versions, for the old-path metrics.
CLIENTS = web.AppKey("clients", ClientTable)
# Per request: the id logged on every line and sent upstream as X-Request-Id.
REQUEST_ID = web.RequestKey("request_id", str)
# Per request: which side served an old-path request ("gateway", "legacy" or "shadow"); the
# rollout sets it, the old-path metrics read it.
SERVED_BY = web.RequestKey("served_by", str)
