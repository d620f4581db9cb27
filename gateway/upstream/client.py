"""Calls to the new API: one shared aiohttp.ClientSession, per-call timeout, body cap,
bounded retries under a retry budget. Hosts come only from configuration."""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from yarl import URL

from gateway import USER_AGENT
from gateway.config import LimitsConfig, UpstreamConfig
from gateway.contract import MKAB, UPSTREAM_METHODS
from gateway.observability.metrics import Metrics
from gateway.observability.trace import TraceContext
from gateway.upstream.breaker import Breakers
from gateway.upstream.slots import LpuSlots, NoSlot

RETRYABLE_STATUSES = frozenset({502, 503, 504})


class CallFailure(Exception):
    """An upstream call that failed for good. `reason` is one of the metric reasons:
    timeout, status, invalid_body, connection, too_large, circuit_open (failed fast by the
    target's circuit breaker), limited (no per-LPU slot freed up within the call timeout)."""

    def __init__(self, reason: str, status: int | None = None, detail: str = "") -> None:
        super().__init__(f"{reason}{f' {status}' if status else ''}{f': {detail}' if detail else ''}")
        self.reason = reason
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class Caller:
    """What an upstream call carries on behalf of the app's request."""

    authorization: str
    request_id: str
    client_app: str | None = None
    # The gateway's hop of the app's trace; a caller with none (a tool) sends no traceparent.
    trace: TraceContext | None = None

    def headers(self) -> dict[str, str]:
        headers = {
            "Authorization": self.authorization,
            "X-Request-Id": self.request_id,
            "Accept": "application/json",
        }
        if self.client_app is not None:
            headers["ClientApplication"] = self.client_app
        if self.trace is not None:
            headers |= self.trace.headers()
        return headers


class RetryBudget:
    """Each first attempt earns `ratio` of a retry, up to `floor` saved; a retry spends one.
    Under a widespread outage retries stop adding load instead of tripling it."""

    def __init__(self, ratio: float, floor: int) -> None:
        self._ratio = ratio
        self._cap = float(max(floor, 1))
        self._tokens = float(floor)

    def record_attempt(self) -> None:
        self._tokens = min(self._cap, self._tokens + self._ratio)

    def try_spend(self) -> bool:
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class SpecialUseResolver(aiohttp.ThreadedResolver):
    """RFC 6761 §6.4: names under `.invalid` never resolve, and resolvers should say so at once
    rather than ask the network. A placeholder host left in a config fails without a query."""

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> Any:
        if host.lower().rstrip(".").endswith(".invalid"):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return await super().resolve(host, port, family)


def parse_body(body: bytes) -> Any:
    """An upstream body as JSON, strictly: NaN and Infinity (which Python's parser accepts) would
    pass through the mapper into answers that the apps' JSON parsers reject. orjson refuses them
    (and numbers that overflow to infinity), and parses in a third of the stdlib's time
    (docs/benchmarks.md)."""
    try:
        return orjson.loads(body)
    except (ValueError, RecursionError):
        raise CallFailure("invalid_body", detail="not JSON") from None


def breaks_circuit(failure: CallFailure) -> bool:
    """Failures that say the target is unreachable. Only these count: they are what holds a
    connection (a 5xx comes back at once), and an error status may be about one patient's
    records, which must not fail the LPU for every other patient."""
    return failure.reason in ("timeout", "connection")


def new_client_session(
    config: UpstreamConfig, trace_configs: list[aiohttp.TraceConfig] | None = None
) -> aiohttp.ClientSession:
    # One connector for the whole app, sized for fan-out: every LPU call of every session
    # shares it, and keep-alive makes the 3×LPU calls of a session cheap.
    connector = aiohttp.TCPConnector(
        limit=config.max_connections, limit_per_host=0, ttl_dns_cache=300, resolver=SpecialUseResolver()
    )
    return aiohttp.ClientSession(
        connector=connector,
        trust_env=False,
        raise_for_status=False,
        headers={"User-Agent": USER_AGENT},
        trace_configs=trace_configs or None,
    )


