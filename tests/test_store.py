"""The in-process store: expiry, its bound, and the write-once rule for LPU results."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from conftest import bearer, create, patient, poll_until_final

from gateway.metrics import Metrics
from gateway.store.base import Session, StoreFull, failed_entry, in_progress_entry
from gateway.store.memory import MemoryStore


def session(guid: str, lpus: int = 2, deadline: float = 60.0) -> Session:
    now = time.time()
    return Session(
        guid=guid,
        token_hash="h",
        created_at=now,
        deadline=now + deadline,
        lpus=tuple(b'{"guid":"%d"}' % i for i in range(lpus)),
        lpu_guids=tuple(str(i) for i in range(lpus)),
    )


async def test_first_terminal_write_wins() -> None:
    store = MemoryStore(10, 60, Metrics())
    await store.create(session("a"))
    assert await store.finish_lpu("a", 0, failed_entry(b"{}"))
    assert not await store.finish_lpu("a", 0, b'{"state":"Complete"}')
    s = await store.load("a")
    assert s is not None and s.states(time.time()) == ["Failed", "InProgress"]


async def test_unfinished_lpus_read_as_failed_after_the_deadline() -> None:
    store = MemoryStore(10, 60, Metrics())
    s = session("a", deadline=0.5)
    await store.create(s)
    assert s.body(s.deadline - 0.1) == b"[" + b",".join(in_progress_entry(lpu) for lpu in s.lpus) + b"]"
    assert s.states(s.deadline) == ["Failed", "Failed"]


async def test_full_store_refuses_instead_of_evicting() -> None:
    metrics = Metrics()
    store = MemoryStore(2, 60, metrics)
    await store.create(session("a"))
    await store.create(session("b"))
    with pytest.raises(StoreFull):
        await store.create(session("c"))
    assert await store.load("a") is not None and await store.load("b") is not None
    assert metrics.registry.get_sample_value("gateway_store_rejected_total") == 1


async def test_full_store_answers_503_with_retry_after(upstream: Any, gateway: Any) -> None:
    p = patient(None)
    _, url = await upstream(p)
    client = await gateway(url, session={"max_sessions": 1})
    first = await create(client, p.token)
    resp = await client.get("/api/v2/old/visit/tickets", headers=bearer(p.token))
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
    while (resp := await client.get(f"/api/v2/old/visit/tickets/{guid}")).status == 200:
        assert time.monotonic() < deadline, "session never expired"
        await asyncio.sleep(0.05)
    assert resp.status == 404 and (await resp.json())["message_code"] == "4404"
    await create(client, p.token)  # the expired session no longer counts against the bound
