"""Serving the app: a runner whose connections are bounded and answer what aiohttp's HTTP parser
rejects with the standard error, like every other error (docs/connections.md).

aiohttp answers such requests itself, before any middleware runs, with a plain-text 400 that
quotes the first 100 bytes of the offending line, which may be an `Authorization` header. Here
they get `431 headers_too_large` or `400 bad_request`, the connection is closed, the refusal is
counted in `gateway_rejected_requests_total{limit="request_head"}`, and nothing of the request is
logged or echoed.

Each connection is bounded too, so that slow or idle clients cannot hold what other patients
need (issue 11, row 5): an idle keep-alive connection is closed after `server.keepalive_timeout`;
a request head must arrive whole within `server.head_timeout` and `server.max_head_bytes`; at
most `server.max_unfinished_heads` connections may hold an unfinished head (beyond, the oldest
is closed); and at `server.max_connections` open connections the longest-idle one (no request in
progress, no unfinished head) is closed to admit a new one, as nginx does, or, with none idle,
the new one is answered 503 and closed. Each refusal is counted in
`gateway_rejected_requests_total{limit=...}`, each idle connection closed for room in
`gateway_idle_connections_closed_total`.
"""

from __future__ import annotations

import asyncio
import resource
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, cast

import structlog
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, HttpProcessingError, LineTooLong
from prometheus_client import Gauge

from gateway.config import Config
from gateway.contract import ERRORS, ErrorKind
from gateway.http import keys
from gateway.http.errors import error_bytes, error_response, kind_for_status
from gateway.observability.metrics import Metrics
from gateway.tasks import Tasks

log = structlog.get_logger("gateway.server")


def error_kind(status: int, exc: BaseException | None) -> ErrorKind:
    """The standard error for a request aiohttp could not parse or serve."""
    if isinstance(exc, LineTooLong) or (isinstance(exc, BadHttpMessage) and "Too many headers" in exc.message):
        return ERRORS["headers_too_large"]
    if isinstance(exc, HttpProcessingError):
        return ERRORS["bad_request"]
    return kind_for_status(status)


# File descriptors kept for what is not a client connection: listeners, log files, the event
# loop's own, Redis's probe, a margin; the outgoing pools are counted from the config.
FD_RESERVE = 64
# A refused connection is kept this long after its 503 is written, reading and dropping what the
# client still sends, so that closing it does not reset the connection before the client has
# read the answer (a close with unread data sends RST, and the peer may discard the 503)...
REFUSAL_LINGER = 2.0
# ...but at most this many at once: beyond, a flood of connections is refused and closed at
# once, so that lingering refusals cannot use up the descriptors the cap protects.
MAX_LINGERING_REFUSALS = 32


@dataclass(frozen=True)
class EdgeLimits:
    """What one connection may hold, and how many there may be (the [server] keys)."""

    head_timeout: float
    max_head_bytes: int
    max_unfinished_heads: int
    max_connections: int


def fd_budget(config: Config, fd_limit: int) -> int:
    """Client connections the file-descriptor limit leaves room for, after the outgoing pools
    (upstream, Redis, legacy) and a reserve: beyond that, a new patient's upstream call would be
    the one to fail for want of a descriptor."""
    outgoing = config.upstream.max_connections + config.redis.max_connections + config.rollout.legacy_max_connections
    return max(1, fd_limit - outgoing - FD_RESERVE)


def edge_limits(config: Config, fd_limit: int) -> EdgeLimits:
    server = config.server
    return EdgeLimits(
        head_timeout=server.head_timeout,
        max_head_bytes=server.max_head_bytes,
        max_unfinished_heads=server.max_unfinished_heads,
        max_connections=min(server.max_connections, fd_budget(config, fd_limit)),
    )


