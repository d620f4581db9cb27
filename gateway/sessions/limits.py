"""Session admission and the poll rate: fan-outs in flight per token and in total, and the
poll rate of each session. (Upstream calls in flight per LPU are gateway/upstream/slots.py.)

Every refusal is counted in `gateway_rejected_requests_total{limit}`. Per-key state stays bounded
whatever clients send: in-flight counts exist only while a fan-out runs (so at most
`sessions_in_flight` tokens), and poll buckets
live for a session's TTL in a cache of at most `tracked_keys` sessions (a forgotten bucket starts
full again, which only ever errs on the client's side).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from gateway.config import LimitsConfig
from gateway.contract import GatewayError
from gateway.observability.metrics import Metrics


class Admission:
    """A session's place among the fan-outs in flight; `release()` gives it back, once."""

    def __init__(self, release: Callable[[], None]) -> None:
        self._release: Callable[[], None] | None = release

    def release(self) -> None:
        if self._release is not None:
            release, self._release = self._release, None
            release()


class SessionLimits:
    """Admission of new sessions and the per-session poll rate."""

    def __init__(
        self,
        config: LimitsConfig,
        metrics: Metrics,
        session_ttl: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._metrics = metrics
        self._clock = clock
        self._per_token: dict[str, int] = {}
        self._total = 0
        self._bucket_ttl = session_ttl
        # session GUID → [tokens left, when last updated, when forgotten], oldest first: a bucket
        # lives as long as a session can be polled, so a steady load holds a steady number.
        self._buckets: dict[str, list[float]] = {}

    @property
    def in_flight(self) -> int:
        return self._total

    def admit(self, token_key: str) -> Admission:
        """A place for one more fan-out of this token (a hash, never the token itself), or a
        GatewayError: 503 when the replica runs its maximum, 429 when the token does."""
        if self._total >= self._config.sessions_in_flight:
            self._metrics.rejected.labels("sessions_in_flight").inc()
            raise GatewayError("store_full", retry_after=1)
        running = self._per_token.get(token_key, 0)
        if running >= self._config.sessions_per_token:
            self._metrics.rejected.labels("sessions_per_token").inc()
            raise GatewayError("too_many_requests", retry_after=1)
        self._per_token[token_key] = running + 1
        self._total += 1
        return Admission(lambda: self._release(token_key))

    def _release(self, token_key: str) -> None:
        self._total -= 1
        running = self._per_token.pop(token_key, 0) - 1
        if running > 0:
            self._per_token[token_key] = running

    def check_poll(self, guid: str) -> None:
        """Spends one poll of this session's bucket, or raises 429 with the seconds until the
        next poll would be served."""
        rate, burst = self._config.poll_rate, float(self._config.poll_burst)
        now = self._clock()
        bucket = self._buckets.get(guid)
        if bucket is None:
            self._forget_expired(now)
            bucket = self._buckets[guid] = [burst, now, now + self._bucket_ttl]
        tokens = min(burst, bucket[0] + (now - bucket[1]) * rate)
        bucket[1] = now
        if tokens < 1.0:
            bucket[0] = tokens
            self._metrics.child(self._metrics.rejected, "poll_rate").inc()
            raise GatewayError("too_many_requests", retry_after=max(1, math.ceil((1.0 - tokens) / rate)))
        bucket[0] = tokens - 1.0

    def _forget_expired(self, now: float) -> None:
        """Drops the buckets past their time, and the oldest beyond `tracked_keys` (a forgotten
        bucket starts full again, which only ever errs on the client's side)."""
        buckets = self._buckets
        while buckets:
            oldest = next(iter(buckets))
            if buckets[oldest][2] > now and len(buckets) < self._config.tracked_keys:
                return
            del buckets[oldest]
