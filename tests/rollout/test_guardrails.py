"""Guardrails: the pure decision (readings, trips, hold on an inconclusive sample, cool-down,
step-up), the flags file's [guardrails] table, and one gateway in front of the fake legacy
service moving one cohort back to legacy and being re-armed."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest

from gateway.cohorts import Cohort, parse_selectors
from gateway.config import RedisConfig, RolloutConfig
from gateway.http import keys
from gateway.observability.metrics import Metrics
from gateway.rollout.flags import Flags, FlagsError, decide, parse_flags
from gateway.rollout.guardrails.board import RedisBoard
from gateway.rollout.guardrails.engine import Guardrails
from gateway.rollout.guardrails.rules import (
    HEALTHY,
    INCONCLUSIVE,
    TRIP,
    CohortState,
    GuardrailRules,
    Rule,
    StepUp,
    next_state,
    read,
    step_up,
)
from gateway.sandbox.data import LpuKnobs
from gateway.tasks import Tasks
from tests.support.fake_legacy import start_legacy, write_flags
from tests.support.gateway import bearer, create, golden_patient, patient, poll_until_final, sample, wait_until
from tests.support.shadow import ADMIN, gateway_answer, results

A, B = Cohort("app-a", "other", "other"), Cohort("app-b", "other", "other")
FAILED_LPUS = Rule("failed_lpu_ratio", above=0.5, window=60.0, min_sessions=5)


def test_a_reading_needs_enough_sessions() -> None:
    assert read(FAILED_LPUS, {"sessions": 4, "lpus": 4, "failed": 4}).outcome == INCONCLUSIVE
    assert read(FAILED_LPUS, {"sessions": 5, "lpus": 10, "failed": 6}).outcome == TRIP
    assert read(FAILED_LPUS, {"sessions": 5, "lpus": 10, "failed": 5}).outcome == HEALTHY
    errors = Rule("error_ratio", above=0.1, min_sessions=2)
    assert read(errors, {"sessions": 2, "answers": 10, "errors": 2}).value == 0.2
    mismatch = Rule("mismatch_ratio", above=0.1, min_sessions=3)
    assert read(mismatch, {"sessions": 100, "compared": 2, "regressions": 2}).outcome == INCONCLUSIVE
    assert read(mismatch, {"compared": 3, "regressions": 1}).outcome == TRIP


def test_next_state_trips_once_holds_and_respects_the_cool_down() -> None:
    trip = [(FAILED_LPUS, read(FAILED_LPUS, {"sessions": 9, "lpus": 9, "failed": 9}))]
    unsure = [(FAILED_LPUS, read(FAILED_LPUS, {"sessions": 1, "lpus": 1, "failed": 1}))]
    armed = CohortState()
    assert next_state(armed, unsure, now=100.0, cooldown=60.0) == armed, "inconclusive holds"
    tripped = next_state(armed, trip, now=100.0, cooldown=60.0)
    assert tripped.tripped and tripped.since == 100.0 and tripped.why is not None
    assert tripped.why["signal"] == "failed_lpu_ratio" and tripped.why["sample"] == 9
    healthy = [(FAILED_LPUS, read(FAILED_LPUS, {"sessions": 9, "lpus": 9, "failed": 0}))]
    assert next_state(tripped, healthy, now=200.0, cooldown=60.0) == tripped, "only a re-arm un-trips"
    rearmed = CohortState(changed_at=150.0)
    assert not next_state(rearmed, trip, now=180.0, cooldown=60.0).tripped, "within the cool-down"
    assert next_state(rearmed, trip, now=211.0, cooldown=60.0).tripped


def test_step_up_promotes_only_after_a_healthy_window() -> None:
    plan = StepUp(step=10.0, every=60.0, max_percent=30.0)
    assert step_up(10.0, None, 1000.0, plan) == (10.0, None)
    assert step_up(10.0, 950.0, 1000.0, plan) == (10.0, 950.0)
    assert step_up(10.0, 900.0, 1000.0, plan) == (20.0, 1000.0)
    assert step_up(25.0, 900.0, 1000.0, plan) == (30.0, 1000.0)
    assert step_up(30.0, 0.0, 1000.0, plan) == (30.0, 0.0)


def test_a_tripped_cohort_goes_to_legacy_before_the_allow_list_but_after_the_kill_switch() -> None:
    flags = Flags(mode="gateway", allow_cohorts=parse_selectors(["app-a/*/*"], "allow_cohorts"))
    assert decide(flags, A, 1, tripped=True).reason == "guardrail"
    assert decide(flags, None, 1, tripped=True).side == "legacy"
    assert decide(Flags(mode="legacy"), None, 1, tripped=True).reason == "default", "nothing to move"
    assert decide(Flags(kill_switch=True), None, 1, tripped=True).reason == "kill_switch"
    assert decide(Flags(gateway_percent=0.0), None, 0, percent=50.0).reason == "percentage"


def test_the_flags_file_guardrails_table() -> None:
    text = """
