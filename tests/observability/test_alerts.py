"""The rule files in prometheus/: valid for promtool, each alert's unit tests pass, and each alert
has a severity, a runbook section and an absolute runbook_url on slo.yml's one base."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from gateway.observability.metrics import Metrics
from tests.support import ROOT
from tests.support.dashboards import ALERT_NAMES, RULE_FILES, rules

PROMETHEUS_DIR = ROOT / "prometheus"
SLO = yaml.safe_load((PROMETHEUS_DIR / "slo.yml").read_text())
RULE_TESTS = sorted(path.name for path in PROMETHEUS_DIR.glob("*_test.yml"))


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary, "promtool is missing: `make test` installs Debian's prometheus package"
    return subprocess.run([binary, *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "args",
    [
        ("check", "rules", *(path.name for path in RULE_FILES)),
        ("test", "rules", *RULE_TESTS),
        ("check", "config", "prometheus.example.yml"),
    ],
    ids=" ".join,
)
def test_promtool_is_clean(args: tuple[str, ...]) -> None:
    result = promtool(*args)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_example_config_loads_every_rule_file() -> None:
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.example.yml").read_text())
    assert config["rule_files"] == [path.name for path in RULE_FILES]


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    alerts = {rule["alert"] for rule in rules() if "alert" in rule}
    assert alerts == ALERT_NAMES
    fires: set[str] = set()
    quiet: set[str] = set()
    for name in RULE_TESTS:
        for test in yaml.safe_load((PROMETHEUS_DIR / name).read_text())["tests"]:
            for case in test.get("alert_rule_test", []):
                (fires if case["exp_alerts"] else quiet).add(case["alertname"])
    assert fires == alerts
    assert quiet == alerts


def test_every_alert_has_a_severity_and_a_runbook_section_with_symptom_checks_and_mitigation() -> None:
    runbook = (ROOT / "docs" / "runbook.md").read_text()
    # Markdown headings and GitHub's anchors for them: "## GatewayStoreDown" is #gatewaystoredown.
    sections = dict(re.findall(r"^## (\w+)\n(.*?)(?=^## |\Z)", runbook, re.M | re.S))
    base = SLO["runbook_base"]
    assert re.fullmatch(r"https://[^#\s]+/runbook\.md", base), "runbook_base is an absolute link to docs/runbook.md"
    for rule in (rule for rule in rules() if "alert" in rule):
        name = rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        assert rule["annotations"]["runbook_url"] == f"{base}#{name.lower()}"
        assert name in sections, f"docs/runbook.md has no section for {name}"
        for part in ("**Symptom**", "**First checks**", "**Mitigation**"):
            assert part in sections[name], f"{name}'s runbook section has no {part}"


def test_the_time_to_final_threshold_is_a_bucket_of_the_histogram() -> None:
    # Between two buckets the SLI would silently count against the next bucket up.
    [family] = [f for f in Metrics().registry.collect() if f.name == "gateway_session_complete_seconds"]
    bounds = {float(s.labels["le"]) for s in family.samples if s.name.endswith("_bucket")}
    assert float(SLO["objectives"]["time_to_final"]["threshold_seconds"]) in bounds


def test_the_burn_rates_spend_the_workbooks_shares_of_the_budget() -> None:
    # 2% of the budget in 1 h and 5% in 6 h page; 10% in 3 days is a ticket (the SRE workbook).
    spent = {
        (policy["severity"], pair["long"], pair["short"]): pair["burn"] * hours(pair["long"]) / hours(SLO["period"])
        for policy in SLO["alerts"]
        for pair in policy["windows"]
    }
    assert spent == pytest.approx(
        {("critical", "1h", "5m"): 0.02, ("critical", "6h", "30m"): 0.05, ("warning", "3d", "6h"): 0.10}
    )


def hours(duration: str) -> float:
    return float(duration[:-1]) * {"m": 1 / 60, "h": 1, "d": 24}[duration[-1]]
