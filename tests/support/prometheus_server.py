"""A real Prometheus (Debian's `prometheus` package) for tests: on 127.0.0.1, a free port, its
storage in the test's temp dir, scraping the targets a test gives it every second. The process
is killed in teardown whatever the test did.

Use from a test: `prom = await prometheus(["127.0.0.1:PORT"], rule_files=[...])`, then
`await prom.query(expr)`, `await prom.query_range(expr, start, end)`, `await prom.wait_for(...)`.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.netutil import free_port

SCRAPE_INTERVAL = 1.0
START_LIMIT = 30.0


class PrometheusServer:
    def __init__(self, url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
        self.url = url
        self.process = process
        self.log_path = log_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>: the `data` of a success answer, else AssertionError with the error."""
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{self.url}/api/v1/{path}", params=params) as resp:
                body = await resp.json()
        assert body.get("status") == "success", f"{path} {params}: {body.get('errorType')}: {body.get('error')}"
        return body["data"]

    async def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params = {"query": expr} | ({"time": f"{at:.3f}"} if at is not None else {})
        data = await self.api("query", **params)
        assert data["resultType"] == "vector", f"{expr}: {data['resultType']}"
        return data["result"]

    async def query_range(self, expr: str, start: float, end: float, step: float = 1.0) -> list[dict[str, Any]]:
        data = await self.api("query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}", step=str(step))
        return data["result"]

    async def wait_for(
        self, expr: str, done: Callable[[list[dict[str, Any]]], bool], within: float = 20.0
    ) -> list[dict[str, Any]]:
        """Polls an instant query until `done(result)`; AssertionError with the last result after
        `within` seconds."""
        end = time.monotonic() + within
        while True:
            result = await self.query(expr)
            if done(result):
                return result
            assert time.monotonic() < end, f"after {within}s, {expr} gave {result}"
            await asyncio.sleep(0.2)

    async def wait_for_rules(self, within: float = 20.0) -> list[dict[str, Any]]:
        """Every loaded rule, once each has been evaluated at least once."""
        end = time.monotonic() + within
        while True:
            data = await self.api("rules")
            rules = [rule for group in data["groups"] for rule in group["rules"]]
            if rules and all(rule["health"] != "unknown" for rule in rules):
                return rules
            assert time.monotonic() < end, f"rules not evaluated after {within}s: {rules}"
            await asyncio.sleep(0.2)

    async def wait_ready(self) -> None:
        end = time.monotonic() + START_LIMIT
        async with aiohttp.ClientSession() as http:
            while True:
                assert self.process.poll() is None, f"prometheus exited:\n{self.log()}"
                try:
                    async with http.get(f"{self.url}/-/ready") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientConnectionError:
                    pass
                assert time.monotonic() < end, f"prometheus not ready after {START_LIMIT}s:\n{self.log()}"
                await asyncio.sleep(0.1)


PrometheusFactory = Callable[..., Awaitable[PrometheusServer]]


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[PrometheusFactory]:
    """start(targets, rule_files=(), labels={}) → a ready PrometheusServer scraping job "gateway";
    `labels` gives a target the labels service discovery would (say Kubernetes' namespace and pod)."""
    binary = shutil.which("prometheus")
    assert binary, "the prometheus binary is missing: `make test` installs Debian's prometheus package"
    processes: list[subprocess.Popen[bytes]] = []

    def spawn(targets: list[str], rule_files: tuple[Path, ...], labels: dict[str, dict[str, str]]) -> PrometheusServer:
        root = tmp_path / f"prometheus-{len(processes)}"
        root.mkdir()
        # JSON is YAML: no YAML library needed to write the config.
        config = {
            "global": {
                "scrape_interval": f"{SCRAPE_INTERVAL:g}s",
                "scrape_timeout": f"{SCRAPE_INTERVAL:g}s",
                "evaluation_interval": f"{SCRAPE_INTERVAL:g}s",
            },
            "rule_files": [str(path) for path in rule_files],
            "scrape_configs": [
                {
                    "job_name": "gateway",
                    "static_configs": [{"targets": [target], "labels": labels.get(target, {})} for target in targets],
                }
            ],
        }
        (root / "prometheus.yml").write_text(json.dumps(config))
        port = free_port()
        log_path = root / "prometheus.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={root / 'prometheus.yml'}",
                    f"--storage.tsdb.path={root / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        processes.append(process)
        return PrometheusServer(f"http://127.0.0.1:{port}", process, log_path)

    async def start(
        targets: list[str], rule_files: tuple[Path, ...] = (), labels: dict[str, dict[str, str]] | None = None
    ) -> PrometheusServer:
        server = spawn(targets, rule_files, labels or {})
        await server.wait_ready()
        return server

    try:
        yield start
    finally:
        for process in processes:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
