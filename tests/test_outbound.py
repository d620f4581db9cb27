"""Outbound calls (gateway/outbound.py): the one client session's shared settings, and the
capped read that decodes a body chunk by chunk, never past its cap (issue 11, rows 1 and 2: the
new API's answers; the legacy service's go through the same read)."""

from __future__ import annotations

import gzip
import tracemalloc
import zlib
from typing import Any

import pytest
from aiohttp import web

from gateway import USER_AGENT
from gateway.outbound import BodyRefused, BoundedDecoder, client_session, read_capped

MIB = 1024 * 1024


def feed_all(decoder: BoundedDecoder, body: bytes, chunk: int = 7) -> bytes:
    out = b"".join(decoder.feed(body[i : i + chunk]) for i in range(0, len(body), chunk))
    return out + decoder.end()


@pytest.mark.parametrize("encoding", ["identity", "gzip", "deflate", "deflate-raw"])
def test_every_accepted_encoding_decodes_chunk_by_chunk(encoding: str) -> None:
    body = b'[{"room":"202"}]' * 100
    if encoding == "gzip":
        wire = gzip.compress(body)
    elif encoding == "deflate":
        wire = zlib.compress(body)
    elif encoding == "deflate-raw":
        packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        wire = packer.compress(body) + packer.flush()
    else:
        wire = body
    assert feed_all(BoundedDecoder(encoding.removesuffix("-raw"), len(body)), wire) == body


def test_a_bomb_is_refused_at_the_cap_having_inflated_only_the_cap() -> None:
    bomb = gzip.compress(b" " * (64 * MIB))  # 64 KiB on the wire
    decoder = BoundedDecoder("gzip", MIB)
    tracemalloc.start()
    try:
        with pytest.raises(BodyRefused) as failure:
            decoder.feed(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert failure.value.reason == "too_large"
    assert peak < 3 * MIB, f"inflating the bomb took {peak / MIB:.1f} MiB"


@pytest.mark.parametrize(
    ("encoding", "body", "detail"),
    [("br", b"x", "content-encoding br"), ("gzip", gzip.compress(b"[]" * 100)[:-9], "truncated compressed body")],
)
def test_an_unknown_encoding_or_a_cut_compressed_body_is_an_invalid_body(
    encoding: str, body: bytes, detail: str
) -> None:
    with pytest.raises(BodyRefused) as failure:
        feed_all(BoundedDecoder(encoding, MIB), body)
    assert (failure.value.reason, failure.value.detail) == ("invalid_body", detail)


async def test_a_client_session_sends_the_shared_headers_and_reads_a_gzip_body_capped(aiohttp_server: Any) -> None:
    body = b'[{"room":"202"}]' * 1000
    seen: list[dict[str, str]] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.Response(body=gzip.compress(body), headers={"Content-Encoding": "gzip"})

    app = web.Application()
    app.router.add_get("/", handler)
    server = await aiohttp_server(app)
    session = client_session(2)
    try:
        async with session.get(server.make_url("/")) as resp:
            assert await read_capped(resp, len(body)) == body
        async with session.get(server.make_url("/")) as resp:
            with pytest.raises(BodyRefused) as refused:
                await read_capped(resp, len(body) - 1)
        assert (refused.value.reason, refused.value.detail) == ("too_large", "decoded body")
    finally:
        await session.close()
    assert seen[0]["User-Agent"] == USER_AGENT
    assert seen[0]["Accept-Encoding"] == "gzip, deflate"
