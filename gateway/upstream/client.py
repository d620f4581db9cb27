"""Calls to the new API: one shared aiohttp.ClientSession (gateway/outbound.py), per-call
timeout, body cap, bounded retries under a retry budget. Hosts come only from configuration."""

from __future__ import annotations

import asyncio
import functools
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
from yarl import URL

from gateway.config import LimitsConfig, UpstreamConfig
from gateway.contract import MKAB, UPSTREAM_METHODS
from gateway.observability.metrics import Metrics
from gateway.observability.trace import TraceContext
from gateway.outbound import BodyRefused, client_session, read_capped
from gateway.upstream.answers import CallFailure, parse_capped
from gateway.upstream.breaker import Breakers
from gateway.upstream.slots import Gate, LpuSlots, NoSlot

RETRYABLE_STATUSES = frozenset({502, 503, 504})


@dataclass(frozen=True)
class Caller:
    """What an upstream call carries on behalf of the app's request."""

    authorization: str
    request_id: str
    client_app: str | None = None
    # The gateway's hop of the app's trace; a caller with none (a tool) sends no traceparent.
    trace: TraceContext | None = None

    @functools.cached_property
    def _headers(self) -> dict[str, str]:
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

    def headers(self) -> dict[str, str]:
        """The headers of every upstream call made for this request (built once: a session's
        fan-out makes three calls per LPU with the same ones)."""
        return self._headers


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


def breaks_circuit(failure: CallFailure) -> bool:
    """Failures that say the target is unreachable. Only these count: they are what holds a
    connection (a 5xx comes back at once), and an error status may be about one patient's
    records, which must not fail the LPU for every other patient."""
    return failure.reason in ("timeout", "connection")


def counts_for_target(failure: CallFailure) -> bool | None:
    """A failed call's outcome for its target's circuit (Breakers.record): None when the call
    waited for our own slot or connection, which says nothing about the target."""
    return None if failure.reason in ("limited", "pool_wait") else not breaks_circuit(failure)


def new_client_session(
    config: UpstreamConfig, trace_configs: list[aiohttp.TraceConfig] | None = None
) -> aiohttp.ClientSession:
    # One pool for the whole app, sized for fan-out: every LPU call of every session shares
    # it, and keep-alive makes the 3×LPU calls of a session cheap. Its limit equals the pool
    # gate's (Upstream), which is where calls wait, so the connector itself never queues.
    return client_session(config.max_connections, trace_configs)


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
        # The wait for a pooled connection, bounded on its own: a call that never got one fails
        # `pool_wait` after `upstream.pool_wait`, and the call timeout starts only once it has.
        self._pool = Gate(config.max_connections)
        self._budget = RetryBudget(config.retry_budget_ratio, config.retry_budget_floor)
        base = config.url.rstrip("/")
        # Each method's path is the config key `upstream.<method>_path`.
        self._url_text = {method: base + getattr(config, f"{method}_path") for method in UPSTREAM_METHODS}
        self._urls = {method: URL(text) for method, text in self._url_text.items()}
        self._lpu_param = quote(config.lpu_query_param, safe="")
        self._timeout = aiohttp.ClientTimeout(total=config.call_timeout, sock_connect=config.connect_timeout)
        # labels() costs more than the observation itself; the common child is looked up once.
        self._ok_duration = {method: metrics.upstream_duration.labels(method, "ok") for method in self._urls}

    @property
    def breakers(self) -> Breakers | None:
        return self._breakers

    async def mkab(self, caller: Caller) -> Any:
        # The MKAB list has one target, the host: its circuit fails creation fast when it is down.
        body = await self._guarded(MKAB, lambda: self.get_body(MKAB, caller))
        # Within the same caps as a per-LPU answer, before map_mkab_list looks at it.
        return parse_capped(body, self._config.max_json_values, self._config.max_records)

    async def for_lpu(self, method: str, lpu_guid: str, caller: Caller) -> bytes:
        """The decoded body of one LPU's answer (parsing and mapping it is the caller's: see
        gateway/upstream/answers.py). The circuit check, the LPU's slot and the call in one
        frame: this is the path of every per-LPU call."""
        # The URL is written out, encoded once: yarl's query handling costs more than the rest
        # of building a call.
        url = URL(f"{self._url_text[method]}?{self._lpu_param}={quote(lpu_guid, safe='')}", encoded=True)
        breakers, slots = self._breakers, self._slots
        if breakers is None or slots is None:
            return await self.get_body(method, caller, url)
        # A circuit per LPU and method: after the cooldown each of the three calls has its own
        # probe, so the probe is one whole LPU fetch, which can complete the LPU.
        target = f"{lpu_guid}/{method}"
        self._allow(breakers, target)
        ok: bool | None = None
        try:
            if not slots.take(lpu_guid):
                try:
                    await slots.wait(lpu_guid, self._config.call_timeout)
                except NoSlot:
                    raise CallFailure("limited") from None
            try:
                body = await self.get_body(method, caller, url)
            finally:
                slots.release(lpu_guid)
            ok = True
            return body
        except CallFailure as failure:
            ok = counts_for_target(failure)
            raise
        finally:
            breakers.record(target, ok)

    def _allow(self, breakers: Breakers, target: str) -> None:
        if not breakers.allow(target):
            self._metrics.circuit_open.inc()
            raise CallFailure("circuit_open")

    async def _guarded(self, target: str, call: Callable[[], Awaitable[Any]]) -> Any:
        if self._breakers is None:
            return await call()
        self._allow(self._breakers, target)
        ok: bool | None = None
        try:
            result = await call()
            ok = True
            return result
        except CallFailure as failure:
            ok = counts_for_target(failure)
            raise
        finally:
            self._breakers.record(target, ok)

    async def get_body(self, method: str, caller: Caller, url: URL | None = None) -> bytes:
        """The decoded body of a 200 answer, or CallFailure. Retries connect errors and
        502/503/504 only: those are the failures where the upstream did no work."""
        attempt = 0
        self._budget.record_attempt()
        while True:
            started = time.perf_counter()
            try:
                result = await self._attempt(method, caller, url or self._urls[method])
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

    async def _attempt(self, method: str, caller: Caller, url: URL) -> bytes:
        if not self._pool.take():  # a free place is taken at once: no timer on the common path
            self._metrics.upstream_pool_waits.inc()
            try:
                await self._pool.wait(self._config.pool_wait)
            except TimeoutError:
                self._metrics.rejected.labels("upstream_pool").inc()
                raise CallFailure("pool_wait", detail="no pooled connection within upstream.pool_wait") from None
        try:
            return await self._call(caller, url)
        finally:
            self._pool.release()

    async def _call(self, caller: Caller, url: URL) -> bytes:
        try:
            async with self._session.get(
                url,
                headers=caller.headers(),
                timeout=self._timeout,
                allow_redirects=False,
            ) as resp:
                if resp.status != 200:
                    raise CallFailure("status", resp.status)
                body = await read_capped(resp, self._config.max_body_bytes)
        except CallFailure:
            raise
        except BodyRefused as refused:
            raise CallFailure(refused.reason, detail=refused.detail) from None
        except TimeoutError:
            raise CallFailure("timeout") from None
        except aiohttp.ClientConnectorDNSError:
            raise CallFailure("connection", detail="dns") from None
        except aiohttp.ClientConnectorError:
            raise CallFailure("connection", detail="connect") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise CallFailure("connection", detail=type(exc).__name__) from None
        return body
