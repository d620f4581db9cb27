"""The migration ledger: per cohort, first and last seen, and per UTC day how many old-path
requests and sessions it made, which side served them, its errors and what brownouts did to it.

The request path only adds to an in-process dict (`Pending.record`); `LedgerWriter`'s task
moves that into the ledger at most once per `migration.flush_interval` (>= 1 s), in one round
trip: one Lua script on Redis, so replicas sharing a Redis share one ledger.

Redis keys (`prefix` is `redis.prefix`):

- `{prefix}:mig:d:{day}`: hash, one per UTC day (days since 1970-01-01), field
  `{app}/{platform}/{version}|{field}` → count; expires `migration.retention_days` after the day.
- `{prefix}:mig:first` and `{prefix}:mig:last`: hashes, cohort → unix seconds.
- `{prefix}:mig:w:{writer}`: string, per replica process, the number of its last batch applied,
  so that a batch resent after a timed-out write is not counted twice; expires a day after.

Both are bounded by the configured cohorts (gateway/cohorts.py) times the fields below.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.cohorts import Cohort
from gateway.contract import SIDES
from gateway.migration.clock import DAY, Clock, day_of
from gateway.store.base import StoreUnavailable
from gateway.tasks import Tasks

log = structlog.get_logger("gateway.migration")

# What is counted per cohort and day. A request is counted once in REQUESTS and once in its side;
# a create that made a session also in SESSIONS; a 5xx the gateway did not mean (brownout
# refusals aside) in ERRORS; each brownout decision that acted on it in its outcome.
REQUESTS = "requests"
CREATES = "creates"
SESSIONS = "sessions"
ERRORS = "errors"
BROWNOUT_FIELDS = ("refused", "delayed", "dry_run")
FIELDS = (REQUESTS, CREATES, SESSIONS, ERRORS, *SIDES, *BROWNOUT_FIELDS)

Counts = dict[tuple[int, Cohort, str], int]


@dataclass
class Batch:
    counts: Counts = field(default_factory=dict)  # (day, cohort, field) → n
    seen: dict[Cohort, tuple[float, float]] = field(default_factory=dict)  # cohort → (first, last)
    # Set when the batch is first sent: the writer's id and the batch's number, increasing. A
    # retry of the batch carries the same pair, and the ledger applies a writer's batch only if
    # its number is above the last one applied (a write that timed out may still have been).
    writer: str = ""
    seq: int = 0

    def __bool__(self) -> bool:
        return bool(self.counts or self.seen)


class Pending:
    """What this replica counted since the last flush. Bounded: cohorts × fields × days."""

    def __init__(self) -> None:
        self._batch = Batch()

    def record(self, cohort: Cohort, when: float, fields: Iterable[str]) -> None:
        # The hot path: tuples of what is at hand; names are joined into keys only at flush.
        day, counts, seen = day_of(when), self._batch.counts, self._batch.seen
        for name in fields:
            key = (day, cohort, name)
            counts[key] = counts.get(key, 0) + 1
        first, last = seen.get(cohort, (when, when))
        seen[cohort] = (first if first < when else when, last if last > when else when)

    def take(self) -> Batch:
        batch, self._batch = self._batch, Batch()
        return batch

    def __len__(self) -> int:
        return len(self._batch.counts)

    def __bool__(self) -> bool:
        return bool(self._batch)


@dataclass
class History:
    """What the report reads: day → cohort key → field → count, and first/last seen."""

    days: dict[int, dict[str, dict[str, int]]] = field(default_factory=dict)
    first: dict[str, float] = field(default_factory=dict)
    last: dict[str, float] = field(default_factory=dict)


class Ledger(Protocol):
    backend: str

    async def apply(self, batch: Batch, now: float) -> dict[str, float]:
        """Adds a batch, once however often it is sent (by its writer and number); returns every
        cohort's last-seen time."""
        ...

    async def last_seen(self) -> dict[str, float]: ...

    async def history(self, today: int, days: int) -> History:
        """The days today-days+1 .. today."""
        ...

    async def close(self) -> None: ...


