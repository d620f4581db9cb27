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
- `{prefix}:t:{token hash}`: sorted set, the token's live sessions (guid → expiry ms), and
  `{prefix}:tc:{token hash}`: hash, the token's create bucket (`t` tokens, `at` ms): the per-token
  quota (gateway/store/base.py TokenQuota), shared by every replica.
- `{prefix}:p:{guid}`: hash, the session's poll bucket (`t` tokens, `at` ms; `limits.poll_rate`,
  `poll_burst`), shared by every replica.

A session is created (bound check, hash, TTL, lease) by one Lua script (the scripts are in
gateway/store/redis_scripts.py), so no replica ever sees a session without its lease or its
TTL; a create that Redis out of memory refuses writes nothing (503 store_full). A poll is one
round trip (HGETALL of the hash, EXISTS of the lease and the poll count script, pipelined) and
joins the stored bytes.

Every call is bounded by `redis.timeout` (socket timeouts and an asyncio timeout around it).
While Redis is unreachable, request-path calls fail at once with StoreUnavailable instead of
waiting; a probe every `redis.probe_interval` notices when it is back. Only connection errors,
a timed-out cheap call or `redis.down_after_timeouts` timeouts in a row mark it unreachable
(Reachability, in gateway/store/redis_client.py with the client factory); an error answer (out
of memory) fails that call alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection
from typing import Any, TypeVar

import structlog
from redis.exceptions import (
    BusyLoadingError,
    MasterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
)
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.config import LimitsConfig, RedisConfig, SessionConfig
from gateway.observability.metrics import Metrics
from gateway.store import redis_scripts
from gateway.store.base import (
    CREATE_RATE_PER_TOKEN,
    LIVE_SESSIONS_PER_TOKEN,
    PollRead,
    StoreFull,
    StoreRefused,
    StoreUnavailable,
    TokenLimited,
    TokenQuota,
)
from gateway.store.redis_client import Reachability, redis_client
from gateway.store.session import Session, is_complete
from gateway.tasks import Tasks

log = structlog.get_logger("gateway.store")

T = TypeVar("T")
# Sessions whose unchanging fields a replica keeps to read only the results of the next poll:
# as many as are polled at once (a few KiB each: the LPU list), the first remembered out first.
FIXED_FIELDS_KEPT = 4096


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def _seconds(ms: int) -> int:
    return max(1, math.ceil(ms / 1000))


# Errors in which Redis answered, but about the server as a whole: treated as the store gone.
_SERVER_WIDE = (ReadOnlyError, BusyLoadingError, MasterDownError)


class _OutOfMemory(StoreRefused):
    """Redis at maxmemory refused a write: a create answers 503 store_full, any other write is
    that call's failure (the fan-out's result write, a lease), never the store marked down."""


