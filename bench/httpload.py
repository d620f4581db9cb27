"""A lean HTTP/1.1 keep-alive client for generating load on 127.0.0.1.

It does the least a client can (one GET at a time per connection, Content-Length bodies only),
so that on a 2-core machine the load generator takes as little CPU as possible away from the
servers being measured. It is only ever pointed at servers this benchmark started.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end]).lower()
        at = head.find(b"\r\ncontent-length:")
        if at < 0:
            waiter.set_exception(ConnectionError("response without Content-Length"))
            return
        eol = head.find(b"\r\n", at + 2)
        length = int(head[at + 17 : eol if eol > 0 else len(head)])
        total = end + 4 + length
        if len(self.buffer) < total:
            return
        status = int(head[9:12])
        body = bytes(self.buffer[end + 4 : total])
        del self.buffer[:total]
        waiter.set_result((status, body))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection closed"))


class LoadClient:
    """A pool of keep-alive connections to one host:port."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        assert host.startswith("127."), "load is only ever sent to loopback"
        self.host, self.port = host, port
        self._idle: list[_Connection] = []

    async def _connection(self) -> _Connection:
        while self._idle:
            conn = self._idle.pop()
            if conn.transport is not None and not conn.transport.is_closing():
                return conn
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(_Connection, self.host, self.port)
        return conn

    async def get(self, path: str, headers: dict[str, str] | None = None, limit: float = 60.0) -> tuple[int, bytes]:
        conn = await self._connection()
        lines = [f"GET {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        request = ("\r\n".join(lines) + "\r\n\r\n").encode()
        conn.waiter = asyncio.get_running_loop().create_future()
        assert conn.transport is not None
        conn.transport.write(request)
        try:
            async with asyncio.timeout(limit):
                result = await conn.waiter
        except BaseException:
            conn.transport.close()
            raise
        self._idle.append(conn)
        return result

    async def post(self, path: str, body: bytes = b"", limit: float = 60.0) -> tuple[int, bytes]:
        conn = await self._connection()
        head = f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Length: {len(body)}\r\n"
        conn.waiter = asyncio.get_running_loop().create_future()
        assert conn.transport is not None
        conn.transport.write(head.encode() + b"Content-Type: application/json\r\n\r\n" + body)
        async with asyncio.timeout(limit):
            result = await conn.waiter
        self._idle.append(conn)
        return result

    def close(self) -> None:
        for conn in self._idle:
            if conn.transport is not None:
                conn.transport.close()
        self._idle.clear()


async def closed_loop(
    workers: int, count: int, time_limit: float, one: Callable[[int], Awaitable[Any]]
) -> tuple[int, float]:
    """`workers` coroutines each call `one(i)` in turn until `count` calls were started or
    `time_limit` seconds passed. Returns (calls made, wall seconds)."""
    started = time.perf_counter()
    stop_at = started + time_limit
    next_index = 0
    done = 0

    async def worker() -> None:
        nonlocal next_index, done
        while next_index < count and time.perf_counter() < stop_at:
            i = next_index
            next_index += 1
            await one(i)
            done += 1

    await asyncio.gather(*(worker() for _ in range(workers)))
    return done, time.perf_counter() - started