class Upstream:
    def __init__(
        self,
        config: UpstreamConfig,
        session: aiohttp.ClientSession,
        metrics: Metrics,
        limits: LimitsConfig | None = None,
    ) -> None:
        self._config = config
        self._session = session
        self._metrics = metrics
        # Without limits (tools, other callers) calls go straight through.
        self._breakers = (
            Breakers(limits.breaker_failures, limits.breaker_cooldown, limits.tracked_keys) if limits else None
        )
        self._slots = LpuSlots(limits.upstream_per_lpu, metrics) if limits else None
        self._budget = RetryBudget(config.retry_budget_ratio, config.retry_budget_floor)
        base = config.url.rstrip("/")
        # Each method's path is the config key `upstream.<method>_path`.
        self._urls = {method: URL(base + getattr(config, f"{method}_path")) for method in UPSTREAM_METHODS}
        self._timeout = aiohttp.ClientTimeout(total=config.call_timeout, sock_connect=config.connect_timeout)
        # labels() costs more than the observation itself; the common child is looked up once.
        self._ok_duration = {method: metrics.upstream_duration.labels(method, "ok") for method in self._urls}

    @property
    def breakers(self) -> Breakers | None:
        return self._breakers

    async def mkab(self, caller: Caller) -> Any:
        # The MKAB list has one target, the host: its circuit fails creation fast when it is down.
        return await self._guarded(MKAB, lambda: self.get_json(MKAB, caller))

    async def for_lpu(self, method: str, lpu_guid: str, caller: Caller) -> Any:
        params = {self._config.lpu_query_param: lpu_guid}
        # A circuit per LPU and method: after the cooldown each of the three calls has its own
        # probe, so the probe is one whole LPU fetch, which can complete the LPU.
        target = f"{lpu_guid}/{method}"
        return await self._guarded(target, lambda: self._in_slot(lpu_guid, method, caller, params))

    async def _guarded(self, target: str, call: Callable[[], Awaitable[Any]]) -> Any:
        if self._breakers is None:
            return await call()
        if not self._breakers.allow(target):
            self._metrics.circuit_open.inc()
            raise CallFailure("circuit_open")
        ok: bool | None = None
        try:
            result = await call()
            ok = True
            return result
        except CallFailure as failure:
            # Waiting for our own slot says nothing about the target.
            ok = None if failure.reason == "limited" else not breaks_circuit(failure)
            raise
        finally:
            self._breakers.record(target, ok)

    async def _in_slot(self, lpu_guid: str, method: str, caller: Caller, params: dict[str, str]) -> Any:
        if self._slots is None:
            return await self.get_json(method, caller, params)
        try:
            async with self._slots.hold(lpu_guid, self._config.call_timeout):
                return await self.get_json(method, caller, params)
        except NoSlot:
            raise CallFailure("limited") from None

    async def get_json(self, method: str, caller: Caller, params: dict[str, str] | None = None) -> Any:
        """The parsed JSON of a 200 answer, or CallFailure. Retries connect errors and
        502/503/504 only: those are the failures where the upstream did no work."""
        attempt = 0
        self._budget.record_attempt()
        while True:
            started = time.perf_counter()
            try:
                result = await self._attempt(method, caller, params)
            except CallFailure as failure:
                self._metrics.upstream_duration.labels(method, failure.reason).observe(time.perf_counter() - started)
                retryable = failure.status in RETRYABLE_STATUSES or failure.detail in ("connect", "dns")
                if not retryable or attempt >= self._config.retries:
                    raise
                if not self._budget.try_spend():
                    self._metrics.retry_budget_exhausted.inc()
                    raise
                attempt += 1
                self._metrics.upstream_retries.labels(method).inc()
                await asyncio.sleep(random.uniform(0, self._config.retry_backoff * 2**attempt))
                continue
            self._ok_duration[method].observe(time.perf_counter() - started)
            return result

    async def _attempt(self, method: str, caller: Caller, params: dict[str, str] | None) -> Any:
        try:
            async with self._session.get(
                self._urls[method],
                params=params,
                headers=caller.headers(),
                timeout=self._timeout,
                allow_redirects=False,
            ) as resp:
                if resp.status != 200:
                    raise CallFailure("status", resp.status)
                body = await self._read_capped(resp)
        except CallFailure:
            raise
        except TimeoutError:
            raise CallFailure("timeout") from None
        except aiohttp.ClientConnectorDNSError:
            raise CallFailure("connection", detail="dns") from None
        except aiohttp.ClientConnectorError:
            raise CallFailure("connection", detail="connect") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise CallFailure("connection", detail=type(exc).__name__) from None
        return parse_body(body)

    async def _read_capped(self, resp: aiohttp.ClientResponse) -> bytes:
        cap = self._config.max_body_bytes
        if resp.content_length is not None:
            if resp.content_length > cap:
                raise CallFailure("too_large")
            return await resp.read()  # the parser stops at Content-Length: the cap holds
        chunks = []
        size = 0
        async for chunk in resp.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > cap:
                raise CallFailure("too_large")
            chunks.append(chunk)
        return b"".join(chunks)