class MemoryLedger:
    backend = "memory"

    def __init__(self, retention_days: int) -> None:
        self._retention = retention_days
        self._days: dict[int, dict[str, dict[str, int]]] = {}
        self._first: dict[str, float] = {}
        self._last: dict[str, float] = {}
        self._applied: dict[str, int] = {}  # writer → the last batch number applied

    async def apply(self, batch: Batch, now: float) -> dict[str, float]:
        if batch.seq:
            if batch.seq <= self._applied.get(batch.writer, 0):
                return dict(self._last)
            self._applied[batch.writer] = batch.seq
        for (day, cohort, name), n in batch.counts.items():
            counted = self._days.setdefault(day, {}).setdefault(str(cohort), {})
            counted[name] = counted.get(name, 0) + n
        for cohort, (first, last) in batch.seen.items():
            key = str(cohort)
            self._first[key] = min(first, self._first.get(key, first))
            self._last[key] = max(last, self._last.get(key, last))
        oldest = day_of(now) - self._retention
        for day in [d for d in self._days if d < oldest]:
            del self._days[day]
        return dict(self._last)

    async def last_seen(self) -> dict[str, float]:
        return dict(self._last)

    async def history(self, today: int, days: int) -> History:
        wanted = range(today - days + 1, today + 1)
        return History(
            days={d: {k: dict(v) for k, v in self._days[d].items()} for d in wanted if d in self._days},
            first=dict(self._first),
            last=dict(self._last),
        )

    async def close(self) -> None:
        return None


# KEYS: first, last, the writer's key, then the batch's day keys. ARGV: the batch's number,
# number of day keys d, d TTLs (seconds), number of increments n, n × (day key number, field,
# amount), then (cohort, first, last) ×. A number not above the writer's last was applied
# already (its first send timed out after Redis ran it): only last seen is returned.
_APPLY = """
local seq = tonumber(ARGV[1])
if seq > 0 then
  local done = tonumber(redis.call('GET', KEYS[3]) or '0')
  if seq <= done then
    return redis.call('HGETALL', KEYS[2])
  end
  redis.call('SET', KEYS[3], seq, 'EX', 86400)
end
local d = tonumber(ARGV[2])
local pos = 3 + d
local n = tonumber(ARGV[pos])
pos = pos + 1
for i = 1, n do
  redis.call('HINCRBY', KEYS[3 + tonumber(ARGV[pos])], ARGV[pos + 1], ARGV[pos + 2])
  pos = pos + 3
end
for i = 1, d do
  redis.call('EXPIRE', KEYS[3 + i], ARGV[2 + i])
end
while pos <= #ARGV do
  local cohort = ARGV[pos]
  local f = redis.call('HGET', KEYS[1], cohort)
  if not f or tonumber(f) > tonumber(ARGV[pos + 1]) then
    redis.call('HSET', KEYS[1], cohort, ARGV[pos + 1])
  end
  local l = redis.call('HGET', KEYS[2], cohort)
  if not l or tonumber(l) < tonumber(ARGV[pos + 2]) then
    redis.call('HSET', KEYS[2], cohort, ARGV[pos + 2])
  end
  pos = pos + 3
end
return redis.call('HGETALL', KEYS[2])
"""


def _seen(raw: Any) -> dict[str, float]:
    # HGETALL: a dict from the client, a flat list from a script.
    pairs = raw.items() if isinstance(raw, dict) else zip(raw[::2], raw[1::2], strict=True)
    return {k.decode(errors="replace"): float(v) for k, v in pairs}


