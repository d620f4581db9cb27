"""Logs: an access line per create, error and first final answer (other polls sampled), every
upstream failure once with LPU, method, reason and duration, the request id on every line of a
request (and of the fan-out it starts), format and level from the config, and never a token or
anything from a record body."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from typing import Any

from gateway.sandbox.data import LpuKnobs
from tests.support.gateway import LOG, TICKETS, bearer, patient, poll_until_final, sample
from tests.support.netutil import free_port, serve_env


def lines_since(mark: int) -> list[dict[str, Any]]:
    return [json.loads(line) for line in LOG.getvalue()[mark:].splitlines() if line.strip()]


async def test_upstream_failures_are_logged_once_with_where_why_and_how_long(upstream: Any, gateway: Any) -> None:
    p = patient(None, LpuKnobs(fault="status", status=500), LpuKnobs(fault="invalid_json"), LpuKnobs(fault="hang"))
    broken = patient(None)
    broken.mkab_status = 503
    _, url = await upstream(p, broken)
    client = await gateway(url, session={"deadline": 1.0}, upstream={"call_timeout": 5.0, "retries": 0})
    mark = len(LOG.getvalue())
    request_id = f"logs-{uuid.uuid4().hex}"

    resp = await client.get(TICKETS, headers=bearer(p.token) | {"X-Request-Id": request_id})
    guid = (await resp.json())["session"]
    body, _ = await poll_until_final(client, guid, headers=bearer(p.token))
    assert [e["state"] for e in body] == ["Complete", "Failed", "Failed", "Failed"]
    assert (await client.get(TICKETS, headers=bearer(broken.token) | {"X-Request-Id": request_id + "-b"})).status == 502

    lines = lines_since(mark)
    assert all(line["level"] and line["timestamp"] for line in lines)
    failed = {line["lpu"]: line for line in lines if line["event"] == "lpu_failed" and line["session"] == guid}
    assert len([line for line in lines if line["event"] == "lpu_failed"]) == 3, "one line per failed LPU"
    guids = [lpu.info["guid"] for lpu in p.lpus]
    assert set(failed) == set(guids[1:])
    status, invalid, hang = (failed[g] for g in guids[1:])
    assert status["reason"] == "status" and status["detail"] == "status 500"
    assert status["method"] in ("visit", "calldoctor", "disp")
    assert invalid["reason"] == "invalid_body" and invalid["method"] in ("visit", "calldoctor", "disp")
    assert hang["reason"] == "deadline" and hang["method"] == "session"
    assert 0 <= status["duration_s"] < 1.0 and 0 <= invalid["duration_s"] < 1.0
    assert 1.0 <= hang["duration_s"] < 2.0, "a deadline failure took the whole deadline"
    # The fan-out's lines carry the id of the request that started it.
    assert {line["request_id"] for line in failed.values()} == {request_id}

    [mkab] = [line for line in lines if line["event"] == "mkab_failed"]
    assert mkab["reason"] == "status" and mkab["status"] == 503 and mkab["duration_s"] >= 0
    assert mkab["request_id"] == request_id + "-b"

    access = [line for line in lines if line["event"] == "request"]
    polls = [line for line in access if line["route"] == TICKETS + "/{session}"]
    assert len(access) == len(polls) + 2, "an access line per create"
    assert [line.get("final") for line in polls] == [True], "of the polls, the first final answer only"
    assert {line["status"] for line in access} == {200, 502}
    assert all(isinstance(line["duration_ms"], float) and line["request_id"] for line in access)
    assert [line["request_id"] for line in access if line["route"] == TICKETS] == [request_id, request_id + "-b"]

    text = LOG.getvalue()[mark:]
    for secret in (p.token, broken.token, "Bearer"):
        assert secret not in text
    for record in p.lpus[0].visits + p.lpus[0].calls:
        assert record["ticketGuid"] not in text or record["ticketGuid"].startswith("00000000"), (
            "a record body was logged"
        )
    assert p.lpus[0].info["address"] not in text


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_gateway_serve_takes_log_format_level_and_metrics_port_from_the_environment(tmp_path: Any) -> None:
    port, metrics_port, dead_port = free_port(), free_port(), free_port()
    env = serve_env(
        port,
        metrics_port,
        GATEWAY_UPSTREAM_URL=f"http://127.0.0.1:{dead_port}",  # nothing listens: the MKAB call fails
        GATEWAY_LOG_FORMAT="console",
        GATEWAY_LOG_LEVEL="warning",
    )
    token = f"tok-{uuid.uuid4().hex}"
    out = tmp_path / "gateway.log"
    with open(out, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        end = time.monotonic() + 20
        while True:
            assert proc.poll() is None, out.read_text()
            try:
                if _get(f"http://127.0.0.1:{port}/healthz")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < end, "gateway serve did not start"
            time.sleep(0.05)
        status, text = _get(f"http://127.0.0.1:{metrics_port}/metrics")
        assert status == 200 and 'gateway_build_info{version="' in text
        assert _get(f"http://127.0.0.1:{port}/metrics")[0] == 404, "/metrics is not on the public port"
        assert _get(f"http://127.0.0.1:{port}{TICKETS}", bearer(token))[0] == 502
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    assert proc.returncode == 0
    lines = out.read_text().splitlines()
    assert lines, "nothing logged"
    assert not any(line.lstrip().startswith("{") for line in lines), "console format, not JSON"
    assert any("mkab_failed" in line and "warning" in line and "reason=connection" in line for line in lines)
    assert not any(" request " in f" {line} " for line in lines), "info lines (the access log) are below the level"
    assert token not in out.read_text()


async def test_a_short_authorization_value_leaves_every_log_line_valid_json(upstream: Any, gateway: Any) -> None:
    """A client's Authorization of "," (the fuzzer's find) must not turn every comma of the
    request's log lines into the redaction mark; a real token is still redacted."""
    p = patient(None)
    _, url = await upstream(p)
    client = await gateway(url)
    mark = len(LOG.getvalue())
    assert (await client.get(TICKETS, headers={"Authorization": ","})).status == 401
    assert (await client.get(TICKETS, headers={"Authorization": f"Bearer {p.token}"})).status == 200
    raw = LOG.getvalue()[mark:]
    lines = lines_since(mark)  # json.loads of every line: a broken line fails here
    assert [line["status"] for line in lines if line.get("event") == "request"] == [401, 200]
    assert p.token not in raw


