"""W3C trace context and the gateway's User-Agent, as the new API and the legacy service receive
them (real aiohttp servers on 127.0.0.1 that record every request), and the trace id on the log
lines of the request and of the fan-out it starts."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from multidict import CIMultiDict

from gateway import USER_AGENT, __version__
from gateway.observability.trace import (
    TRACESTATE_MAX_LENGTH,
    TRACESTATE_MAX_MEMBERS,
    continue_trace,
    parse_traceparent,
    parse_tracestate,
)
from gateway.sandbox.data import LpuKnobs
from tests.support.fake_legacy import start_legacy
from tests.support.gateway import LOG, TICKETS, bearer, create, new_token, patient, poll_until_final, recording_upstream

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
VALID = f"00-{TRACE_ID}-{PARENT_ID}-01"
TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


def _sent(headers: CIMultiDict[str]) -> tuple[str, str, str]:
    match = TRACEPARENT.fullmatch(headers["traceparent"])
    assert match, headers["traceparent"]
    return match.group(1), match.group(2), match.group(3)


async def test_the_callers_trace_goes_on_to_every_upstream_call_with_the_gateways_parent_id(
    aiohttp_server: Any, gateway: Any
) -> None:
    p = patient(None, None)
    received, url = await recording_upstream(aiohttp_server, p)
    client = await gateway(url)
    token = p.token
    guid = await create(client, token, traceparent=VALID, tracestate="congo=t61rcWkgMzE, rojo=00f067aa0ba902b7")
    await poll_until_final(client, guid, bearer(token))
    assert len(received) == 1 + 2 * 3, "the MKAB list and three calls for each of the two LPUs"
    parents = set()
    for headers in received:
        trace_id, parent_id, flags = _sent(headers)
        assert (trace_id, flags) == (TRACE_ID, "01"), "the caller's trace and sampled flag"
        assert parent_id != PARENT_ID, "the gateway is a hop of its own"
        parents.add(parent_id)
        assert headers["tracestate"] == "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
        assert headers.getall("traceparent") == [headers["traceparent"]]
    assert len(parents) == 1, "one hop: the gateway's handling of the create"


@pytest.mark.parametrize(
    "incoming",
    [
        {},
        {"traceparent": VALID.upper()},  # upper-case hex is invalid
        {"traceparent": f"00-{'0' * 32}-{PARENT_ID}-01", "tracestate": "congo=t61rcWkgMzE"},
        {"traceparent": "not a trace", "tracestate": "congo=t61rcWkgMzE"},
    ],
    ids=["absent", "upper-case", "zero-trace-id", "garbage"],
)
async def test_a_new_trace_is_started_when_the_caller_sent_no_valid_one(
    aiohttp_server: Any, gateway: Any, incoming: dict[str, str]
) -> None:
    p = patient(None)
    received, url = await recording_upstream(aiohttp_server, p)
    client = await gateway(url)
    token = p.token
    await poll_until_final(client, await create(client, token, **incoming), bearer(token))
    trace_ids = {_sent(headers)[0] for headers in received}
    assert len(trace_ids) == 1 and trace_ids != {"0" * 32}
    assert trace_ids != {TRACE_ID}
    assert all("tracestate" not in headers for headers in received), "no tracestate without a valid traceparent"
    assert all(_sent(headers)[2] == "00" for headers in received), "not sampled: the gateway recorded nothing"


async def test_the_upstream_sees_the_gateway_and_its_version_as_user_agent(aiohttp_server: Any, gateway: Any) -> None:
    p = patient(None)
    received, url = await recording_upstream(aiohttp_server, p)
    client = await gateway(url)
    token = p.token
    await poll_until_final(client, await create(client, token, **{"User-Agent": "EMIAS/4.2.1"}), bearer(token))
    assert USER_AGENT == f"visit-gateway/{__version__}"
    assert {headers["User-Agent"] for headers in received} == {USER_AGENT}


async def test_the_legacy_service_gets_the_trace_and_the_apps_user_agent(
    aiohttp_server: Any, upstream: Any, gateway: Any
) -> None:
    _, url = await upstream()
    fake, legacy_url = await start_legacy(aiohttp_server)
    client = await gateway(url, rollout={"legacy_url": legacy_url, "mode": "legacy"})
    token = new_token()
    resp = await client.get(TICKETS, headers=bearer(token) | {"traceparent": VALID, "User-Agent": "EMIAS/4.2.1"})
    assert resp.status == 200
    # An app that sends no User-Agent (the test client would send its own).
    resp = await client.get(TICKETS, headers=bearer(token), skip_auto_headers=["User-Agent"])
    assert resp.status == 200
    with_trace, without = fake.received
    trace_id, parent_id, _ = _sent(with_trace.headers)
    assert trace_id == TRACE_ID and parent_id != PARENT_ID
    assert with_trace.headers["User-Agent"] == "EMIAS/4.2.1", "the legacy service still sees the app"
    assert _sent(without.headers)[0] != TRACE_ID, "a request without a trace starts its own"
    assert without.headers["User-Agent"] == USER_AGENT


async def test_the_trace_id_is_on_the_request_and_fan_out_log_lines(aiohttp_server: Any, gateway: Any) -> None:
    p = patient(LpuKnobs(fault="status", status=500), None)
    _, url = await recording_upstream(aiohttp_server, p)
    client = await gateway(url)
    token = p.token
    request_id = f"trace-log-{new_token()[-12:]}"
    guid = await create(client, token, traceparent=VALID, **{"X-Request-Id": request_id})
    await poll_until_final(client, guid, bearer(token))
    lines = [json.loads(line) for line in LOG.getvalue().splitlines() if request_id in line]
    events = {line["event"] for line in lines}
    assert {"request", "lpu_failed"} <= events, "the access line and a line of the fan-out task"
    assert {line.get("trace_id") for line in lines} == {TRACE_ID}


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        (VALID, (TRACE_ID, PARENT_ID, "01")),
        (f"00-{TRACE_ID}-{PARENT_ID}-00", (TRACE_ID, PARENT_ID, "00")),
        (f"00-{TRACE_ID}-{PARENT_ID}-ff", (TRACE_ID, PARENT_ID, "01")),  # undefined flags are sent as 0
        # A later version may add fields, and only the sampled bit of its flags is kept.
        (f"01-{TRACE_ID}-{PARENT_ID}-03-what-comes-next", (TRACE_ID, PARENT_ID, "01")),
        (f"cc-{TRACE_ID}-{PARENT_ID}-02", (TRACE_ID, PARENT_ID, "00")),
        (f"00-{TRACE_ID}-{PARENT_ID}-01-extra", None),  # version 00 is exactly 55 characters
        (f"01-{TRACE_ID}-{PARENT_ID}-01extra", None),
        (f"ff-{TRACE_ID}-{PARENT_ID}-01", None),
        (f"00-{TRACE_ID}-{'0' * 16}-01", None),
        (f"00-{TRACE_ID[:-1]}-{PARENT_ID}-01", None),
        (f"00-{TRACE_ID}-{PARENT_ID.upper()}-01", None),
        (f"00_{TRACE_ID}_{PARENT_ID}_01", None),
        ("", None),
    ],
)
def test_traceparent_is_parsed_strictly(value: str, parsed: tuple[str, str, str] | None) -> None:
    assert parse_traceparent([value]) == parsed


def test_two_traceparent_headers_are_invalid() -> None:
    assert parse_traceparent([VALID, VALID]) is None
    assert parse_traceparent([]) is None


@pytest.mark.parametrize(
    ("values", "kept"),
    [
        (["rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"], "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"),
        (["rojo=1", "congo=2"], "rojo=1,congo=2"),  # several headers are one list
        (["rojo=1 , ,\tcongo=2"], "rojo=1,congo=2"),  # blanks around and empty members
        (["tenant1@vendor=x y"], "tenant1@vendor=x y"),
        (["Rojo=1"], ""),  # keys are lower case
        (["rojo=1,rojo=2"], ""),  # a key may appear once
        (["rojo=a,b"], ""),
        (["rojo=a=b"], ""),
        (["rojo=trailing "], "rojo=trailing"),  # the blank is optional white space, not the value's
        (["rojo=ünicode"], ""),
        ([",".join(f"k{i}=v" for i in range(TRACESTATE_MAX_MEMBERS + 1))], ""),
        ([f"k={'v' * (TRACESTATE_MAX_LENGTH)}"], ""),
        ([], ""),
    ],
)
def test_tracestate_is_kept_only_when_valid(values: list[str], kept: str) -> None:
    assert parse_tracestate(values) == kept


def test_a_continued_trace_keeps_the_trace_and_changes_the_parent() -> None:
    trace = continue_trace([VALID], ["rojo=1"])
    assert (trace.trace_id, trace.flags, trace.tracestate) == (TRACE_ID, "01", "rojo=1")
    assert re.fullmatch(r"[0-9a-f]{16}", trace.parent_id) and trace.parent_id != PARENT_ID
    assert trace.headers() == {"traceparent": f"00-{TRACE_ID}-{trace.parent_id}-01", "tracestate": "rojo=1"}
    fresh = continue_trace([], ["rojo=1"])
    assert fresh.trace_id != TRACE_ID and fresh.headers().keys() == {"traceparent"}
