"""Places that upstream calls take: `Gate`, a counted limit whose common path allocates nothing,
and `LpuSlots`, one gate per LPU.

A Gate is an asyncio.Semaphore without its costs on the path every call takes: `take()` is
synchronous (a free place and no one waiting ahead: no coroutine, no timer, no generator, which
Semaphore.acquire and Semaphore.locked each make), `wait()` is the bounded wait when it found
none, `release()` hands the place to the oldest waiter (first come, first served).

LpuSlots: upstream calls in flight per LPU: at most `limits.upstream_per_lpu` at once, the others
wait their turn for a bounded time. A slot exists only while a call holds or waits for one, so
the state stays bounded whatever the LPU lists hold.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from gateway.observability.metrics import Metrics


class Gate:
    """At most `limit` holders at once."""

    __slots__ = ("_waiters", "free", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.free = limit
        # Made on the first wait: most gates never have anyone waiting.
        self._waiters: deque[asyncio.Future[None]] | None = None

    @property
    def idle(self) -> bool:
        """No holder and no one waiting."""
        return self.free == self.limit and not self._waiters

    def take(self) -> bool:
        """Takes a place now if one is free and no one waits ahead; else False (then `wait`)."""
        if self.free and not self._waiters:
            self.free -= 1
            return True
        return False

    async def wait(self, within: float | None = None) -> None:
        """Waits for a place (after `take` found none); TimeoutError after `within` s (None: no bound)."""
        if self._waiters is None:
            self._waiters = deque()
        waiters = self._waiters
        handed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters.append(handed)
        try:
            async with asyncio.timeout(within):
                await handed
        except BaseException:
            if handed.done() and not handed.cancelled():
                self.release()  # handed a place just as the wait ended: pass it on
            else:
                # Still queued, unless a release passed over it (a cancelled wait is skipped).
                with contextlib.suppress(ValueError):
                    waiters.remove(handed)
            raise

    def release(self) -> None:
        """Gives back a place that `take` or `wait` gave: to the oldest waiter, if any."""
        waiters = self._waiters
        while waiters:
            handed = waiters.popleft()
            if not handed.done():
                handed.set_result(None)
                return
        self.free += 1


class NoSlot(Exception):
    """No upstream slot for this LPU became free in time."""


class LpuSlots:
    """At most `limit` upstream calls in flight per LPU; the others wait their turn."""

    def __init__(self, limit: int, metrics: Metrics) -> None:
        self._limit = limit
        self._metrics = metrics
        self._slots: dict[str, Gate] = {}

    @property
    def tracked(self) -> int:
        return len(self._slots)

    def take(self, key: str) -> bool:
        """Takes one of the key's slots now if one is free and no call waits ahead; else False
        (then `wait`). The three calls of an LPU share its one Gate."""
        gate = self._slots.get(key)
        if gate is None:
            gate = self._slots[key] = Gate(self._limit)
        return gate.take()

    async def wait(self, key: str, wait: float) -> None:
        """Waits at most `wait` s for one of the key's slots (after `take` found none); NoSlot
        if none is handed over in time."""
        gate = self._slots[key]
        try:
            await gate.wait(wait)
        except TimeoutError:
            self._metrics.rejected.labels("upstream_per_lpu").inc()
            raise NoSlot(key) from None
        finally:
            if gate.idle and self._slots.get(key) is gate:
                del self._slots[key]

    def release(self, key: str) -> None:
        """Gives back a slot that `take` or `wait` gave."""
        gate = self._slots[key]
        gate.release()
        if gate.idle:
            del self._slots[key]

    @asynccontextmanager
    async def hold(self, key: str, wait: float) -> AsyncIterator[None]:
        """Holds one of the key's slots for the body; NoSlot if none frees up within `wait` s."""
        if not self.take(key):
            await self.wait(key, wait)
        try:
            yield
        finally:
            self.release(key)
