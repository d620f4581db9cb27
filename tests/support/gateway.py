"""Tokens, patients and the old-path calls a test makes against a gateway, metric samples, and
the one bounded wait.

Every token a test uses comes from `new_token()`; at the end of the run the captured log of the
whole session (`LOG`) is searched for each of them (tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
import uuid
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from multidict import CIMultiDict

from gateway.http import keys
from gateway.http.runner import GatewayRunner
from gateway.sandbox.app import Sandbox, create_sandbox_app
from gateway.sandbox.data import LpuKnobs, SandboxLpu, SandboxPatient, demo_lpu
from tests.support import golden

# The old create path as the apps call it, written out: a test of the contract does not read the
# gateway's own constant.
TICKETS = "/api/v2/old/visit/tickets"
TOKENS: set[str] = set()
# [limits] for tests that replay many creates with one token (a synthetic app or workload): the
# per-token quota out of their way. tests/sessions/test_token_fairness.py holds the quota itself.
QUOTA_OFF = {
    "create_rate_per_token": 1e6,
    "create_burst_per_token": 10**6,
    "live_sessions_per_token": 10**6,
    "token_share": 1.0,
}
LOG = io.StringIO()


def new_token() -> str:
    token = f"tok-{uuid.uuid4().hex}"
    TOKENS.add(token)
    return token


def patient(*knobs: LpuKnobs | None, token: str | None = None) -> SandboxPatient:
    """A patient with one LPU per knobs argument (None: a healthy LPU)."""
    return SandboxPatient(token or new_token(), [demo_lpu(i + 1, k) for i, k in enumerate(knobs)])


def golden_patient(token: str | None = None, pascal_case: bool = False) -> SandboxPatient:
    """A patient whose gateway answer is the seed's golden answer, which the fake legacy service
    also gives (a shadow compare of the two matches); `pascal_case`: the upstream answers in
    PascalCase, as the seed's examples do."""
    [entry] = golden("ticket_lists.json")
    lpu = SandboxLpu(info=entry["lpu"], visits=entry["visits"], calls=entry["calls"], disps=entry["disps"])
    if pascal_case:
        lpu.knobs = LpuKnobs(pascal_case=True)
    return SandboxPatient(token or new_token(), [lpu])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class GatewayTestServer(TestServer):
    """A TestServer run by the gateway's own runner, as `gateway serve` runs it."""

    async def _make_runner(self, **kwargs: Any) -> GatewayRunner:
        return GatewayRunner(self.app, **kwargs)


async def create(client: TestClient, token: str, **headers: str) -> str:
    resp = await client.get(TICKETS, headers=bearer(token) | headers)
    assert resp.status == 200, await resp.text()
    return (await resp.json())["session"]


async def poll_until_final(
    client: TestClient, guid: str, headers: dict[str, str] | None = None, limit: float = 30.0
) -> tuple[list[dict[str, Any]], list[list[str]]]:
    """Polls until no LPU is InProgress; returns the final body and every state list seen.

    Waiting is on the gateway's own answers (bounded by `limit`), not on a fixed sleep.
    """
    loop = asyncio.get_running_loop()
    end = loop.time() + limit
    seen: list[list[str]] = []
    while True:
        resp = await client.get(f"{TICKETS}/{guid}", headers=headers)
        assert resp.status == 200, await resp.text()
        body = await resp.json()
        seen.append([e["state"] for e in body])
        if all(s != "InProgress" for s in seen[-1]):
            return body, seen
        assert loop.time() < end, f"session still InProgress after {limit}s: {seen[-1]}"
        # 20 polls/s at most: within the default per-session poll rate (limits.poll_rate).
        await asyncio.sleep(0.05)


def sample(client: TestClient, name: str, **labels: str) -> float:
    """A metric sample of the gateway behind `client`; 0 for a series that does not exist."""
    return client.app[keys.METRICS].exposition().get_sample_value(name, labels) or 0.0  # as scraped


async def wait_until(condition: Callable[[], Any], within: float = 10.0, what: str = "condition") -> None:
    """Waits on an observable condition (a function, or a coroutine function), bounded; fails
    the test when it does not come true in time. For state that has no event to wait on."""
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while True:
        met = condition()
        if asyncio.iscoroutine(met):
            met = await met
        if met:
            return
        assert loop.time() < end, f"{what} not reached within {within}s"
        await asyncio.sleep(0.02)


async def recording_upstream(aiohttp_server: Any, *patients: SandboxPatient) -> tuple[list[CIMultiDict[str]], str]:
    """(headers of every request received, base URL): the sandbox new API on 127.0.0.1, recording."""
    received: list[CIMultiDict[str]] = []

    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        received.append(CIMultiDict(request.headers))
        return await handler(request)

    app = create_sandbox_app(Sandbox(list(patients)))
    app.middlewares.append(record)
    server = await aiohttp_server(app, host="127.0.0.1")
    return received, str(server.make_url("")).rstrip("/")


def run_cli(*args: str, env: dict[str, str] | None = None, prelude: str = "") -> subprocess.CompletedProcess[str]:
    """`gateway ARGS` in a fresh interpreter with only PATH and `env`; `prelude` runs first (a test
    hides an installed package with it)."""
    code = f"{prelude}\nimport sys\nfrom gateway.cli import main\nsys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        env={"PATH": "/usr/bin:/bin"} | (env or {}),
        capture_output=True,
        text=True,
        timeout=30,
    )