# The polls after the final answer come faster than limits.poll_rate allows.
RAISED = {"poll_rate": 1000.0, "poll_burst": 1000}


async def _polled(client: Any, token: str, after_final: int) -> tuple[str, int]:
    """A session polled until final, then `after_final` more times; its GUID and how many polls
    it took to the first final answer."""
    resp = await client.get(TICKETS, headers=bearer(token))
    assert resp.status == 200
    guid = (await resp.json())["session"]
    _, seen = await poll_until_final(client, guid, headers=bearer(token))
    for _ in range(after_final):
        assert (await client.get(f"{TICKETS}/{guid}", headers=bearer(token))).status == 200
    return guid, len(seen)


async def test_access_log_has_every_create_every_error_and_each_sessions_first_final_answer(
    upstream: Any, gateway: Any
) -> None:
    """log.poll_sample = 0 (the default): of a session's polls only its first final answer has
    a line, with its poll count and time to final; errors always have one."""
    p = patient(None, LpuKnobs(delay=0.3), LpuKnobs())
    _, url = await upstream(p)
    client = await gateway(url, limits=RAISED)
    mark = len(LOG.getvalue())
    guid, to_final = await _polled(client, p.token, after_final=20)
    assert to_final >= 2, "the session was final at its first poll: nothing here would be sampled away"
    unknown = str(uuid.uuid4())
    assert (await client.get(f"{TICKETS}/{unknown}", headers=bearer(p.token))).status == 404
    assert (await client.get(f"{TICKETS}/not-a-guid", headers=bearer(p.token))).status == 400

    access = [line for line in lines_since(mark) if line["event"] == "request"]
    assert [(line["route"], line["status"]) for line in access] == [
        (TICKETS, 200),
        (TICKETS + "/{session}", 200),
        (TICKETS + "/{session}", 404),
        (TICKETS + "/{session}", 400),
    ], access
    final = access[1]
    assert final["final"] is True and final["polls"] == to_final
    assert 0.3 <= final["to_final_s"] < 30
    assert guid not in LOG.getvalue()[mark:], "a session GUID in an access line"
    assert sample(client, "gateway_session_polls_total", final="true") == 21
    assert sample(client, "gateway_session_polls_total", final="false") == to_final - 1


async def test_log_poll_sample_1_logs_every_poll(upstream: Any, gateway: Any) -> None:
    p = patient(None, LpuKnobs(delay=0.3))
    _, url = await upstream(p)
    client = await gateway(url, log={"poll_sample": 1.0}, limits=RAISED)
    mark = len(LOG.getvalue())
    _, to_final = await _polled(client, p.token, after_final=10)
    polls = [line for line in lines_since(mark) if line["event"] == "request" and line["route"] != TICKETS]
    assert len(polls) == to_final + 10
    assert [line.get("final", False) for line in polls].count(True) == 1
    assert all(line.get("sampled") for line in polls if not line.get("final"))
