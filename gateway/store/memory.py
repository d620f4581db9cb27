"""The in-process store: one replica's sessions in a cachetools.TTLCache."""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable, Collection
from typing import Any

from cachetools import TTLCache

from gateway.buckets import KeyedBuckets
from gateway.observability.metrics import Metrics
from gateway.store.base import (
    CREATE_RATE_PER_TOKEN,
    LIVE_SESSIONS_PER_TOKEN,
    PollRead,
    StoreFull,
    TokenLimited,
    TokenQuota,
)
from gateway.store.session import Session, is_complete


class _ExpiringCache(TTLCache):
    def __init__(
        self, maxsize: int, ttl: float, on_expire: Callable[[int], None], on_evict: Callable[[], None]
    ) -> None:
        super().__init__(maxsize=maxsize, ttl=ttl, timer=time.monotonic)
        self._on_expire = on_expire
        self._on_evict = on_evict

    def expire(self, time: Any = None) -> Any:
        expired = super().expire(time)
        if expired:
            self._on_expire(len(expired))
        return expired

    def popitem(self) -> Any:
        # cachetools evicts through popitem when an insert finds the cache full. MemoryStore
        # refuses instead, so this stays 0 unless that guard is broken: the metric would show it.
        item = super().popitem()
        self._on_evict()
        return item


class MemoryStore:
    """Sessions live for `ttl` seconds from creation, reads do not extend them.

    When `max_sessions` live sessions exist, creating another raises StoreFull (the API answers
    503 with Retry-After) instead of evicting: an evicted session would turn an app's polling
    into 404s mid-flow, which is data lost; a refused one is retried by the app.

    Leases work as in the shared store, so both pass the same contract tests; with one replica a
    lease only lapses if this process stalls for `lease_ttl`.

    The per-token `quota` (None: none) is kept here as in Redis: per token, a heap of its live
    sessions' expiry times (forgotten `ttl` after the token's last create, when all have expired:
    at most one entry per live session), and a create-rate bucket. Polls are counted by
    gateway/sessions/limits.py: with one replica, in-process is exact.
    """

    def __init__(
        self,
        max_sessions: int,
        ttl: float,
        metrics: Metrics,
        lease_ttl: float = 3.0,
        quota: TokenQuota | None = None,
    ) -> None:
        self._metrics = metrics
        self._ttl = ttl
        self._quota = quota
        self._live: TTLCache[str, list[float]] = TTLCache(maxsize=max_sessions, ttl=ttl, timer=time.monotonic)
        self._rates = KeyedBuckets(quota.rate, quota.burst, max_sessions) if quota is not None else None
        self._cache: _ExpiringCache = _ExpiringCache(
            max_sessions, ttl, metrics.store_expired.inc, metrics.store_evictions.inc
        )
        # guid → True while leased; the entry's own TTL is the lease's, and setting it renews it.
        self._leases: TTLCache[str, bool] = TTLCache(maxsize=max_sessions, ttl=lease_ttl, timer=time.monotonic)
        metrics.store_sessions.set_function(lambda: len(self._cache))

    def _live_wait(self, token_key: str, now: float) -> int:
        """0, or the seconds until the token's oldest live session expires when it holds its quota."""
        expiries = self._live.get(token_key)
        if expiries is None or self._quota is None:
            return 0
        while expiries and expiries[0] <= now:
            heapq.heappop(expiries)
        return math.ceil(expiries[0] - now) if len(expiries) >= self._quota.live else 0

    async def admit(self, token_key: str) -> None:
        if self._rates is None:
            return
        # The later of the two is when a create would be admitted: that is the Retry-After.
        live, rate = self._live_wait(token_key, time.monotonic()), self._rates.wait(token_key)
        if live or rate:
            raise TokenLimited(LIVE_SESSIONS_PER_TOKEN if live >= rate else CREATE_RATE_PER_TOKEN, max(live, rate))
        self._rates.spend(token_key)

    async def create(self, session: Session, *, count_token: bool = True) -> None:
        self._cache.expire()
        if len(self._cache) >= self._cache.maxsize:
            self._metrics.store_rejected.inc()
            raise StoreFull
        now = time.monotonic()
        if count_token and self._quota is not None:
            if waited := self._live_wait(session.token_hash, now):
                raise TokenLimited(LIVE_SESSIONS_PER_TOKEN, waited)
            expiries = self._live.pop(session.token_hash, [])
            heapq.heappush(expiries, now + self._ttl)
            self._live[session.token_hash] = expiries  # re-set: lives `ttl` from this create
        self._cache[session.guid] = session
        self._leases[session.guid] = True

    async def read_poll(self, guid: str, binding: str | None) -> PollRead:
        return PollRead(await self.load(guid))

    async def load(self, guid: str) -> Session | None:
        try:
            # One lookup (`get` is a second): the cache's expiry check is Python code.
            session = self._cache[guid]
        except KeyError:
            self._metrics.counts.add(self._metrics.store_misses)
            return None
        self._metrics.counts.add(self._metrics.store_hits)
        session.orphaned = guid not in self._leases
        session.read_at = time.time()
        return session

    async def finish_lpu(self, guid: str, index: int, entry: bytes) -> bool:
        session = self._cache.get(guid)
        if session is None or index in session.results:
            return False
        # The same clock as `load`'s read_at: once a reader has rendered this LPU Failed, a
        # Complete can no longer be written (only a Failed, which changes nothing it saw).
        if is_complete(entry) and time.time() >= session.deadline:
            return False
        session.results[index] = entry
        return True

    async def acquire_lease(self, guid: str) -> bool:
        if guid in self._leases or guid not in self._cache:
            return False
        self._leases[guid] = True
        return True

    async def renew_leases(self, guids: Collection[str]) -> set[str]:
        # With one replica nobody else takes a lease: it is lost only with its session.
        lost = {guid for guid in guids if guid not in self._cache}
        for guid in set(guids) - lost:
            self._leases[guid] = True
        return lost

    async def release_lease(self, guid: str) -> None:
        self._leases.pop(guid, None)

    async def ready(self) -> bool:
        return True

    async def close(self) -> None:
        self._cache.clear()
        self._leases.clear()
