"""The store through the API: its bound and expiry as an app sees them (the store's own contract
is in test_store_contract.py, run against both stores)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from tests.support.gateway import TICKETS, bearer, create, patient, poll_until_final


async def test_full_store_answers_503_with_retry_after(upstream: Any, gateway: Any) -> None:
    p, other = patient(None), patient(None)
    _, url = await upstream(p, other)
    client = await gateway(url, session={"max_sessions": 1})
    first = await create(client, p.token)
    resp = await client.get(TICKETS, headers=bearer(other.token))
    assert resp.status == 503 and int(resp.headers["Retry-After"]) >= 1
    assert await resp.json() == {
        "code": 503,
        "message": "Too many sessions in progress, retry later",
        "message_code": "4503",
    }
    body, _ = await poll_until_final(client, first)
    assert body[0]["state"] == "Complete", "the session already stored was not evicted"


async def test_expired_session_is_404_and_frees_its_place(upstream: Any, gateway: Any) -> None:
    p = patient(None)
    _, url = await upstream(p)
    client = await gateway(url, session={"ttl": 0.3, "max_sessions": 1})
    guid = await create(client, p.token)
    await poll_until_final(client, guid)
    deadline = time.monotonic() + 5
    while (resp := await client.get(f"{TICKETS}/{guid}")).status == 200:
        assert time.monotonic() < deadline, "session never expired"
        await asyncio.sleep(0.05)
    assert resp.status == 404 and (await resp.json())["message_code"] == "4404"
    await create(client, p.token)  # the expired session no longer counts against the bound
