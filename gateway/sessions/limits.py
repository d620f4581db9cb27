"""Session admission and the poll rate: fan-outs in flight per token and in total, and the
poll rate of each session. (Upstream calls in flight per LPU are gateway/upstream/slots.py.)

Every refusal is counted in `gateway_rejected_requests_total{limit}`. Per-key state stays bounded
whatever clients send: in-flight counts exist only while a fan-out runs (so at most
`sessions_in_flight` tokens), and poll buckets
(gateway/buckets.py) are forgotten once full again, at most `tracked_keys` sessions of them (a
forgotten bucket starts full, which only ever errs on the client's side).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from gateway.buckets import KeyedBuckets
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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._metrics = metrics
        self._per_token: dict[str, int] = {}
        self._total = 0
        # Per session GUID, forgotten once full again: a steady load holds a steady number.
        self._polls = KeyedBuckets(config.poll_rate, config.poll_burst, config.tracked_keys, clock)
        self._take_poll = self._polls.take  # looked up once: every poll calls it

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
        wait = self._take_poll(guid)
        if wait:
            self._metrics.child(self._metrics.rejected, "poll_rate").inc()
            raise GatewayError("too_many_requests", retry_after=wait)
