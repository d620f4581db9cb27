"""Gateway replicas as real processes (`python -m gateway serve`) on 127.0.0.1, for the tests that
kill one. Each writes its JSON log to a file; at teardown every replica still running is
stopped (SIGKILL if SIGTERM is not enough) and its log joins the run's log, which the token
check searches.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support import terminate
from tests.support.gateway import LOG
from tests.support.netutil import free_port, serve_env

START_LIMIT = 20.0


class Replica:
    def __init__(self, name: str, port: int, log_path: Path, proc: subprocess.Popen[bytes]) -> None:
        self.name = name
        self.port = port
        self.log_path = log_path
        self.proc = proc

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kill(self) -> None:
        """SIGKILL: the replica dies mid-work, with no chance to hand anything over."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        terminate(self.proc)

    def events(self, name: str) -> list[dict[str, Any]]:
        """The replica's log lines with event `name`."""
        found = []
        for line in self.log_path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("event") == name:
                found.append(record)
        return found


ReplicaFactory = Callable[..., Awaitable[list[Replica]]]


async def _wait_ready(http: aiohttp.ClientSession, replica: Replica) -> None:
    end = time.monotonic() + START_LIMIT
    while True:
        try:
            async with http.get(f"{replica.url}/readyz") as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientConnectionError:
            pass
        if replica.proc.poll() is not None:
            raise RuntimeError(f"replica {replica.name} exited: {replica.log_path.read_text()[-2000:]}")
        assert time.monotonic() < end, f"replica {replica.name} not ready after {START_LIMIT}s"
        await asyncio.sleep(0.05)


@pytest.fixture
async def replicas(tmp_path: Path) -> AsyncIterator[ReplicaFactory]:
    """start(n, upstream_url, redis_url, deadline=, **config) → n ready replicas sharing Redis.
    `config` is written to the replicas' TOML file as [section] tables: redis={"lease_ttl": 1}."""
    started: list[Replica] = []

    async def start(
        n: int, upstream_url: str, redis_url: str, deadline: float = 20.0, **config: dict[str, Any]
    ) -> list[Replica]:
        # No drain unless a test asks for one: teardown's SIGTERM would otherwise wait it out.
        sections = {
            "upstream": {"retry_backoff": 0.0},
            "redis": {"probe_interval": 0.2},
            "server": {"drain_seconds": 0.0},
        }
        for name, values in config.items():
            sections.setdefault(name, {}).update(values)
        config_path = tmp_path / f"replicas-{len(started)}.toml"
        config_path.write_text("".join(_toml_table(name, values) for name, values in sections.items()))
        batch = []
        for _ in range(n):
            env = {
                "GATEWAY_CONFIG": str(config_path),
                "GATEWAY_UPSTREAM_URL": upstream_url,
                "GATEWAY_REDIS_URL": redis_url,
                "GATEWAY_SESSION_DEADLINE": str(deadline),
            }
            replica = _spawn("ABCDEFGHIJ"[len(started)], tmp_path, env)
            started.append(replica)
            batch.append(replica)
        async with aiohttp.ClientSession() as http:
            await asyncio.gather(*(_wait_ready(http, r) for r in batch))
        return batch

    try:
        yield start
    finally:
        for replica in started:
            replica.stop()
            LOG.write(replica.log_path.read_text())
    # A crash, an unhandled error or a stray traceback in any replica fails the test that caused it.
    problems = [f"{r.name}: {line[:300]}" for r in started for line in _problem_lines(r.log_path)]
    assert not problems, "\n".join(problems)


def _problem_lines(log_path: Path) -> list[str]:
    problems = []
    for line in log_path.read_text().splitlines():
        try:
            level = json.loads(line).get("level")
        except ValueError:
            level = "not json"
        if level not in ("debug", "info", "warning"):
            problems.append(line)
    return problems


def _spawn(name: str, directory: Path, env: dict[str, str]) -> Replica:
    port = free_port()
    log_path = directory / f"replica-{name}.log"
    # /metrics on the main port: replicas must not share one.
    env = env | serve_env(port, GATEWAY_LOG_LEVEL="info")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    return Replica(name, port, log_path, proc)


def _toml_table(name: str, values: dict[str, Any]) -> str:
    lines = [f"[{name}]"] + [f"{key} = {_toml_value(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    """JSON scalars and arrays are TOML already; a table is written inline ({"a" = 1})."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)
