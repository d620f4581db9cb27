"""Shadow mode against the fake legacy service and the sandbox: the protocol-aware classes, noise
calibration (legacy read twice) separating a planted regression from a field legacy itself varies,
and no personal data in what the compare reports (issue 11 row 14)."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

from prometheus_client import generate_latest

from gateway.http import keys
from gateway.sandbox.data import LpuKnobs
from tests.support.fake_legacy import start_legacy
from tests.support.gateway import LOG, create, patient, sample, wait_until
from tests.support.shadow import ADMIN, gateway_answer, results, shadow_gateway

PERSONAL_KEY = "Петров Пётр Петрович, СНИЛС 112-233-445 95"
PERSONAL_VALUE = "ЗНАЧЕНИЕ-ЛИЧНОЕ"


async def shadow_report(client: Any) -> dict[str, Any]:
    resp = await client.get("/admin/rollout/shadow", headers=ADMIN)
    assert resp.status == 200
    return await resp.json()


async def test_a_planted_regression_is_told_from_a_field_legacy_itself_varies(
    aiohttp_server: Any, upstream: Any, gateway: Any, tmp_path: Path
) -> None:
    p = patient(None, None)
    _, url = await upstream(p)
    fake, legacy_url = await start_legacy(aiohttp_server)
    legacy_answer = copy.deepcopy(await gateway_answer(gateway, url, p.token))
    # The gateway "bug": its visit room differs from legacy's in every session.
    legacy_answer[0]["visits"][0]["room"] = "LEGACY-ROOM"
    fake.answers[p.token] = legacy_answer
    fake.noisy = ("calls", "dateStatus")  # legacy rewrites it on every read
    client = await shadow_gateway(
        gateway, url, legacy_url, tmp_path, shadow_noise_sample=1.0, shadow_noise_per_minute=600.0
    )
    sessions = 6
    started = time.monotonic()
    for _ in range(sessions):
        await create(client, p.token)
    await wait_until(
        lambda: sample(client, "gateway_shadow_calibrations_total", result="compared") == sessions,
        within=30.0,
        what="every compared session calibrated",
    )
    elapsed = time.monotonic() - started
    assert results(client, "mismatch", "records") == sessions
    assert len(fake.creates()) == 2 * sessions, "one second legacy session per calibration, no more"

    report = (await shadow_report(client))["fields"]
    assert report["compared"] == sessions and report["calibrated"] == sessions
    regressions = {(f["class"], f["field"]) for f in report["regressions"]}
    noise = {(f["class"], f["field"]): f for f in report["noise"]}
    assert regressions == {("content", "visits.room")}
    assert ("content", "calls.dateStatus") in noise
    assert noise[("content", "calls.dateStatus")]["noise_rate"] == 1.0
    assert report["noise_rates"]["calls.dateStatus"] == 1.0
    assert report["suggested_ignore_fields"] == ["calls.dateStatus"]
    # Per-field counters as metrics: by class and field, and the noise rate's parts.
    assert (
        sample(client, "gateway_shadow_differences_total", **{"class": "content", "field": "visits.room"}) == sessions
    )
    assert sample(client, "gateway_shadow_noise_differences_total", field="calls.dateStatus") == sessions
    assert sample(client, "gateway_shadow_noise_differences_total", field="visits.room") == 0
    # Once calibrated, a session is a regression because of the room, not the noisy field.
    last = (await shadow_report(client))["mismatches"][0]
    assert last["verdict"] == "regression" and last["regressions"] == ["visits.room"]
    print(f"\n{sessions} sessions compared and calibrated in {elapsed:.2f}s; noise rates {report['noise_rates']}")


async def test_the_noise_budget_bounds_the_second_legacy_reads(
    aiohttp_server: Any, upstream: Any, gateway: Any, tmp_path: Path
) -> None:
    p = patient(None)
    _, url = await upstream(p)
    fake, legacy_url = await start_legacy(aiohttp_server)
    fake.answers[p.token] = await gateway_answer(gateway, url, p.token)
    client = await shadow_gateway(
        gateway, url, legacy_url, tmp_path, shadow_noise_sample=1.0, shadow_noise_per_minute=2
    )
    for _ in range(5):
        await create(client, p.token)
    await wait_until(lambda: results(client, "match", "equal") == 5, within=20.0, what="five compares")
    await wait_until(
        lambda: sample(client, "gateway_shadow_calibrations_total", result="compared") == 2,
        what="the budget's two calibrations",
    )
    assert sample(client, "gateway_shadow_calibrations_total", result="over_budget") == 3
    assert len(fake.creates()) == 5 + 2


async def test_a_hospital_failing_only_on_the_gateway_side_is_a_state_difference(
    aiohttp_server: Any, upstream: Any, gateway: Any, tmp_path: Path
) -> None:
    p = patient(None, None)
    _, url = await upstream(p)
    fake, legacy_url = await start_legacy(aiohttp_server)
    fake.answers[p.token] = await gateway_answer(gateway, url, p.token)
    p.lpus[1].knobs = LpuKnobs(fault="status")  # from now on only the gateway sees it fail
    client = await shadow_gateway(gateway, url, legacy_url, tmp_path)
    await create(client, p.token)
    await wait_until(lambda: results(client, "mismatch", "state") == 1, what="a state mismatch")
    report = await shadow_report(client)
    [mismatch] = report["mismatches"]
    assert mismatch["class"] == "state" and mismatch["classes"] == {"state": 1}
    assert mismatch["paths"] == ["[1].state"]
    assert isinstance(mismatch["seconds"], float), "the compare's duration, as before"
    assert 0 <= mismatch["final_seconds"]["gateway"] <= mismatch["seconds"]
    assert [(f["class"], f["field"]) for f in report["fields"]["regressions"]] == [("state", "state")]
    assert sample(client, "gateway_shadow_differences_total", **{"class": "state", "field": "state"}) == 1


async def test_no_personal_data_in_logs_samples_or_metrics(
    aiohttp_server: Any, upstream: Any, gateway: Any, tmp_path: Path
) -> None:
    # Issue 11 row 14: a pass-through disp item with a key that carries personal data.
    p = patient(None, None)  # the sandbox's LPU 2 has a disp item
    _, url = await upstream(p)
    fake, legacy_url = await start_legacy(aiohttp_server)
    legacy_answer = copy.deepcopy(await gateway_answer(gateway, url, p.token))
    assert legacy_answer[1]["disps"], "a disp item to pass through"
    legacy_answer[1]["disps"][0][PERSONAL_KEY] = PERSONAL_VALUE
    fake.answers[p.token] = legacy_answer
    fake.noisy = ("disps", "Иванова Мария")  # a noisy personal key too, seen by calibration
    client = await shadow_gateway(
        gateway, url, legacy_url, tmp_path, shadow_noise_sample=1.0, shadow_noise_per_minute=600.0
    )
    log_start = len(LOG.getvalue())
    await create(client, p.token, **{"X-Request-Id": "pii-req-1"})
    await wait_until(
        lambda: sample(client, "gateway_shadow_calibrations_total", result="compared") == 1, what="a calibration"
    )
    report = await shadow_report(client)
    [mismatch] = report["mismatches"]
    assert mismatch["class"] == "content" and len(mismatch["paths"]) == 2
    assert all(path.startswith("[1].disps[0].~") for path in mismatch["paths"]), "keys hashed"
    logged = LOG.getvalue()[log_start:]
    line = next(json.loads(x) for x in logged.splitlines() if "pii-req-1" in x and "shadow_mismatch" in x)
    assert line["paths"] == mismatch["paths"]
    metrics_text = generate_latest(client.app[keys.METRICS].registry).decode()
    for text in (json.dumps(report, ensure_ascii=False), logged, metrics_text):
        for personal in ("Петров", "СНИЛС", "112-233-445", "Иванова", PERSONAL_VALUE, p.token):
            assert personal not in text
        for guid in fake.sessions:
            assert guid not in text, "no session GUID either"
    assert 'field="disps.*"' in metrics_text, "a pass-through key is * as a metric label"
    # The noisy pass-through key cannot be suggested by name: the list it sits in is.
    assert report["fields"]["suggested_ignore_fields"] == ["disps"]
