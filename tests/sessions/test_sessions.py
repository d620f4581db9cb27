"""The old contract end to end: a gateway in front of a simulated new API, both on 127.0.0.1."""

from __future__ import annotations

import itertools
import json
import uuid
from typing import Any

from gateway.http import keys
from gateway.sandbox.data import LpuKnobs, SandboxPatient
from tests.support import golden
from tests.support.gateway import TICKETS, bearer, create, golden_patient, new_token, patient, poll_until_final


async def test_seed_response_reproduced_field_for_field(upstream: Any, gateway: Any) -> None:
    token, pascal_token = new_token(), new_token()
    _, url = await upstream(golden_patient(token), golden_patient(pascal_token, pascal_case=True))
    client = await gateway(url)
    expected = golden("ticket_lists.json")
    for t in (token, pascal_token):
        body, _ = await poll_until_final(client, await create(client, t))
        assert body == expected
        assert list(body[0]) == ["state", "lpu", "visits", "calls", "disps"]


async def test_session_guid_is_a_lowercase_uuid4(upstream: Any, gateway: Any) -> None:
    p = patient(None)
    _, url = await upstream(p)
    client = await gateway(url)
    resp = await client.get(TICKETS, headers=bearer(p.token))
    assert resp.status == 200 and resp.content_type == "application/json"
    body = await resp.json()
    assert list(body) == ["session"]
    parsed = uuid.UUID(body["session"])
    assert parsed.version == 4 and str(parsed) == body["session"]


async def test_one_mkab_call_and_three_per_lpu_with_the_callers_headers(upstream: Any, gateway: Any) -> None:
    p = patient(None, None, None, None)
    sandbox, url = await upstream(p)
    client = await gateway(url)
    guid = await create(client, p.token, ClientApplication="8b0a7ab4-1b8f-4c5b-8d1e-1c0f3b0e5a11")
    body, _ = await poll_until_final(client, guid)
    assert [e["state"] for e in body] == ["Complete"] * 4
    assert sandbox.count("mkab") == 1 and sandbox.count() == 1 + 3 * 4
    for method in ("visit", "calldoctor", "disp"):
        assert sorted(c.lpu_guid for c in sandbox.calls if c.method == method) == sorted(
            lpu.info["guid"] for lpu in p.lpus
        )
    request_ids = {c.request_id for c in sandbox.calls}
    assert len(request_ids) == 1 and None not in request_ids
    assert all(c.authorization == f"Bearer {p.token}" for c in sandbox.calls)
    assert all(c.client_app == "8b0a7ab4-1b8f-4c5b-8d1e-1c0f3b0e5a11" for c in sandbox.calls)
    assert all(c.accept == "application/json" for c in sandbox.calls)


async def test_request_id_is_echoed_and_forwarded(upstream: Any, gateway: Any) -> None:
    p = patient(None)
    sandbox, url = await upstream(p)
    client = await gateway(url)
    resp = await client.get(TICKETS, headers=bearer(p.token) | {"X-Request-Id": "app-req-42"})
    assert resp.headers["X-Request-Id"] == "app-req-42"
    await sandbox.wait_calls(4)
    assert {c.request_id for c in sandbox.calls} == {"app-req-42"}
    # An id that is not plain is replaced, not echoed back into headers and logs.
    resp = await client.get(TICKETS, headers=bearer(p.token) | {"X-Request-Id": "x" * 200})
    assert resp.headers["X-Request-Id"] != "x" * 200 and len(resp.headers["X-Request-Id"]) == 32


async def test_lpus_keep_the_upstream_order(upstream: Any, gateway: Any) -> None:
    p = patient(LpuKnobs(delay=0.3), None, LpuKnobs(delay=0.1))
    _, url = await upstream(p)
    client = await gateway(url)
    body, _ = await poll_until_final(client, await create(client, p.token))
    assert [e["lpu"]["guid"] for e in body] == [lpu.info["guid"] for lpu in p.lpus]


async def test_patient_without_mkab_gets_an_empty_list(upstream: Any, gateway: Any) -> None:
    p = SandboxPatient(new_token(), [])
    sandbox, url = await upstream(p)
    client = await gateway(url)
    body, _ = await poll_until_final(client, await create(client, p.token))
    assert body == [] and sandbox.count() == 1


async def test_slow_lpu_is_in_progress_with_empty_arrays_then_complete(upstream: Any, gateway: Any) -> None:
    p = patient(None, LpuKnobs(delay=0.5))
    sandbox, url = await upstream(p)
    client = await gateway(url)
    guid = await create(client, p.token)
    await sandbox.wait_calls(1 + 3 * 2)
    resp = await client.get(f"{TICKETS}/{guid}")
    slow = (await resp.json())[1]
    assert slow["state"] == "InProgress"
    assert slow["lpu"]["guid"] == p.lpus[1].info["guid"]
    assert slow["visits"] == [] and slow["calls"] == [] and slow["disps"] == []
    body, seen = await poll_until_final(client, guid)
    assert [e["state"] for e in body] == ["Complete", "Complete"]
    assert body[1]["visits"], "the slow LPU's visits arrive once it is Complete"
    rank = {"InProgress": 0, "Complete": 1, "Failed": 1}
    for before, after in itertools.pairwise(seen):
        assert all(rank[b] >= rank[a] for a, b in zip(before, after, strict=True)), seen
        assert all(b == a for a, b in zip(before, after, strict=True) if rank[a] == 1)


