"""Generated input (Hypothesis, derandomized, bounded example counts):

- the mapper, on any JSON an upstream might send: a result that is strict JSON, or MappingError;
- the HTTP surface, with raw requests over a real socket to a running gateway on 127.0.0.1:
  never a 5xx, every error in the standard shape, the token never echoed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.app import create_app
from gateway.config import Config
from gateway.http.runner import ThreadedServer
from gateway.sandbox.app import Sandbox, create_sandbox_app
from gateway.upstream import mapping
from gateway.upstream.client import CallFailure, parse_body
from gateway.upstream.mapping import MappingError
from tests.support.gateway import TICKETS, new_token, patient
from tests.support.rawhttp import Reply, send

FUZZ = settings(derandomize=True, database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- the mapper -------------------------------------------------------------------------------

FIELD_NAMES = sorted(
    {name for spec in (mapping.VISIT, mapping.CALL, mapping.LPU_INFO, mapping.HISTORY) for name, _, _ in spec}
    | {
        name
        for spec in (mapping.RATINGS, mapping.RATING_ITEM, mapping.BUSY_TYPE, mapping.CLIENT)
        for name, _, _ in spec
    }
    | {"mkabGuid", "queue", "result", "attitude", "cleanliness"}
)


def _casings(name: str) -> list[str]:
    snake = re.sub(r"([A-Z])", r"_\1", name).lower()
    return [name, name[:1].upper() + name[1:], name.upper(), snake]


KEYS = st.sampled_from([k for name in FIELD_NAMES for k in _casings(name)]) | st.text(max_size=8)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
JSON = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(KEYS, children, max_size=6),
    max_leaves=25,
)
MAPPERS = [mapping.map_visits, mapping.map_calls, mapping.map_disps, mapping.map_mkab_list]


@settings(FUZZ, max_examples=200)
@given(value=JSON | st.lists(st.dictionaries(KEYS, JSON, max_size=12), max_size=3))
def test_the_mapper_returns_json_or_a_mapping_error(value: Any) -> None:
    for mapper in MAPPERS:
        try:
            result = mapper(value)
        except MappingError:
            continue
        json.dumps(result, allow_nan=False)  # what the apps receive is strict JSON


@settings(FUZZ, max_examples=200)
@given(
    body=st.binary(max_size=200)
    | JSON.map(lambda v: json.dumps(v).encode())
    | st.sampled_from([b"[NaN]", b"[1e999]", b"[" * 5000])
)
def test_any_upstream_body_is_parsed_and_mapped_or_fails_as_invalid_body(body: bytes) -> None:
    try:
        value = parse_body(body)
    except CallFailure as failure:
        assert failure.reason == "invalid_body"
        return
    for mapper in MAPPERS:
        try:
            json.dumps(mapper(value), allow_nan=False)
        except MappingError:
            pass


# --- the HTTP surface -------------------------------------------------------------------------


class LiveGateway:
    """A sandbox and a gateway on an event loop in a thread of their own, so that Hypothesis
    (synchronous) can send raw requests with plain sockets."""

    def __init__(self, server: ThreadedServer) -> None:
        self.token = new_token()
        self.server = server
        upstream_port = self.server.serve(create_sandbox_app(Sandbox([patient(None, None, token=self.token)])))
        config = Config().replace(
            upstream={"url": f"http://127.0.0.1:{upstream_port}"},
            # High enough that the fuzzer mostly reaches the handlers, not the limits.
            limits={"poll_rate": 10_000.0, "poll_burst": 10_000, "sessions_per_token": 10_000},
        )
        self.port = self.server.serve(create_app(config))
        auth = [("Authorization", f"Bearer {self.token}")]
        reply = send("127.0.0.1", self.port, request("GET", TICKETS, auth))
        assert reply is not None and reply.status == 200
        self.session = reply.json()["session"]


@pytest.fixture(scope="module")
def live() -> Iterator[LiveGateway]:
    server = ThreadedServer()
    try:
        yield LiveGateway(server)
    finally:
        server.stop()


def request(method: str, target: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers), "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogatepass")


METHODS = st.sampled_from(
    ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "PROPFIND", "get", "BREW"]
) | st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\r\n"), min_size=1, max_size=10)
SESSION_IDS = (
    st.uuids().map(str)
    | st.uuids().map(lambda u: str(u).upper())
    | st.text(max_size=40).map(lambda t: re.sub(r"[\s/?#]", "", t))
    | st.sampled_from(["", "..", "%00", "%2e%2e", "00000000-0000-0000-0000-000000000000", "{guid}", "a" * 5000])
)
PATHS = st.one_of(
    st.just(TICKETS),
    SESSION_IDS.map(lambda s: f"{TICKETS}/{s}"),
    st.sampled_from(
        [
            "/",
            "/openapi.json",
            "/healthz",
            "/readyz",
            "/api/v2/old/visit",
            "*",
            "//",
            "/%ff",
            TICKETS + "?x=1&x=2",
        ]
    ),
    st.text(max_size=30).map(lambda t: "/" + re.sub(r"[\s]", "", t)),
)
HEADER_VALUES = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=40) | st.integers(
    0, 20_000
).map(lambda n: "x" * n)
HEADERS = st.lists(
    st.tuples(
        st.sampled_from(
            ["X-Request-Id", "ClientApplication", "User-Agent", "Accept", "Content-Length", "Transfer-Encoding"]
        )
        | st.text(alphabet=st.characters(codec="ascii", exclude_characters="\r\n:"), min_size=1, max_size=12),
        HEADER_VALUES,
    ),
    max_size=4,
)


def authorizations(token: str) -> st.SearchStrategy[str | None]:
    return st.one_of(
        st.none(),
        st.sampled_from(
            [
                f"Bearer {token}",
                f"bearer {token}",
                f"Bearer  {token}",
                f"Bearer {token} ",
                f"Bearer{token}",
                f"Basic {token}",
                token,
                f"Bearer {{{token}}}",
                f"Bearer {token}\x01",
                f"Bearer {token}" + "A" * 9000,
                "Bearer ",
                "Bearer",
            ]
        ),
        st.text(max_size=30).map(lambda t: f"Bearer {token}{t}"),
        st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=30).map(
            lambda t: f"Bearer {t}"
        ),
    )


def assert_sane(reply: Reply | None, method: str, token: str) -> None:
    assert reply is not None, "the gateway closed the connection without an answer"
    assert reply.status < 500, f"{reply.status}: {reply.body[:200]!r}"
    assert token.encode() not in reply.body, "the token was echoed in the body"
    assert all(token not in v for v in reply.headers.values()), "the token was echoed in a header"
    if method.upper() == "HEAD" or reply.status in (204, 304):
        return
    assert reply.headers.get("content-type", "").startswith("application/json"), reply.headers
    body = reply.json()
    if reply.status >= 400:
        assert set(body) == {"code", "message", "message_code"} and body["code"] == reply.status, body


@settings(FUZZ, max_examples=500)
@given(data=st.data())
def test_the_http_surface_never_fails_and_never_echoes_the_token(live: LiveGateway, data: st.DataObject) -> None:
    method = data.draw(METHODS, "method")
    path = data.draw(PATHS, "path").replace("{guid}", live.session)
    auth = data.draw(authorizations(live.token), "authorization")
    headers = data.draw(HEADERS, "headers")
    if auth is not None:
        headers = [("Authorization", auth), *headers]
    raw = request(method, path, headers)
    assert_sane(send("127.0.0.1", live.port, raw, method=method), method, live.token)


@settings(FUZZ, max_examples=100)
@given(auth=st.data())
def test_polls_of_a_real_session_with_any_authorization(live: LiveGateway, auth: st.DataObject) -> None:
    value = auth.draw(authorizations(live.token))
    headers = [] if value is None else [("Authorization", value)]
    reply = send("127.0.0.1", live.port, request("GET", f"{TICKETS}/{live.session}", headers))
    assert_sane(reply, "GET", live.token)
    assert reply is not None
    # The HTTP parser strips whitespace around a header value, as RFC 9110 says.
    if value is None or value.strip(" \t") == f"Bearer {live.token}":
        assert reply.status == 200
    else:
        assert reply.status in (400, 404, 431), (value, reply.status)
