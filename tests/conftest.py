"""Shared fixtures: a sandbox upstream and a gateway, both real aiohttp servers on 127.0.0.1.

Every token a test uses comes from `new_token()`; at the end of the run the captured log of
the whole session is searched for each of them.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_server import prometheus  # noqa: F401  (the fixture: a real Prometheus on loopback)

from gateway.app import create_app
from gateway.config import Config, LogConfig
from gateway.http.runner import GatewayRunner
from gateway.observability.logs import configure_logging
from gateway.sandbox.app import Sandbox, create_sandbox_app
from gateway.sandbox.data import LpuKnobs, SandboxPatient, demo_lpu

# A real redis-server, and gateway replicas as processes: fixtures in their own modules.
pytest_plugins = ["redis_server", "replicas"]

TOKENS: set[str] = set()
LOG = io.StringIO()


def new_token() -> str:
    token = f"tok-{uuid.uuid4().hex}"
    TOKENS.add(token)
    return token


def pytest_configure(config: pytest.Config) -> None:
    configure_logging(LogConfig(level="debug", format="json"), stream=LOG)


@pytest.fixture(scope="session", autouse=True)
def no_token_in_logs() -> Any:
    yield
    text = LOG.getvalue()
    assert text or not TOKENS, "tokens were used but nothing was logged: the log capture is broken"
    leaked = [t for t in TOKENS if t in text]
    assert not leaked, f"{len(leaked)} tokens appear in the captured logs"


def patient(*knobs: LpuKnobs | None, token: str | None = None) -> SandboxPatient:
    """A patient with one LPU per knobs argument (None: a healthy LPU)."""
    return SandboxPatient(token or new_token(), [demo_lpu(i + 1, k) for i, k in enumerate(knobs)])


UpstreamFactory = Callable[..., Awaitable[tuple[Sandbox, str]]]


@pytest.fixture
async def upstream(aiohttp_server: Any) -> UpstreamFactory:
    """start(patient, ...) → (sandbox, base URL): a simulated new API on 127.0.0.1."""

    async def start(*patients: SandboxPatient) -> tuple[Sandbox, str]:
        sandbox = Sandbox(list(patients))
        server: TestServer = await aiohttp_server(create_sandbox_app(sandbox), host="127.0.0.1")
        return sandbox, str(server.make_url("")).rstrip("/")

    return start


class GatewayTestServer(TestServer):
    """A TestServer run by the gateway's own runner, as `gateway serve` runs it."""

    async def _make_runner(self, **kwargs: Any) -> GatewayRunner:
        return GatewayRunner(self.app, **kwargs)


GatewayFactory = Callable[..., Awaitable[TestClient]]


@pytest.fixture
async def gateway(aiohttp_client: Any) -> GatewayFactory:
    """start(upstream_url, session={...}, upstream={...}) → a test client of a running gateway."""

    async def start(upstream_url: str, **sections: dict[str, Any]) -> TestClient:
        upstream_section = {"url": upstream_url, "retry_backoff": 0.0} | sections.pop("upstream", {})
        config = Config().replace(upstream=upstream_section, **sections)
        return await aiohttp_client(GatewayTestServer(create_app(config), host="127.0.0.1"))

    return start


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def poll_until_final(
    client: TestClient, guid: str, headers: dict[str, str] | None = None, limit: float = 30.0
) -> tuple[list[dict[str, Any]], list[list[str]]]:
    """Polls until no LPU is InProgress; returns the final body and every state list seen.

    Waiting is on the gateway's own answers (bounded by `limit`), not on a fixed sleep.
    """
    import asyncio

    loop = asyncio.get_running_loop()
    end = loop.time() + limit
    seen: list[list[str]] = []
    while True:
        resp = await client.get(f"/api/v2/old/visit/tickets/{guid}", headers=headers)
        assert resp.status == 200, await resp.text()
        body = await resp.json()
        seen.append([e["state"] for e in body])
        if all(s != "InProgress" for s in seen[-1]):
            return body, seen
        assert loop.time() < end, f"session still InProgress after {limit}s: {seen[-1]}"
        # 20 polls/s at most: within the default per-session poll rate (limits.poll_rate).
        await asyncio.sleep(0.05)


async def create(client: TestClient, token: str, **headers: str) -> str:
    resp = await client.get("/api/v2/old/visit/tickets", headers=bearer(token) | headers)
    assert resp.status == 200, await resp.text()
    return (await resp.json())["session"]