class RedisLedger:
    backend = "redis"

    def __init__(self, redis: Redis, prefix: str, retention_days: int, timeout: float) -> None:
        self._redis = redis
        self._prefix = f"{prefix}:mig"
        self._retention = retention_days
        self._timeout = timeout
        self._apply = redis.register_script(_APPLY)

    def day_key(self, day: int) -> str:
        return f"{self._prefix}:d:{day}"

    async def apply(self, batch: Batch, now: float) -> dict[str, float]:
        days = sorted({day for day, _, _ in batch.counts})
        index = {day: i + 1 for i, day in enumerate(days)}
        # Relative TTLs from the gateway's clock: a day's bucket lives until `retention` days after it.
        args: list[Any] = [
            batch.seq,
            len(days),
            *(max(1, int((d + self._retention + 1) * DAY - now)) for d in days),
        ]
        args.append(len(batch.counts))
        for (day, cohort, name), n in batch.counts.items():
            args += [index[day], f"{cohort}|{name}", n]
        for cohort, (first, last) in batch.seen.items():
            args += [str(cohort), f"{first:.3f}", f"{last:.3f}"]
        # One key per writer (a replica process), living a day after its last write.
        writer = f"{self._prefix}:w:{batch.writer or '-'}"
        keys = [f"{self._prefix}:first", f"{self._prefix}:last", writer, *(self.day_key(d) for d in days)]
        async with asyncio.timeout(self._timeout):
            return _seen(await self._apply(keys=keys, args=args))

    async def last_seen(self) -> dict[str, float]:
        async with asyncio.timeout(self._timeout):
            return _seen(await self._redis.hgetall(f"{self._prefix}:last"))

    async def history(self, today: int, days: int) -> History:
        wanted = list(range(today - days + 1, today + 1))
        try:
            async with asyncio.timeout(self._timeout * 4), self._redis.pipeline(transaction=False) as pipe:
                pipe.hgetall(f"{self._prefix}:first")
                pipe.hgetall(f"{self._prefix}:last")
                for day in wanted:
                    pipe.hgetall(self.day_key(day))
                first, last, *buckets = await pipe.execute()
        except (RedisError, OSError, TimeoutError):
            # The report answers 503 (the error middleware), as any request that needs Redis.
            raise StoreUnavailable from None
        history = History(first=_seen(first), last=_seen(last))
        for day, raw in zip(wanted, buckets, strict=True):
            for name, n in raw.items():
                key, _, counted = name.decode(errors="replace").partition("|")
                history.days.setdefault(day, {}).setdefault(key, {})[counted] = int(n)
        return history

    async def close(self) -> None:
        await self._redis.aclose()


class LedgerWriter:
    """Owns the pending counts and the task that flushes them (`tasks` group "migration_ledger")."""

    def __init__(
        self,
        ledger: Ledger,
        clock: Clock,
        tasks: Tasks,
        interval: float,
        retention_days: int,
        on_flush: Callable[[str, dict[str, float]], None],
    ) -> None:
        self.ledger = ledger
        self.pending = Pending()
        self._clock = clock
        self._tasks = tasks
        self._interval = interval
        self._retention = retention_days
        self._on_flush = on_flush  # (result, last seen) → metrics
        self._failing = False
        self._lock = asyncio.Lock()
        # The batch sent and not confirmed (its write failed), resent as it is until it is.
        self._unconfirmed: Batch | None = None
        self._writer_id = uuid.uuid4().hex
        self._sent = 0
        # Other replicas' traffic shows in the last-seen gauge when this one is idle, too.
        self._refresh_every = max(30.0, interval)
        self._refreshed_at = float("-inf")

    def start(self) -> None:
        self._tasks.every(self._interval, self._tick, "migration_ledger")

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time() - self._refreshed_at >= self._refresh_every
        if len(self.pending) or self._unconfirmed is not None or due:
            await self.flush()
            self._refreshed_at = loop.time()

    async def flush(self) -> bool:
        """Writes what is pending (or, with nothing pending, reads last seen); False on failure.

        A batch whose write failed is sent again as it was, with its id, before anything newer:
        a write that timed out may have been applied by Redis all the same (a stalled Redis runs
        it when it resumes), and the ledger applies an id once, so a retry never counts twice."""
        async with self._lock:
            now = self._clock.now()
            try:
                last = None
                for _ in range(2):  # the unconfirmed batch first, then what is pending
                    if self._unconfirmed is None:
                        if not self.pending:
                            break
                        batch = self.pending.take()
                        self._sent += 1
                        batch.writer, batch.seq = self._writer_id, self._sent
                        self._unconfirmed = batch
                    last = await self.ledger.apply(self._unconfirmed, now)
                    self._unconfirmed = None
                if last is None:
                    last = await self.ledger.last_seen()
            except (RedisError, OSError, TimeoutError) as exc:
                oldest = day_of(now) - self._retention
                if self._unconfirmed is not None:
                    self._unconfirmed.counts = {k: n for k, n in self._unconfirmed.counts.items() if k[0] >= oldest}
                if not self._failing:
                    log.warning("migration_ledger_unavailable", error=type(exc).__name__)
                self._failing = True
                self._on_flush("failed", {})
                return False
            if self._failing:
                log.info("migration_ledger_available")
            self._failing = False
            self._on_flush("ok", last)
            return True

    async def close(self) -> None:
        await self._tasks.cancel("migration_ledger")
        # What this replica counted last is not lost on a clean shutdown.
        with contextlib.suppress(Exception):
            await self.flush()
        await self.ledger.close()
