"""The alert rules in prometheus/: valid for promtool, and each one's unit tests pass."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from tests.support import ROOT
from tests.support.dashboards import ALERT_NAMES

PROMETHEUS_DIR = ROOT / "prometheus"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary, "promtool is missing: `make test` installs Debian's prometheus package"
    return subprocess.run([binary, *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    "args",
    [
        ("check", "rules", "alerts.yml"),
        ("test", "rules", "alerts_test.yml", "alerts_retired_test.yml"),
        ("check", "config", "prometheus.example.yml"),
    ],
    ids=" ".join,
)
def test_promtool_is_clean(args: tuple[str, ...]) -> None:
    result = promtool(*args)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    rules = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    alerts = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    assert alerts == ALERT_NAMES
    fires: set[str] = set()
    quiet: set[str] = set()
    for path in PROMETHEUS_DIR.glob("*_test.yml"):
        for test in yaml.safe_load(path.read_text())["tests"]:
            for case in test["alert_rule_test"]:
                (fires if case["exp_alerts"] else quiet).add(case["alertname"])
    assert fires == alerts
    assert quiet == alerts


def test_every_alert_has_a_severity_and_a_runbook_section_with_symptom_checks_and_mitigation() -> None:
    runbook = (ROOT / "docs" / "runbook.md").read_text()
    # Markdown headings and GitHub's anchors for them: "## GatewayStoreDown" is #gatewaystoredown.
    sections = dict(re.findall(r"^## (\w+)\n(.*?)(?=^## |\Z)", runbook, re.M | re.S))
    rules = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    for rule in (rule for group in rules["groups"] for rule in group["rules"]):
        name = rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        assert rule["annotations"]["runbook_url"] == f"docs/runbook.md#{name.lower()}"
        assert name in sections, f"docs/runbook.md has no section for {name}"
        for part in ("**Symptom**", "**First checks**", "**Mitigation**"):
            assert part in sections[name], f"{name}'s runbook section has no {part}"
