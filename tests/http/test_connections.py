"""Slow and idle clients (issue 11, row 5), with real sockets on 127.0.0.1: idle keep-alive
connections are closed after `server.keepalive_timeout`, slowloris and silent connections at
`server.head_timeout`, an unfinished head is bounded in bytes and in number, at
`server.max_connections` the longest-idle connection is closed to admit a new one (with none
idle, the new one is answered 503 while the existing ones are served),
and `gateway serve` raises its file-descriptor limit so that idle sockets cannot starve a
new patient's create. Every count and wait here is bounded.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

from gateway.config import Config
from gateway.http.runner import FD_RESERVE, edge_limits
from tests.support.gateway import TICKETS, bearer, create, patient, sample, wait_until
from tests.support.netutil import free_port

KEEP_ALIVE = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
# Generous against a loaded 2-core machine: a bound is met if the close comes within this much.
SLACK = 3.0


class Conn:
    """One raw client connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def response(self) -> tuple[int, bytes]:
        """Reads one response (status, body) by its Content-Length."""
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 5)
        lines = head.decode("latin-1").split("\r\n")
        length = next(int(line.split(":")[1]) for line in lines if line.lower().startswith("content-length:"))
        return int(lines[0].split()[1]), await asyncio.wait_for(self.reader.readexactly(length), 5)

    async def closed_within(self, seconds: float) -> bytes | None:
        """What the server sent before closing, if it closed within `seconds`; None if still open."""
        received = b""
        end = time.monotonic() + seconds
        try:
            while (left := end - time.monotonic()) > 0:
                chunk = await asyncio.wait_for(self.reader.read(65536), left)
                if not chunk:
                    return received
                received += chunk
        except TimeoutError:
            return None
        except ConnectionResetError:
            return received
        return None

    def close(self) -> None:
        self.writer.close()


@asynccontextmanager
async def connections(port: int, n: int) -> AsyncIterator[list[Conn]]:
    opened = []
    try:
        for _ in range(n):
            opened.append(Conn(*await asyncio.open_connection("127.0.0.1", port)))
        yield opened
    finally:
        for conn in opened:
            conn.close()


async def started(upstream: Any, gateway: Any, **server: Any) -> tuple[Any, Any, int]:
    someone = patient(None)
    _, url = await upstream(someone)
    client = await gateway(url, server=server)
    return someone, client, client.server.port


async def test_idle_keep_alive_connections_are_closed_after_the_keepalive_timeout(upstream: Any, gateway: Any) -> None:
    _, client, port = await started(upstream, gateway, keepalive_timeout=1.0)

    async def idle_for(conn: Conn) -> tuple[bytes | None, float]:
        """One request, then idle: what came before the close, and how long after the answer."""
        conn.writer.write(KEEP_ALIVE)
        assert (await conn.response())[0] == 200
        answered = time.monotonic()
        seen = await conn.closed_within(1.0 + SLACK)
        return seen, time.monotonic() - answered

    async with connections(port, 50) as idle:
        outcomes = await asyncio.gather(*(idle_for(conn) for conn in idle))
    # Closed without a word (an idle keep-alive connection has nothing to be answered), not
    # before the timeout and well within it plus the slack.
    assert [seen for seen, _ in outcomes] == [b""] * 50, outcomes
    idle_seconds = sorted(took for _, took in outcomes)
    assert idle_seconds[0] >= 0.9 and idle_seconds[-1] < 1.0 + SLACK, idle_seconds
    await wait_until(lambda: sample(client, "gateway_client_connections") == 0, what="the gauge back at 0")


