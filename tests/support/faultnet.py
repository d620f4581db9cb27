"""Network faults the sandbox cannot play by itself, made with real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copies `reader` to `writer` until either end goes away, then closes `writer`."""
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


class Proxy:
    """Forwards every TCP connection on its port to `target`; the faults below change one step."""

    def __init__(self, target_host: str, target_port: int) -> None:
        assert target_host.startswith("127."), "loopback only"
        self._target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self.port = 0

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self._target)
        self._writers += [writer, up_writer]
        await asyncio.gather(pipe(reader, up_writer), self._replies(up_reader, writer))

    async def _replies(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await pipe(reader, writer)

    async def close(self) -> None:
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


class OneConnectionProxy(Proxy):
    """Forwards the first TCP connection to `target` and then stops listening, so that every
    later connection to its port is refused: an upstream host that goes away after answering
    the MKAB list (the gateway's pooled connection still works, new ones are refused)."""

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._server is not None
        self._server.close()  # from now on, connects to this port are refused
        await super()._accept(reader, writer)


class StallingProxy(Proxy):
    """Forwards every TCP connection to `target`, except that a reply carrying `marker` is held
    there and then: nothing more reaches that client until it hangs up. A read that outlasts any
    timeout by construction, whatever the machine's speed, while every other connection (and
    every reply without the marker) goes through as usual: one slow call, not a slow server."""

    def __init__(self, target_host: str, target_port: int, marker: bytes) -> None:
        super().__init__(target_host, target_port)
        assert marker, "an empty marker would hold every reply"
        self._marker = marker
        self.stalled = 0  # replies held so far

    async def _replies(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # The tail of the last chunk: a marker split across two reads is still found.
        tail, held = b"", False
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                if not held and self._marker in tail + data:
                    held = True
                    self.stalled += 1
                if not held:
                    writer.write(data)
                    await writer.drain()
                tail = data[-len(self._marker) :]
        writer.close()
