"""The rollout rule, pure: precedence, the percentage split, the stable key, the flags file."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from gateway.cohorts import Cohort, parse_selectors
from gateway.rollout.flags import (
    GATEWAY,
    LEGACY,
    SHADOW,
    Decision,
    Flags,
    FlagsError,
    decide,
    in_percentage,
    parse_flags,
    rollout_bucket,
)
from tests.support import ROOT

KEYS = [f"patient-key-{i}" for i in range(10_000)]
TARGETS = (0, 0.5, 1, 5, 10, 25, 33.3, 50, 75, 90, 99, 100)
APP = Cohort("android", "android", "4.11")
OTHER_APP = Cohort("ios", "ios", "4.11")


def cohorts(*texts: str) -> tuple:
    return parse_selectors(list(texts), "test")


def gateway_share(percent: float, salt: str = "") -> float:
    return 100 * sum(in_percentage(rollout_bucket(k, salt), percent) for k in KEYS) / len(KEYS)


@pytest.mark.parametrize("target", TARGETS)
def test_percentage_split_is_within_one_point_on_10000_keys(target: float) -> None:
    share = gateway_share(target)
    assert abs(share - target) <= 1.0, f"{share:.2f}% on the gateway for a target of {target}%"
    if target in (0, 100):
        assert share == target


def test_another_salt_is_another_split_of_the_same_size() -> None:
    on_gateway = {k for k in KEYS if in_percentage(rollout_bucket(k), 30)}
    salted = {k for k in KEYS if in_percentage(rollout_bucket(k, "reshuffle"), 30)}
    assert abs(len(salted) - 3000) <= 100
    assert len(on_gateway & salted) < 0.5 * len(on_gateway)


def test_raising_the_percentage_only_adds_patients() -> None:
    previous: set[str] = set()
    for percent in (0, 1, 10, 50, 100):
        current = {k for k in KEYS if in_percentage(rollout_bucket(k), percent)}
        assert previous <= current
        previous = current
    assert previous == set(KEYS)


DECISIONS_SCRIPT = """
import json, sys
from gateway.rollout.flags import Flags, decide, rollout_bucket
flags = Flags(mode="shadow", gateway_percent=37.5, salt="s1")
keys = [f"patient-key-{i}" for i in range(10000)]
print(json.dumps([decide(flags, None, rollout_bucket(k, flags.salt)).side for k in keys]))
"""


def test_decisions_are_identical_in_another_process() -> None:
    flags = Flags(mode=SHADOW, gateway_percent=37.5, salt="s1")
    here = [decide(flags, None, rollout_bucket(k, flags.salt)).side for k in KEYS]
    # Another interpreter with another hash seed: hash() would differ, the decision must not.
    proc = subprocess.run(
        [sys.executable, "-c", DECISIONS_SCRIPT],
        env=os.environ | {"PYTHONHASHSEED": "12345"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    there = json.loads(proc.stdout)
    assert there == here
    assert set(here) == {GATEWAY, SHADOW}


@pytest.mark.parametrize(
    ("flags", "app", "bucket", "expected"),
    [
        # the kill switch beats every list and the percentage
        (
            Flags(kill_switch=True, mode=GATEWAY, gateway_percent=100, allow_cohorts=cohorts("android/*/*")),
            APP,
            0,
            Decision(LEGACY, "kill_switch"),
        ),
        # deny beats allow for a cohort both select
        (
            Flags(mode=GATEWAY, allow_cohorts=cohorts("android/*/*"), deny_cohorts=cohorts("*/*/4.11")),
            APP,
            0,
            Decision(LEGACY, "deny_list"),
        ),
        # deny beats the percentage and a gateway default
        (
            Flags(mode=GATEWAY, gateway_percent=100, deny_cohorts=cohorts("android/android/4.11")),
            APP,
            0,
            Decision(LEGACY, "deny_list"),
        ),
        # allow beats a legacy default and a 0 % percentage; a selector matches per part
        (Flags(mode=LEGACY, allow_cohorts=cohorts("android/*/*")), APP, 9999, Decision(GATEWAY, "allow_list")),
        (Flags(mode=LEGACY, allow_cohorts=cohorts("android/*/*")), OTHER_APP, 9999, Decision(LEGACY, "default")),
        (Flags(mode=LEGACY, allow_cohorts=cohorts("android/ios/*")), APP, 9999, Decision(LEGACY, "default")),
        (Flags(mode=LEGACY, allow_cohorts=cohorts("android/*/*")), None, 9999, Decision(LEGACY, "default")),
        # the percentage: bucket below percent × 100
        (Flags(mode=LEGACY, gateway_percent=10), None, 999, Decision(GATEWAY, "percentage")),
        (Flags(mode=LEGACY, gateway_percent=10), None, 1000, Decision(LEGACY, "default")),
        (Flags(mode=SHADOW, gateway_percent=10), None, 1000, Decision(SHADOW, "default")),
        # no usable token: no percentage, only the lists and the mode
        (Flags(mode=SHADOW, gateway_percent=100), None, None, Decision(SHADOW, "default")),
    ],
)
def test_rule_precedence(flags: Flags, app: Cohort | None, bucket: int | None, expected: Decision) -> None:
    assert decide(flags, app, bucket) == expected


def test_the_example_flags_file_is_valid() -> None:
    flags = parse_flags((ROOT / "config" / "rollout.example.toml").read_bytes(), default_mode=LEGACY)
    assert flags.mode == LEGACY and flags.mode_source == "file"
    assert flags.gateway_percent == 10.0 and not flags.kill_switch
    assert [str(s) for s in flags.allow_cohorts] == ["android/*/*"]
    assert [r.signal for r in flags.guardrails.rules] == ["failed_lpu_ratio", "mismatch_ratio"]
    assert flags.guardrails.cooldown == 300.0 and flags.guardrails.step_up is None


def test_a_file_without_mode_takes_the_configured_one() -> None:
    flags = parse_flags(b"gateway_percent = 5\nversion = 1\n", default_mode=SHADOW)
    assert (flags.mode, flags.mode_source, flags.gateway_percent) == (SHADOW, "config", 5.0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("kill_swich = true\nversion = 1\n", "unknown key 'kill_swich'"),
        ("kill_switch = 1\nversion = 1\n", "kill_switch must be true or false"),
        ('mode = "canary"\nversion = 1\n', "mode must be one of legacy, gateway, shadow"),
        ("gateway_percent = 101\nversion = 1\n", "gateway_percent must be a number from 0 to 100"),
        ('gateway_percent = "10"\nversion = 1\n', "gateway_percent must be a number from 0 to 100"),
        ('allow_cohorts = "app"\nversion = 1\n', "allow_cohorts must be a list"),
        ('deny_cohorts = [""]\nversion = 1\n', "deny_cohorts: '' is not a cohort selector"),
        # the old forms are refused, each with the new one
        (
            'allow_apps = ["8b0a7ab4-1b8f-4c5b-8d1e-1c0f3b0e5a11"]\nversion = 1\n',
            "allow_apps: a list of ClientApplication ids is no longer read; name cohorts instead: allow_cohorts = [",
        ),
        ("deny_apps = []\nversion = 1\n", "deny_apps: a list of ClientApplication ids is no longer read"),
        ('deny_cohorts = ["android:4.11"]\nversion = 1\n', "'android:4.11' is the old form; write 'android/*/4.11'"),
        (
            'version = 1\n[[guardrails.rule]]\nsignal = "error_ratio"\nabove = 0.1\n'
            'apps = ["android"]\nversions = ["4.11"]\n',
            'guardrails.rule: apps/versions is no longer read; name cohorts instead: cohorts = ["android/*/4.11"]',
        ),
        (
            'version = 1\n[[migration.brownout]]\nname = "b"\napp = "beta"\nplatform = "ios"\n'
            "start = 0\nduration = 1\n",
            "migration.brownout[0]: app/platform/versions is no longer read; name cohorts instead: "
            'cohorts = ["beta/ios/*"]',
        ),
        ("gateway_percent = [\nversion = 1\n", "not valid TOML"),
    ],
)
def test_invalid_flags_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(FlagsError) as info:
        parse_flags(text.encode(), default_mode=LEGACY)
    assert message in str(info.value)
    assert "\n" not in str(info.value)
