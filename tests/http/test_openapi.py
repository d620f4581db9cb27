"""gateway/http/openapi.json stays true: real answers of a running gateway, successes and errors,
validate against the schemas it gives for their route and status."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from gateway.contract import ERRORS
from gateway.http.openapi import PATH, document
from gateway.sandbox.data import LpuKnobs
from tests.support.gateway import bearer, create, golden_patient, new_token, patient, poll_until_final
from tests.support.rawhttp import get, send

SPEC = json.loads(document())
BASE = "urn:visit-gateway:openapi"
REGISTRY = Registry().with_resource(BASE, Resource.from_contents(SPEC, default_specification=DRAFT202012))
CREATE = "/api/v2/old/visit/tickets"
POLL = "/api/v2/old/visit/tickets/{session}"


def _pointer(*parts: str) -> str:
    return "/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


def check(route: str, status: int, body: Any, headers: Any = None) -> None:
    """Validates one real answer against the document: the status is listed for the route (or
    falls under `default`), the body fits its schema, documented headers are present."""
    responses = SPEC["paths"][route]["get"]["responses"]
    key = str(status) if str(status) in responses else "default"
    assert key in responses, f"{status} is not documented for {route}"
    if key == "default":
        assert status >= 400
    pointer = _pointer("paths", route, "get", "responses", key, "content", "application/json", "schema")
    validator = Draft202012Validator({"$ref": f"{BASE}#{pointer}"}, registry=REGISTRY)
    errors = sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path))
    assert not errors, f"{route} {status}: " + "; ".join(f"{list(e.absolute_path)}: {e.message}" for e in errors[:5])
    for name in responses[key].get("headers", {}):
        assert headers is not None and name in headers, f"{route} {status} lacks the documented {name} header"


async def answer(client: TestClient, path: str, **kwargs: Any) -> tuple[int, Any, Any]:
    resp = await client.get(path, **kwargs)
    return resp.status, await resp.json(), resp.headers


def test_the_document_is_openapi_3_1_with_valid_schemas() -> None:
    assert SPEC["openapi"].startswith("3.1.")
    assert set(SPEC["paths"]) == {CREATE, POLL}
    for schema in SPEC["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)
    for route in SPEC["paths"].values():
        for response in route["get"]["responses"].values():
            Draft202012Validator.check_schema(response["content"]["application/json"]["schema"])


def test_the_documented_message_codes_are_the_error_catalog() -> None:
    documented = SPEC["components"]["schemas"]["Error"]["properties"]["message_code"]["enum"]
    assert sorted(documented) == sorted(k.message_code for k in ERRORS.values())


async def test_the_document_is_served(upstream: Any, gateway: Any) -> None:
    _, url = await upstream()
    client = await gateway(url)
    resp = await client.get(PATH)
    assert resp.status == 200 and resp.content_type == "application/json"
    assert await resp.read() == document()


async def test_successful_answers_match_the_document(upstream: Any, gateway: Any) -> None:
    seed = golden_patient(new_token())
    pascal = golden_patient(new_token(), pascal_case=True)
    mixed = patient(None, LpuKnobs(fault="status"), LpuKnobs(delay=0.5), LpuKnobs(pascal_case=True))
    empty = patient()
    _, url = await upstream(seed, pascal, mixed, empty)
    client = await gateway(url)
    states = set()
    for p in (seed, pascal, mixed, empty):
        status, body, headers = await answer(client, CREATE, headers=bearer(p.token))
        check(CREATE, status, body, headers)
        guid = body["session"]
        status, body, headers = await answer(client, f"{CREATE}/{guid}", headers=bearer(p.token))
        check(POLL, status, body, headers)
        states |= {e["state"] for e in body}
        final, _ = await poll_until_final(client, guid)
        check(POLL, 200, final)
        states |= {e["state"] for e in final}
    assert states == {"InProgress", "Complete", "Failed"}, "every state was validated"
    assert final == [], "the last patient has no MKAB"


@pytest.mark.parametrize("require_token", [False, True])
async def test_error_answers_match_the_document(upstream: Any, gateway: Any, require_token: bool) -> None:
    p = patient(LpuKnobs(fault="hang"))
    slow_mkab = patient(None)
    slow_mkab.mkab_delay = 2.0
    broken_mkab = patient(None)
    broken_mkab.mkab_status = 500
    _, url = await upstream(p, slow_mkab, broken_mkab)
    client = await gateway(
        url,
        upstream={"call_timeout": 0.3},
        session={"require_token_on_poll": require_token, "deadline": 1.0},
        limits={"sessions_per_token": 1, "poll_rate": 0.1, "poll_burst": 1},
    )
    guid = await create(client, p.token)
    errors: list[tuple[str, tuple[int, Any, Any]]] = [
        (CREATE, await answer(client, CREATE)),  # no Authorization
        (CREATE, await answer(client, CREATE, headers={"Authorization": "Basic abc"})),
        (CREATE, await answer(client, CREATE, headers=bearer(new_token()))),  # rejected upstream
        (CREATE, await answer(client, CREATE, headers=bearer(p.token))),  # one in flight already
        (CREATE, await answer(client, CREATE, headers=bearer(slow_mkab.token))),  # 504
        (CREATE, await answer(client, CREATE, headers=bearer(broken_mkab.token))),  # 502
        (POLL, await answer(client, f"{CREATE}/not-a-guid", headers=bearer(p.token))),
        (POLL, await answer(client, f"{CREATE}/{'0' * 8}-0000-4000-8000-{'0' * 12}", headers=bearer(p.token))),
        (POLL, await answer(client, f"{CREATE}/{guid}", headers=bearer(new_token()))),  # another token
        (POLL, await answer(client, f"{CREATE}/{guid}")),  # 401 when the token is required
        (POLL, await answer(client, f"{CREATE}/{guid}", headers=bearer(p.token))),
        (POLL, await answer(client, f"{CREATE}/{guid}", headers=bearer(p.token))),  # over the poll rate
    ]
    statuses = {status for _, (status, _, _) in errors}
    assert {400, 401, 404, 429, 502, 504} <= statuses, statuses
    for route, (status, body, headers) in errors:
        if status != 200:
            check(route, status, body, headers)
    resp = await client.post(CREATE, headers=bearer(p.token))
    check(CREATE, resp.status, await resp.json(), resp.headers)
    assert resp.status == 405
    host, port = client.server.host, client.server.port
    reply = await asyncio.to_thread(send, host, port, get(CREATE, {"X-Big": "x" * 9000}))
    assert reply is not None
    check(CREATE, reply.status, reply.json(), reply.headers)
