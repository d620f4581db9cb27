"""Counts over a sliding time window, for the shadow's per-field counters, the guardrails'
signals and the brownout guards. The caller passes the time in, so the arithmetic is testable
without a clock.

The window is cut into `slices` equal slices; a count expires with its slice, so the totals cover
between `window - window/slices` and `window` seconds. A slice "ahead" of the time passed in (the
clock was set back) expires too. Running totals are kept beside the slices, so reading one key is
a dict lookup, and a record costs an increment or two: brownouts record and read per create.
Memory is bounded by `max_keys` per slice: keys beyond it are counted under OVERFLOW, never
dropped silently.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Hashable, Iterable

OVERFLOW = "other"


class Window:
    def __init__(self, window: float, slices: int = 10, max_keys: int = 1000) -> None:
        self._width = window / slices
        self._slices: deque[tuple[int, Counter[Hashable]]] = deque()
        self._totals: Counter[Hashable] = Counter()
        self._keep = slices
        self._max_keys = max_keys
        self._checked: int | None = None  # the slot the slices were last expired at

    def _expire(self, now: float) -> int:
        slot = int(now // self._width)
        if slot == self._checked:
            return slot  # nothing expires within one slot
        oldest, slices = slot - self._keep + 1, self._slices
        while slices and slices[0][0] < oldest:
            self._forget(slices.popleft()[1])
        while slices and slices[-1][0] > slot:
            self._forget(slices.pop()[1])
        self._checked = slot
        return slot

    def _forget(self, counts: Counter[Hashable]) -> None:
        totals = self._totals
        for key, n in counts.items():
            left = totals[key] - n
            if left > 0:
                totals[key] = left
            else:
                del totals[key]

    def add(self, now: float, key: Hashable, count: int = 1) -> None:
        self.add_all(now, (key,), count)

    def add_all(self, now: float, keys: Iterable[Hashable], count: int = 1) -> None:
        """`count` more of each key, at one time."""
        slot = self._expire(now)
        if not self._slices or self._slices[-1][0] != slot:
            self._slices.append((slot, Counter()))
        counts, totals = self._slices[-1][1], self._totals
        for key in keys:
            if key not in counts and len(counts) >= self._max_keys:
                key = OVERFLOW
            counts[key] += count
            totals[key] += count

    def count(self, now: float, key: Hashable) -> int:
        self._expire(now)
        return self._totals.get(key, 0)

    def totals(self, now: float) -> Counter[Hashable]:
        self._expire(now)
        return Counter(self._totals)

    def clear(self) -> None:
        self._slices.clear()
        self._totals.clear()
        self._checked = None
