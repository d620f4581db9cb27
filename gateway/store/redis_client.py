"""Building Redis clients, and whether Redis answers: the one place that knows how the gateway
connects to Redis (a URL or Sentinel, every wait bounded, no retries of its own). The session
store, the rollout's guardrail board and the migration ledger each get their client here, so
a failover or a timeout means the same to all three.
"""

from __future__ import annotations

from typing import Any

import structlog
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

from gateway.config import RedisConfig, parse_sentinel_url
from gateway.observability.metrics import Metrics

log = structlog.get_logger("gateway.store")


def redis_client(config: RedisConfig) -> Redis:
    """A client with every wait bounded by `config.timeout` and no retries of its own (the caller
    decides what a failure means). A redis+sentinel:// URL asks the sentinels for the primary,
    again after every connection error, so a failover is followed without a restart."""
    bounds: dict[str, Any] = {
        "socket_timeout": config.timeout,
        "socket_connect_timeout": config.timeout,
        "retry": Retry(NoBackoff(), 0),
    }
    if not config.url.startswith("redis+sentinel://"):
        pool = BlockingConnectionPool.from_url(
            config.url, max_connections=config.max_connections, timeout=config.timeout, **bounds
        )
        return Redis.from_pool(pool)
    target = parse_sentinel_url(config.url)
    sentinel = Sentinel(list(target.sentinels), sentinel_kwargs=dict(bounds))
    return sentinel.master_for(
        target.primary,
        db=target.db,
        username=target.username,
        password=target.password,
        max_connections=config.max_connections,
        **bounds,
    )


class Reachability:
    """Whether the store answers; each change is logged once and counted.

    Only what says Redis is gone marks it down: a connection error (refused, reset, lost
    authentication, a replica that became read-only or is loading), a timed-out cheap call, or
    `down_after` timed-out calls in a row. A timed-out expensive call is followed by a PING:
    if Redis does not answer that either, it is stalled and marked down at once. An answer, even
    an error (out of memory, a refused script), shows Redis is up; one slow command on one big
    session is that call's failure."""

    def __init__(self, metrics: Metrics, down_after: int = 3) -> None:
        self._metrics = metrics
        self._down_after = down_after
        self._timeouts = 0
        self.up = True
        metrics.store_up.set(1)

    def ok(self) -> None:
        self._timeouts = 0
        if not self.up:
            self._change(True)
            log.info("store_reachable", store="redis")

    def timed_out(self, error: BaseException, cheap: bool) -> bool:
        """Records a timed-out call; True when it marks the store down."""
        self._timeouts += 1
        return self.failed(error) if cheap or self._timeouts >= self._down_after else False

    def failed(self, error: BaseException) -> bool:
        """Records a failed call; True when it is the one that marks the store down."""
        if self.up:
            self._change(False)
            log.warning("store_unreachable", store="redis", error=type(error).__name__)
            return True
        return False

    def _change(self, up: bool) -> None:
        self.up = up
        self._metrics.store_up.set(1 if up else 0)
        self._metrics.store_state_changes.labels("up" if up else "down").inc()
