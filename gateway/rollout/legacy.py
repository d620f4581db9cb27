"""Forwarding to the legacy `visit` service (upstream-api.md §B).

A forwarded request keeps its method, path and query, and the headers listed in
FORWARDED_HEADERS; the request id goes as X-Request-Id. The legacy status and body come back
unchanged. Only `rollout.legacy_url`'s host is ever called, with a total timeout, so a slow or
dead legacy service is a 504 or a 502 in the standard error shape, never a hang. Polls of GUIDs
the gateway does not hold are forwarded within an allowance of guesses (GUIDs legacy does not
know either) per client address and in total (`rollout.legacy_guess_*`), so that guessing
GUIDs cannot load the legacy service.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp
import structlog
from yarl import URL

from gateway.buckets import KeyedBuckets
from gateway.config import RolloutConfig
from gateway.contract import GatewayError
from gateway.observability.metrics import Metrics
from gateway.observability.trace import TraceContext
from gateway.outbound import BodyRefused, client_session, read_capped

log = structlog.get_logger("gateway.legacy")

# What the apps send that the legacy service may use; anything else (cookies, proxies' headers)
# is not passed on.
FORWARDED_HEADERS = ("Authorization", "ClientApplication", "User-Agent", "Accept", "Accept-Language")
# Response headers passed back besides the body: its type, and when to retry a 429/503.
RETURNED_HEADERS = ("Content-Type", "Retry-After")
# The unknown-GUID poll allowance: client addresses remembered (LRU beyond), and the key of the
# all-clients one.
_TRACKED_CLIENTS = 100_000
_ALL = ""


class LegacyFailure(Exception):
    """No answer from the legacy service. `reason`: timeout, connection or too_large."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class LegacyAnswer:
    status: int
    body: bytes
    headers: dict[str, str]


def forwarded_headers(
    incoming: Mapping[str, str], request_id: str, trace: TraceContext | None = None
) -> dict[str, str]:
    """The headers of an app's request that go on to the legacy service, the request id and the
    gateway's hop of the trace (never the app's own traceparent: the legacy service's parent is
    the gateway)."""
    headers = {name: incoming[name] for name in FORWARDED_HEADERS if name in incoming}
    headers["X-Request-Id"] = request_id
    if trace is not None:
        headers |= trace.headers()
    return headers


def _outcome(status: int) -> str:
    return f"{status // 100}xx"


class Legacy:
    """The client for the legacy service, with its own small connection pool: the legacy
    service is one replica, and its slowness must not use up the new API's connections."""

    def __init__(
        self, config: RolloutConfig, metrics: Metrics, trace_configs: list[aiohttp.TraceConfig] | None = None
    ) -> None:
        self._base = config.legacy_url.rstrip("/")
        self._metrics = metrics
        self._max_body = config.legacy_max_body_bytes
        self._timeout = aiohttp.ClientTimeout(total=config.legacy_timeout, sock_connect=config.legacy_connect_timeout)
        # The app's own User-Agent is forwarded when it sent one (FORWARDED_HEADERS); the gateway's otherwise.
        self._session = client_session(config.legacy_max_connections, trace_configs)
        # Guesses (polls of GUIDs legacy does not know): per client address and in total (one key).
        self._per_client = KeyedBuckets(
            config.legacy_guess_rate_per_client, config.legacy_guess_burst_per_client, _TRACKED_CLIENTS
        )
        self._total = KeyedBuckets(config.legacy_guess_rate, config.legacy_guess_burst, 1)

    async def forward_unknown_poll(self, client: str, path_qs: str, headers: dict[str, str]) -> LegacyAnswer:
        """A poll of a GUID the gateway does not hold, forwarded within the guess allowance of
        this client address and of all: guessing GUIDs must not become load on the one-replica
        legacy service. Only guesses count, polls legacy answers 404: a legacy session polled
        any number of times spends nothing (its poll rate is legacy's business), so clients
        behind one address (a NAT, a load balancer) are not limited by each other's polling.
        Each poll reserves a guess before it is sent, and gives it back unless legacy answered
        404, so that concurrent guesses cannot overrun the allowance either."""
        wait = self._per_client.wait(client)
        limit = "legacy_guesses_per_client"
        if not wait:
            wait, limit = self._total.wait(_ALL), "legacy_guesses"
        if wait:
            self._metrics.rejected.labels(limit).inc()
            raise GatewayError("too_many_requests", retry_after=wait)
        self._per_client.spend(client)
        self._total.spend(_ALL)
        guessed = False
        try:
            answer = await self.forward("GET", path_qs, headers, "poll")
            guessed = answer.status == 404
            return answer
        finally:
            if not guessed:
                self._per_client.give_back(client)
                self._total.give_back(_ALL)

    async def call(self, method: str, path_qs: str, headers: dict[str, str], route: str) -> LegacyAnswer:
        """One call; LegacyFailure when there is no complete answer. `path_qs` is the raw path and
        query of the incoming request (always starting with '/'), appended to the base URL."""
        started = time.perf_counter()
        outcome = "connection"
        try:
            async with self._session.request(
                method,
                URL(self._base + path_qs, encoded=True),
                headers=headers,
                timeout=self._timeout,
                allow_redirects=False,
            ) as resp:
                try:
                    body = await read_capped(resp, self._max_body)
                except BodyRefused as refused:
                    # A body legacy encoded in a way we cannot read is a broken answer, like a reset.
                    raise LegacyFailure("too_large" if refused.reason == "too_large" else "connection") from None
                answer = LegacyAnswer(
                    resp.status, body, {name: resp.headers[name] for name in RETURNED_HEADERS if name in resp.headers}
                )
            outcome = _outcome(answer.status)
            return answer
        except LegacyFailure as failure:
            outcome = failure.reason
            raise
        except TimeoutError:
            outcome = "timeout"
            raise LegacyFailure("timeout") from None
        except (aiohttp.ClientError, OSError):
            raise LegacyFailure("connection") from None
        finally:
            duration = time.perf_counter() - started
            self._metrics.legacy_duration.labels(route, outcome).observe(duration)
            if outcome not in ("2xx", "4xx"):
                log.warning("legacy_failed", route=route, outcome=outcome, duration_ms=round(duration * 1000, 2))

    async def forward(self, method: str, path_qs: str, headers: dict[str, str], route: str) -> LegacyAnswer:
        """An app's request, sent on to the legacy service. A failure raises the contract's
        error: 504 when it timed out, 502 otherwise."""
        try:
            return await self.call(method, path_qs, headers, route)
        except LegacyFailure as failure:
            raise GatewayError("upstream_timeout" if failure.reason == "timeout" else "upstream_failed") from None

    async def close(self) -> None:
        await self._session.close()
