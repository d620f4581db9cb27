"""Generated input (Hypothesis, derandomized, bounded example counts):

- the mapper, on any JSON an upstream might send: a result that is strict JSON, or MappingError;
- the HTTP surface, with raw requests over a real socket to a running gateway on 127.0.0.1:
  never a 5xx, every error in the standard shape, the token never echoed;
- the same with the rollout on (a fake legacy service behind the gateway, the admin routes
  present), with raw bytes: absolute-form targets, header bytes that are not UTF-8 in the headers
  the gateway reads: never a 5xx, and no error or traceback in the log.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.app import create_app
from gateway.config import Config
from gateway.http.testing import ThreadedServer
from gateway.sandbox.app import Sandbox, create_sandbox_app
from gateway.upstream import mapping
from gateway.upstream.answers import CallFailure, parse_body
from gateway.upstream.mapping import MappingError
from tests.support.fake_legacy import FakeLegacy, create_legacy_app
from tests.support.gateway import LOG, TICKETS, new_token, patient
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


# --- the HTTP surface with the rollout on, in raw bytes -----------------------------------------

ADMIN_TOKEN = "fuzz-admin-" + secrets.token_hex(16)  # random: weak admin tokens are refused at start


class LiveRollout:
    """A gateway in front of a fake legacy service (rollout mode `legacy`: creates and unknown
    GUIDs are forwarded), with the admin routes on; the sandbox knows the patient too, for the
    sessions a flag would give to the gateway."""

    def __init__(self, server: ThreadedServer) -> None:
        self.token = new_token()
        upstream_port = server.serve(create_sandbox_app(Sandbox([patient(None, token=self.token)])))
        legacy_port = server.serve(create_legacy_app(FakeLegacy()))
        config = Config().replace(
            upstream={"url": f"http://127.0.0.1:{upstream_port}"},
            limits={
                "poll_rate": 10_000.0,
                "poll_burst": 10_000,
                "sessions_per_token": 10_000,
                "create_rate_per_token": 10_000.0,
                "create_burst_per_token": 10_000,
            },
            # The fuzzer guesses GUIDs by the thousand from one address; the guess allowance has
            # its own tests (tests/rollout/test_legacy_protection.py).
            rollout={
                "legacy_url": f"http://127.0.0.1:{legacy_port}",
                "mode": "legacy",
                "admin_token": ADMIN_TOKEN,
                "legacy_guess_rate_per_client": 10_000.0,
                "legacy_guess_burst_per_client": 10_000,
                "legacy_guess_rate": 10_000.0,
                "legacy_guess_burst": 10_000,
                "admin_failures_per_client": 10_000,
                "admin_failures_total": 10_000,
            },
        )
        self.port = server.serve(create_app(config))
        reply = send("127.0.0.1", self.port, request("GET", TICKETS, [("Authorization", f"Bearer {self.token}")]))
        assert reply is not None and reply.status == 200, reply
        self.session = reply.json()["session"]  # the legacy service's


@pytest.fixture(scope="module")
def live_rollout() -> Iterator[LiveRollout]:
    server = ThreadedServer()
    try:
        yield LiveRollout(server)
    finally:
        server.stop()


# Bytes a header value may carry past the parser: anything but CR, LF and NUL, so UTF-8 and
# not UTF-8 alike (0x80-0xFF alone, truncated sequences, surrogates encoded as UTF-8).
RAW_VALUES = st.binary(max_size=24).map(lambda b: b.translate(None, b"\r\n\x00")) | st.sampled_from(
    [b"\xff", b"abc\xfe\xc3", b"\xed\xa0\x80", "\u0416\u0436".encode(), b"\xc3(", b"Bearer \xff\xff"]
)
RAW_HEADER_NAMES = st.sampled_from(
    [b"X-Admin-Token", b"Authorization", b"ClientApplication", b"User-Agent", b"X-Request-Id", b"Accept"]
)
HOSTS = st.sampled_from(["x", "127.0.0.1", "127.0.0.1:1", "x:abc", "[::1]", "user:pw@x", "x:99999", ""])
RAW_PATHS = PATHS.map(lambda p: p.replace("{guid}", "")) | st.sampled_from(["/admin/rollout", "/admin/rollout/shadow"])
TARGETS = (
    RAW_PATHS
    | st.tuples(st.sampled_from(["http", "https", "HTTP", "ftp"]), HOSTS, RAW_PATHS).map(
        lambda t: f"{t[0]}://{t[1]}{t[2]}"
    )
    | st.sampled_from(["*", "x", "http://x", "http://x?y", "//x/api/v2/old/visit/tickets"])
)


def raw_request(target: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    lines = [b"GET " + target + b" HTTP/1.1", b"Host: 127.0.0.1", *(k + b": " + v for k, v in headers)]
    return b"\r\n".join([*lines, b"Connection: close"]) + b"\r\n\r\n"


def log_problems(since: int) -> list[str]:
    """Log lines written after offset `since` at error level or with a traceback."""
    problems = []
    for line in LOG.getvalue()[since:].splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            problems.append(line[:300])
            continue
        if record.get("level") not in ("debug", "info", "warning") or "exception" in record:
            problems.append(line[:300])
    return problems


@settings(FUZZ, max_examples=300)
@given(data=st.data())
def test_raw_requests_with_the_rollout_on_never_fail_and_leave_no_traceback(
    live_rollout: LiveRollout, data: st.DataObject
) -> None:
    target = data.draw(TARGETS, "target").replace("{guid}", live_rollout.session)
    headers = data.draw(st.lists(st.tuples(RAW_HEADER_NAMES, RAW_VALUES), max_size=3), "headers")
    if data.draw(st.booleans(), "with the admin token"):
        headers.append((b"X-Admin-Token", ADMIN_TOKEN.encode()))
    if data.draw(st.booleans(), "with the token"):
        headers.append((b"Authorization", f"Bearer {live_rollout.token}".encode()))
    since = len(LOG.getvalue())
    reply = send("127.0.0.1", live_rollout.port, raw_request(target.encode("utf-8", "surrogatepass"), headers))
    assert_sane(reply, "GET", live_rollout.token)
    assert not log_problems(since), log_problems(since)


@pytest.mark.parametrize(
    "header", [b"X-Admin-Token", b"Authorization", b"ClientApplication", b"User-Agent", b"X-Request-Id"]
)
@pytest.mark.parametrize("path", ["/admin/rollout", TICKETS, f"{TICKETS}/3f2b8c1e-5a4d-4c1b-9f0e-2d7a6b1c9e84"])
def test_a_header_that_is_not_utf8_is_a_400(live_rollout: LiveRollout, header: bytes, path: str) -> None:
    headers = [(b"Authorization", f"Bearer {live_rollout.token}".encode()), (header, b"abc\xff\xfe\xc3")]
    if header != b"X-Admin-Token":
        headers.append((b"X-Admin-Token", ADMIN_TOKEN.encode()))
    reply = send("127.0.0.1", live_rollout.port, raw_request(path.encode(), headers))
    assert reply is not None and reply.status == 400, reply
    assert reply.json() == {"code": 400, "message": "Bad request", "message_code": "4400"}


@pytest.mark.parametrize("path", [TICKETS, f"{TICKETS}/{{guid}}"])
def test_an_absolute_form_target_is_served_like_its_path(live_rollout: LiveRollout, path: str) -> None:
    """RFC 9112 §3.2.2: a server must accept `GET http://host/path`; with the rollout on it is
    forwarded to the legacy service by its path, whatever host it names."""
    target = f"http://elsewhere.invalid:8080{path.replace('{guid}', live_rollout.session)}"
    auth = [(b"Authorization", f"Bearer {live_rollout.token}".encode())]
    reply = send("127.0.0.1", live_rollout.port, raw_request(target.encode(), auth))
    assert reply is not None and reply.status == 200, reply
    assert "session" in reply.json() if path == TICKETS else isinstance(reply.json(), list)


@pytest.mark.parametrize(
    "guid", ["{3f2b8c1e-5a4d-4c1b-9f0e-2d7a6b1c9e84}", "%7B3f2b8c1e-5a4d-4c1b-9f0e-2d7a6b1c9e84%7D"]
)
def test_a_guid_in_braces_is_400_4401(live_rollout: LiveRollout, guid: str) -> None:
    reply = send("127.0.0.1", live_rollout.port, raw_request(f"{TICKETS}/{guid}".encode(), []))
    assert reply is not None and reply.status == 400, reply
    assert reply.json()["message_code"] == "4401"