async def test_slowloris_and_silent_connections_are_closed_at_the_head_deadline_while_patients_are_served(
    upstream: Any, gateway: Any
) -> None:
    someone, client, port = await started(upstream, gateway, head_timeout=1.0, keepalive_timeout=60.0)
    async with connections(port, 50) as slow, connections(port, 50) as silent:
        for conn in slow:
            conn.writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        began = time.monotonic()

        async def trickle() -> None:
            # One header byte per connection every 0.2 s, for up to twice the deadline.
            for _ in range(10):
                for conn in slow:
                    if not conn.writer.is_closing():
                        conn.writer.write(b"X")
                await asyncio.sleep(0.2)

        trickling = asyncio.create_task(trickle())
        # A new patient is served while the slow and the silent connections sit.
        guid = await create(client, someone.token)
        assert (await client.get(f"{TICKETS}/{guid}", headers=bearer(someone.token))).status == 200
        slow_seen = await asyncio.gather(*(conn.closed_within(1.0 + SLACK) for conn in slow))
        silent_seen = await asyncio.gather(*(conn.closed_within(1.0 + SLACK) for conn in silent))
        took = time.monotonic() - began
        trickling.cancel()
    assert None not in slow_seen and None not in silent_seen, "a connection outlived the head deadline"
    assert took < 1.0 + 2 * SLACK
    for seen in slow_seen:
        status, _, body = seen.partition(b"\r\n\r\n")  # type: ignore[union-attr]
        assert status.startswith(b"HTTP/1.1 408"), seen
        assert json.loads(body)["code"] == 408
    assert silent_seen == [b""] * 50, "a connection that never spoke gets no answer"
    assert sample(client, "gateway_rejected_requests_total", limit="head_timeout") == 100


async def test_a_kept_alive_connections_next_head_has_its_own_deadline_from_its_first_byte(
    upstream: Any, gateway: Any
) -> None:
    """The deadline is per head: time spent idle between requests does not count against the
    next one (the keep-alive timeout bounds that), and a head begun late still gets the whole
    deadline, then its 408 at it (the listener's sweep, not a timer per request)."""
    _, client, port = await started(upstream, gateway, head_timeout=1.0, keepalive_timeout=60.0)
    async with connections(port, 1) as [conn]:
        for _ in range(3):
            conn.writer.write(KEEP_ALIVE)
            assert (await conn.response())[0] == 200
        # Idle for longer than the head deadline: still open.
        assert await conn.closed_within(1.5) is None
        conn.writer.write(KEEP_ALIVE)  # and still served
        assert (await conn.response())[0] == 200
        conn.writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        began = time.monotonic()
        seen = await conn.closed_within(1.0 + SLACK)
        took = time.monotonic() - began
    assert seen is not None and seen.startswith(b"HTTP/1.1 408"), seen
    assert 0.9 <= took < 1.0 + SLACK, took
    assert sample(client, "gateway_rejected_requests_total", limit="head_timeout") == 1


async def test_a_head_beyond_max_head_bytes_is_431(upstream: Any, gateway: Any) -> None:
    _, client, port = await started(upstream, gateway, max_head_bytes=16384)
    async with connections(port, 1) as [conn]:
        conn.writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        for n in range(40):  # 40 headers of 1 KiB, each under max_field_size, never ending the head
            conn.writer.write(f"X-Pad-{n}: {'a' * 1000}\r\n".encode())
        seen = await conn.closed_within(SLACK)
    assert seen is not None and seen.startswith(b"HTTP/1.1 431"), seen
    assert json.loads(seen.partition(b"\r\n\r\n")[2])["message_code"] == "4431"
    assert sample(client, "gateway_rejected_requests_total", limit="head_bytes") == 1


async def test_beyond_max_unfinished_heads_the_oldest_is_closed_and_whole_heads_are_served(
    upstream: Any, gateway: Any
) -> None:
    _, client, port = await started(upstream, gateway, max_unfinished_heads=20, head_timeout=30.0)
    async with connections(port, 30) as slow:
        for conn in slow:
            conn.writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            await conn.writer.drain()
        await wait_until(
            lambda: sample(client, "gateway_rejected_requests_total", limit="unfinished_heads") == 10,
            what="the ten oldest unfinished heads closed",
        )
        oldest = await asyncio.gather(*(conn.closed_within(SLACK) for conn in slow[:10]))
        newest = await asyncio.gather(*(conn.closed_within(0.5) for conn in slow[10:]))
        # A whole head in one write never counts as unfinished: served while the 20 sit.
        resp = await client.get("/healthz")
        assert resp.status == 200
    assert all(seen is not None and seen.startswith(b"HTTP/1.1 503") for seen in oldest), oldest
    assert newest == [None] * 20


