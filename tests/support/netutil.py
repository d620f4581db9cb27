"""Loopback helpers shared by the fixtures that start real servers."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from gateway.config import Config


def free_port() -> int:
    """A port free on 127.0.0.1 now (the OS picks it); the caller binds it right away."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_env(port: int, metrics_port: int = 0, **variables: str) -> dict[str, str]:
    """The environment of a `gateway serve` a test starts: the caller's PATH and nothing else of
    its environment (a stray GATEWAY_* variable would change or stop the start), both listeners on
    loopback ports the test chose; metrics_port 0 serves /metrics on the main port. Never the
    defaults: `make run` holds those while `make test` runs."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "GATEWAY_HOST": "127.0.0.1",
        "GATEWAY_PORT": str(port),
        "GATEWAY_METRICS_PORT": str(metrics_port),
    } | variables


def default_ports() -> list[int]:
    """The ports `make run` (`gateway demo`) listens on: the gateway's, its metrics listener's and
    the sandbox's, as the built-in configuration says."""
    config = Config()
    sandbox = urlsplit(config.upstream.url).port
    return sorted({config.server.port, config.metrics.port, *([sandbox] if sandbox else [])})


@contextlib.contextmanager
def hold_ports(ports: list[int]) -> Iterator[list[int]]:
    """Listens on each port of 127.0.0.1 that is free (one already taken, e.g. by `make run`, is
    left as it is), so that anything started on one of them fails as it would next to a demo."""
    held: list[socket.socket] = []
    try:
        for port in ports:
            sock = socket.socket()
            try:
                sock.bind(("127.0.0.1", port))
                sock.listen(1)
            except OSError:
                sock.close()
                continue
            held.append(sock)
        yield [s.getsockname()[1] for s in held]
    finally:
        for sock in held:
            sock.close()


async def get_from(local: str, url: str, headers: dict[str, str] | None = None) -> tuple[int, Any, str | None]:
    """GET `url` from the loopback address `local` (127.0.0.2, ...: another client address for the
    per-address limits): (status, JSON body, Retry-After)."""
    connector = aiohttp.TCPConnector(local_addr=(local, 0))
    async with aiohttp.ClientSession(connector=connector) as http, http.get(url, headers=headers) as resp:
        return resp.status, await resp.json(), resp.headers.get("Retry-After")
