"""Finished sessions kept in process, in front of the shared store.

A session whose every LPU is terminal never changes again (results are written once, states
never move after terminal), so each replica may answer its polls from a copy instead of a Redis
round trip. Only sessions with every result in are kept; the token binding is still checked on
every poll (the copy carries the token hash), a copy is dropped when its session would expire
in the shared store, so a poll never outlives the session there, and while the shared store is
down no copy is served (every replica answers 503 alike). Bounded in entries
(`redis.finished_cache_sessions`), least recently used first out.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from typing import Any

from cachetools import TLRUCache

from gateway.store.base import PollRead, SessionStore
from gateway.store.session import Session


class FinishedCache:
    """A SessionStore that serves finished sessions from a bounded in-process copy and passes
    everything else to `inner`."""

    def __init__(
        self,
        inner: SessionStore,
        max_sessions: int,
        ttl: float,
        on_hit: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._inner = inner
        self._ttl = ttl
        self._on_hit = on_hit
        # Each copy lives until its session's own expiry (created_at + ttl, unix seconds).
        self._copies: TLRUCache[str, Session] = TLRUCache(
            maxsize=max_sessions, ttu=lambda _, session, now: session.created_at + ttl, timer=clock
        )

    def __len__(self) -> int:
        return len(self._copies)

    async def _copy(self, guid: str) -> Session | None:
        session = self._copies.get(guid)
        # While the shared store is down, polls answer as every other replica's do (503), not
        # from whichever copies this one happens to hold.
        if session is not None and await self._inner.ready():
            if self._on_hit is not None:
                self._on_hit()
            return session
        return None

    def _keep(self, guid: str, session: Session | None) -> None:
        if session is not None and len(session.results) == len(session.lpus):
            self._copies[guid] = session

    async def load(self, guid: str) -> Session | None:
        if (session := await self._copy(guid)) is not None:
            return session
        session = await self._inner.load(guid)
        self._keep(guid, session)
        return session

    async def read_poll(self, guid: str, binding: str | None) -> PollRead:
        # A copy is answered without a round trip, so its poll is not counted in the shared
        # store: this replica's own bucket (gateway/sessions/limits.py) limits it. It costs
        # neither Redis nor the upstream, only this replica's CPU, which that bucket bounds.
        if (session := await self._copy(guid)) is not None:
            return PollRead(session)
        read = await self._inner.read_poll(guid, binding)
        self._keep(guid, read.session)
        return read

    async def admit(self, token_key: str) -> None:
        await self._inner.admit(token_key)

    async def create(self, session: Session, *, count_token: bool = True) -> None:
        await self._inner.create(session, count_token=count_token)

    async def finish_lpu(self, guid: str, index: int, entry: bytes) -> bool:
        return await self._inner.finish_lpu(guid, index, entry)

    async def acquire_lease(self, guid: str) -> bool:
        return await self._inner.acquire_lease(guid)

    async def renew_leases(self, guids: Collection[str]) -> set[str]:
        return await self._inner.renew_leases(guids)

    async def release_lease(self, guid: str) -> None:
        await self._inner.release_lease(guid)

    async def ready(self) -> bool:
        return await self._inner.ready()

    async def close(self) -> None:
        self._copies.clear()
        await self._inner.close()

    def __getattr__(self, name: str) -> Any:
        # What is not part of the store interface (the Redis store's reachability, its owner id
        # for tools and tests) is the inner store's.
        return getattr(self._inner, name)
