"""Guarded brownouts: the pure rule over thousands of requests (windows open and close on the
second, only the target cohort, the share within a stated tolerance, the guards and the kill
switch), then real gateways: refusals with the standard 503 and Retry-After, only on creates of
the target cohort, polls of existing sessions untouched, soft delays, dry runs, and pauses."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.cohorts import Cohort
from gateway.contract import ERRORS
from gateway.migration.brownout import (
    BUCKETS,
    Guards,
    GuardView,
    GuardWindow,
    decide_brownout,
    share_bucket,
)
from gateway.migration.clock import ManualClock
from gateway.rollout.flags import parse_flags
from gateway.sandbox.data import SandboxPatient, demo_lpu
from tests.support.gateway import LOG, TICKETS, new_token, poll_until_final, sample
from tests.support.migration import APPS, T0, call, iso, migration_config, report, serve, set_flags

BETA = Cohort("beta", "ios", "4.9")
ALPHA = Cohort("alpha", "android", "5.0")
START = T0 + 3600
QUIET = GuardView()
GUARDS = Guards(min_requests=20, max_share=0.2, max_error_rate=0.2)


def brownout_flags(mode: str = "fail", share: float = 1.0, extra: str = "", **more: Any) -> str:
    lines = "".join(f"{k} = {json.dumps(v)}\n" for k, v in more.items())
    return f"""
