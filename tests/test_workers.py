"""`gateway serve --workers N`: N processes share the ports (SO_REUSEPORT) on one Redis, a scrape
of any of them counts every worker's requests, and a SIGTERM stops them all cleanly."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.support import ROOT
from tests.support.gateway import TICKETS, bearer, patient, wait_until
from tests.support.netutil import free_port


async def _answers(http: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with http.get(url) as resp:
            return resp.status == 200
    except aiohttp.ClientError:
        return False


def _requests_counted(text: str, route: str) -> float:
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "gateway_http_requests_total" and s.labels.get("route") == route
    )


async def test_two_workers_share_the_port_and_one_scrape_counts_both(
    upstream: Any, redis_server: Any, tmp_path: Path
) -> None:
    p = patient(None)
    _, url = await upstream(p)
    port, metrics_port = free_port(), free_port()
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    # One token creates until both workers have answered: far above its create rate and live quota.
    config = tmp_path / "gateway.toml"
    config.write_text(
        "[limits]\ncreate_burst_per_token = 100000\nlive_sessions_per_token = 100000\ntoken_share = 1.0\n"
    )
    env = {
        **os.environ,
        "GATEWAY_CONFIG": str(config),
        "GATEWAY_PORT": str(port),
        "GATEWAY_METRICS_PORT": str(metrics_port),
        "GATEWAY_UPSTREAM_URL": url,
        "GATEWAY_REDIS_URL": redis_server.url,
        "GATEWAY_LOG_LEVEL": "warning",
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
    }
    command = [sys.executable, "-m", "gateway", "serve", "--workers", "2"]
    proc = await asyncio.to_thread(subprocess.Popen, command, env=env, cwd=ROOT)
    base = f"http://127.0.0.1:{port}"
    try:
        # A new connection per request, so the kernel spreads them over both workers.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
            await wait_until(lambda: _answers(http, f"{base}/healthz"), within=20, what="both workers listening")
            await wait_until(lambda: _answers(http, f"http://127.0.0.1:{metrics_port}/metrics"), within=20)
            sent = 0

            async def both_workers_answered() -> bool:
                # Workers start side by side; until the second binds, the first takes every
                # connection. Each request's samples go to files of the answering worker's pid.
                nonlocal sent
                for _ in range(10):
                    async with http.get(base + TICKETS, headers=bearer(p.token)) as resp:
                        assert resp.status == 200
                    sent += 1
                pids = {f.stem.rsplit("_", 1)[1] for f in metrics_dir.glob("counter_*.db")}
                return len(pids) == 2

            await wait_until(both_workers_answered, within=30, what="requests answered by both workers")
            async with http.get(f"http://127.0.0.1:{metrics_port}/metrics") as resp:
                text = await resp.text()
            assert _requests_counted(text, TICKETS) == sent
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0
    finally:
        if proc.poll() is None:
            # SIGTERM first: the supervisor passes it on, where a SIGKILL would orphan the workers.
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_more_than_one_worker_needs_redis() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--workers", "2"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        timeout=30,
    )
    assert out.returncode == 2
    assert b"--workers needs redis.url" in out.stderr
