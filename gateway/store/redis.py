"""The shared store: sessions in Redis, so that any replica can answer any poll.

Keys (`prefix` is `redis.prefix`, "vg" by default):

- `{prefix}:s:{guid}`: hash, one per session, expires `session.ttl` after creation. Fields:
  `h` token hash, `c` created at and `d` deadline (unix seconds), `n` number of LPUs,
  `l{i}` LPU i's JSON, `g{i}` LPU i's guid, `r{i}` LPU i's finished entry (written with HSETNX
  and only while the hash exists: the first terminal write wins, a late one cannot resurrect an
  expired session; a Complete is refused from `d` on, by Redis's clock).
- `{prefix}:lease:{guid}`: string, the id of the replica running the session's fan-out, expiring
  `redis.lease_ttl` after its last renewal.
- `{prefix}:sessions`: sorted set, session guid → expiry (ms, Redis clock): the bound on live
  sessions (`session.max_sessions`, counted across all replicas).

A session is created (bound check, hash, TTL, lease) by one Lua script, so no replica ever sees a
session without its lease or its TTL. A poll is one round trip (HGETALL of the hash and EXISTS of
the lease, pipelined) and joins the stored bytes.

Every call is bounded by `redis.timeout` (socket timeouts and an asyncio timeout around it).
While Redis is unreachable, request-path calls fail at once with StoreUnavailable instead of
waiting; a probe every `redis.probe_interval` notices when it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable, Collection
from typing import Any, TypeVar

import structlog
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from gateway.config import RedisConfig, SessionConfig, parse_sentinel_url
from gateway.observability.metrics import Metrics
from gateway.store.base import StoreFull, StoreUnavailable
from gateway.store.session import Session, is_complete
from gateway.tasks import Tasks

log = structlog.get_logger("gateway.store")

T = TypeVar("T")

# KEYS: index, session, lease. ARGV: ttl ms, lease ms, max sessions, owner, guid, field, value, ...
# Returns {created (1) or full (0), sessions removed from the index as expired, live sessions}.
_CREATE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expired = redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local live = redis.call('ZCARD', KEYS[1])
if live >= tonumber(ARGV[3]) then
  return {0, expired, live}
end
local ttl = tonumber(ARGV[1])
redis.call('ZADD', KEYS[1], now + ttl, ARGV[5])
redis.call('PEXPIRE', KEYS[1], ttl)
for i = 6, #ARGV, 2 do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
end
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('SET', KEYS[3], ARGV[4], 'PX', ARGV[2])
return {1, expired, live + 1}
"""

# KEYS: session. ARGV: field, entry, "1" if the entry is Complete. HSETNX on a missing key would
# create a hash with no TTL. A Complete is refused from the session's deadline on, by Redis's
# clock: the clock `load` reads with (TIME in the same pipeline), so a reader that rendered the
# LPU Failed never sees it Complete afterwards.
_FINISH = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
if ARGV[3] == '1' then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
  if now >= tonumber(redis.call('HGET', KEYS[1], 'd')) then
    return 0
  end
end
return redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])
"""

# KEYS: lease, session. ARGV: owner, lease ms. Only a free lease of a live session can be taken.
_ACQUIRE = """
if redis.call('EXISTS', KEYS[2]) == 0 then
  return 0
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 1
end
return 0
"""

# KEYS: lease, session. ARGV: owner, lease ms. A lease that lapsed with nobody taking it over is
# taken back; one held by another replica, or of a session that is gone, is lost (0).
_RENEW = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
if holder == false and redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

# KEYS: lease. ARGV: owner.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class Reachability:
    """Whether the store answers; each change is logged once and counted."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self.up = True
        metrics.store_up.set(1)

    def ok(self) -> None:
        if not self.up:
            self._change(True)
            log.info("store_reachable", store="redis")

    def failed(self, error: BaseException) -> bool:
        """Records a failed call; True when it is the one that marks the store down."""
        if self.up:
            self._change(False)
            log.warning("store_unreachable", store="redis", error=type(error).__name__)
            return True
        return False

    def _change(self, up: bool) -> None:
        self.up = up
        self._metrics.store_up.set(1 if up else 0)
        self._metrics.store_state_changes.labels("up" if up else "down").inc()


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


