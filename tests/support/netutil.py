"""Loopback helpers shared by the fixtures that start real servers."""

from __future__ import annotations

import socket
from typing import Any

import aiohttp


def free_port() -> int:
    """A port free on 127.0.0.1 now (the OS picks it); the caller binds it right away."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def get_from(local: str, url: str, headers: dict[str, str] | None = None) -> tuple[int, Any, str | None]:
    """GET `url` from the loopback address `local` (127.0.0.2, ...: another client address for the
    per-address limits): (status, JSON body, Retry-After)."""
    connector = aiohttp.TCPConnector(local_addr=(local, 0))
    async with aiohttp.ClientSession(connector=connector) as http, http.get(url, headers=headers) as resp:
        return resp.status, await resp.json(), resp.headers.get("Retry-After")
