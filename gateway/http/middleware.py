"""The middlewares every request passes: the request context (id, access log, HTTP metrics, the
cohort of an old-path request, classified once, and its accounting: gateway/http/old_path.py)
outside, then the one error middleware, which renders every failure, the
core's domain errors included, as the standard error response, and innermost the check that
refuses what the HTTP parser accepts but no handler should have to handle."""

from __future__ import annotations

import os
import random
import re
import time

import structlog
from aiohttp import web

from gateway.contract import ERRORS, OLD_ROUTES, GatewayError
from gateway.http import keys, old_path
from gateway.http.errors import error_response, kind_for_status
from gateway.http.routes import Handler, route_template
from gateway.observability.logs import access_line, begin_request
from gateway.observability.trace import TRACEPARENT, TRACESTATE, continue_trace
from gateway.store.base import StoreFull, StoreUnavailable

log = structlog.get_logger("gateway.access")
# An incoming id is reused only if it is short and plain, so it is safe in logs and headers.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
# The status class label of the statuses the gateway answers most, written once.
STATUS_CLASSES = {status: f"{status // 100}xx" for status in (200, 400, 401, 404, 429, 502, 503, 504)}


@web.middleware
async def tracing_span(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Only with tracing.opentelemetry = true, outermost: the request's server span, current while
    the request context and the handler run (and in the tasks they start)."""
    with request.app[keys.TRACING].server_span(request.method, route_template(request), request.headers) as answered:
        response = await handler(request)
        answered(response.status)
        return response


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    incoming = request.headers.get("X-Request-Id", "")
    request_id = incoming if _REQUEST_ID.fullmatch(incoming) else os.urandom(16).hex()
    request[keys.REQUEST_ID] = request_id
    # With OpenTelemetry on, its server span (outside this middleware) is the gateway's hop.
    tracing = request.app.get(keys.TRACING)
    trace = (tracing.current() if tracing is not None else None) or continue_trace(
        request.headers.getall(TRACEPARENT, []), request.headers.getall(TRACESTATE, [])
    )
    request[keys.TRACE] = trace
    # The tasks a request starts (its fan-out) copy this context: their lines carry both ids too.
    begin_request(request.headers.get("Authorization"), request_id=request_id, trace_id=trace.trace_id)
    route = route_template(request)
    old_route = OLD_ROUTES.get(route)
    if old_route is not None:
        # The one classification of the request: the rollout, brownouts, guardrails, ledger,
        # signals and metrics all read this.
        headers = request.headers
        request[keys.COHORT] = request.app[keys.CLIENTS].classify(
            headers.get("ClientApplication"), headers.get("User-Agent")
        )
    started = time.perf_counter()
    # The error middleware sits inside: error answers are counted and logged with their status.
    response = await handler(request)
    if not request.content.is_eof():
        # A body the handler did not read: the connection ends with this answer, rather than
        # carry on past bytes whose end only the body's length tells.
        response.force_close()
    response.headers["X-Request-Id"] = request_id
    duration = time.perf_counter() - started
    status_class = STATUS_CLASSES.get(response.status) or f"{response.status // 100}xx"
    request.app[keys.TALLY].request(route, status_class, duration)
    if old_route is not None:
        old_path.account(request, old_route, response, status_class)
    status = response.status
    if old_route != "poll" or status >= 400:
        access_line(log, method=request.method, route=route, status=status, duration_ms=round(duration * 1000, 2))
        return response
    # A successful poll: the first final answer of its session always has a line, with how the
    # client got there; the others only at the sampled share (docs/metrics.md, "Logs").
    poll = request.get(keys.POLL)
    if poll is not None and poll.first_final:
        access_line(
            log,
            method=request.method,
            route=route,
            status=status,
            duration_ms=round(duration * 1000, 2),
            final=True,
            polls=poll.polls,
            to_final_s=round(poll.to_final_s, 3),
        )
    elif (share := request.app[keys.CONFIG].log.poll_sample) and random.random() < share:
        access_line(
            log, method=request.method, route=route, status=status, duration_ms=round(duration * 1000, 2), sampled=True
        )
    return response


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
