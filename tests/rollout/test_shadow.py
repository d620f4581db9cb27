"""Shadow mode: the client is served by the legacy service; the gateway's own session for the
same token is compared in the background, never delaying the client."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from gateway.http import keys
from gateway.sandbox.data import LpuKnobs
from tests.support.fake_legacy import closed_port_url, start_legacy
from tests.support.gateway import LOG, TICKETS, bearer, create, patient, poll_until_final, wait_until
from tests.support.shadow import ADMIN, gateway_answer, results, shadow_gateway


async def test_match_whatever_the_order_of_lpus_and_records(
    aiohttp_server: Any, upstream: Any, gateway: Any, tmp_path: Path
) -> None:
    # One LPU answers after a second, so the client's polls (through the gateway) have the
    # final legacy answer before the gateway side is final: the compare uses what passed by.
    p = patient(None, LpuKnobs(delay=1.0), None)
    sandbox, url = await upstream(p)
    fake, legacy_url = await start_legacy(aiohttp_server)
    legacy_answer = list(reversed(await gateway_answer(gateway, url, p.token)))
    for entry in legacy_answer:
        entry["visits"].reverse()
    fake.answers[p.token] = legacy_answer
    fake.in_progress_polls = 2
    client = await shadow_gateway(gateway, url, legacy_url, tmp_path)

    guid = await create(client, p.token)
    assert guid in fake.sessions, "the client got the legacy session"
    body, seen = await poll_until_final(client, guid, headers=bearer(p.token))
    assert body == legacy_answer, "the client got the legacy answer"
    assert len(seen) == 3
    await wait_until(lambda: results(client, "match", "equal") == 1, what="a shadow match")
    assert sandbox.count("mkab") == 2, "the gateway ran its own session for the same token"
    assert client.app[keys.METRICS].registry.get_sample_value(
        "gateway_rollout_decisions_total", {"side": "shadow", "reason": "default"}
    )
    assert len(fake.polls()) == 3, "no extra poll of the legacy service: the client's answer was used"


async def test_mismatch_reports_field_paths_without_values(
    aiohttp_server: Any, upstream: Any, gateway: Any, tmp_path: Path
) -> None:
    p = patient(None, None)
    _, url = await upstream(p)
    fake, legacy_url = await start_legacy(aiohttp_server)
    legacy_answer = copy.deepcopy(await gateway_answer(gateway, url, p.token))
    legacy_answer[0]["visits"][0]["room"] = "ROOM-ONLY-IN-LEGACY"
    legacy_answer[0]["lpu"]["ratings"]["avg"] = 1.5  # ignored by configuration
    legacy_answer[1] = legacy_answer[1] | {"state": "Failed", "visits": [], "calls": [], "disps": []}
    fake.answers[p.token] = legacy_answer
    client = await shadow_gateway(gateway, url, legacy_url, tmp_path, shadow_ignore_fields=["ratings"])

    await create(client, p.token, **{"X-Request-Id": "shadow-req-1"})
    # No client poll: the compare reads the legacy session itself, as the client would.
    await wait_until(lambda: results(client, "mismatch", "state") == 1, what="a shadow mismatch")
    [own_poll] = fake.polls()
    assert own_poll.headers["Authorization"] == f"Bearer {p.token}"
    assert own_poll.headers["X-Request-Id"] == "shadow-req-1"

    resp = await client.get("/admin/rollout/shadow", headers=ADMIN)
    [sample] = (await resp.json())["mismatches"]
    assert sample["reason"] == "state"
    assert sorted(sample["paths"]) == ["[0].visits[0].room", "[1].state"]
    line = next(json.loads(x) for x in LOG.getvalue().splitlines() if "shadow-req-1" in x and "shadow_mismatch" in x)
    assert sorted(line["paths"]) == ["[0].visits[0].room", "[1].state"]
    assert "ROOM-ONLY-IN-LEGACY" not in LOG.getvalue()
    for guid in fake.sessions:
        assert guid not in json.dumps(sample) and guid not in json.dumps(line)


async def test_the_client_is_answered_while_the_gateway_side_is_still_running(
    aiohttp_server: Any, upstream: Any, gateway: Any, tmp_path: Path
) -> None:
    p = patient(LpuKnobs(fault="hang"))
    sandbox, url = await upstream(p)
    fake, legacy_url = await start_legacy(aiohttp_server)
    client = await shadow_gateway(gateway, url, legacy_url, tmp_path, sections={"session": {"deadline": 60.0}})
    guid = await create(client, p.token)
    assert guid in fake.sessions
    body, _ = await poll_until_final(client, guid)
    assert body[0]["state"] == "Complete"
    await sandbox.wait_calls(4)  # the shadow's fan-out is waiting on a hung LPU
    shadow = client.app[keys.SHADOW]
    assert shadow.running == 1
    await client.close()
    assert shadow.running == 0, "shutdown cancelled the compare"


async def test_the_gateway_side_not_final_within_the_shadow_timeout(
    aiohttp_server: Any, upstream: Any, gateway: Any, tmp_path: Path
) -> None:
    p = patient(LpuKnobs(fault="hang"))
    _, url = await upstream(p)
    _, legacy_url = await start_legacy(aiohttp_server)
    client = await shadow_gateway(
        gateway, url, legacy_url, tmp_path, shadow_timeout=0.5, sections={"session": {"deadline": 60.0}}
    )
    await create(client, p.token)
    await wait_until(lambda: results(client, "incomplete", "candidate_timeout") == 1, what="a candidate timeout")
    # The compare's task ends just after it counts its result (its done-callback runs on the next
    # turn of the loop): wait for it rather than race it.
    await wait_until(lambda: client.app[keys.SHADOW].running == 0, within=2.0, what="the compare ended")


async def test_a_gateway_lpu_failed_by_its_deadline_is_a_state_mismatch(
    aiohttp_server: Any, upstream: Any, gateway: Any, tmp_path: Path
) -> None:
    p = patient(None, None)
    _, url = await upstream(p)
    fake, legacy_url = await start_legacy(aiohttp_server)
    fake.answers[p.token] = await gateway_answer(gateway, url, p.token)
    p.lpus[1].knobs = LpuKnobs(fault="hang")  # from now on the gateway's calls to it time out
    client = await shadow_gateway(gateway, url, legacy_url, tmp_path, sections={"session": {"deadline": 0.5}})
    await create(client, p.token)
    await wait_until(lambda: results(client, "mismatch", "state") == 1, what="a state mismatch")
    resp = await client.get("/admin/rollout/shadow", headers=ADMIN)
    [sample] = (await resp.json())["mismatches"]
    assert sample["paths"] == ["[1].state"]


async def test_legacy_unavailable_at_create_gives_the_client_a_502_and_no_gateway_session(
    upstream: Any, gateway: Any, tmp_path: Path
) -> None:
    p = patient(None)
    sandbox, url = await upstream(p)
    client = await shadow_gateway(gateway, url, closed_port_url(), tmp_path)
    resp = await client.get(TICKETS, headers=bearer(p.token))
    assert resp.status == 502 and (await resp.json())["message_code"] == "4502"
    assert results(client, "incomplete", "legacy_unavailable") == 1
    assert sandbox.count() == 0 and client.app[keys.SHADOW].running == 0


async def test_legacy_unavailable_while_comparing(
    aiohttp_server: Any, upstream: Any, gateway: Any, tmp_path: Path
) -> None:
    p = patient(None)
    sandbox, url = await upstream(p)
    fake, legacy_url = await start_legacy(aiohttp_server)
    fake.poll_override = (503, b'{"code": 503}', {"Content-Type": "application/json"})
    client = await shadow_gateway(gateway, url, legacy_url, tmp_path)
    guid = await create(client, p.token)
    assert guid in fake.sessions
    await wait_until(lambda: results(client, "incomplete", "legacy_unavailable") == 1, what="legacy unavailable")
    assert sandbox.count() == 4, "the gateway side ran to the end"
    resp = await client.get(f"{TICKETS}/{guid}")
    assert resp.status == 503 and await resp.read() == b'{"code": 503}', "the client sees the legacy answer"


async def test_beyond_the_concurrency_cap_sessions_are_served_but_not_compared(
    aiohttp_server: Any, upstream: Any, gateway: Any, tmp_path: Path
) -> None:
    p = patient(LpuKnobs(fault="hang"))
    _, url = await upstream(p)
    fake, legacy_url = await start_legacy(aiohttp_server)
    client = await shadow_gateway(
        gateway, url, legacy_url, tmp_path, shadow_max_concurrent=1, sections={"session": {"deadline": 60.0}}
    )
    first, second = await create(client, p.token), await create(client, p.token)
    assert {first, second} <= set(fake.sessions)
    assert client.app[keys.SHADOW].running == 1
    assert results(client, "incomplete", "over_capacity") == 1
