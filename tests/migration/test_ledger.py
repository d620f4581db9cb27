"""The migration ledger against a scripted multi-cohort workload: two gateway replicas sharing a
real Redis, a clock moved through days, and exactly the requests sent counted per cohort and day;
the in-process ledger of a lone gateway; the bound on round trips and on size."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from typing import Any

from gateway.cohorts import Cohort
from gateway.http import keys
from gateway.migration.clock import DAY, ManualClock, day_of
from gateway.migration.ledger import REQUESTS, Batch, LedgerWriter, MemoryLedger, RedisLedger
from gateway.sandbox.data import SandboxPatient, demo_lpu
from gateway.tasks import Tasks
from tests.support.gateway import TICKETS, new_token, sample, wait_until
from tests.support.migration import ADMIN, APPS, T0, call, migration_config, report, serve

# Day offsets from T0 → creates per app (each create is polled once, on the other replica).
PLAN = {
    -40: {"gamma": 3, "beta": 2},
    -10: {"beta": 10, "alpha": 2},
    -5: {"stranger": 2},
    -1: {"alpha": 3},
    0: {"alpha": 2, "beta": 1},
}


def decoded(raw: dict[bytes, bytes]) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in raw.items()}


async def run_plan(replicas: list[Any], clock: ManualClock, tokens: dict[str, str]) -> Counter[tuple[int, str]]:
    """Runs PLAN; returns what was sent, as (day, "cohort|field") → count."""
    sent: Counter[tuple[int, str]] = Counter()
    turn = 0
    for offset, apps in PLAN.items():
        clock.set(T0 + offset * DAY + 12 * 3600)
        day = day_of(clock.now())
        for app, n in apps.items():
            cohort = APPS[app][1]
            for _ in range(n):
                creator, poller = replicas[turn % 2], replicas[(turn + 1) % 2]
                turn += 1
                status, body, _ = await call(creator, app, tokens[app])
                assert status == 200, body
                status, _, _ = await call(poller, app, None, f"{TICKETS}/{body['session']}")
                assert status == 200
                for field in ("requests", "requests", "gateway", "gateway", "creates", "sessions"):
                    sent[(day, f"{cohort}|{field}")] += 1
    return sent


async def test_two_replicas_share_one_ledger_counted_per_cohort_and_day(
    upstream: Any, aiohttp_client: Any, redis_server: Any
) -> None:
    tokens = {app: new_token() for app in APPS}
    _, url = await upstream(*(SandboxPatient(t, [demo_lpu(1)]) for t in tokens.values()))
    clock = ManualClock()
    config = migration_config(url, redis={"url": redis_server.url})
    replicas = [await serve(aiohttp_client, config, clock) for _ in range(2)]

    sent = await run_plan(replicas, clock, tokens)

    redis = redis_server.client()
    days = sorted({day for day, _ in sent})

    def stored() -> dict[int, dict[str, int]]:
        return {day: decoded(redis.hgetall(f"vg:mig:d:{day}")) for day in days}

    expected = {day: {name: n for (d, name), n in sent.items() if d == day} for day in days}
    # The replicas' own flush tasks write it (at most once a second each): no flush is forced.
    await wait_until(lambda: stored() == expected, within=15, what="the ledger in Redis equals the requests sent")
    assert stored() == expected
    last = {k.decode(): float(v) for k, v in redis.hgetall("vg:mig:last").items()}
    first = {k.decode(): float(v) for k, v in redis.hgetall("vg:mig:first").items()}
    assert first["gamma/web/other"] == last["gamma/web/other"] == T0 - 40 * DAY + 12 * 3600
    assert first["beta/ios/4.9"] == T0 - 40 * DAY + 12 * 3600 and last["beta/ios/4.9"] == T0 + 12 * 3600
    # Bounded in time: a day's bucket expires the end of its day + retention_days (90), by the
    # gateway's clock when it was written (somewhere in the plan's days).
    end_of_retention = (days[0] + 91) * DAY
    assert end_of_retention - clock.now() - 5 <= redis.ttl(f"vg:mig:d:{days[0]}") <= end_of_retention - days[0] * DAY

    # Either replica reports the shared ledger.
    for replica in replicas:
        cohorts = {c["cohort"]: c for c in (await report(replica))["cohorts"]}
        assert {key: c["verdict"] for key, c in cohorts.items()} == {
            "alpha/android/5.0": "active",
            "beta/ios/4.9": "fading",
            "unknown/unknown/unknown": "silent for 5 days",
            "gamma/web/other": "safe to retire",
        }
        beta = cohorts["beta/ios/4.9"]
        assert (beta["requests_7d"], beta["requests_30d"], beta["sessions_30d"]) == (2, 22, 11)
        assert beta["sides_30d"] == {"gateway": 22, "legacy": 0, "shadow": 0}
        assert beta["share_30d"] == round(22 / (22 + 14 + 4), 4)
        assert beta["daily"]["2026-10-23"] == {"requests": 20, "sessions": 10}
        assert cohorts["gamma/web/other"]["days_silent"] == 40
    # The gauge, from the ledger both write: days since last seen, in seconds.
    assert await replicas[0].app[keys.MIGRATION].writer.flush()
    assert sample(replicas[0], "gateway_migration_since_last_seen_seconds", cohort="gamma/web/other") == 40 * DAY


async def test_a_replica_writes_the_ledger_at_most_once_a_second(
    upstream: Any, aiohttp_client: Any, redis_server: Any
) -> None:
    token = new_token()
    _, url = await upstream(SandboxPatient(token, [demo_lpu(1)]))
    clock = ManualClock(T0)
    replica = await serve(aiohttp_client, migration_config(url, redis={"url": redis_server.url}), clock)
    started = time.monotonic()
    sent = 0
    # A burst of polls of one session (under the poll rate) for about 2.5 s.
    status, body, _ = await call(replica, "alpha", token)
    sent += 1
    while time.monotonic() - started < 2.5 and sent < 2000:
        status, _, _ = await call(replica, "alpha", None, f"{TICKETS}/{body['session']}")
        assert status in (200, 429)
        sent += 1
        await asyncio.sleep(0.06)
    elapsed = time.monotonic() - started
    await wait_until(
        lambda: (
            decoded(redis_server.client().hgetall(f"vg:mig:d:{day_of(T0)}")).get("alpha/android/5.0|requests") == sent
        ),
        within=10,
        what="every request in the ledger",
    )
    flushes = sample(replica, "gateway_migration_ledger_flushes_total", result="ok")
    # Today's bucket, written at T0 (a day's start): it expires at the end of the day + 90 days.
    assert 91 * DAY - 30 <= redis_server.client().ttl(f"vg:mig:d:{day_of(T0)}") <= 91 * DAY
    # One round trip per flush (one script call); at most one per flush_interval, plus the first.
    assert 1 <= flushes <= elapsed + 2 + 1, (flushes, elapsed, sent)


async def test_unknown_clients_are_one_cohort_and_the_ledger_does_not_grow_with_them(
    upstream: Any, aiohttp_client: Any, redis_server: Any
) -> None:
    _, url = await upstream()
    replica = await serve(aiohttp_client, migration_config(url, redis={"url": redis_server.url}), ManualClock(T0))
    for i in range(300):
        headers = {"ClientApplication": str(uuid.uuid4()), "User-Agent": f"x-{uuid.uuid4().hex}/{i}.1 (Android)"}
        assert (await replica.get(f"{TICKETS}/{uuid.uuid4()}", headers=headers)).status == 404
    assert await replica.app[keys.MIGRATION].writer.flush()
    redis = redis_server.client()
    bucket = decoded(redis.hgetall(f"vg:mig:d:{day_of(T0)}"))
    assert bucket == {"unknown/unknown/unknown|requests": 300, "unknown/unknown/unknown|gateway": 300}
    assert set(redis.hkeys("vg:mig:last")) == {b"unknown/unknown/unknown"}
    # Besides the writer's own key (one per replica process: the number of its last batch).
    assert len(redis.keys("vg:mig:w:*")) == 1
    assert sorted(k.decode() for k in redis.keys("vg:mig:*") if not k.startswith(b"vg:mig:w:")) == [
        f"vg:mig:d:{day_of(T0)}",
        "vg:mig:first",
        "vg:mig:last",
    ]
    # Redis is shared, not trusted: a stray field is left out of the report and the gauge.
    redis.hset("vg:mig:last", "not-a-cohort", "1")
    assert [c["cohort"] for c in (await report(replica))["cohorts"]] == ["unknown/unknown/unknown"]


async def test_without_redis_the_ledger_is_in_memory_and_keeps_retention_days(
    upstream: Any, aiohttp_client: Any
) -> None:
    token = new_token()
    _, url = await upstream(SandboxPatient(token, [demo_lpu(1)]))
    clock = ManualClock(T0)
    client = await serve(aiohttp_client, migration_config(url, migration={"retention_days": 10}), clock)
    assert (await call(client, "beta", token))[0] == 200
    found = await report(client)
    assert found["ledger"]["backend"] == "memory"
    [beta] = found["cohorts"]
    assert (beta["cohort"], beta["requests_7d"], beta["sessions_7d"]) == ("beta/ios/4.9", 1, 1)
    assert beta["verdict"] == "active"
    clock.advance(11 * DAY)
    assert (await call(client, "alpha", token))[0] == 200
    found = await report(client)
    ledger = client.app[keys.MIGRATION].writer.ledger
    # The 11-day-old bucket is gone; who was seen when is kept (bounded by the cohort table).
    assert sorted((await ledger.history(day_of(clock.now()), 30)).days) == [day_of(clock.now())]
    assert {c["cohort"]: c["verdict"] for c in found["cohorts"]} == {
        "alpha/android/5.0": "active",
        "beta/ios/4.9": "silent for 11 days",
    }


async def test_counts_made_while_redis_is_down_are_written_when_it_is_back(
    upstream: Any, aiohttp_client: Any, redis_server: Any
) -> None:
    token = new_token()
    _, url = await upstream(SandboxPatient(token, [demo_lpu(1)]))
    clock = ManualClock(T0 + 60)
    replica = await serve(aiohttp_client, migration_config(url, redis={"url": redis_server.url}), clock)
    writer = replica.app[keys.MIGRATION].writer
    redis_server.stop()
    # The ledger is off the request path: requests are answered as they would be without it (the
    # session store is down too: 503, or 404 before it notices) and are still counted.
    for _ in range(5):
        status = (await replica.get(f"{TICKETS}/{uuid.uuid4()}", headers=APPS["beta"][0])).status
        assert status in (404, 503)
    assert not await writer.flush()
    assert sample(replica, "gateway_migration_ledger_flushes_total", result="failed") >= 1
    resp = await replica.get("/admin/migration", headers=ADMIN)
    assert (resp.status, (await resp.json())["message_code"], resp.headers["Retry-After"]) == (503, "4513", "1")
    redis_server.start()
    await wait_until(writer.flush, within=10, what="the ledger written after Redis is back")
    bucket = decoded(redis_server.client().hgetall(f"vg:mig:d:{day_of(T0)}"))
    assert bucket["beta/ios/4.9|requests"] == 5


class _TimesOutAfterApplying(MemoryLedger):
    """A ledger whose first write is applied and then times out, as a write to a Redis that
    stalled past `redis.timeout` does: Redis runs the script when it resumes."""

    def __init__(self) -> None:
        super().__init__(retention_days=90)
        self.sends = 0

    async def apply(self, batch: Batch, now: float) -> dict[str, float]:
        self.sends += 1
        last = await super().apply(batch, now)
        if self.sends == 1:
            raise TimeoutError
        return last


async def test_a_write_that_timed_out_after_being_applied_is_not_counted_twice() -> None:
    ledger = _TimesOutAfterApplying()
    clock = ManualClock(T0 + 60)
    writer = LedgerWriter(ledger, clock, Tasks(), 1.0, 90, lambda result, last: None)
    cohort = Cohort("alpha", "android", "5.0")
    for _ in range(7):
        writer.pending.record(cohort, clock.now(), [REQUESTS])
    assert not await writer.flush()  # applied, but the answer never came
    writer.pending.record(cohort, clock.now(), [REQUESTS])  # counted meanwhile
    assert await writer.flush()  # the same batch again (a no-op), then the newer one
    history = await ledger.history(day_of(clock.now()), 1)
    assert history.days[day_of(T0)]["alpha/android/5.0"][REQUESTS] == 8
    assert ledger.sends == 3


async def test_redis_applies_a_batch_id_once(redis_server: Any) -> None:
    from redis.asyncio import Redis

    ledger = RedisLedger(Redis.from_url(redis_server.url), "vg", 90, 2.0)
    cohort = Cohort("alpha", "android", "5.0")
    batch = Batch({(day_of(T0), cohort, REQUESTS): 5}, {cohort: (T0, T0)}, writer="replica", seq=1)
    for _ in range(3):
        await ledger.apply(batch, T0)
    await ledger.apply(Batch({(day_of(T0), cohort, REQUESTS): 2}, {cohort: (T0, T0)}, writer="replica", seq=2), T0)
    # Another replica's first batch is its own.
    await ledger.apply(Batch({(day_of(T0), cohort, REQUESTS): 1}, {cohort: (T0, T0)}, writer="other", seq=1), T0)
    await ledger.close()
    bucket = decoded(redis_server.client().hgetall(f"vg:mig:d:{day_of(T0)}"))
    assert bucket["alpha/android/5.0|requests"] == 8
