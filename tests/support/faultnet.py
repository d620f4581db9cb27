"""Network faults the sandbox cannot play by itself, made with real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib


class OneConnectionProxy:
    """Forwards the first TCP connection to `target` and then stops listening, so that every
    later connection to its port is refused: an upstream host that goes away after answering
    the MKAB list (the gateway's pooled connection still works, new ones are refused)."""

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
        assert self._server is not None
        self._server.close()  # from now on, connects to this port are refused
        up_reader, up_writer = await asyncio.open_connection(*self._target)
        self._writers += [writer, up_writer]
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def close(self) -> None:
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
