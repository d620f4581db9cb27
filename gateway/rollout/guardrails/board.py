"""The guardrails' shared board: where trips, re-arms and each replica's counts are shared
between replicas (docs/rollout-guardrails.md, "4. Guardrails per cohort"). `LocalBoard` is one process;
`RedisBoard` is Redis, when the sessions are there. Cohorts are keyed by their text form
(`android/ios/4.11`, gateway/cohorts.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any, Protocol

from redis.exceptions import RedisError

from gateway.config import RedisConfig
from gateway.store.redis_client import redis_client


class Board(Protocol):
    """Where trips and re-arms are shared between replicas. Trips are kept per flags file (by its
    digest): new flags start with no trip, which is how a flags change re-arms everywhere.
    `load` answers (cohort → trip record, cohort → time of its last re-arm); `trip` whether this
    replica's record is the one kept; `exchange` publishes this replica's counts (`snapshot`,
    kept `ttl` seconds) and answers the other live replicas' counts."""

    async def load(self, flags: str) -> tuple[dict[str, dict[str, Any]], dict[str, float]]: ...
    async def trip(self, flags: str, cohort: str, record: dict[str, Any]) -> bool: ...
    async def rearm(self, flags: str, cohort: str, at: float) -> None: ...
    async def exchange(self, flags: str, owner: str, snapshot: dict[str, Any], ttl: float) -> list[dict[str, Any]]: ...
    async def failed(self) -> None: ...
    async def close(self) -> None: ...


class LocalBoard:
    """One process: no Redis."""

    def __init__(self) -> None:
        self.trips: dict[tuple[str, str], dict[str, Any]] = {}
        self.rearms: dict[str, float] = {}

    async def load(self, flags: str) -> tuple[dict[str, dict[str, Any]], dict[str, float]]:
        return {c: r for (f, c), r in self.trips.items() if f == flags}, dict(self.rearms)

    async def trip(self, flags: str, cohort: str, record: dict[str, Any]) -> bool:
        return self.trips.setdefault((flags, cohort), record) is record

    async def rearm(self, flags: str, cohort: str, at: float) -> None:
        self.trips.pop((flags, cohort), None)
        self.rearms[cohort] = at

    async def exchange(self, flags: str, owner: str, snapshot: dict[str, Any], ttl: float) -> list[dict[str, Any]]:
        return []  # no other replica

    async def failed(self) -> None:
        return None

    async def close(self) -> None:
        return None


class RedisBoard:
    """Two small hashes, `<prefix>:guardrails:tripped:<flags digest>` and
    `<prefix>:guardrails:rearmed`, read by every replica once per interval. The first replica to
    trip a cohort writes its record (HSETNX): the "since" every replica shows is the same. A trip
    hash of flags no longer in force expires after KEEP_SECONDS."""

    KEEP_SECONDS = 7 * 86400

    def __init__(self, config: RedisConfig) -> None:
        self._redis = redis_client(config)
        self._timeout = config.timeout
        self._prefix = config.prefix
        self._rearmed = f"{config.prefix}:guardrails:rearmed"

    def _tripped(self, flags: str) -> str:
        return f"{self._prefix}:guardrails:tripped:{flags[:16]}"

    async def failed(self) -> None:
        """After a failed call: pooled connections to a Redis that went away are dead too, and each
        would fail once more after it is back."""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self._timeout):
                await self._redis.connection_pool.disconnect()

    async def load(self, flags: str) -> tuple[dict[str, dict[str, Any]], dict[str, float]]:
        async with asyncio.timeout(self._timeout):
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.hgetall(self._tripped(flags))
                pipe.hgetall(self._rearmed)
                tripped, rearmed = await pipe.execute()
        trips = {}
        for key, raw in tripped.items():
            try:
                trips[key.decode()] = json.loads(raw)
            except ValueError:
                continue
        rearms = {}
        for key, raw in rearmed.items():
            try:
                rearms[key.decode()] = float(raw)
            except ValueError:
                continue
        return trips, rearms

    async def trip(self, flags: str, cohort: str, record: dict[str, Any]) -> bool:
        async with asyncio.timeout(self._timeout):
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hsetnx(self._tripped(flags), cohort, json.dumps(record))
                pipe.expire(self._tripped(flags), self.KEEP_SECONDS)
                written, _ = await pipe.execute()
        return bool(written)

    async def exchange(self, flags: str, owner: str, snapshot: dict[str, Any], ttl: float) -> list[dict[str, Any]]:
        """Each replica's counts live in `<prefix>:guardrails:signals:<flags>:<owner>` for `ttl`;
        a sorted set of owners by last write finds the live ones (a dead replica's counts expire)."""
        base = f"{self._prefix}:guardrails:signals:{flags[:16]}"
        index, now, ttl_ms = f"{base}:replicas", time.time(), max(1, int(ttl * 1000))
        async with asyncio.timeout(self._timeout):
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.set(f"{base}:{owner}", json.dumps(snapshot), px=ttl_ms)
                pipe.zadd(index, {owner: now})
                pipe.zremrangebyscore(index, "-inf", now - ttl)
                pipe.pexpire(index, ttl_ms)
                pipe.zrange(index, 0, -1)
                *_, owners = await pipe.execute()
            others = [o.decode() for o in owners if o.decode() != owner]
            raws = await self._redis.mget([f"{base}:{o}" for o in others]) if others else []
        found = []
        for raw in raws:
            try:
                value = json.loads(raw) if raw is not None else None
            except ValueError:
                continue
            if isinstance(value, dict):
                found.append(value)
        return found

    async def rearm(self, flags: str, cohort: str, at: float) -> None:
        async with asyncio.timeout(self._timeout):
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hdel(self._tripped(flags), cohort)
                pipe.hset(self._rearmed, cohort, repr(at))
                await pipe.execute()

    async def close(self) -> None:
        await self._redis.aclose()


# What a board call that failed raises: the engine carries on without the board.
BOARD_ERRORS = (RedisError, OSError, TimeoutError)