class RedisStore:
    def __init__(
        self, config: RedisConfig, session: SessionConfig, metrics: Metrics, tasks: Tasks | None = None
    ) -> None:
        self.owner = uuid.uuid4().hex
        self._config = config
        self._ttl_ms = _ms(session.ttl)
        self._lease_ms = _ms(config.lease_ttl)
        self._max_sessions = session.max_sessions
        self._metrics = metrics
        self._prefix = config.prefix
        self._index = f"{config.prefix}:sessions"
        self._redis = _client(config)
        self._create = self._redis.register_script(_CREATE)
        self._finish = self._redis.register_script(_FINISH)
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._renew = self._redis.register_script(_RENEW)
        self._release = self._redis.register_script(_RELEASE)
        # At most max_connections calls at once, whatever the pool kind: the others wait (within
        # their timeout) instead of failing.
        self._slots = asyncio.Semaphore(config.max_connections)
        self.reachability = Reachability(metrics)
        # The app's task owner; a store made on its own (tools, tests) owns its probe itself.
        self._tasks = tasks or Tasks()

    async def start(self) -> None:
        """Checks Redis once (the gateway starts either way, not ready while Redis is down) and
        starts the reachability probe."""
        await self.probe()
        self._tasks.spawn(self._probe_forever(), "redis_probe")

    def session_key(self, guid: str) -> str:
        return f"{self._prefix}:s:{guid}"

    def lease_key(self, guid: str) -> str:
        return f"{self._prefix}:lease:{guid}"

    async def _call(self, op: Callable[[], Awaitable[T]], *, fail_fast: bool) -> T:
        if fail_fast and not self.reachability.up:
            raise StoreUnavailable
        try:
            async with asyncio.timeout(self._config.timeout), self._slots:
                result = await op()
        except (RedisError, OSError, TimeoutError) as exc:
            if self.reachability.failed(exc):
                # Idle pooled connections to the Redis that went away are dead too; used after a
                # recovery, each would fail once and flap the store down again.
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(self._config.timeout):
                        await self._redis.connection_pool.disconnect()
            raise StoreUnavailable from None
        self.reachability.ok()
        return result

    async def probe(self) -> bool:
        """One reachability check; also refreshes the count of live sessions."""
        now_ms = int(time.time() * 1000)
        try:
            live = await self._call(lambda: self._redis.zcount(self._index, now_ms, "+inf"), fail_fast=False)
        except StoreUnavailable:
            return False
        self._metrics.store_sessions.set(live)
        return True

    async def _probe_forever(self) -> None:
        while True:
            await asyncio.sleep(self._config.probe_interval)
            try:
                await self.probe()
            except Exception:  # a bug here must not leave the store marked down for good
                log.exception("store_probe_failed")

    async def create(self, session: Session) -> None:
        fields: list[Any] = [b"h", session.token_hash, b"c", repr(session.created_at)]
        fields += [b"d", repr(session.deadline), b"n", len(session.lpus)]
        for i, (lpu, lpu_guid) in enumerate(zip(session.lpus, session.lpu_guids, strict=True)):
            fields += [b"l%d" % i, lpu, b"g%d" % i, lpu_guid]
        keys = [self._index, self.session_key(session.guid), self.lease_key(session.guid)]
        args = [self._ttl_ms, self._lease_ms, self._max_sessions, self.owner, session.guid, *fields]
        created, expired, live = await self._call(lambda: self._create(keys=keys, args=args), fail_fast=True)
        if expired:
            self._metrics.store_expired.inc(expired)
        self._metrics.store_sessions.set(live)
        if not created:
            self._metrics.store_rejected.inc()
            raise StoreFull

    async def load(self, guid: str) -> Session | None:
        async def read() -> list[Any]:
            async with self._redis.pipeline(transaction=False) as pipe:
                # TIME first: any result written after it was judged late by a clock at least
                # as far on (the finish script's TIME), so rendering with it never shows a
                # Failed that later turns Complete.
                pipe.time()
                pipe.hgetall(self.session_key(guid))
                pipe.exists(self.lease_key(guid))
                return await pipe.execute()

        (seconds, micros), raw, leased = await self._call(read, fail_fast=True)
        if not raw:
            self._metrics.store_misses.inc()
            return None
        self._metrics.store_hits.inc()
        return _decode(guid, raw, orphaned=not leased, read_at=seconds + micros / 1_000_000)

    async def finish_lpu(self, guid: str, index: int, entry: bytes) -> bool:
        written = await self._call(
            lambda: self._finish(
                keys=[self.session_key(guid)], args=[b"r%d" % index, entry, b"1" if is_complete(entry) else b"0"]
            ),
            fail_fast=False,
        )
        return bool(written)

    async def acquire_lease(self, guid: str) -> bool:
        keys = [self.lease_key(guid), self.session_key(guid)]
        taken = await self._call(lambda: self._acquire(keys=keys, args=[self.owner, self._lease_ms]), fail_fast=False)
        return bool(taken)

    async def renew_leases(self, guids: Collection[str]) -> set[str]:
        order = list(guids)
        if not order:
            return set()

        async def renew() -> list[Any]:
            async with self._redis.pipeline(transaction=False) as pipe:
                for guid in order:
                    await self._renew(
                        keys=[self.lease_key(guid), self.session_key(guid)],
                        args=[self.owner, self._lease_ms],
                        client=pipe,
                    )
                return await pipe.execute()

        held = await self._call(renew, fail_fast=False)
        return {guid for guid, ok in zip(order, held, strict=True) if not ok}

    async def release_lease(self, guid: str) -> None:
        await self._call(lambda: self._release(keys=[self.lease_key(guid)], args=[self.owner]), fail_fast=False)

    async def ready(self) -> bool:
        return self.reachability.up

    async def close(self) -> None:
        await self._tasks.cancel("redis_probe")
        await self._redis.aclose()