def raise_fd_limit() -> int:
    """Raises the soft RLIMIT_NOFILE to the hard limit (a container's default soft limit of 1024
    runs out at about a thousand idle sockets); returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard and hard != resource.RLIM_INFINITY:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            log.warning("fd_limit_not_raised", soft=soft, hard=hard, error=type(exc).__name__)
            return soft
        log.info("fd_limit_raised", soft=soft, to=hard)
        return hard
    log.info("fd_limit", soft=soft, hard=hard)
    return soft


def current_fd_limit() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


# The head deadline is checked by one sweep per listener, this often (a tenth of the deadline,
# within these bounds): a connection is closed at most that long after its deadline, and no timer
# is armed or cancelled per request.
SWEEP_MIN, SWEEP_MAX = 0.05, 1.0
# At the cap with no idle connection found, the connections are scanned again at most this often:
# a flood of new connections at a cap of busy ones costs one scan per interval, not one each.
RESCAN_EVERY = 0.05


def sweep_interval(head_timeout: float) -> float:
    return min(SWEEP_MAX, max(SWEEP_MIN, head_timeout / 10))


class _Protocol(web.RequestHandler):
    """One client connection: aiohttp's, with the head deadline, the head size bound and the
    standard error for parser refusals.

    A head that arrives whole in one chunk, as nearly all do, costs one comparison here: only a
    head still arriving after its first chunk (or a connection that has not spoken yet) is
    tracked, and its deadline is checked by the server's sweep. Whether a connection is idle is
    read from aiohttp's own state when the cap needs one, not kept per request."""

    def __init__(self, manager: _Server, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._edge = manager.edge
        self._head_bytes = 0  # bytes of the request head still arriving
        # Loop time the unfinished head (or, before the first byte, the connection) began; None
        # while no head is arriving.
        self._head_since: float | None = None
        self._opened_at = 0.0
        # Closed by the server to make room at the connection cap, its close not yet seen.
        self._reclaimed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        server = cast(_Server, self._manager)
        if server.is_full() and not server.reclaim_idle():
            # Before aiohttp sees the connection: it is never served, never counted as open.
            self._manager = None
            self._close = True  # data_received drops whatever arrives
            server.count("connections")
            server.refuse(cast(asyncio.Transport, transport))
            return
        super().connection_made(transport)
        # A new connection's first head is due within the deadline, bytes or not: a socket
        # that never speaks is the cheapest way to hold a descriptor.
        self._opened_at = self._head_since = self._loop.time()
        server.opened(self, self._opened_at)

    def connection_lost(self, exc: BaseException | None) -> None:
        server = self._manager
        self._head_finished()
        super().connection_lost(exc)
        if isinstance(server, _Server):
            server.closed(self)

    def data_received(self, data: bytes) -> None:
        heads = self._request_count
        _base_data_received(self, data)
        if self._request_count != heads:
            # A whole head (or a parser refusal, answered by handle_error) is in the queue.
            if self._head_since is not None:
                self._head_finished()
            return
        if self._request_in_progress or self._messages or self._close or self._force_close:
            return  # a body, or a pipelined request behind one being answered: the parser bounds it
        self._head_chunk(len(data))

    def _head_chunk(self, size: int) -> None:
        """Part of a head, its end still to come."""
        first = self._head_bytes == 0
        self._head_bytes += size
        if self._head_bytes > self._edge.max_head_bytes:
            self._abort_head("head_bytes", ERRORS["headers_too_large"])
            return
        server = cast(_Server, self._manager)
        if self._head_since is None:
            # A kept-alive connection's next request began: its deadline runs from here.
            self._head_since = self._loop.time()
            server.head_started(self, self._head_since)
        if first:
            server.unfinished_head(self)

    def idle_since(self) -> float | None:
        """Loop time since which the connection has been idle (no request in progress or queued,
        no head arriving: its answer written, or accepted and silent), or None if it is not."""
        if (
            self._request_in_progress
            or self._messages
            or self._head_bytes
            or self._reclaimed
            or self._close
            or self._force_close
            or self.transport is None
        ):
            return None
        # aiohttp notes each answer's keep-alive close time; before the first, the accept counts.
        return max(self._opened_at, self._next_keepalive_close_time - self._keepalive_timeout)

    def reclaim(self) -> None:
        """Closed, idle, to admit a new connection at the cap: the client sees the close an idle
        keep-alive connection gets at its timeout, and reconnects when it next needs to."""
        self._reclaimed = True
        self._head_finished()
        self.force_close()

    def _head_finished(self) -> None:
        self._head_since = None
        self._head_bytes = 0
        manager = self._manager
        if isinstance(manager, _Server):
            manager.head_done(self)

    def head_late(self) -> None:
        """The head deadline passed (the server's sweep): a head under way gets 408; a connection
        that never spoke is closed without an answer, as nobody is there to read one."""
        if self._head_since is None or self.transport is None:
            self._head_finished()
            return
        if self._head_bytes == 0:
            cast(_Server, self._manager).count("head_timeout")
            self._head_finished()
            self.force_close()
            return
        self._abort_head("head_timeout", kind_for_status(408))

    def evict(self) -> None:
        """Closed to make room for a newer unfinished head (the server's bound)."""
        self._abort_head("unfinished_heads", ERRORS["unavailable"])

    def _abort_head(self, limit: str, kind: ErrorKind) -> None:
        """An unfinished head over a bound: the standard error written straight to the socket
        (no request exists to answer), then the connection is closed."""
        server = self._manager
        self._head_finished()
        if isinstance(server, _Server):
            server.count(limit)
        log.warning("request_rejected", status=kind.status, limit=limit)
        if self.transport is not None:
            self.transport.write(error_bytes(kind))
        self.force_close()

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


# Called directly: the fast path of every request goes through it.
_base_data_received = web.RequestHandler.data_received


class _Server(web.Server):
    """aiohttp's Server, building the protocol above for each connection, and keeping the
    listener-wide state the protocol's bounds need."""

    metrics: Metrics | None = None
    # The gateway's own listener only: the metrics listener shares the registry, not the gauge.
    connections_gauge: Gauge | None = None
    edge: EdgeLimits
    # Connections with a head deadline running (an unfinished head, or not spoken yet) → when it
    # began. Inserted when it begins, so oldest first: the sweep stops at the first not yet late.
    _heads: dict[_Protocol, float]
    # Connections whose head is still arriving (bytes received), oldest first.
    _unfinished: OrderedDict[_Protocol, None]
    # Refused connections waiting to be closed.
    _lingering: int
    # Idle connections found by the last scan, (idle since, connection), longest idle last; an
    # entry whose connection was used since is skipped.
    _reclaimable: list[tuple[float, _Protocol]]
    _scanned_empty_at: float
    # Idle connections closed for room whose close has not been seen yet (still in
    # `_connections`, not counted against the cap).
    _reclaiming: int

    def __call__(self) -> web.RequestHandler:
        return _Protocol(self, loop=self._loop, **self._kwargs)

    def is_full(self) -> bool:
        return len(self._connections) - self._reclaiming >= self.edge.max_connections

    def reclaim_idle(self) -> bool:
        """Closes the longest-idle connection to make room for a new one (nginx drains its idle
        keep-alive connections the same way when it runs out); False when none is idle."""
        for _ in range(2):
            while self._reclaimable:
                since, oldest = self._reclaimable.pop()
                if oldest.idle_since() != since:
                    continue  # used (or closed) since the scan
                self._reclaiming += 1
                if self.metrics is not None:
                    self.metrics.idle_closed.inc()
                oldest.reclaim()
                return True
            if not self._scan_idle():
                return False
        return False

    def _scan_idle(self) -> bool:
        """Every idle connection, longest idle last; False when none is (and then no scan again
        for RESCAN_EVERY)."""
        now = self._loop.time()
        if now - self._scanned_empty_at < RESCAN_EVERY:
            return False
        found = []
        for protocol in self._connections:
            if isinstance(protocol, _Protocol) and (since := protocol.idle_since()) is not None:
                found.append((since, protocol))
        if not found:
            self._scanned_empty_at = now
            return False
        found.sort(key=lambda item: item[0], reverse=True)
        self._reclaimable = found
        return True

    def refuse(self, transport: asyncio.Transport) -> None:
        """503 to a connection over the cap: the answer, a half-close, and the close itself once
        the client has had time to read it (at once when too many refusals linger already)."""
        transport.write(error_bytes(ERRORS["unavailable"], retry_after=1))
        if self._lingering >= MAX_LINGERING_REFUSALS or not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        self._lingering += 1

        def close() -> None:
            self._lingering -= 1
            transport.close()

        self._loop.call_later(REFUSAL_LINGER, close)

    def count(self, limit: str) -> None:
        if self.metrics is not None:
            self.metrics.rejected.labels(limit).inc()

    def opened(self, protocol: _Protocol, at: float) -> None:
        self._heads[protocol] = at
        if self.connections_gauge is not None:
            self.connections_gauge.inc()

    def closed(self, protocol: _Protocol) -> None:
        if protocol._reclaimed:
            protocol._reclaimed = False
            self._reclaiming -= 1
        if self.connections_gauge is not None:
            self.connections_gauge.dec()

    def head_started(self, protocol: _Protocol, at: float) -> None:
        self._heads[protocol] = at

    def unfinished_head(self, protocol: _Protocol) -> None:
        """`protocol` holds an unfinished head; beyond the bound the oldest such one is closed:
        a head that is legitimately split arrives in milliseconds, so the oldest is the one
        most likely to be trickling on purpose."""
        self._unfinished[protocol] = None
        while len(self._unfinished) > self.edge.max_unfinished_heads:
            oldest, _ = self._unfinished.popitem(last=False)
            oldest.evict()

    def head_done(self, protocol: _Protocol) -> None:
        self._heads.pop(protocol, None)
        self._unfinished.pop(protocol, None)

    async def sweep(self) -> None:
        """Closes every connection whose head deadline has passed (oldest first, so it stops at
        the first one still within it)."""
        cutoff = self._loop.time() - self.edge.head_timeout
        late = []
        for protocol, since in self._heads.items():
            if since > cutoff:
                break
            late.append(protocol)
        for protocol in late:
            protocol.head_late()


class GatewayRunner(web.AppRunner):
    """`web.AppRunner` for the gateway (and the sandbox): the same, but with standard errors
    for requests that never reach the app, and each connection bounded by the app's [server]
    settings (the defaults for an app without a config)."""

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        self._config = app.get(keys.CONFIG) or Config()
        kwargs.setdefault("keepalive_timeout", self._config.server.keepalive_timeout)
        super().__init__(app, **kwargs)
        metrics = app.get(keys.METRICS)
        on_crash = (lambda group: metrics.task_failures.labels(group).inc()) if metrics is not None else None
        # The listener's own task (the head-deadline sweep): it outlives the app's cleanup, so
        # that the deadline holds through the shutdown, and ends with the runner.
        self._tasks = Tasks(on_crash=on_crash)

    async def cleanup(self) -> None:
        try:
            await super().cleanup()
        finally:
            await self._tasks.close()

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # aiohttp offers no setting for the protocol class; a Server subclass whose state is set
        # here, not in a constructor aiohttp calls, is the smallest way to supply one.
        server.__class__ = _Server
        served = cast(_Server, server)
        served.metrics = self.app.get(keys.METRICS)
        if served.metrics is not None and keys.CONFIG in self.app:
            served.connections_gauge = served.metrics.client_connections
        served.edge = edge_limits(self._config, current_fd_limit())
        served._heads = {}
        served._unfinished = OrderedDict()
        served._lingering = 0
        served._reclaimable = []
        served._scanned_empty_at = float("-inf")
        served._reclaiming = 0
        self._tasks.every(sweep_interval(served.edge.head_timeout), served.sweep, "head_deadline")
        if served.edge.max_connections < self._config.server.max_connections:
            log.warning(
                "max_connections_lowered",
                configured=self._config.server.max_connections,
                to=served.edge.max_connections,
                fd_limit=current_fd_limit(),
            )
        return server