async def test_beyond_max_connections_a_new_connection_gets_503_and_existing_clients_are_served(
    upstream: Any, gateway: Any
) -> None:
    _, client, port = await started(upstream, gateway, max_connections=30, head_timeout=30.0)
    # Thirty connections, none idle: each holds the start of a request head.
    async with connections(port, 30) as sitting:
        for conn in sitting:
            conn.writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        await wait_until(lambda: sample(client, "gateway_client_connections") == 30, what="30 connections open")
        # 50: more than MAX_LINGERING_REFUSALS, so some are closed at once rather than lingering.
        async with connections(port, 50) as beyond:
            refused = await asyncio.gather(*(conn.closed_within(SLACK) for conn in beyond))
            for conn in sitting[:5]:  # existing clients finish their requests and are served
                conn.writer.write(b"\r\n")
                assert (await conn.response())[0] == 200, "an existing client lost its service"
        assert await asyncio.gather(*(conn.closed_within(0.2) for conn in sitting)) == [None] * 30
    # The sitting ones gone, a new connection is served again.
    await wait_until(lambda: sample(client, "gateway_client_connections") == 0, what="the slots given back")
    async with connections(port, 1) as [again]:
        again.writer.write(KEEP_ALIVE)
        assert (await again.response())[0] == 200
    for seen in refused:
        assert seen is not None, "a connection beyond the cap was kept"
        head, _, body = seen.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503") and b"Retry-After: 1" in head, seen
        assert json.loads(body) == {"code": 503, "message": "Service temporarily unavailable", "message_code": "4513"}
    assert sample(client, "gateway_rejected_requests_total", limit="connections") == 50
    # The five served became idle after the refusals: nothing was closed to make room.
    assert sample(client, "gateway_idle_connections_closed_total") == 0


async def test_at_the_connection_cap_the_longest_idle_connection_makes_room_and_a_request_in_flight_is_kept(
    upstream: Any, gateway: Any
) -> None:
    """Idle keep-alive sockets cannot lock a patient out: at the cap the longest-idle one is
    closed to admit the newcomer, never one whose request is being answered."""
    slow = patient(None)
    slow.mkab_delay = 2.0  # its create is in flight for 2 s
    newcomer = patient(None)
    _, url = await upstream(slow, newcomer)
    client = await gateway(url, server={"max_connections": 20, "head_timeout": 30.0, "keepalive_timeout": 60.0})
    port = client.server.port
    create_slow = f"GET {TICKETS} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {slow.token}\r\n\r\n"
    create_new = f"GET {TICKETS} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {newcomer.token}\r\n\r\n"
    async with connections(port, 1) as [busy], connections(port, 19) as idle:
        for conn in idle:  # each served once, then kept alive and idle, oldest first
            conn.writer.write(KEEP_ALIVE)
            assert (await conn.response())[0] == 200
        busy.writer.write(create_slow.encode())  # the oldest connection, its request in flight
        await wait_until(lambda: sample(client, "gateway_client_connections") == 20, what="the cap reached")
        async with connections(port, 5) as newcomers:
            began = time.monotonic()
            for conn in newcomers:
                conn.writer.write(create_new.encode())
            answers = await asyncio.gather(*(conn.response() for conn in newcomers))
            took = time.monotonic() - began
            assert [status for status, _ in answers] == [200] * 5, answers
            assert took < 1.0, f"a newcomer waited {took:.2f} s at the cap"
            # The five longest idle were closed, without a word, and no other.
            assert await asyncio.gather(*(conn.closed_within(SLACK) for conn in idle[:5])) == [b""] * 5
            assert await asyncio.gather(*(conn.closed_within(0.2) for conn in idle[5:])) == [None] * 14
            # The request in flight all along is answered on its own connection.
            status, body = await busy.response()
            assert status == 200 and "session" in json.loads(body)
    assert sample(client, "gateway_idle_connections_closed_total") == 5
    assert sample(client, "gateway_rejected_requests_total", limit="connections") == 0