# What the gateway needs of Redis (docs/redis.md, "Settings"), from CONFIG GET maxmemory*.
def redis_setting_problems(settings: dict[str, str]) -> list[str]:
    problems = []
    policy = settings.get("maxmemory-policy")
    if policy is not None and policy != "noeviction":
        problems.append(
            f"maxmemory-policy is {policy}: Redis may evict sessions and leases (polls answer 404 mid-flow,"
            " fan-outs are taken over twice); set noeviction"
        )
    if settings.get("maxmemory") == "0":
        problems.append("maxmemory is 0: Redis can grow until the host kills it; set a limit (with noeviction)")
    return problems


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisStore:
    def __init__(
        self,
        config: RedisConfig,
        session: SessionConfig,
        metrics: Metrics,
        tasks: Tasks | None = None,
        *,
        limits: LimitsConfig | None = None,
    ) -> None:
        self.owner = uuid.uuid4().hex
        self._config = config
        self._ttl_ms = _ms(session.ttl)
        self._lease_ms = _ms(config.lease_ttl)
        self._max_sessions = session.max_sessions
        # Per-token quota and the shared poll bucket (None: neither, for tools and store tests).
        self._quota = TokenQuota.of(session, limits) if limits is not None else None
        self._poll_rate_ms = limits.poll_rate / 1000 if limits is not None else 0.0
        self._poll_burst = limits.poll_burst if limits is not None else 0
        self._metrics = metrics
        self._prefix = config.prefix
        self._index = f"{config.prefix}:sessions"
        self._redis = redis_client(config)
        self._create = self._redis.register_script(redis_scripts.CREATE)
        self._admit = self._redis.register_script(redis_scripts.ADMIT)
        self._poll_read = self._redis.register_script(redis_scripts.POLL_READ)
        self._finish = self._redis.register_script(redis_scripts.FINISH)
        self._acquire = self._redis.register_script(redis_scripts.ACQUIRE)
        self._renew = self._redis.register_script(redis_scripts.RENEW)
        self._release = self._redis.register_script(redis_scripts.RELEASE)
        # At most max_connections calls at once, whatever the pool kind: the others wait (within
        # their timeout) instead of failing.
        self._slots = asyncio.Semaphore(config.max_connections)
        # The fields of a session that never change once created (token hash, times, LPU list),
        # of the sessions this replica polled lately: a poll then reads only the results.
        self._fixed: OrderedDict[str, _Fixed] = OrderedDict()
        self.reachability = Reachability(metrics, config.down_after_timeouts)
        self._settings_checked = False
        # The app's task owner; a store made on its own (tools, tests) owns its probe itself.
        self._tasks = tasks or Tasks()

    async def start(self) -> None:
        """Checks Redis once (the gateway starts either way, not ready while Redis is down), warns
        about settings that would lose sessions (docs/redis.md), and starts the reachability probe."""
        if await self.probe():
            await self.check_settings()
        self._tasks.every(self._config.probe_interval, self._probe_tick, "redis_probe")

    async def check_settings(self) -> list[str]:
        """The problems with Redis's settings, each logged as a warning (docs/redis.md says why the
        gateway warns rather than refuses to start). A Redis that hides CONFIG (managed services
        often do) is logged as not checked."""
        try:
            got = await self._call(lambda: self._redis.config_get("maxmemory*"), fail_fast=False, cheap=True)
        except StoreRefused:
            self._settings_checked = True
            log.info("redis_settings_not_checked", reason="CONFIG GET refused")
            return []
        except StoreUnavailable:
            return []  # checked when the probe first reaches Redis
        self._settings_checked = True
        problems = redis_setting_problems({_text(k): _text(v) for k, v in got.items()})
        self._metrics.redis_settings_unsafe.set(len(problems))
        for problem in problems:
            log.warning("redis_setting_unsafe", problem=problem)
        return problems

    def session_key(self, guid: str) -> str:
        return f"{self._prefix}:s:{guid}"

    def lease_key(self, guid: str) -> str:
        return f"{self._prefix}:lease:{guid}"

    def token_keys(self, token_key: str) -> tuple[str, str]:
        """The token's live sessions (sorted set guid → expiry ms) and its create bucket (hash)."""
        return f"{self._prefix}:t:{token_key}", f"{self._prefix}:tc:{token_key}"

    def poll_key(self, guid: str) -> str:
        return f"{self._prefix}:p:{guid}"

    async def _call(self, op: Callable[[], Awaitable[T]], *, fail_fast: bool, cheap: bool = False) -> T:
        """Runs one Redis call within `redis.timeout`. Raises StoreFull when Redis is out of
        memory, StoreRefused for another error about this call only, StoreUnavailable when Redis
        is (or is now marked) down. `cheap`: a call that cannot be slow for its size, so that its
        timeout means Redis itself is slow."""
        if fail_fast and not self.reachability.up:
            raise StoreUnavailable
        try:
            async with asyncio.timeout(self._config.timeout), self._slots:
                result = await op()
        except OutOfMemoryError:
            self.reachability.ok()
            self._metrics.store_refused.labels("oom").inc()
            raise _OutOfMemory from None
        except _SERVER_WIDE as exc:
            await self._down(exc)
            raise StoreUnavailable from None
        except ResponseError as exc:
            # A refused script or command, about this call: Redis is up for every other one.
            self.reachability.ok()
            self._metrics.store_refused.labels("error").inc()
            log.warning("store_call_refused", store="redis", error=type(exc).__name__)
            raise StoreRefused from None
        except (RedisTimeoutError, TimeoutError) as exc:
            # A slow call on one big session, or Redis itself stalled? A cheap PING tells: a
            # stalled Redis does not answer it either, and is marked down now, before the next
            # request waits for it too (this call then took at most twice redis.timeout).
            if self.reachability.timed_out(exc, cheap or not await self._answers()):
                await self._drop_connections()
            raise StoreUnavailable from None
        except (RedisError, OSError) as exc:
            await self._down(exc)
            raise StoreUnavailable from None
        self.reachability.ok()
        return result

    async def _answers(self) -> bool:
        """Whether Redis answers a PING within redis.timeout."""
        try:
            async with asyncio.timeout(self._config.timeout), self._slots:
                await self._redis.ping()
        except Exception:
            return False
        return True

    async def _down(self, exc: BaseException) -> None:
        if self.reachability.failed(exc):
            await self._drop_connections()

    async def _drop_connections(self) -> None:
        # Idle pooled connections to the Redis that went away are dead too; used after a
        # recovery, each would fail once and flap the store down again.
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self._config.timeout):
                await self._redis.connection_pool.disconnect()

    async def probe(self) -> bool:
        """One reachability check; also refreshes the count of live sessions."""
        now_ms = int(time.time() * 1000)
        try:
            live = await self._call(
                lambda: self._redis.zcount(self._index, now_ms, "+inf"), fail_fast=False, cheap=True
            )
        except StoreUnavailable:
            return False
        self._metrics.store_sessions.set(live)
        return True

    async def _probe_tick(self) -> None:
        # Run by Tasks.every: a tick that raises is logged and the probes go on, so a bug here
        # cannot leave the store marked down for good.
        if await self.probe() and not self._settings_checked:
            await self.check_settings()  # Redis was down at start

    async def admit(self, token_key: str) -> None:
        if self._quota is None:
            return
        keys = list(self.token_keys(token_key))
        args = [self._quota.live, self._quota.rate / 1000, self._quota.burst, self._ttl_ms]
        try:
            refused, wait_ms = await self._call(lambda: self._admit(keys=keys, args=args), fail_fast=True, cheap=True)
        except _OutOfMemory:
            raise StoreFull from None
        if refused:
            limit = LIVE_SESSIONS_PER_TOKEN if refused == 1 else CREATE_RATE_PER_TOKEN
            raise TokenLimited(limit, _seconds(wait_ms))

    async def create(self, session: Session, *, count_token: bool = True) -> None:
        fields: list[Any] = [b"h", session.token_hash, b"c", repr(session.created_at)]
        fields += [b"d", repr(session.deadline), b"n", len(session.lpus)]
        for i, (lpu, lpu_guid) in enumerate(zip(session.lpus, session.lpu_guids, strict=True)):
            fields += [b"l%d" % i, lpu, b"g%d" % i, lpu_guid]
        token_sessions, _ = self.token_keys(session.token_hash)
        keys = [self._index, self.session_key(session.guid), self.lease_key(session.guid), token_sessions]
        quota = self._quota.live if count_token and self._quota is not None else 0
        args = [self._ttl_ms, self._lease_ms, self._max_sessions, self.owner, session.guid, quota, *fields]
        try:
            created, expired, live, wait_ms = await self._call(
                lambda: self._create(keys=keys, args=args), fail_fast=True
            )
        except _OutOfMemory:
            self._metrics.store_rejected.inc()
            raise StoreFull from None
        if expired:
            self._metrics.store_expired.inc(expired)
        self._metrics.store_sessions.set(live)
        if created == 2:
            raise TokenLimited(LIVE_SESSIONS_PER_TOKEN, _seconds(wait_ms))
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
        return self._loaded(guid, raw, leased, seconds + micros / 1_000_000)

    def _loaded(self, guid: str, raw: dict[bytes, bytes], leased: int, read_at: float) -> Session | None:
        if not raw:
            self._metrics.counts.add(self._metrics.store_misses)
            return None
        self._metrics.counts.add(self._metrics.store_hits)
        return _decode(guid, raw, orphaned=not leased, read_at=read_at)

    async def read_poll(self, guid: str, binding: str | None) -> PollRead:
        if not self._poll_burst:
            return PollRead(await self.load(guid))
        session_key = self.session_key(guid)
        keys = [session_key, self.poll_key(guid), self.lease_key(guid)]
        args = ["0" if binding is None else "1", binding or "", self._poll_rate_ms, self._poll_burst]
        fixed = self._fixed.get(guid)

        async def read() -> list[Any]:
            async with self._redis.pipeline(transaction=False) as pipe:
                await self._poll_read(keys=keys, args=args, client=pipe)
                if fixed is None:
                    pipe.hgetall(session_key)
                else:
                    pipe.hmget(session_key, fixed.result_fields)
                return await pipe.execute()

        (seconds, micros, exists, leased, over_ms), raw = await self._call(read, fail_fast=True)
        read_at = int(seconds) + int(micros) / 1_000_000
        retry_after = _seconds(over_ms) if over_ms else None
        if not exists or (fixed is None and not raw):
            self._metrics.counts.add(self._metrics.store_misses)
            return PollRead(None, counted=True, retry_after=retry_after)
        self._metrics.counts.add(self._metrics.store_hits)
        if fixed is None:
            session = _decode(guid, raw, orphaned=not leased, read_at=read_at)
            self._remember(session)
        else:
            results = {index: value for index, value in enumerate(raw) if value is not None}
            session = fixed.session(guid, results, orphaned=not leased, read_at=read_at)
        return PollRead(session, counted=True, retry_after=retry_after)

    def _remember(self, session: Session) -> None:
        fixed = self._fixed
        fixed[session.guid] = _Fixed.of(session)
        if len(fixed) > FIXED_FIELDS_KEPT:
            fixed.popitem(last=False)

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
        taken = await self._call(
            lambda: self._acquire(keys=keys, args=[self.owner, self._lease_ms]), fail_fast=False, cheap=True
        )
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
        await self._call(
            lambda: self._release(keys=[self.lease_key(guid)], args=[self.owner]), fail_fast=False, cheap=True
        )

    async def ready(self) -> bool:
        return self.reachability.up

    async def close(self) -> None:
        await self._tasks.cancel("redis_probe")
        await self._redis.aclose()


class _Fixed:
    """A session's unchanging fields, and the names of its result fields to read."""

    __slots__ = ("created_at", "deadline", "lpu_guids", "lpus", "result_fields", "token_hash")

    def __init__(
        self, token_hash: str, created_at: float, deadline: float, lpus: tuple[bytes, ...], lpu_guids: tuple[str, ...]
    ) -> None:
        self.token_hash, self.created_at, self.deadline = token_hash, created_at, deadline
        self.lpus, self.lpu_guids = lpus, lpu_guids
        self.result_fields = [b"r%d" % i for i in range(len(lpus))]

    @classmethod
    def of(cls, session: Session) -> _Fixed:
        return cls(session.token_hash, session.created_at, session.deadline, session.lpus, session.lpu_guids)

    def session(self, guid: str, results: dict[int, bytes], orphaned: bool, read_at: float) -> Session:
        return Session(
            guid=guid,
            token_hash=self.token_hash,
            created_at=self.created_at,
            deadline=self.deadline,
            lpus=self.lpus,
            lpu_guids=self.lpu_guids,
            results=results,
            orphaned=orphaned,
            read_at=read_at,
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
