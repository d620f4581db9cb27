"""Shared fixtures: a sandbox upstream and a gateway, both real aiohttp servers on 127.0.0.1.
Helpers live in the importable tests/support package; this file holds only fixtures and the
run-wide check that no token reached the logs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import create_app
from gateway.config import Config, LogConfig
from gateway.observability.logs import configure_logging
from gateway.sandbox.app import Sandbox, create_sandbox_app
from gateway.sandbox.data import SandboxPatient
from tests.support.gateway import LOG, TOKENS, GatewayTestServer
from tests.support.netutil import default_ports, hold_ports

# Real servers on loopback, each a fixture in its own module: redis-server, Prometheus, and
# gateway replicas as processes.
pytest_plugins = ["tests.support.redis_server", "tests.support.prometheus_server", "tests.support.replicas"]


def pytest_configure(config: pytest.Config) -> None:
    configure_logging(LogConfig(level="debug", format="json"), stream=LOG)


@pytest.fixture(scope="session", autouse=True)
def no_token_in_logs() -> Any:
    yield
    text = LOG.getvalue()
    assert text or not TOKENS, "tokens were used but nothing was logged: the log capture is broken"
    leaked = [t for t in TOKENS if t in text]
    assert not leaked, f"{len(leaked)} tokens appear in the captured logs"


@pytest.fixture(scope="session", autouse=True)
def demo_ports_taken() -> Any:
    """The run holds the ports `make run` uses (those still free), so a test that listens on a
    default port fails here as it would next to a running demo, not only on a developer's machine."""
    with hold_ports(default_ports()) as held:
        yield held


UpstreamFactory = Callable[..., Awaitable[tuple[Sandbox, str]]]


@pytest.fixture
async def upstream(aiohttp_server: Any) -> UpstreamFactory:
    """start(patient, ...) → (sandbox, base URL): a simulated new API on 127.0.0.1."""

    async def start(*patients: SandboxPatient) -> tuple[Sandbox, str]:
        sandbox = Sandbox(list(patients))
        server: TestServer = await aiohttp_server(create_sandbox_app(sandbox), host="127.0.0.1")
        return sandbox, str(server.make_url("")).rstrip("/")

    return start


GatewayFactory = Callable[..., Awaitable[TestClient]]


@pytest.fixture
async def gateway(aiohttp_client: Any) -> GatewayFactory:
    """start(upstream_url, session={...}, upstream={...}) → a test client of a running gateway."""

    async def start(upstream_url: str, **sections: dict[str, Any]) -> TestClient:
        upstream_section = {"url": upstream_url, "retry_backoff": 0.0} | sections.pop("upstream", {})
        config = Config().replace(upstream=upstream_section, **sections)
        return await aiohttp_client(GatewayTestServer(create_app(config), host="127.0.0.1"))

    return start
