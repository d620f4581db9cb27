"""The fault matrix of docs/reliability.md: for each upstream behaviour, the faulty LPU's final
state, the reason counted in `gateway_lpu_outcomes_total`, and the time to terminal, with the
other LPUs of the same session unaffected. The table in the doc is checked against MATRIX below,
so a row cannot be documented without a test, nor change without the doc changing."""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.http import keys
from gateway.sandbox.data import LpuKnobs
from tests.support import ROOT
from tests.support.faultnet import OneConnectionProxy
from tests.support.gateway import LOG, TICKETS, bearer, create, patient, sample, wait_until

DOC = ROOT / "docs" / "reliability.md"
DEADLINE = 2.5
CALL_TIMEOUT = 1.0
# Upper slack on every time bound: the machine is shared, and a poll every 50 ms sees a change
# up to one interval late.
SLACK = 0.6
BOUNDS = {
    "at once": (0.0, SLACK),
    "call timeout": (CALL_TIMEOUT, CALL_TIMEOUT + SLACK),
    "deadline": (DEADLINE, DEADLINE + SLACK),
}


@dataclass(frozen=True)
class Row:
    behaviour: str
    knobs: LpuKnobs
    state: str
    reason: str
    terminal: str  # a key of BOUNDS
    upstream: dict[str, Any] = field(default_factory=dict)
    visit_calls: int | None = None  # calls of the faulty method, where retries make them differ


ONLY_VISIT = ("visit",)
MATRIX = [
    Row("500", LpuKnobs(fault="status", status=500, methods=ONLY_VISIT), "Failed", "status", "at once", visit_calls=1),
    Row(
        "503, then 200 (retried)",
        LpuKnobs(fault="flaky", status=503, flaky_failures=1, methods=ONLY_VISIT),
        "Complete",
        "ok",
        "at once",
        visit_calls=2,
    ),
    Row(
        "503 on every attempt",
        LpuKnobs(fault="status", status=503, methods=ONLY_VISIT),
        "Failed",
        "status",
        "at once",
        visit_calls=3,
    ),
    Row("429", LpuKnobs(fault="status", status=429, methods=ONLY_VISIT), "Failed", "status", "at once", visit_calls=1),
    Row("404 (MKAB gone)", LpuKnobs(fault="status", status=404), "Failed", "status", "at once"),
    Row("401 on one LPU", LpuKnobs(fault="status", status=401), "Failed", "status", "at once"),
    Row("hang", LpuKnobs(fault="hang"), "Failed", "timeout", "call timeout"),
    Row(
        "hang, call timeout above the deadline",
        LpuKnobs(fault="hang"),
        "Failed",
        "deadline",
        "deadline",
        {"call_timeout": 10.0},
    ),
    Row("reset before headers", LpuKnobs(fault="reset"), "Failed", "connection", "at once"),
    Row("reset mid-body", LpuKnobs(fault="reset_mid_body"), "Failed", "connection", "at once"),
    Row("invalid JSON", LpuKnobs(fault="invalid_json"), "Failed", "invalid_body", "at once"),
    Row("object for array", LpuKnobs(fault="wrong_shape"), "Failed", "invalid_body", "at once"),
    Row("string for int", LpuKnobs(fault="wrong_type"), "Failed", "invalid_body", "at once"),
    Row("null items", LpuKnobs(fault="null_item"), "Failed", "invalid_body", "at once"),
    Row(
        "bad body on one method only (disp)",
        LpuKnobs(fault="invalid_json", methods=("disp",)),
        "Failed",
        "invalid_body",
        "at once",
    ),
    Row(
        "body over the cap, Content-Length",
        LpuKnobs(fault="oversize", oversize_bytes=300_000),
        "Failed",
        "too_large",
        "at once",
        {"max_body_bytes": 200_000},
    ),
    Row(
        "body over the cap, chunked",
        LpuKnobs(fault="oversize_chunked", oversize_bytes=300_000),
        "Failed",
        "too_large",
        "at once",
        {"max_body_bytes": 200_000},
    ),
    Row("slow drip", LpuKnobs(fault="drip", drip_interval=0.1), "Failed", "timeout", "call timeout"),
    Row(
        "slow drip, call timeout above the deadline",
        LpuKnobs(fault="drip", drip_interval=0.1),
        "Failed",
        "deadline",
        "deadline",
        {"call_timeout": 10.0},
    ),
]
# Faults of the whole upstream host, tested below with their own setup: (behaviour, state, reason, terminal).
HOST_ROWS = [
    ("connection refused (host gone after the LPU list)", "Failed, every LPU", "connection", "at once"),
    ("host name does not resolve", "creation answers 502 `4502`", "connection", "at once"),
    ("dead LPU, after `limits.breaker_failures` failures", "Failed", "circuit_open", "at once"),
]


async def time_to_terminal(client: TestClient, guid: str, limit: float = DEADLINE + 5) -> tuple[list[Any], list[float]]:
    """Polls (20/s, bounded) until no LPU is InProgress; returns the final body and, per LPU,
    the seconds from now until it was first seen terminal."""
    started = time.monotonic()
    seen: list[float | None] = []
    while True:
        resp = await client.get(f"{TICKETS}/{guid}")
        assert resp.status == 200, await resp.text()
        body = await resp.json()
        elapsed = time.monotonic() - started
        seen = seen or [None] * len(body)
        seen = [t if t is not None or e["state"] == "InProgress" else elapsed for t, e in zip(seen, body, strict=True)]
        if all(t is not None for t in seen):
            return body, [t for t in seen if t is not None]
        assert elapsed < limit, f"still InProgress after {limit}s"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("row", MATRIX, ids=[r.behaviour for r in MATRIX])
