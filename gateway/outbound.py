"""Outbound HTTP, the one way the gateway calls another service (the new API, the legacy
service): `client_session` builds the aiohttp.ClientSession with the settings every outbound
call shares, and `read_capped` reads an answer's body, decoded, never past a cap.

Shared: the gateway's User-Agent (a forwarded app's own replaces it per request), `Accept-Encoding:
gzip, deflate` with bodies decoded here by `BoundedDecoder` rather than by aiohttp (whose decoder
inflates a whole received chunk at once, so a small gzip bomb becomes hundreds of MB before any
cap could look at it), no proxy settings from the environment, statuses returned rather than
raised, the app's trace configs, and a connector with a DNS cache that answers `.invalid` names
itself. Each caller sizes its own pool.

Imports nothing of the package but its User-Agent.
"""

from __future__ import annotations

import socket
import zlib
from typing import Any

import aiohttp

from gateway import USER_AGENT

# What BoundedDecoder undoes; asked for explicitly (aiohttp would add "br" if brotli were installed).
ACCEPT_ENCODING = "gzip, deflate"
_CHUNK = 64 * 1024


class BodyRefused(Exception):
    """An answer's body not read: `reason` too_large or invalid_body; `detail` says which check."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail


class SpecialUseResolver(aiohttp.ThreadedResolver):
    """RFC 6761 §6.4: names under `.invalid` never resolve, and resolvers should say so at once
    rather than ask the network. A placeholder host left in a config fails without a query."""

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> Any:
        if host.lower().rstrip(".").endswith(".invalid"):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return await super().resolve(host, port, family)


def client_session(
    max_connections: int, trace_configs: list[aiohttp.TraceConfig] | None = None
) -> aiohttp.ClientSession:
    """A client session of at most `max_connections` pooled connections (kept alive), with the
    settings every outbound call shares; the caller closes it."""
    connector = aiohttp.TCPConnector(
        limit=max_connections, limit_per_host=0, ttl_dns_cache=300, resolver=SpecialUseResolver()
    )
    return aiohttp.ClientSession(
        connector=connector,
        trust_env=False,
        raise_for_status=False,
        auto_decompress=False,
        headers={"Accept-Encoding": ACCEPT_ENCODING, "User-Agent": USER_AGENT},
        trace_configs=trace_configs or None,
    )


class BoundedDecoder:
    """A body's Content-Encoding undone chunk by chunk, never producing more than `cap` bytes:
    zlib's `max_length` stops inflating at the cap, so a bomb costs at most `cap` of memory and
    the CPU to inflate `cap` bytes. Identity, gzip and deflate (zlib or raw); anything else is
    an invalid body (brotli is not advertised: no decoder is installed)."""

    def __init__(self, encoding: str, cap: int) -> None:
        self._cap = cap
        self._size = 0
        self._encoding = encoding.strip().lower() or "identity"
        if self._encoding not in ("identity", "gzip", "x-gzip", "deflate"):
            raise BodyRefused("invalid_body", f"content-encoding {self._encoding[:20]}")
        self._inflater: Any = None
        if self._encoding in ("gzip", "x-gzip"):
            self._inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)

    def feed(self, chunk: bytes) -> bytes:
        if self._encoding == "identity":
            return self._count(chunk)
        if self._inflater is None:  # deflate: RFC 9110 says zlib; some servers send raw deflate
            zlib_header = len(chunk) >= 2 and chunk[0] & 0x0F == 8 and (chunk[0] << 8 | chunk[1]) % 31 == 0
            self._inflater = zlib.decompressobj(zlib.MAX_WBITS if zlib_header else -zlib.MAX_WBITS)
        parts = []
        data = chunk
        try:
            while data:
                parts.append(self._count(self._inflater.decompress(data, self._cap - self._size + 1)))
                data = self._inflater.unconsumed_tail
        except zlib.error:
            raise BodyRefused("invalid_body", "bad compressed body") from None
        return b"".join(parts)

    def end(self) -> bytes:
        if self._inflater is None:
            return b""
        if not self._inflater.eof:
            raise BodyRefused("invalid_body", "truncated compressed body")
        return self._count(self._inflater.flush())

    def _count(self, data: bytes) -> bytes:
        self._size += len(data)
        if self._size > self._cap:
            raise BodyRefused("too_large", "decoded body")
        return data


async def read_capped(resp: aiohttp.ClientResponse, cap: int) -> bytes:
    """The body, decoded, at most `cap` bytes of it after decoding, or BodyRefused; a
    Content-Length above the cap is refused before reading (a compressed body that large would
    inflate to more anyway)."""
    decoder = BoundedDecoder(resp.headers.get("Content-Encoding", ""), cap)
    if resp.content_length is not None and resp.content_length > cap:
        raise BodyRefused("too_large", "content-length")
    chunks = []
    async for chunk in resp.content.iter_chunked(_CHUNK):
        chunks.append(decoder.feed(chunk))
    chunks.append(decoder.end())
    return b"".join(chunks)
