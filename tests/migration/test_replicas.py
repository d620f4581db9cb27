"""The ledger as production runs it: two `gateway serve` processes (the system clock, the CLI's
wiring) sharing a real Redis, under a multi-cohort workload; each request counted once."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import aiohttp

from gateway.migration.clock import day_of
from gateway.sandbox.data import SandboxPatient, demo_lpu
from tests.support.gateway import TICKETS, bearer, new_token, wait_until
from tests.support.migration import APPS, CLIENTS

PLAN = {"alpha": 7, "beta": 4, "gamma": 3, "stranger": 2}


async def test_two_gateway_processes_count_each_request_once_in_one_ledger(
    upstream: Any, replicas: Any, redis_server: Any
) -> None:
    tokens = {app: new_token() for app in APPS}
    _, url = await upstream(*(SandboxPatient(t, [demo_lpu(1)]) for t in tokens.values()))
    pair = await replicas(2, url, redis_server.url, clients=CLIENTS)
    sent: Counter[str] = Counter()
    turn = 0
    async with aiohttp.ClientSession() as http:
        for app, n in PLAN.items():
            headers = APPS[app][0] | bearer(tokens[app])
            cohort = APPS[app][1]
            for _ in range(n):
                creator, poller = pair[turn % 2], pair[(turn + 1) % 2]
                turn += 1
                async with http.get(creator.url + TICKETS, headers=headers) as resp:
                    assert resp.status == 200
                    guid = (await resp.json())["session"]
                async with http.get(f"{poller.url}{TICKETS}/{guid}", headers=headers) as resp:
                    assert resp.status == 200
                for field in ("requests", "requests", "gateway", "gateway", "creates", "sessions"):
                    sent[f"{cohort}|{field}"] += 1
    redis = redis_server.client()

    def counted() -> Counter[str]:
        # The run may straddle midnight UTC: today's and yesterday's buckets together.
        today = day_of(time.time())
        total: Counter[str] = Counter()
        for day in (today - 1, today):
            total.update({k.decode(): int(v) for k, v in redis.hgetall(f"vg:mig:d:{day}").items()})
        return total

    await wait_until(lambda: counted() == sent, within=15, what="both processes' counts in the shared ledger")
    assert set(k.decode() for k in redis.hkeys("vg:mig:last")) == {cohort for _, cohort in APPS.values()}