async def test_matrix_row(row: Row, upstream: Any, gateway: Any) -> None:
    p = patient(None, row.knobs, None)
    sandbox, url = await upstream(p)
    client = await gateway(url, session={"deadline": DEADLINE}, upstream={"call_timeout": CALL_TIMEOUT} | row.upstream)
    guid = await create(client, p.token)
    body, times = await time_to_terminal(client, guid)

    assert [e["state"] for e in body] == ["Complete", row.state, "Complete"]
    faulty = body[1]
    assert faulty["lpu"] == p.lpus[1].info
    if row.state == "Failed":
        assert faulty["visits"] == faulty["calls"] == faulty["disps"] == [], "a Failed LPU carries no records"
    else:
        assert faulty["visits"], "a Complete LPU carries its records"
    low, high = BOUNDS[row.terminal]
    assert low - 0.05 <= times[1] < high, f"terminal after {times[1]:.2f}s, expected {row.terminal}"
    assert times[0] < SLACK and times[2] < SLACK, f"healthy LPUs waited for the faulty one: {times}"

    complete = 3 if row.state == "Complete" else 2
    assert sample(client, "gateway_lpu_outcomes_total", outcome="complete", reason="ok") == complete
    if row.state == "Failed":
        # A poll reads an unfinished LPU as Failed from the deadline on, by the clock; the fan-out's
        # own deadline timer writes and counts it a moment later.
        await wait_until(
            lambda: sample(client, "gateway_lpu_outcomes_total", outcome="failed", reason=row.reason) == 1,
            within=5,
            what=f"the {row.reason} failure counted",
        )
    failed_total = sum(
        s.value
        for m in client.server.app[keys.METRICS].registry.collect()
        if m.name == "gateway_lpu_outcomes"
        for s in m.samples
        if s.name.endswith("_total") and s.labels["outcome"] == "failed"
    )
    assert failed_total == (1 if row.state == "Failed" else 0), "exactly one reason counted"
    if row.visit_calls is not None:
        lpu = p.lpus[1].info["guid"]
        assert sum(1 for c in sandbox.calls if c.method == "visit" and c.lpu_guid == lpu) == row.visit_calls
    print(f"matrix: {row.behaviour} | {row.state} | {row.reason} | {times[1]:.2f}s")


async def test_connection_refused_after_the_lpu_list_fails_every_lpu_at_once(upstream: Any, gateway: Any) -> None:
    p = patient(None, None, None)
    _, url = await upstream(p)
    host, port = url.removeprefix("http://").split(":")
    proxy = OneConnectionProxy(host, int(port))
    try:
        proxy_port = await proxy.start()
        client = await gateway(f"http://127.0.0.1:{proxy_port}", session={"deadline": DEADLINE})
        guid = await create(client, p.token)  # the MKAB list goes through the one connection
        body, times = await time_to_terminal(client, guid)
        assert [e["state"] for e in body] == ["Failed"] * 3
        assert max(times) < SLACK, f"not at once: {times}"
        assert sample(client, "gateway_lpu_outcomes_total", outcome="failed", reason="connection") == 3
        assert sample(client, "gateway_upstream_retries_total", method="visit") >= 1, "connect errors are retried"
        print(f"matrix: connection refused | Failed | connection | {max(times):.2f}s")
    finally:
        await proxy.close()


async def test_a_host_name_that_does_not_resolve_fails_creation_at_once(gateway: Any) -> None:
    # `.invalid` never resolves (RFC 6761); the gateway's resolver says so without a DNS query.
    client = await gateway("http://upstream.invalid:8081")
    p = patient(None)
    started = time.monotonic()
    resp = await client.get(TICKETS, headers=bearer(p.token) | {"X-Request-Id": "dns-row"})
    elapsed = time.monotonic() - started
    assert resp.status == 502
    assert await resp.json() == {"code": 502, "message": "Upstream service failed", "message_code": "4502"}
    assert elapsed < SLACK
    lines = [json.loads(line) for line in LOG.getvalue().splitlines() if '"dns-row"' in line]
    failures = [line for line in lines if line["event"] == "mkab_failed"]
    assert failures and failures[0]["reason"] == "connection" and failures[0]["detail"] == "dns"
    assert sample(client, "gateway_upstream_request_duration_seconds_count", method="mkab", outcome="connection") == 3
    print(f"matrix: host name does not resolve | 502 | connection | {elapsed:.2f}s")


def test_the_doc_table_is_the_matrix() -> None:
    text = DOC.read_text()
    table = text.split("<!-- fault-matrix -->")[1].split("\n\n")[0]
    rows = re.findall(r"^\| (.+?) \| (.+?) \| `(\w+)` \| (.+?) \|", table, re.M)
    documented = {(b, s, r, t) for b, s, r, t in rows if b not in ("upstream behaviour",) and not b.startswith("---")}
    expected = {(r.behaviour, r.state, r.reason, r.terminal) for r in MATRIX} | set(HOST_ROWS)
    assert documented == expected
