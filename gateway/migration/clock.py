"""The migration's time source, passed in: days, windows and "last seen" all read it, so that
tests and the demo can move a gateway through days without waiting for them."""

from __future__ import annotations

import time
from typing import Protocol

DAY = 86_400


class Clock(Protocol):
    def now(self) -> float:
        """Unix seconds."""
        ...


class SystemClock:
    def now(self) -> float:
        return time.time()


class ManualClock:
    """A clock that stands still until moved (tests, the demo script), or, once released,
    follows the system's time."""

    def __init__(self, start: float | None = None) -> None:
        self._now = time.time() if start is None else start
        self._released = False

    def now(self) -> float:
        return time.time() if self._released else self._now

    def set(self, when: float) -> None:
        self._now, self._released = when, False

    def advance(self, seconds: float) -> None:
        self._now += seconds

    def release(self) -> None:
        """From now on, the system's time: the demo hands its gateway over to a person."""
        self._released = True


def day_of(when: float) -> int:
    """The UTC day (days since 1970-01-01) a unix time falls in."""
    return int(when // DAY)
