"""Limits that protect the service: each refuses with the standard error, is counted, and holds
only bounded state."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.config import LimitsConfig
from gateway.http import keys
from gateway.observability.metrics import Metrics
from gateway.sandbox.data import LpuKnobs
from gateway.sessions.limits import SessionLimits
from gateway.upstream.breaker import Breakers
from gateway.upstream.slots import LpuSlots, NoSlot
from tests.support import ROOT
from tests.support.gateway import TICKETS, bearer, create, new_token, patient, poll_until_final, sample, wait_until
from tests.support.netutil import free_port, serve_env
from tests.support.rawhttp import get, send


def assert_standard_error(status: int, body: dict[str, Any], expected_status: int, message_code: str) -> None:
    assert status == expected_status
    assert set(body) == {"code", "message", "message_code"}
    assert body["code"] == expected_status and body["message_code"] == message_code


# --- sessions in flight ---------------------------------------------------------------------


async def test_sessions_per_token_are_capped_while_their_fan_outs_run(upstream: Any, gateway: Any) -> None:
    slow = patient(LpuKnobs(fault="hang"))
    other = patient(LpuKnobs(fault="hang"))
    sandbox, url = await upstream(slow, other)
    client = await gateway(url, session={"deadline": 0.5}, limits={"sessions_per_token": 2})
    first = [await create(client, slow.token) for _ in range(2)]
    resp = await client.get(TICKETS, headers=bearer(slow.token))
    assert_standard_error(resp.status, await resp.json(), 429, "4429")
    assert resp.headers["Retry-After"] == "1"
    assert sandbox.count("mkab") == 2, "a refused creation costs the upstream nothing"
    assert sample(client, "gateway_rejected_requests_total", limit="sessions_per_token") == 1
    await create(client, other.token)  # another patient is not affected
    for guid in first:
        await poll_until_final(client, guid)
    limits = client.server.app[keys.SESSIONS].limits
    await wait_until(lambda: limits.in_flight == 0)
    await create(client, slow.token)  # the places are given back when the fan-outs end


async def test_sessions_in_flight_are_capped_in_total(upstream: Any, gateway: Any) -> None:
    patients = [patient(LpuKnobs(fault="hang")) for _ in range(3)]
    nomkab = patient()
    sandbox, url = await upstream(*patients, nomkab)
    client = await gateway(url, session={"deadline": 0.5}, limits={"sessions_in_flight": 2})
    await create(client, patients[0].token)
    await create(client, patients[1].token)
    resp = await client.get(TICKETS, headers=bearer(patients[2].token))
    assert_standard_error(resp.status, await resp.json(), 503, "4503")
    assert resp.headers["Retry-After"] == "1"
    assert sample(client, "gateway_rejected_requests_total", limit="sessions_in_flight") == 1
    assert sandbox.count("mkab") == 2
    limits = client.server.app[keys.SESSIONS].limits
    await wait_until(lambda: limits.in_flight == 0)
    await create(client, patients[2].token)


async def test_a_failed_creation_gives_its_place_back(upstream: Any, gateway: Any) -> None:
    _, url = await upstream()  # no patients: every token is rejected upstream
    client = await gateway(url, limits={"sessions_per_token": 1})
    token = new_token()
    for _ in range(3):
        resp = await client.get(TICKETS, headers=bearer(token))
        assert resp.status == 401
    assert client.server.app[keys.SESSIONS].limits.in_flight == 0


def test_session_admission_state_is_only_what_is_in_flight() -> None:
    limits = SessionLimits(LimitsConfig(sessions_in_flight=10_000), Metrics())
    admissions = [limits.admit(f"token-{i}") for i in range(5000)]
    for admission in admissions:
        admission.release()
        admission.release()  # twice is harmless
    assert limits.in_flight == 0 and not limits._per_token


# --- poll rate --------------------------------------------------------------------------------


async def test_poll_rate_per_session_answers_429_with_retry_after(upstream: Any, gateway: Any) -> None:
    p = patient(None)
    _, url = await upstream(p)
    client = await gateway(url, limits={"poll_rate": 0.5, "poll_burst": 3})
    guid = await create(client, p.token)
    other = await create(client, p.token)
    for _ in range(3):
        assert (await client.get(f"{TICKETS}/{guid}")).status == 200
    resp = await client.get(f"{TICKETS}/{guid}")
    assert_standard_error(resp.status, await resp.json(), 429, "4429")
    assert resp.headers["Retry-After"] == "2", "one poll per 2 s at 0.5 polls/s"
    assert sample(client, "gateway_rejected_requests_total", limit="poll_rate") == 1
    assert (await client.get(f"{TICKETS}/{other}")).status == 200, "other sessions unaffected"


def test_poll_buckets_refill_and_stay_bounded() -> None:
    now = [0.0]
    config = LimitsConfig(poll_rate=2.0, poll_burst=2, tracked_keys=100)
    limits = SessionLimits(config, Metrics(), clock=lambda: now[0])
    limits.check_poll("a")
    limits.check_poll("a")
    with pytest.raises(Exception, match="too_many_requests"):
        limits.check_poll("a")
    now[0] += 0.5  # one poll earned at 2/s
    limits.check_poll("a")
    for i in range(10_000):
        limits.check_poll(f"flood-{i}")
    assert len(limits._polls) == 100
    now[0] += 61.0  # far past burst / rate: every bucket is full again, and forgotten
    limits.check_poll("b")
    assert len(limits._polls) == 1


# --- upstream calls per LPU -------------------------------------------------------------------


async def test_upstream_calls_per_lpu_are_capped(upstream: Any, gateway: Any) -> None:
    p = patient(LpuKnobs(delay=0.1))
    sandbox, url = await upstream(p)
    client = await gateway(url, limits={"upstream_per_lpu": 2})
    guids = [await create(client, p.token) for _ in range(4)]
    for guid in guids:
        body, _ = await poll_until_final(client, guid)
        assert [e["state"] for e in body] == ["Complete"], "queued calls still complete"
    lpu = p.lpus[0].info["guid"]
    assert sandbox.count("visit") == 4
    assert sandbox.peak[lpu] == 2, f"12 calls for one LPU, at most 2 at once (saw {sandbox.peak[lpu]})"


async def test_waiting_for_an_lpu_slot_is_bounded() -> None:
    metrics = Metrics()
    slots = LpuSlots(1, metrics)
    async with slots.hold("lpu", wait=1.0):
        started = time.monotonic()
        with pytest.raises(NoSlot):
            async with slots.hold("lpu", wait=0.05):
                pass
        assert time.monotonic() - started < 1.0
    assert slots.tracked == 0, "no state is kept for an idle LPU"
    assert metrics.registry.get_sample_value("gateway_rejected_requests_total", {"limit": "upstream_per_lpu"}) == 1


# --- circuit breaker --------------------------------------------------------------------------


async def test_a_dead_lpu_opens_its_circuit_and_then_fails_fast(upstream: Any, gateway: Any) -> None:
    p = patient(None, LpuKnobs(fault="hang"))
    sandbox, url = await upstream(p)
    client = await gateway(
        url,
        session={"deadline": 5.0},
        upstream={"call_timeout": 0.3},
        limits={"breaker_failures": 1, "breaker_cooldown": 60.0},
    )
    body, _ = await poll_until_final(client, await create(client, p.token))
    assert [e["state"] for e in body] == ["Complete", "Failed"]
    calls_to_dead = sum(1 for c in sandbox.calls if c.lpu_guid == p.lpus[1].info["guid"])
    started = time.monotonic()
    body, _ = await poll_until_final(client, await create(client, p.token))
    assert [e["state"] for e in body] == ["Complete", "Failed"]
    assert time.monotonic() - started < 0.3, "failed at once, not at the call timeout"
    assert sum(1 for c in sandbox.calls if c.lpu_guid == p.lpus[1].info["guid"]) == calls_to_dead
    assert sample(client, "gateway_lpu_outcomes_total", outcome="failed", reason="circuit_open") == 1
    assert sample(client, "gateway_upstream_circuit_open_total") >= 1


async def test_an_lpu_that_recovers_is_probed_and_closes_its_circuit(upstream: Any, gateway: Any) -> None:
    p = patient(LpuKnobs(fault="reset"))
    sandbox, url = await upstream(p)
    client = await gateway(url, limits={"breaker_failures": 1, "breaker_cooldown": 0.3})
    body, _ = await poll_until_final(client, await create(client, p.token))
    assert body[0]["state"] == "Failed"
    breakers = client.server.app[keys.SESSIONS].upstream.breakers
    assert breakers is not None
    lpu = p.lpus[0].info["guid"]
    targets = [f"{lpu}/{method}" for method in ("visit", "calldoctor", "disp")]
    opened = [t for t in targets if breakers.state(t) == "open"]
    assert opened, "the failed call opened its circuit"
    sandbox.lpu(lpu).knobs = LpuKnobs()  # the hospital is back
    await wait_until(lambda: all(breakers.state(t) == "half_open" for t in opened))
    body, _ = await poll_until_final(client, await create(client, p.token))
    assert body[0]["state"] == "Complete"
    assert all(breakers.state(t) == "closed" for t in targets)


def test_breaker_opens_probes_once_and_reopens_on_a_failed_probe() -> None:
    now = [0.0]
    b = Breakers(failures=3, cooldown=10.0, max_keys=100, clock=lambda: now[0])
    for _ in range(2):
        assert b.allow("x")
        b.record("x", False)
    b.record("x", True)  # a success in between resets the count
    for _ in range(3):
        b.record("x", False)
    assert b.state("x") == "open" and not b.allow("x")
    now[0] += 10.0
    assert b.allow("x"), "one probe after the cooldown"
    assert not b.allow("x"), "only one"
    b.record("x", False)
    assert b.state("x") == "open"
    now[0] += 10.0
    assert b.allow("x")
    b.record("x", None)  # a cancelled probe proves nothing and lets the next caller probe
    assert b.allow("x")
    b.record("x", True)
    assert b.state("x") == "closed"


async def test_error_statuses_do_not_open_a_circuit(upstream: Any, gateway: Any) -> None:
    # A 5xx comes back at once and may concern one patient's records only: it must not fail the
    # LPU for everyone else.
    p = patient(LpuKnobs(fault="status", status=500))
    _, url = await upstream(p)
    client = await gateway(url, limits={"breaker_failures": 1})
    for _ in range(3):
        body, _ = await poll_until_final(client, await create(client, p.token))
        assert body[0]["state"] == "Failed"
    assert sample(client, "gateway_lpu_outcomes_total", outcome="failed", reason="status") == 3
    assert sample(client, "gateway_upstream_circuit_open_total") == 0


def test_breaker_state_is_bounded() -> None:
    b = Breakers(failures=1, cooldown=10.0, max_keys=50)
    for i in range(10_000):
        b.record(f"lpu-{i}", False)
    assert len(b._circuits) == 50


# --- request head size ------------------------------------------------------------------------


async def test_oversize_headers_get_the_standard_431_without_echo(upstream: Any, gateway: Any) -> None:
    _, url = await upstream()
    client = await gateway(url, server={"max_field_size": 1024})
    host, port = client.server.host, client.server.port
    token = new_token()
    big_auth = f"Bearer {token}{'A' * 2000}"
    for request in (
        get(TICKETS, {"Authorization": big_auth}),
        get(TICKETS, {"X-Big": "x" * 2000, "Authorization": f"Bearer {token}"}),
        get(TICKETS, [(f"X-{i}", "y") for i in range(200)]),
        get(TICKETS + "/" + "a" * 9000),
    ):
        reply = await asyncio.to_thread(send, host, port, request)
        assert reply is not None
        assert_standard_error(reply.status, reply.json(), 431, "4431")
        assert reply.headers["content-type"].startswith("application/json")
        assert token.encode() not in reply.body
    assert sample(client, "gateway_rejected_requests_total", limit="request_head") == 4
    # under the limit the same header passes the parser
    reply = await asyncio.to_thread(send, host, port, get("/healthz", {"X-Big": "x" * 900}))
    assert reply is not None and reply.status == 200


async def test_malformed_requests_get_the_standard_400(upstream: Any, gateway: Any) -> None:
    _, url = await upstream()
    client = await gateway(url)
    host, port = client.server.host, client.server.port
    for request in (
        b"G\x00T / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
        b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,  # a TLS hello on the HTTP port
    ):
        reply = await asyncio.to_thread(send, host, port, request)
        assert reply is not None, request
        assert_standard_error(reply.status, reply.json(), 400, "4400")


def test_gateway_serve_applies_the_configured_header_limit(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "gateway.toml"
    config.write_text('[server]\nmax_field_size = 512\n[log]\nlevel = "warning"\n')
    env = serve_env(port, GATEWAY_CONFIG=str(config))
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve"], env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 15
        reply = None
        while reply is None or reply.status != 200:
            assert time.monotonic() < deadline, "gateway serve did not start"
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            try:
                reply = send("127.0.0.1", port, get("/healthz"), timeout=1)
            except OSError:
                time.sleep(0.05)
        reply = send("127.0.0.1", port, get("/healthz", {"X-Big": "x" * 600}))
        assert reply is not None
        assert_standard_error(reply.status, reply.json(), 431, "4431")
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