async def test_at_the_cap_with_nothing_idle_a_new_connection_still_gets_503(upstream: Any, gateway: Any) -> None:
    slow = patient(None)
    slow.mkab_delay = 1.5
    _, url = await upstream(slow)
    client = await gateway(url, server={"max_connections": 5, "head_timeout": 30.0})
    port = client.server.port
    create_slow = f"GET {TICKETS} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {slow.token}\r\n\r\n"
    async with connections(port, 5) as busy:
        for conn in busy:
            conn.writer.write(create_slow.encode())
        await wait_until(lambda: sample(client, "gateway_client_connections") == 5, what="the cap reached")
        await asyncio.sleep(0.1)  # every head read: none of the five is idle
        async with connections(port, 1) as [late]:
            seen = await late.closed_within(SLACK)
        assert seen is not None and seen.startswith(b"HTTP/1.1 503"), seen
        assert [status for status, _ in await asyncio.gather(*(c.response() for c in busy))] == [200] * 5
    assert sample(client, "gateway_idle_connections_closed_total") == 0
    assert sample(client, "gateway_rejected_requests_total", limit="connections") == 1


def test_the_connection_cap_is_lowered_to_what_the_descriptor_limit_leaves() -> None:
    config = Config()
    outgoing = config.upstream.max_connections + config.redis.max_connections + config.rollout.legacy_max_connections
    # 500 descriptors left once the outgoing pools and the reserve have theirs (whatever the
    # pools' defaults are).
    assert edge_limits(config, outgoing + FD_RESERVE + 500).max_connections == 500
    assert edge_limits(config, 1_048_576).max_connections == config.server.max_connections


def _low_fd_limit() -> None:
    # The child starts with the soft limit of a default container (here 256), the hard one kept.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))


def _serve_with_a_low_fd_limit(upstream_url: str, port: int, log_path: Path) -> subprocess.Popen[bytes]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "GATEWAY_UPSTREAM_URL": upstream_url,
        "GATEWAY_PORT": str(port),
        "GATEWAY_METRICS_PORT": "0",
    }
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve"], env=env, stdout=log, stderr=subprocess.STDOUT,
            preexec_fn=_low_fd_limit,
        )  # fmt: skip


async def test_gateway_serve_raises_its_fd_limit_so_idle_sockets_do_not_starve_a_create(
    upstream: Any, tmp_path: Path
) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert hard >= 1024, f"this machine's hard limit ({hard}) leaves nothing to raise to"
    someone = patient(None)
    _, url = await upstream(someone)
    port = free_port()
    log_path = tmp_path / "serve.log"
    proc = _serve_with_a_low_fd_limit(url, port, log_path)
    try:
        async with aiohttp.ClientSession() as http:

            async def ready() -> bool:
                assert proc.poll() is None, log_path.read_text()[-2000:]
                try:
                    async with http.get(f"http://127.0.0.1:{port}/readyz") as resp:
                        return resp.status == 200
                except aiohttp.ClientConnectionError:
                    return False

            await wait_until(ready, within=20, what="gateway serve ready")
            # More idle keep-alive sockets than the soft limit the process was started with.
            async with connections(port, 300) as idle:
                for conn in idle:
                    conn.writer.write(KEEP_ALIVE)
                    assert (await conn.response())[0] == 200
                async with http.get(f"http://127.0.0.1:{port}{TICKETS}", headers=bearer(someone.token)) as resp:
                    assert resp.status == 200, await resp.text()
                    guid = (await resp.json())["session"]
                async with http.get(f"http://127.0.0.1:{port}{TICKETS}/{guid}", headers=bearer(someone.token)) as resp:
                    assert resp.status == 200
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    events = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    raised = [e for e in events if e.get("event") == "fd_limit_raised"]
    assert raised and raised[0]["soft"] == 256 and raised[0]["to"] == hard, raised