def redis_client(config: RedisConfig) -> Redis:
    """A client as the store's own, for the few other keys replicas share (the rollout's
    guardrail board, the migration ledger)."""
    return _client(config)


def _client(config: RedisConfig) -> Redis:
    """A client with every wait bounded by `config.timeout` and no retries of its own (the caller
    decides what a failure means). A redis+sentinel:// URL asks the sentinels for the primary,
    again after every connection error, so a failover is followed without a restart."""
    bounds: dict[str, Any] = {
        "socket_timeout": config.timeout,
        "socket_connect_timeout": config.timeout,
        "retry": Retry(NoBackoff(), 0),
    }
    if not config.url.startswith("redis+sentinel://"):
        pool = BlockingConnectionPool.from_url(
            config.url, max_connections=config.max_connections, timeout=config.timeout, **bounds
        )
        return Redis.from_pool(pool)
    target = parse_sentinel_url(config.url)
    sentinel = Sentinel(list(target.sentinels), sentinel_kwargs=dict(bounds))
    return sentinel.master_for(
        target.primary,
        db=target.db,
        username=target.username,
        password=target.password,
        max_connections=config.max_connections,
        **bounds,
    )


def _decode(guid: str, raw: dict[bytes, bytes], orphaned: bool, read_at: float) -> Session:
    """A session from its hash: numbers and guids are decoded, JSON is kept as bytes."""
    count = int(raw[b"n"])
    results = {int(name[1:]): value for name, value in raw.items() if name[:1] == b"r"}
    return Session(
        guid=guid,
        token_hash=raw[b"h"].decode(),
        created_at=float(raw[b"c"]),
        deadline=float(raw[b"d"]),
        lpus=tuple(raw[b"l%d" % i] for i in range(count)),
        lpu_guids=tuple(raw[b"g%d" % i].decode() for i in range(count)),
        results=results,
        orphaned=orphaned,
        read_at=read_at,
    )
