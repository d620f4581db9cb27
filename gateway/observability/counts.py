"""Increments made per request, kept as plain dict counts and folded into their prometheus
counters before every scrape and with the tally's once a second: a prometheus increment takes
a lock, and the request path makes several. Under `gateway serve --workers N` a scrape reads
the files and folds only its own worker, so there each increment folds at once."""

from __future__ import annotations

from typing import Any


class Counts:
    __slots__ = ("_at_once", "_counts")

    def __init__(self, at_once: bool) -> None:
        self._at_once = at_once
        self._counts: dict[Any, int] = {}

    def add(self, counter: Any) -> None:
        """One increment of `counter` (a counter without labels, or a labelled child)."""
        counts = self._counts
        counts[counter] = counts.get(counter, 0) + 1
        if self._at_once:
            self.fold()

    def fold(self) -> None:
        counts, self._counts = self._counts, {}
        for counter, n in counts.items():
            counter.inc(n)
