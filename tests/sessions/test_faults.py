"""Retries under the retry budget. Each single fault (one LPU among healthy ones) is a row of the
fault matrix: tests/sessions/test_fault_matrix.py."""

from __future__ import annotations

from typing import Any

from gateway.sandbox.data import LpuKnobs
from tests.support.gateway import create, patient, poll_until_final


async def test_retries_stop_when_the_budget_is_spent(upstream: Any, gateway: Any) -> None:
    # Budget of 2 saved retries and no refill: of 4 LPUs failing with 503, only 2 retries happen.
    p = patient(*[LpuKnobs(fault="status", status=503, methods=("visit",))] * 4)
    sandbox, url = await upstream(p)
    client = await gateway(url, upstream={"retries": 3, "retry_budget_floor": 2, "retry_budget_ratio": 0.0})
    body, _ = await poll_until_final(client, await create(client, p.token))
    assert [e["state"] for e in body] == ["Failed"] * 4
    assert sandbox.count("visit") == 4 + 2
