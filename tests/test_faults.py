"""One faulty LPU among healthy ones: it ends Failed, the others Complete, all within the deadline."""

from __future__ import annotations

import time
from typing import Any

import pytest
from conftest import create, patient, poll_until_final

from gateway.sandbox.data import LpuKnobs

DEADLINE = 1.5
# per-call timeout below the deadline, so slow answers fail on the call timeout; "hang" uses
# a call timeout above the deadline so that the session deadline is what ends it.
FAULTS = {
    "status 500": (LpuKnobs(fault="status", status=500), {}),
    "status 404": (LpuKnobs(fault="status", status=404), {}),
    "status 401 on one LPU": (LpuKnobs(fault="status", status=401), {}),
    "status 429": (LpuKnobs(fault="status", status=429), {}),
    "hang past the deadline": (LpuKnobs(fault="hang"), {"call_timeout": 10.0}),
    "slow past the call timeout": (LpuKnobs(delay=5.0), {}),
    "invalid json": (LpuKnobs(fault="invalid_json"), {}),
    "object for array": (LpuKnobs(fault="wrong_shape"), {}),
    "string for int": (LpuKnobs(fault="wrong_type"), {}),
    "null items": (LpuKnobs(fault="null_item"), {}),
    "reset before headers": (LpuKnobs(fault="reset"), {}),
    "reset mid body": (LpuKnobs(fault="reset_mid_body"), {}),
    "drip past the deadline": (LpuKnobs(fault="drip", drip_interval=0.2), {"call_timeout": 10.0}),
    "drip past the call timeout": (LpuKnobs(fault="drip", drip_interval=0.2), {}),
    "body over the cap": (LpuKnobs(fault="oversize", oversize_bytes=300_000), {"max_body_bytes": 200_000}),
    "fault on disp only": (LpuKnobs(fault="invalid_json", methods=("disp",)), {}),
    "503 forever": (LpuKnobs(fault="status", status=503), {}),
}


@pytest.mark.parametrize("name", list(FAULTS))
async def test_faulty_lpu_fails_alone_within_the_deadline(name: str, upstream: Any, gateway: Any) -> None:
    knobs, upstream_config = FAULTS[name]
    p = patient(None, knobs, None)
    _, url = await upstream(p)
    client = await gateway(url, session={"deadline": DEADLINE}, upstream={"call_timeout": 0.5} | upstream_config)
    started = time.monotonic()
    body, _ = await poll_until_final(client, await create(client, p.token))
    elapsed = time.monotonic() - started
    assert [e["state"] for e in body] == ["Complete", "Failed", "Complete"]
    failed = body[1]
    assert failed["lpu"] == p.lpus[1].info, "a Failed LPU still carries its lpu"
    assert failed["visits"] == [] and failed["calls"] == [] and failed["disps"] == []
    assert elapsed < DEADLINE + 0.5, f"took {elapsed:.2f}s"


async def test_503_then_success_is_retried_to_complete(upstream: Any, gateway: Any) -> None:
    p = patient(LpuKnobs(fault="flaky", status=503, flaky_failures=1, methods=("visit",)))
    sandbox, url = await upstream(p)
    client = await gateway(url, upstream={"retries": 2})
    body, _ = await poll_until_final(client, await create(client, p.token))
    assert [e["state"] for e in body] == ["Complete"]
    assert body[0]["visits"], "the retried call's data is in the answer"
    assert sandbox.count("visit") == 2 and sandbox.count("calldoctor") == 1


async def test_500_is_not_retried(upstream: Any, gateway: Any) -> None:
    p = patient(LpuKnobs(fault="status", status=500, methods=("visit",)))
    sandbox, url = await upstream(p)
    client = await gateway(url, upstream={"retries": 2})
    body, _ = await poll_until_final(client, await create(client, p.token))
    assert [e["state"] for e in body] == ["Failed"]
    assert sandbox.count("visit") == 1


async def test_retries_stop_when_the_budget_is_spent(upstream: Any, gateway: Any) -> None:
    # Budget of 2 saved retries and no refill: of 4 LPUs failing with 503, only 2 retries happen.
    p = patient(*[LpuKnobs(fault="status", status=503, methods=("visit",))] * 4)
    sandbox, url = await upstream(p)
    client = await gateway(url, upstream={"retries": 3, "retry_budget_floor": 2, "retry_budget_ratio": 0.0})
    body, _ = await poll_until_final(client, await create(client, p.token))
    assert [e["state"] for e in body] == ["Failed"] * 4
    assert sandbox.count("visit") == 4 + 2
