"""Token buckets keyed by a client's name (an address, a token hash, a session GUID), with
bounded memory: the one in-process rate limiter, for the per-session poll rate, the per-token
create rate (memory store), the legacy poll guard and the admin failure limit. (The shared
store keeps its own buckets in Redis.)

A bucket is forgotten once it would have refilled completely (`burst / rate` seconds after its
last use), so forgetting it changes nothing; beyond `max_keys` the least recently used go first,
which only ever errs on the client's side (a forgotten bucket starts full).

Imports nothing of the package.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable


class KeyedBuckets:
    """`rate` tokens per second up to `burst`, per key."""

    def __init__(self, rate: float, burst: int, max_keys: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._max_keys = max_keys
        self._clock = clock
        self._full_after = burst / rate
        # key → (tokens left, when last used), least recently used first. Each use moves its key
        # to the end with the same lifetime, so the forgettable buckets are always a prefix: a
        # new key drops them from the front and stops at the first one still needed (the poll
        # path's cost: one lookup, one store).
        self._buckets: dict[str, tuple[float, float]] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def _pop_tokens(self, key: str, now: float) -> float:
        """The tokens `key` has now, its bucket taken out (the caller puts it back at the end)."""
        bucket = self._buckets.pop(key, None)
        if bucket is None:
            self._forget(now)
            return self._burst
        tokens = bucket[0] + (now - bucket[1]) * self._rate
        return self._burst if tokens > self._burst else tokens

    def _forget(self, now: float) -> None:
        buckets = self._buckets
        while buckets:
            oldest = next(iter(buckets))
            if buckets[oldest][1] + self._full_after > now and len(buckets) < self._max_keys:
                return
            del buckets[oldest]

    def _seconds_to_one(self, tokens: float) -> int:
        return 0 if tokens >= 1.0 else max(1, math.ceil((1.0 - tokens) / self._rate))

    def take(self, key: str) -> int:
        """Spends one token if there is one and returns 0, else the whole seconds to wait."""
        # _pop_tokens written out: this runs for every poll.
        now = self._clock()
        buckets = self._buckets
        bucket = buckets.pop(key, None)
        if bucket is None:
            self._forget(now)
            tokens = self._burst
        else:
            tokens = bucket[0] + (now - bucket[1]) * self._rate
            if tokens > self._burst:
                tokens = self._burst
        if tokens >= 1.0:
            buckets[key] = (tokens - 1.0, now)
            return 0
        buckets[key] = (tokens, now)
        return self._seconds_to_one(tokens)

    def wait(self, key: str) -> int:
        """Whole seconds until `key` may spend a token (0: now), spending nothing."""
        bucket = self._buckets.get(key)
        if bucket is None:
            return 0
        return self._seconds_to_one(min(self._burst, bucket[0] + (self._clock() - bucket[1]) * self._rate))

    def spend(self, key: str) -> None:
        """Spends one token of `key` (down to 0: a caller checks `wait` first)."""
        now = self._clock()
        self._buckets[key] = (max(0.0, self._pop_tokens(key, now) - 1.0), now)

    def give_back(self, key: str) -> None:
        """Returns one token spent on something that turned out not to count (up to the burst)."""
        now = self._clock()
        self._buckets[key] = (min(self._burst, self._pop_tokens(key, now) + 1.0), now)