version = 1
[migration]
{extra}
[[migration.brownout]]
name = "beta-first"
cohorts = ["beta/*/4.9"]
start = {iso(START)}
duration = 600
share = {share}
mode = "{mode}"
{lines}"""


async def brownout_gateway(
    upstream: Any, aiohttp_client: Any, tmp_path: Path, flags: str, **migration: Any
) -> tuple[Any, dict[str, str]]:
    """A gateway at START + 1 s running `flags`, and one patient token per app."""
    tokens = {app: new_token() for app in APPS}
    _, url = await upstream(*(SandboxPatient(t, [demo_lpu(1)]) for t in tokens.values()))
    config = migration_config(url, tmp_path, flags, migration=migration)
    return await serve(aiohttp_client, config, ManualClock(START + 1)), tokens


def flags_of(text: str) -> Any:
    return parse_flags(text.encode(), "legacy").migration


def test_the_window_opens_and_closes_on_the_second_for_the_target_cohort_only() -> None:
    flags = flags_of(brownout_flags())
    token = new_token()

    def outcome(cohort: Cohort, when: float) -> str | None:
        decision = decide_brownout(flags, cohort, token, when, QUIET, GUARDS)
        return decision.outcome if decision else None

    assert [outcome(BETA, START + dt) for dt in (-1, -0.001, 0, 1, 599.999, 600, 601)] == [
        None,
        None,
        "refused",
        "refused",
        "refused",
        None,
        None,
    ]
    for cohort in (
        ALPHA,
        Cohort("beta", "ios", "5.0"),
        Cohort("beta", "android", "other"),
        Cohort("gamma", "web", "4.9"),
    ):
        assert outcome(cohort, START + 10) is None, cohort
    assert outcome(Cohort("beta", "android", "4.9"), START + 10) == "refused"  # no platform in the selector
    decision = decide_brownout(flags, BETA, token, START + 100.5, QUIET, GUARDS)
    assert decision is not None and decision.retry_after == 500  # until the window closes, rounded up
    # A switch-off (a window of months) tells clients to come back within a day.
    switch_off = flags_of(brownout_flags().replace("duration = 600", f"duration = {200 * 86400}"))
    decision = decide_brownout(switch_off, BETA, token, START + 5, QUIET, GUARDS)
    assert decision is not None and (decision.outcome, decision.retry_after) == ("refused", 86400)


@pytest.mark.parametrize("share", [0.1, 0.25, 0.5, 0.9])
def test_the_share_over_thousands_of_requests_is_within_tolerance(share: float) -> None:
    # 4000 patients; the hash draws like a fair coin, so the refused fraction is binomial with
    # sd = sqrt(share (1 - share) / 4000) <= 0.8 points; the tolerance is 3 points (> 3.75 sd).
    flags = flags_of(brownout_flags(share=share))
    tokens = [f"tok-share-{i}" for i in range(4000)]
    outcomes = [decide_brownout(flags, BETA, t, START + 5, QUIET, GUARDS).outcome for t in tokens]  # type: ignore[union-attr]
    refused = outcomes.count("refused") / len(tokens)
    assert abs(refused - share) <= 0.03, refused
    assert set(outcomes) == {"refused", "spared"}
    # Deterministic: the same patient gets the same answer on every replica, all window long.
    again = [decide_brownout(flags, BETA, t, START + 590, QUIET, GUARDS).outcome for t in tokens]  # type: ignore[union-attr]
    assert again == outcomes
    # Another brownout's name draws another share (not the same patients every time).
    other = {t for t in tokens if share_bucket("beta-second", t) < share * BUCKETS}
    first = {t for t, o in zip(tokens, outcomes, strict=True) if o == "refused"}
    assert other != first


def test_guards_pause_and_the_kill_switch_stops() -> None:
    flags = flags_of(brownout_flags())
    token = "tok-guards"

    def outcome(view: GuardView, text: str | None = None) -> str:
        decision = decide_brownout(flags_of(text) if text else flags, BETA, token, START + 5, view, GUARDS)
        assert decision is not None
        return decision.outcome

    # Too few creates to judge the share: the window applies.
    assert outcome(GuardView(creates=19, cohort_creates=19)) == "refused"
    assert outcome(GuardView(creates=100, cohort_creates=20)) == "refused"  # exactly 20 %: not above
    assert outcome(GuardView(creates=100, cohort_creates=21)) == "paused_share"
    assert outcome(GuardView(creates=100, cohort_creates=10, cohort_served=10, cohort_errors=2)) == "refused"
    assert outcome(GuardView(creates=100, cohort_creates=10, cohort_served=10, cohort_errors=3)) == "paused_errors"
    assert outcome(GuardView(creates=100, cohort_creates=10, cohort_served=4, cohort_errors=4)) == "refused"  # < 5
    assert outcome(QUIET, brownout_flags(extra="brownout_kill_switch = true")) == "killed"
    assert outcome(QUIET, brownout_flags(mode="dry_run")) == "dry_run"
    decision = decide_brownout(flags_of(brownout_flags(mode="soft", delay=1.5)), BETA, token, START, QUIET, GUARDS)
    assert decision is not None and (decision.outcome, decision.delay) == ("delayed", 1.5)
    # No token: nothing to draw the share from; the create route answers 401 itself.
    assert decide_brownout(flags, BETA, None, START, QUIET, GUARDS).outcome == "spared"  # type: ignore[union-attr]


def test_the_guard_window_forgets_what_is_older_than_it() -> None:
    clock = ManualClock(T0)
    window = GuardWindow(clock, 300.0)
    for _ in range(8):
        window.record(BETA, refused=False, error=True)
    window.record(BETA, refused=True, error=False)
    window.record(ALPHA, refused=False, error=False)
    assert window.view(BETA) == GuardView(creates=10, cohort_creates=9, cohort_served=8, cohort_errors=8)
    clock.advance(290)
    assert window.view(BETA).cohort_creates == 9
    clock.advance(20)
    assert window.view(BETA) == GuardView()


async def test_a_brownout_refuses_only_the_target_cohorts_creates_in_its_window_and_never_a_poll(
    upstream: Any, aiohttp_client: Any, tmp_path: Path
) -> None:
    tokens = {app: new_token() for app in APPS}
    _, url = await upstream(*(SandboxPatient(t, [demo_lpu(1), demo_lpu(2)]) for t in tokens.values()))
    clock = ManualClock(START - 60)
    client = await serve(aiohttp_client, migration_config(url, tmp_path, brownout_flags()), clock)

    # Before the window: beta creates a session, and keeps it.
    status, before, _ = await call(client, "beta", tokens["beta"])
    assert status == 200
    clock.set(START + 100)
    resp = await client.get(TICKETS, headers=APPS["beta"][0] | {"Authorization": f"Bearer {tokens['beta']}"})
    assert resp.status == 503
    kind = ERRORS["unavailable"]
    assert await resp.json() == {"code": 503, "message": kind.message, "message_code": kind.message_code}
    assert resp.headers["Retry-After"] == "500"
    for app in ("alpha", "gamma", "stranger"):
        assert (await call(client, app, tokens[app]))[0] == 200, app
    # The session made before the window is served to its end, however often it is polled.
    body, _ = await poll_until_final(client, before["session"], headers=APPS["beta"][0])
    assert {e["state"] for e in body} == {"Complete"}
    assert sample(client, "gateway_brownout_decisions_total", cohort="beta/ios/4.9", outcome="refused") == 1
    clock.set(START + 600)
    assert (await call(client, "beta", tokens["beta"]))[0] == 200
    lines = [json.loads(line) for line in LOG.getvalue().splitlines() if '"brownout_decision"' in line]
    assert lines[-1]["brownout"] == "beta-first" and lines[-1]["outcome"] == "refused"
    assert lines[-1]["cohort"] == "beta/ios/4.9" and tokens["beta"] not in LOG.getvalue()
    cohorts = {c["cohort"]: c for c in (await report(client))["cohorts"]}
    assert cohorts["beta/ios/4.9"]["brownouts_30d"]["refused"] == 1
    assert cohorts["beta/ios/4.9"]["errors_30d"] == 0  # a refusal is not an error of the cohort


async def test_over_http_exactly_the_patients_the_rule_picks_are_refused(
    upstream: Any, aiohttp_client: Any, tmp_path: Path
) -> None:
    tokens = [new_token() for _ in range(200)]
    _, url = await upstream(*(SandboxPatient(t, [demo_lpu(1)]) for t in tokens))
    clock = ManualClock(START + 1)
    # The share guard would pause a cohort that is all the traffic: off for this count.
    config = migration_config(url, tmp_path, brownout_flags(share=0.3), migration={"brownout_max_share": 1.0})
    client = await serve(aiohttp_client, config, clock)
    refused = set()
    for token in tokens:
        status, _, _ = await call(client, "beta", token)
        assert status in (200, 503)
        if status == 503:
            refused.add(token)
    picked = {t for t in tokens if share_bucket("beta-first", t) < 0.3 * BUCKETS}
    assert refused == picked
    # 200 patients at 30 %: sd 3.2 points; 10 points of tolerance.
    assert abs(len(refused) / len(tokens) - 0.3) <= 0.1


async def test_dry_run_counts_who_would_be_hit_and_soft_mode_only_delays(
    upstream: Any, aiohttp_client: Any, tmp_path: Path
) -> None:
    client, tokens = await brownout_gateway(upstream, aiohttp_client, tmp_path, brownout_flags(mode="dry_run"))
    for app in ("beta", "beta", "alpha"):
        assert (await call(client, app, tokens[app]))[0] == 200
    found = await report(client)
    [brownout] = found["brownouts"]
    assert (brownout["name"], brownout["mode"], brownout["state"]) == ("beta-first", "dry_run", "open")
    assert brownout["hits"] == {"beta/ios/4.9": 2}
    assert {c["cohort"]: c["brownouts_30d"]["dry_run"] for c in found["cohorts"]} == {
        "beta/ios/4.9": 2,
        "alpha/android/5.0": 0,
    }

    await set_flags(client, brownout_flags(mode="soft", delay=0.4))
    started = time.monotonic()
    assert (await call(client, "beta", tokens["beta"]))[0] == 200
    assert time.monotonic() - started >= 0.4
    assert sample(client, "gateway_brownout_decisions_total", cohort="beta/ios/4.9", outcome="delayed") == 1


async def test_a_brownout_pauses_itself_while_its_cohort_carries_too_much_traffic(
    upstream: Any, aiohttp_client: Any, tmp_path: Path
) -> None:
    client, tokens = await brownout_gateway(
        upstream, aiohttp_client, tmp_path, brownout_flags(), brownout_guard_min_requests=10
    )
    # Until 10 creates are seen the share is not judged: beta's are refused.
    for app in ["beta", "alpha"] * 5:
        assert (await call(client, app, tokens[app]))[0] == (503 if app == "beta" else 200)
    # Then beta is 5 of 10 creates (50 % > 20 %): the brownout is paused and beta is served.
    assert (await call(client, "beta", tokens["beta"]))[0] == 200
    assert (
        sample(
            client,
            "gateway_brownout_decisions_total",
            cohort="beta/ios/4.9",
            outcome="paused_share",
        )
        == 1
    )
    # Other cohorts dilute beta (6 of 41) below 20 %: the brownout resumes.
    for _ in range(30):
        assert (await call(client, "alpha", tokens["alpha"]))[0] == 200
    assert (await call(client, "beta", tokens["beta"]))[0] == 503
    # The kill switch stops it at once.
    await set_flags(client, brownout_flags(extra="brownout_kill_switch = true"))
    assert (await call(client, "beta", tokens["beta"]))[0] == 200
    assert (await report(client))["brownouts"][0]["state"] == "killed"


async def test_a_brownout_pauses_itself_when_its_cohorts_error_rate_spikes(
    upstream: Any, aiohttp_client: Any, tmp_path: Path
) -> None:
    token = new_token()
    # The upstream fails this patient's LPU list: every create that is served answers 502.
    _, url = await upstream(SandboxPatient(token, [demo_lpu(1)], mkab_status=500))
    clock = ManualClock(START + 1)
    config = migration_config(url, tmp_path, brownout_flags(mode="dry_run"), migration={"brownout_max_share": 1.0})
    client = await serve(aiohttp_client, config, clock)
    for _ in range(6):
        assert (await call(client, "beta", token))[0] == 502

    def outcome(name: str) -> float:
        return sample(client, "gateway_brownout_decisions_total", cohort="beta/ios/4.9", outcome=name)

    # Five served, all 5xx (above 20 %): from the sixth on the brownout stands aside.
    assert (outcome("dry_run"), outcome("paused_errors")) == (5, 1)


async def test_a_soft_brownout_holds_at_most_brownout_max_delayed_creates_at_once(
    upstream: Any, aiohttp_client: Any, tmp_path: Path
) -> None:
    flags = brownout_flags(mode="soft", delay=3.0)
    client, tokens = await brownout_gateway(upstream, aiohttp_client, tmp_path, flags, brownout_max_delayed=1)
    # The first create is held 3 s; the two sent meanwhile are not held (and not refused).
    statuses = await asyncio.gather(*(call(client, "beta", tokens["beta"]) for _ in range(3)))
    assert [s for s, _, _ in statuses] == [200, 200, 200]

    def outcome(name: str) -> float:
        return sample(client, "gateway_brownout_decisions_total", cohort="beta/ios/4.9", outcome=name)

    assert (outcome("delayed"), outcome("spared")) == (1, 2)
