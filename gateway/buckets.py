"""Token buckets keyed by a client's name (an address, a token hash), with bounded memory: the
one in-process rate limiter for the per-token create rate (memory store), the legacy poll guard
and the admin failure limit. (The shared store keeps its own buckets in Redis.)

A bucket is forgotten once it would have refilled completely (`burst / rate` seconds after its
last use), so forgetting it changes nothing; beyond `max_keys` the least recently used go first,
which only ever errs on the client's side (a forgotten bucket starts full).

Imports nothing of the package.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from cachetools import TTLCache


class KeyedBuckets:
    """`rate` tokens per second up to `burst`, per key."""

    def __init__(self, rate: float, burst: int, max_keys: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._clock = clock
        # key → [tokens left, when last updated]
        self._buckets: TTLCache[str, list[float]] = TTLCache(max_keys, burst / rate, timer=clock)

    def __len__(self) -> int:
        return len(self._buckets)

    def _tokens(self, key: str, now: float) -> float:
        bucket = self._buckets.get(key)
        return self._burst if bucket is None else min(self._burst, bucket[0] + (now - bucket[1]) * self._rate)

    def wait(self, key: str) -> int:
        """Whole seconds until `key` may spend a token (0: now), spending nothing."""
        tokens = self._tokens(key, self._clock())
        return 0 if tokens >= 1.0 else max(1, math.ceil((1.0 - tokens) / self._rate))

    def spend(self, key: str) -> None:
        """Spends one token of `key` (down to 0: a caller checks `wait` first)."""
        now = self._clock()
        self._buckets[key] = [max(0.0, self._tokens(key, now) - 1.0), now]

    def give_back(self, key: str) -> None:
        """Returns one token spent on something that turned out not to count (up to the burst)."""
        now = self._clock()
        self._buckets[key] = [min(self._burst, self._tokens(key, now) + 1.0), now]

    def take(self, key: str) -> int:
        """Spends one token if there is one and returns 0, else the whole seconds to wait."""
        waited = self.wait(key)
        if not waited:
            self.spend(key)
        return waited
