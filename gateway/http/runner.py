"""Serving the app: a runner whose connections answer what aiohttp's HTTP parser rejects (an
over-long request line or header, too many headers, a malformed request) with the standard
error, like every other error.

aiohttp answers such requests itself, before any middleware runs, with a plain-text 400 that
quotes the first 100 bytes of the offending line, which may be an `Authorization` header. Here
they get `431 headers_too_large` or `400 bad_request`, the connection is closed, the refusal is
counted in `gateway_rejected_requests_total{limit="request_head"}`, and nothing of the request is
logged or echoed.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar, cast

import structlog
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, HttpProcessingError, LineTooLong

from gateway.contract import ERRORS, ErrorKind
from gateway.http import keys
from gateway.http.errors import error_response, kind_for_status
from gateway.observability.metrics import Metrics

log = structlog.get_logger("gateway.server")
T = TypeVar("T")


def error_kind(status: int, exc: BaseException | None) -> ErrorKind:
    """The standard error for a request aiohttp could not parse or serve."""
    if isinstance(exc, LineTooLong) or (isinstance(exc, BadHttpMessage) and "Too many headers" in exc.message):
        return ERRORS["headers_too_large"]
    if isinstance(exc, HttpProcessingError):
        return ERRORS["bad_request"]
    return kind_for_status(status)


class _Protocol(web.RequestHandler):
    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        kind = error_kind(status, exc)
        # The exception's text quotes the request; its class name is all the log needs.
        log.warning("request_rejected", status=kind.status, error=type(exc).__name__ if exc else None)
        metrics = getattr(self._manager, "metrics", None)
        if metrics is not None and isinstance(exc, HttpProcessingError):
            metrics.rejected.labels("request_head").inc()
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; the connection is dropped instead")
        response = error_response(kind)
        response.force_close()
        return response


class _Server(web.Server):
    """aiohttp's Server, building the protocol above for each connection."""

    metrics: Metrics | None = None

    def __call__(self) -> web.RequestHandler:
        return _Protocol(self, loop=self._loop, **self._kwargs)


class GatewayRunner(web.AppRunner):
    """`web.AppRunner` for the gateway (and the sandbox): the same, but with standard errors
    for requests that never reach the app."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # aiohttp offers no setting for the protocol class; a Server subclass that adds no state
        # of its own is the smallest way to supply one.
        server.__class__ = _Server
        cast(_Server, server).metrics = self.app.get(keys.METRICS)
        return server


class ThreadedServer:
    """Serves apps with GatewayRunner on an event loop in a thread of its own (loopback, a free
    port each), for tools and tests that drive them from synchronous code or another loop."""

    def __init__(self, handler_cancellation: bool = False) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="served-apps", daemon=True)
        self._thread.start()
        self._runners: list[web.AppRunner] = []
        self._handler_cancellation = handler_cancellation

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        """Runs a coroutine on the server's loop and returns its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def serve(self, app: web.Application) -> int:
        """Starts serving `app` on 127.0.0.1; returns its port."""
        return self.run(self._serve(app))

    async def _serve(self, app: web.Application) -> int:
        runner = GatewayRunner(app, access_log=None, handler_cancellation=self._handler_cancellation)
        await runner.setup()
        self._runners.append(runner)
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        return int(runner.addresses[0][1])

    async def _cleanup(self) -> None:
        for runner in reversed(self._runners):
            await runner.cleanup()

    def stop(self) -> None:
        try:
            self.run(self._cleanup())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()
