"""The middlewares every request passes: the request context (id, access log, HTTP and
old-path metrics) outside, then the one error middleware, which renders every failure, the
core's domain errors included, as the standard error response, and innermost the check that
refuses what the HTTP parser accepts but no handler should have to handle."""

from __future__ import annotations

import os
import re
import time

import structlog
from aiohttp import web

from gateway.contract import ERRORS, OLD_ROUTES, GatewayError
from gateway.http import keys
from gateway.http.errors import error_response, kind_for_status
from gateway.http.routes import Handler, route_template
from gateway.observability.logs import access_line, begin_request
from gateway.rollout.guardrails import cohort_of
from gateway.store.base import StoreFull, StoreUnavailable

log = structlog.get_logger("gateway.access")
# An incoming id is reused only if it is short and plain, so it is safe in logs and headers.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
# The status class label of the statuses the gateway answers most, written once.
STATUS_CLASSES = {status: f"{status // 100}xx" for status in (200, 400, 401, 404, 429, 502, 503, 504)}


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    incoming = request.headers.get("X-Request-Id", "")
    request_id = incoming if _REQUEST_ID.fullmatch(incoming) else os.urandom(16).hex()
    request[keys.REQUEST_ID] = request_id
    begin_request(request.headers.get("Authorization"), request_id=request_id)
    started = time.perf_counter()
    # The error middleware sits inside: error answers are counted and logged with their status.
    response = await handler(request)
    response.headers["X-Request-Id"] = request_id
    duration = time.perf_counter() - started
    route = route_template(request)
    metrics = request.app[keys.METRICS]
    status_class = STATUS_CLASSES.get(response.status) or f"{response.status // 100}xx"
    metrics.child(metrics.http_requests, route, status_class).inc()
    metrics.child(metrics.http_duration, route).observe(duration)
    old_route = OLD_ROUTES.get(route)
    if old_route is not None:
        record_old_request(request, old_route, response, status_class)
    access_line(log, method=request.method, route=route, status=response.status, duration_ms=round(duration * 1000, 2))
    return response


def record_old_request(request: web.Request, route: str, response: web.StreamResponse, status_class: str) -> None:
    """Who still calls the old path: by route, serving side, client app, app version and status
    class, and the app's last-seen time. The dashboards' "apps still calling" and the
    retirement alert read these; the migration ledger counts the request for its cohort, and
    the cohort's deprecation signals go on the answer (docs/migration.md)."""
    headers = request.headers
    user_agent = headers.get("User-Agent")
    app, version = request.app[keys.CLIENTS].classify(headers.get("ClientApplication"), user_agent)
    # The rollout marks requests it forwarded ("legacy") or shadowed; the rest the gateway served.
    side = request.get(keys.SERVED_BY, "gateway")
    metrics = request.app[keys.METRICS]
    metrics.child(metrics.old_requests, route, side, app, version, status_class).inc()
    rollout = request.app.get(keys.ROLLOUT)
    rails = rollout.guardrails if rollout is not None else None
    if side == "gateway" and rails is not None:
        rails.record_answer(cohort_of(app, version), route, response.status)
    metrics.child(metrics.client_last_seen, app).set(time.time())
    migration = request.app[keys.MIGRATION]
    cohort = migration.cohort(app, version, user_agent)
    migration.observe(cohort, route, side, response.status, request.get(keys.BROWNOUT))
    response.headers.extend(migration.headers(cohort))


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except GatewayError as exc:
        return error_response(exc.kind, retry_after=exc.retry_after)
    except StoreUnavailable:
        return error_response(ERRORS["unavailable"], retry_after=1)
    except StoreFull:
        # A session ends by its deadline at the latest: by then the store has room again.
        retry_after = max(1, int(request.app[keys.CONFIG].session.deadline))
        return error_response(ERRORS["store_full"], retry_after=retry_after)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = error_response(kind_for_status(exc.status))
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except Exception:
        # The traceback goes to the log (which never holds tokens); the client gets no internals.
        log.exception("unhandled_error", route=route_template(request))
        return error_response(ERRORS["internal"])


def has_undecodable_header(request: web.Request) -> bool:
    """Whether a header name or value was not UTF-8. aiohttp decodes header bytes with
    `surrogateescape`, so such bytes reach handlers as lone surrogates, which no encoder,
    comparison of bytes or JSON log line accepts."""
    for name, value in request.raw_headers:
        for part in (name, value):
            if not part.isascii():
                try:
                    part.decode("utf-8")
                except UnicodeDecodeError:
                    return True
    return False


@web.middleware
async def well_formed(request: web.Request, handler: Handler) -> web.StreamResponse:
    """400 for header bytes that are not UTF-8, in any header: checked once here rather than by
    every handler that reads, compares or forwards a header."""
    if has_undecodable_header(request):
        raise GatewayError("bad_request")
    return await handler(request)