mode = "gateway"
version = 1
[guardrails]
cooldown = 120
[[guardrails.rule]]
signal = "error_ratio"
above = 0.05
window = 300
min_sessions = 50
cohorts = ["android/*/*", "*/web/4.11"]
[guardrails.step_up]
step = 5
every = 600
"""
    flags = parse_flags(text.encode(), "legacy")
    [rule] = flags.guardrails.rules
    assert rule == Rule("error_ratio", 0.05, 300.0, 50, parse_selectors(["android/*/*", "*/web/4.11"], "x"))
    assert rule.applies(Cohort("android", "ios", "4.11")) and not rule.applies(Cohort("ios", "ios", "4.11"))
    assert rule.applies(Cohort("ios", "web", "4.11")) and not rule.applies(Cohort("ios", "web", "4.12"))
    assert flags.guardrails.cooldown == 120.0 and flags.guardrails.step_up == StepUp(5.0, 600.0)
    for bad in (
        '[guardrails]\n[[guardrails.rule]]\nsignal = "latency"\nabove = 0.1\n',
        '[guardrails]\n[[guardrails.rule]]\nsignal = "error_ratio"\nabove = 2\n',
        '[guardrails]\n[[guardrails.rule]]\nsignal = "error_ratio"\nabove = 0.1\nmin_session = 3\n',
        "[guardrails]\ncool_down = 3\n",
    ):
        with pytest.raises(FlagsError):
            parse_flags(bad.encode(), "legacy")


CLIENTS = {"by_user_agent": {"^app-a/": "app-a", "^app-b/": "app-b"}}
AGENT_A, AGENT_B = {"User-Agent": "app-a/1.0"}, {"User-Agent": "app-b/1.0"}
GUARDRAIL = """
mode = "gateway"
version = "{version}"
[guardrails]
cooldown = {cooldown}
[[guardrails.rule]]
signal = "failed_lpu_ratio"
above = 0.5
window = 60
min_sessions = {min_sessions}
"""


async def guarded(gateway: Any, url: str, legacy_url: str, flags: Path, text: str) -> Any:
    """A gateway in front of the fake legacy service, with these flags and a fast guardrail loop."""
    write_flags(flags, text)
    rollout = {
        "legacy_url": legacy_url,
        "flags_file": str(flags),
        "admin_token": ADMIN["X-Admin-Token"],
        "guardrail_interval": 0.1,
        "shadow_poll_interval": 0.05,
    }
    return await gateway(url, rollout=rollout, clients=CLIENTS)


async def start_guarded(gateway: Any, url: str, legacy_url: str, flags: Path, **rules: Any) -> Any:
    return await guarded(
        gateway, url, legacy_url, flags, GUARDRAIL.format(**({"cooldown": 0, "min_sessions": 3, "version": 1} | rules))
    )


async def session_on(client: Any, token: str, agent: dict[str, str]) -> str:
    """Creates a session; "gateway" or "legacy" by where it went, once polled to the end."""
    guid = await create(client, token, **agent)
    await poll_until_final(client, guid, headers={"Authorization": f"Bearer {token}"} | agent)
    return guid


def decisions(client: Any, side: str, reason: str) -> float:
    return sample(client, "gateway_rollout_decisions_total", side=side, reason=reason)


async def test_a_failing_cohort_trips_to_legacy_alone_and_is_re_armed(
    aiohttp_server: Any, upstream: Any, gateway: Any, tmp_path: Path
) -> None:
    broken = patient(LpuKnobs(fault="status"))
    healthy = patient(None)
    _, url = await upstream(broken, healthy)
    fake, legacy_url = await start_legacy(aiohttp_server)
    client = await start_guarded(gateway, url, legacy_url, tmp_path / "flags.toml")

    # Two sessions: fewer than min_sessions, however bad, is inconclusive and moves nothing.
    first = [await session_on(client, broken.token, AGENT_A) for _ in range(2)]
    signal = {"cohort": "app-a/other/other", "signal": "failed_lpu_ratio"}
    # NaN: evaluated, and too few sessions to say.
    await wait_until(lambda: math.isnan(sample(client, "gateway_guardrail_signal_ratio", **signal)), what="a reading")
    state = (await (await client.get("/admin/rollout", headers=ADMIN)).json())["guardrails"]
    assert state["cohorts"]["app-a/other/other"]["state"] == "armed"
    assert state["cohorts"]["app-a/other/other"]["signals"][0]["outcome"] == "inconclusive"
    assert not fake.creates()

    await session_on(client, broken.token, AGENT_A)  # the third: 3 of 3 LPUs Failed
    await wait_until(
        lambda: sample(client, "gateway_guardrail_tripped", cohort="app-a/other/other") == 1, what="the trip"
    )
    assert sample(client, "gateway_guardrail_trips_total", cohort="app-a/other/other", signal="failed_lpu_ratio") == 1
    await create(client, broken.token, **AGENT_A)
    assert len(fake.creates()) == 1, "the tripped cohort's new session went to legacy"
    assert decisions(client, "legacy", "guardrail") == 1
    await session_on(client, healthy.token, AGENT_B)
    assert len(fake.creates()) == 1, "another cohort stays on the gateway"
    resp = await client.get(f"/api/v2/old/visit/tickets/{first[0]}", headers=AGENT_A)
    assert resp.status == 200, "an existing session keeps its side"

    state = (await (await client.get("/admin/rollout", headers=ADMIN)).json())["guardrails"]
    cohort = state["cohorts"]["app-a/other/other"]
    assert cohort["state"] == "tripped" and cohort["since"] > 0
    assert cohort["why"]["signal"] == "failed_lpu_ratio" and cohort["why"]["value"] == 1.0

    resp = await client.post("/admin/rollout/guardrails/app-a/other/other/rearm")
    assert resp.status == 404, "the admin token first"
    resp = await client.post("/admin/rollout/guardrails/app-a/other/other/rearm", headers=ADMIN)
    assert resp.status == 200 and (await resp.json())["rearmed"] is True
    assert sample(client, "gateway_guardrail_tripped", cohort="app-a/other/other") == 0
    assert sample(client, "gateway_guardrail_rearms_total", cohort="app-a/other/other", how="admin") == 1
    await session_on(client, healthy.token, AGENT_A)
    assert len(fake.creates()) == 1, "re-armed: the cohort is back on the gateway"
    resp = await client.post("/admin/rollout/guardrails/app-a/other/other/rearm", headers=ADMIN)
    assert resp.status == 409, "nothing to re-arm"


async def test_a_flags_change_re_arms_and_the_cool_down_stops_a_flap(
    aiohttp_server: Any, upstream: Any, gateway: Any, tmp_path: Path
) -> None:
    broken = patient(LpuKnobs(fault="status"))
    _, url = await upstream(broken)
    fake, legacy_url = await start_legacy(aiohttp_server)
    flags = tmp_path / "flags.toml"
    client = await start_guarded(gateway, url, legacy_url, flags, cooldown=3600, min_sessions=1, version=1)
    await session_on(client, broken.token, AGENT_A)
    await wait_until(lambda: sample(client, "gateway_guardrail_tripped", cohort="app-a/other/other") == 1, what="trip")
    # New flags (a new version): the trip was made under the old ones.
    write_flags(flags, GUARDRAIL.format(cooldown=3600, min_sessions=1, version=2))
    await wait_until(
        lambda: sample(client, "gateway_guardrail_rearms_total", cohort="app-a/other/other", how="flags") == 1,
        within=15.0,
        what="re-armed by the flags change",
    )
    # The same bad signal again: within the cool-down the cohort does not flip back.
    await session_on(client, broken.token, AGENT_A)
    await session_on(client, broken.token, AGENT_A)
    await wait_until(
        lambda: (
            sample(client, "gateway_guardrail_signal_ratio", cohort="app-a/other/other", signal="failed_lpu_ratio")
            == 1.0
        ),
        what="the bad signal read",
    )
    assert sample(client, "gateway_guardrail_tripped", cohort="app-a/other/other") == 0
    assert sample(client, "gateway_guardrail_trips_total", cohort="app-a/other/other", signal="failed_lpu_ratio") == 1
    assert not fake.creates()


async def test_step_up_promotes_a_healthy_cohort_and_holds_an_inconclusive_one(
    aiohttp_server: Any, upstream: Any, gateway: Any, tmp_path: Path
) -> None:
    p = golden_patient()  # the fake legacy answers the same: every shadow compare matches
    _, url = await upstream(p)
    fake, legacy_url = await start_legacy(aiohttp_server)
    flags = tmp_path / "flags.toml"
    client = await guarded(
        gateway,
        url,
        legacy_url,
        flags,
        'mode = "shadow"\ngateway_percent = 0\nversion = 1\n[guardrails]\ncooldown = 0\n'
        '[[guardrails.rule]]\nsignal = "mismatch_ratio"\nabove = 0.1\nwindow = 60\nmin_sessions = 2\n'
        "[guardrails.step_up]\nstep = 50\nevery = 1\n",
    )
    rails = client.app[keys.ROLLOUT].guardrails
    await create(client, p.token, **AGENT_A)
    await wait_until(lambda: results(client, "match", "equal") == 1, what="one compare")
    # One compared session is inconclusive: no step, however long it stays that way.
    await wait_until(lambda: rails.describe()["cohorts"].get("app-a/other/other"), what="a reading")
    assert rails.percent(A, 0.0) == 0.0
    await create(client, p.token, **AGENT_A)
    await wait_until(lambda: results(client, "match", "equal") == 2, what="two compares")
    await wait_until(lambda: rails.percent(A, 0.0) == 100.0, within=15.0, what="two steps")
    assert sample(client, "gateway_guardrail_steps_total", cohort="app-a/other/other") == 2
    assert rails.percent(B, 0.0) == 0.0, "a cohort with no compares is not promoted"
    creates = len(fake.creates())
    guid = await create(client, p.token, **AGENT_A)
    assert len(fake.creates()) == creates, "promoted to 100 %: the gateway serves the cohort"
    assert decisions(client, "gateway", "percentage") == 1
    await poll_until_final(client, guid, headers=bearer(p.token) | AGENT_A)


async def test_on_redis_new_flags_re_arm_and_can_trip_again(redis_server: Any) -> None:
    metrics, tasks = Metrics(), Tasks()
    board = RedisBoard(RedisConfig(url=redis_server.url, prefix="vg-test"))
    one = GuardrailRules((Rule("failed_lpu_ratio", above=0.5, window=60.0, min_sessions=1),), cooldown=0.0)
    rails = Guardrails(RolloutConfig(), metrics, tasks, [A, B], board)
    other = Guardrails(RolloutConfig(), Metrics(), Tasks(), [A, B], board)
    try:
        for replica in (rails, other):
            replica.update(one, "digest-1")
        rails.record_answer(A, "create", 200)
        rails.record_final(A, 1, 1)
        await rails.tick()
        await other.refresh()
        assert rails.tripped(A) and other.tripped(A) and not other.tripped(B)
        for replica in (rails, other):
            replica.update(one, "digest-2")  # the flags file changed
        assert not rails.tripped(A) and not other.tripped(A)
        labels = {"cohort": "app-a/other/other", "how": "flags"}
        assert metrics.registry.get_sample_value("gateway_guardrail_rearms_total", labels) == 1
        await other.refresh()
        assert not other.tripped(A), "the old trip does not count under the new flags"
        rails.record_answer(A, "create", 200)
        rails.record_final(A, 1, 1)
        await rails.tick()
        await other.refresh()
        assert other.tripped(A), "a new trip under the new flags reaches the other replica"
        assert await other.rearm(A)
        await rails.refresh()
        assert not rails.tripped(A)
    finally:
        await rails.close()
        await other.close()


async def test_a_regression_ratio_takes_a_shadowed_cohort_out_of_shadow(
    aiohttp_server: Any, upstream: Any, gateway: Any, tmp_path: Path
) -> None:
    p = patient(None)
    _, url = await upstream(p)
    fake, legacy_url = await start_legacy(aiohttp_server)
    answer = copy.deepcopy(await gateway_answer(gateway, url, p.token))
    answer[0]["visits"][0]["room"] = "LEGACY-ROOM"  # a gateway bug in every compare
    fake.answers[p.token] = answer
    flags = tmp_path / "flags.toml"
    client = await guarded(
        gateway,
        url,
        legacy_url,
        flags,
        'mode = "shadow"\nversion = 1\n[guardrails]\ncooldown = 0\n'
        '[[guardrails.rule]]\nsignal = "mismatch_ratio"\nabove = 0.5\nwindow = 60\nmin_sessions = 3\n',
    )
    cohort = {"cohort": "app-a/other/other"}
    for n in (1, 2):
        await create(client, p.token, **AGENT_A)
        await wait_until(lambda n=n: results(client, "mismatch", "records") == n, what=f"compare {n}")
    await wait_until(
        lambda: math.isnan(sample(client, "gateway_guardrail_signal_ratio", **cohort, signal="mismatch_ratio")),
        what="an inconclusive reading",
    )
    assert sample(client, "gateway_guardrail_tripped", **cohort) == 0, "two compared sessions are too few"
    await create(client, p.token, **AGENT_A)
    await wait_until(lambda: sample(client, "gateway_guardrail_tripped", **cohort) == 1, what="the trip")
    compared = sample(client, "gateway_rollout_decisions_total", side="shadow", reason="default")
    await create(client, p.token, **AGENT_A)
    assert decisions(client, "legacy", "guardrail") == 1, "served by legacy, not shadowed"
    assert sample(client, "gateway_rollout_decisions_total", side="shadow", reason="default") == compared
    await create(client, p.token, **AGENT_B)
    assert sample(client, "gateway_rollout_decisions_total", side="shadow", reason="default") == compared + 1


async def test_gateway_side_5xx_trip_an_error_ratio_rule(
    aiohttp_server: Any, upstream: Any, gateway: Any, tmp_path: Path
) -> None:
    broken = patient(None)
    broken.mkab_status = 500  # every create on the gateway side answers 502
    _, url = await upstream(broken)
    fake, legacy_url = await start_legacy(aiohttp_server)
    flags = tmp_path / "flags.toml"
    client = await guarded(
        gateway,
        url,
        legacy_url,
        flags,
        'mode = "gateway"\nversion = 1\n[guardrails]\ncooldown = 0\n'
        '[[guardrails.rule]]\nsignal = "error_ratio"\nabove = 0.5\nwindow = 60\nmin_sessions = 3\n',
    )
    cohort = {"cohort": "app-a/other/other"}
    for _ in range(3):
        resp = await client.get("/api/v2/old/visit/tickets", headers=bearer(broken.token) | AGENT_A)
        assert resp.status == 502
    await wait_until(lambda: sample(client, "gateway_guardrail_tripped", **cohort) == 1, what="the trip")
    assert sample(client, "gateway_guardrail_trips_total", **cohort, signal="error_ratio") == 1
    assert sample(client, "gateway_guardrail_signal_ratio", **cohort, signal="error_ratio") == 1.0
    await create(client, broken.token, **AGENT_A)
    assert len(fake.creates()) == 1, "the legacy service serves the cohort now"


async def test_a_trip_decided_while_redis_is_down_holds_here_and_reaches_the_others_later(redis_server: Any) -> None:
    config = RedisConfig(url=redis_server.url, prefix="vg-outage", timeout=0.3)
    one = GuardrailRules((Rule("error_ratio", above=0.5, window=60.0, min_sessions=2),), cooldown=0.0)
    rails = Guardrails(RolloutConfig(), Metrics(), Tasks(), [A], RedisBoard(config))
    other = Guardrails(RolloutConfig(), Metrics(), Tasks(), [A], RedisBoard(config))
    try:
        for replica in (rails, other):
            replica.update(one, "digest-1")
        other.record_answer(A, "create", 502)
        await other.tick()  # publishes one session: inconclusive alone
        assert not other.tripped(A)
        rails.record_answer(A, "create", 502)
        await rails.tick()  # one here and one there: two sessions, all 5xx
        assert rails.tripped(A), "tripped on the fleet's two sessions"
        await other.refresh()
        assert other.tripped(A)
        assert await other.rearm(A)
        await rails.refresh()
        assert not rails.tripped(A)

        redis_server.stop()
        for _ in range(2):
            rails.record_answer(A, "create", 503)
        await rails.tick()
        assert rails.tripped(A), "no board: this replica trips on its own counts"
        await rails.refresh()
        assert rails.tripped(A), "and keeps the trip while the board is away"
        redis_server.start()

        async def followed() -> bool:
            await rails.refresh()  # writes the pending trip, once Redis answers again
            await other.refresh()
            return other.tripped(A)

        await wait_until(followed, what="the other replica following once Redis is back")
    finally:
        await rails.close()
        await other.close()
