"""Upstream calls in flight per LPU: at most `limits.upstream_per_lpu` at once, the others wait
their turn for a bounded time. A slot exists only while a call holds or waits for one, so the
state stays bounded whatever the LPU lists hold.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from gateway.observability.metrics import Metrics


class NoSlot(Exception):
    """No upstream slot for this LPU became free in time."""


class _Slot:
    __slots__ = ("semaphore", "users")

    def __init__(self, limit: int) -> None:
        self.semaphore = asyncio.Semaphore(limit)
        self.users = 0


class LpuSlots:
    """At most `limit` upstream calls in flight per LPU; the others wait their turn."""

    def __init__(self, limit: int, metrics: Metrics) -> None:
        self._limit = limit
        self._metrics = metrics
        self._slots: dict[str, _Slot] = {}

    @property
    def tracked(self) -> int:
        return len(self._slots)

    @asynccontextmanager
    async def hold(self, key: str, wait: float) -> AsyncIterator[None]:
        """Holds one of the key's slots for the body; NoSlot if none frees up within `wait` s."""
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = _Slot(self._limit)
        slot.users += 1
        try:
            if slot.semaphore.locked():
                try:
                    async with asyncio.timeout(wait):
                        await slot.semaphore.acquire()
                except TimeoutError:
                    self._metrics.rejected.labels("upstream_per_lpu").inc()
                    raise NoSlot(key) from None
            else:
                # A free slot is taken at once: no timer to arm and cancel on the common path.
                await slot.semaphore.acquire()
            try:
                yield
            finally:
                slot.semaphore.release()
        finally:
            slot.users -= 1
            if not slot.users:
                del self._slots[key]
