"""Counts over a sliding time window, for the shadow's per-field counters and the guardrails'
signals. The caller passes the time in, so the arithmetic is testable without a clock.

The window is cut into `slices` equal slices; a count expires with its slice, so the totals cover
between `window - window/slices` and `window` seconds. Memory is bounded by `max_keys` per slice:
keys beyond it are counted under OVERFLOW, never dropped silently.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Hashable

OVERFLOW = "other"


class Window:
    def __init__(self, window: float, slices: int = 10, max_keys: int = 1000) -> None:
        self._width = window / slices
        self._slices: deque[tuple[int, Counter[Hashable]]] = deque()
        self._keep = slices
        self._max_keys = max_keys

    def _slot(self, now: float) -> int:
        return int(now // self._width)

    def _expire(self, now: float) -> None:
        oldest = self._slot(now) - self._keep + 1
        while self._slices and self._slices[0][0] < oldest:
            self._slices.popleft()

    def add(self, now: float, key: Hashable, count: int = 1) -> None:
        self._expire(now)
        slot = self._slot(now)
        if not self._slices or self._slices[-1][0] != slot:
            self._slices.append((slot, Counter()))
        counts = self._slices[-1][1]
        if key not in counts and len(counts) >= self._max_keys:
            key = OVERFLOW
        counts[key] += count

    def totals(self, now: float) -> Counter[Hashable]:
        self._expire(now)
        total: Counter[Hashable] = Counter()
        for _, counts in self._slices:
            total.update(counts)
        return total

    def clear(self) -> None:
        self._slices.clear()
