"""Forwarding to the legacy service: what is kept, what comes back, and failures that never hang."""

from __future__ import annotations

import asyncio
import gzip
import json
from typing import Any

from gateway.http import keys
from tests.support.fake_legacy import GOLDEN, closed_port_url, start_legacy
from tests.support.gateway import TICKETS, bearer, new_token, patient

APP = "8b0a7ab4-1b8f-4c5b-8d1e-1c0f3b0e5a11"
# Every forwarded request must end well within this, whatever the legacy service does.
CLIENT_LIMIT = 10.0


async def get(client: Any, path: str, **kwargs: Any) -> Any:
    async with asyncio.timeout(CLIENT_LIMIT):
        return await client.get(path, **kwargs)


def legacy_seconds(client: Any, route: str, outcome: str) -> float | None:
    return client.app[keys.METRICS].registry.get_sample_value(
        "gateway_legacy_request_duration_seconds_count", {"route": route, "outcome": outcome}
    )


async def test_forwarded_requests_keep_method_path_query_and_the_apps_headers(
    aiohttp_server: Any, upstream: Any, gateway: Any
) -> None:
    sandbox, url = await upstream(patient(None))
    fake, legacy_url = await start_legacy(aiohttp_server)
    client = await gateway(url, rollout={"legacy_url": legacy_url, "mode": "legacy"})
    token = new_token()
    headers = bearer(token) | {
        "ClientApplication": APP,
        "User-Agent": "EMIAS/4.2.1 (Android 13)",
        "X-Request-Id": "app-req-7",
        "Cookie": "not=forwarded",
    }
    resp = await get(client, TICKETS + "?lang=ru&v=2", headers=headers)
    assert resp.status == 200 and resp.headers["X-Request-Id"] == "app-req-7"
    guid = (await resp.json())["session"]
    assert guid in fake.sessions, "the client got the legacy service's own session GUID"
    resp = await get(client, f"{TICKETS}/{guid.upper()}?t=1", headers=headers)
    assert resp.status == 200 and await resp.json() == GOLDEN

    create, poll = fake.received
    assert (create.method, create.path, create.query_string) == ("GET", TICKETS, "lang=ru&v=2")
    assert (poll.method, poll.path, poll.query_string) == ("GET", f"{TICKETS}/{guid.upper()}", "t=1")
    for received in (create, poll):
        assert received.headers["Authorization"] == f"Bearer {token}"
        assert received.headers["ClientApplication"] == APP
        assert received.headers["User-Agent"] == "EMIAS/4.2.1 (Android 13)"
        assert received.headers["X-Request-Id"] == "app-req-7"
        assert "Cookie" not in received.headers
        assert received.headers["Host"] == legacy_url.removeprefix("http://")
    assert sandbox.count() == 0, "a legacy session makes no call to the new API"


async def test_legacy_status_and_body_come_back_unchanged(aiohttp_server: Any, upstream: Any, gateway: Any) -> None:
    _, url = await upstream()
    fake, legacy_url = await start_legacy(aiohttp_server)
    client = await gateway(url, rollout={"legacy_url": legacy_url})
    odd = b'{"Code": 429, "Message": "Slow down", "Message_code": "L-429"}\n'
    fake.create_override = (429, odd, {"Content-Type": "application/json; charset=utf-8", "Retry-After": "7"})
    resp = await get(client, TICKETS, headers=bearer(new_token()))
    assert resp.status == 429
    assert await resp.read() == odd
    assert resp.headers["Retry-After"] == "7"
    assert resp.headers["Content-Type"] == "application/json; charset=utf-8"
    fake.poll_override = (500, b"legacy stack trace?", {"Content-Type": "text/plain"})
    resp = await get(client, f"{TICKETS}/3f2b8c1e-5a4d-4c1b-9f0e-2d7a6b1c9e84")
    assert resp.status == 500 and await resp.read() == b"legacy stack trace?"


async def test_a_legacy_service_that_does_not_answer_in_time_is_a_504(
    aiohttp_server: Any, upstream: Any, gateway: Any
) -> None:
    _, url = await upstream()
    fake, legacy_url = await start_legacy(aiohttp_server)
    fake.create_delay = fake.poll_delay = 30.0
    client = await gateway(url, rollout={"legacy_url": legacy_url, "legacy_timeout": 0.3})
    resp = await get(client, TICKETS, headers=bearer(new_token()))
    assert resp.status == 504
    assert await resp.json() == {"code": 504, "message": "Upstream service timed out", "message_code": "4504"}
    resp = await get(client, f"{TICKETS}/3f2b8c1e-5a4d-4c1b-9f0e-2d7a6b1c9e84")
    assert resp.status == 504
    assert legacy_seconds(client, "create", "timeout") == 1 and legacy_seconds(client, "poll", "timeout") == 1


async def test_a_dead_legacy_service_is_a_502(upstream: Any, gateway: Any) -> None:
    _, url = await upstream()
    client = await gateway(url, rollout={"legacy_url": closed_port_url()})
    resp = await get(client, TICKETS, headers=bearer(new_token()))
    assert resp.status == 502
    assert await resp.json() == {"code": 502, "message": "Upstream service failed", "message_code": "4502"}
    resp = await get(client, f"{TICKETS}/3f2b8c1e-5a4d-4c1b-9f0e-2d7a6b1c9e84")
    assert resp.status == 502
    assert legacy_seconds(client, "create", "connection") == 1


async def test_a_legacy_answer_over_the_cap_is_a_502(aiohttp_server: Any, upstream: Any, gateway: Any) -> None:
    _, url = await upstream()
    fake, legacy_url = await start_legacy(aiohttp_server)
    fake.poll_override = (200, json.dumps([GOLDEN] * 50).encode(), {"Content-Type": "application/json"})
    client = await gateway(url, rollout={"legacy_url": legacy_url, "legacy_max_body_bytes": 10_000})
    resp = await get(client, f"{TICKETS}/3f2b8c1e-5a4d-4c1b-9f0e-2d7a6b1c9e84")
    assert resp.status == 502
    assert legacy_seconds(client, "poll", "too_large") == 1


async def test_a_compressed_legacy_answer_is_decoded_and_capped_by_the_gateway(
    aiohttp_server: Any, upstream: Any, gateway: Any
) -> None:
    _, url = await upstream()
    fake, legacy_url = await start_legacy(aiohttp_server)
    answer = json.dumps([GOLDEN]).encode()
    fake.poll_override = (200, gzip.compress(answer), {"Content-Type": "application/json", "Content-Encoding": "gzip"})
    client = await gateway(url, rollout={"legacy_url": legacy_url, "legacy_max_body_bytes": 10_000})
    resp = await get(client, f"{TICKETS}/3f2b8c1e-5a4d-4c1b-9f0e-2d7a6b1c9e84")
    assert resp.status == 200 and await resp.read() == answer, "the app gets the decoded body"
    # 10 KiB on the wire that would inflate to 10 MiB: refused at the cap, like the new API's.
    fake.poll_override = (200, gzip.compress(b" " * 10 * 2**20), {"Content-Encoding": "gzip"})
    resp = await get(client, f"{TICKETS}/3f2b8c1e-5a4d-4c1b-9f0e-2d7a6b1c9e84")
    assert resp.status == 502
    assert legacy_seconds(client, "poll", "too_large") == 1