async def test_create_errors(upstream: Any, gateway: Any) -> None:
    p = patient(None)
    _, url = await upstream(p)
    client = await gateway(url)
    for headers in (
        {},
        {"Authorization": p.token},
        {"Authorization": "Bearer"},
        {"Authorization": "Basic abc"},
        {"Authorization": "Bearer  two-spaces"},
        {"Authorization": "Bearer {braces}"},
    ):
        resp = await client.get(TICKETS, headers=headers)
        assert resp.status == 401, headers
        assert await resp.json() == {
            "code": 401,
            "message": "Authorization header missing or not 'Bearer <token>'",
            "message_code": "4410",
        }
    resp = await client.get(TICKETS, headers=bearer(new_token()))
    assert resp.status == 401
    assert (await resp.json())["message_code"] == "4411"


async def test_poll_errors_and_token_binding(upstream: Any, gateway: Any) -> None:
    p, other = patient(None), patient(None)
    _, url = await upstream(p, other)
    client = await gateway(url)
    guid = await create(client, p.token)

    resp = await client.get(f"{TICKETS}/not-a-guid")
    assert resp.status == 400 and set(await resp.json()) == {"code", "message", "message_code"}
    resp = await client.get(f"{TICKETS}/{uuid.uuid4()}", headers=bearer(p.token))
    assert resp.status == 404 and (await resp.json())["message_code"] == "4404"
    unknown = await resp.json()
    # Another patient's token: the same 404 as an unknown session, byte for byte.
    resp = await client.get(f"{TICKETS}/{guid}", headers=bearer(other.token))
    assert resp.status == 404 and await resp.json() == unknown
    resp = await client.get(f"{TICKETS}/{guid}", headers={"Authorization": "garbage"})
    assert resp.status == 404
    # No Authorization at all: served by the GUID alone, as the legacy service did.
    resp = await client.get(f"{TICKETS}/{guid}")
    assert resp.status == 200
    resp = await client.get(f"{TICKETS}/{guid.upper()}", headers=bearer(p.token))
    assert resp.status == 200


async def test_token_can_be_made_mandatory_on_poll(upstream: Any, gateway: Any) -> None:
    p = patient(None)
    _, url = await upstream(p)
    client = await gateway(url, session={"require_token_on_poll": True})
    guid = await create(client, p.token)
    assert (await client.get(f"{TICKETS}/{guid}")).status == 401
    assert (await client.get(f"{TICKETS}/{guid}", headers=bearer(p.token))).status == 200


async def test_mkab_failures_map_to_502_and_504(upstream: Any, gateway: Any) -> None:
    broken, slow = patient(None), patient(None)
    broken.mkab_status = 500
    slow.mkab_delay = 2.0
    _, url = await upstream(broken, slow)
    client = await gateway(url, upstream={"call_timeout": 0.3, "retries": 0})
    resp = await client.get(TICKETS, headers=bearer(broken.token))
    assert resp.status == 502 and await resp.json() == {
        "code": 502,
        "message": "Upstream service failed",
        "message_code": "4502",
    }
    resp = await client.get(TICKETS, headers=bearer(slow.token))
    assert resp.status == 504 and (await resp.json())["message_code"] == "4504"


async def test_mkab_connection_refused_is_502(gateway: Any, unused_tcp_port: int) -> None:
    client = await gateway(f"http://127.0.0.1:{unused_tcp_port}", upstream={"retries": 1})
    resp = await client.get(TICKETS, headers=bearer(new_token()))
    assert resp.status == 502


async def test_unknown_route_wrong_method_and_health(upstream: Any, gateway: Any) -> None:
    _, url = await upstream()
    client = await gateway(url)
    resp = await client.get("/api/v2/old/visit/nope")
    assert resp.status == 404 and await resp.json() == {
        "code": 404,
        "message": "Resource not found",
        "message_code": "4414",
    }
    resp = await client.post(TICKETS)
    assert resp.status == 405 and (await resp.json())["message_code"] == "4405"
    assert "GET" in resp.headers["Allow"]
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/readyz")).status == 200


async def test_unexpected_exception_is_a_500_with_no_internals(upstream: Any, gateway: Any) -> None:
    p = patient(None)
    _, url = await upstream(p)
    client = await gateway(url)
    guid = await create(client, p.token)

    async def broken_load(guid: str) -> None:
        raise RuntimeError(f"store exploded at /srv/secret/path for {p.token}")

    client.app[keys.STORE].load = broken_load  # type: ignore[method-assign]
    resp = await client.get(f"{TICKETS}/{guid}", headers=bearer(p.token))
    assert resp.status == 500
    text = await resp.text()
    assert json.loads(text) == {"code": 500, "message": "Internal server error", "message_code": "4500"}
    assert "exploded" not in text and p.token not in text
