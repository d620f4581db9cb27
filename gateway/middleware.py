"""Request context (id, access log, HTTP metrics) and the one error middleware."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from gateway import keys
from gateway.errors import ERRORS, GatewayError, error_response, kind_for_status
from gateway.logs import redact_for_request

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

log = structlog.get_logger("gateway.access")
# An incoming id is reused only if it is short and plain, so it is safe in logs and headers.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def route_template(request: web.Request) -> str:
    """The route as registered (`/api/v2/old/visit/tickets/{session}`), never the raw path:
    a session GUID in a log key or metric label would be unbounded."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    incoming = request.headers.get("X-Request-Id", "")
    request_id = incoming if _REQUEST_ID.fullmatch(incoming) else os.urandom(16).hex()
    request[keys.REQUEST_ID] = request_id
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=request_id)
    redact_for_request(request.headers.get("Authorization"))
    started = time.perf_counter()
    response = await handler(request)
    response.headers["X-Request-Id"] = request_id
    duration = time.perf_counter() - started
    route = route_template(request)
    metrics = request.app[keys.METRICS]
    metrics.http_requests.labels(route, f"{response.status // 100}xx").inc()
    metrics.http_duration.labels(route).observe(duration)
    log.info(
        "request",
        method=request.method,
        route=route,
        status=response.status,
        duration_ms=round(duration * 1000, 2),
    )
    return response


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except GatewayError as exc:
        return error_response(exc.kind, retry_after=exc.retry_after)
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
