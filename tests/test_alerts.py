"""The alert rules in prometheus/: valid for promtool, and each one's unit tests pass."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

PROMETHEUS_DIR = Path(__file__).resolve().parents[1] / "prometheus"


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


def test_every_alert_has_unit_tests() -> None:
    rules = (PROMETHEUS_DIR / "alerts.yml").read_text()
    tests = "".join(path.read_text() for path in PROMETHEUS_DIR.glob("*_test.yml"))
    alerts = {line.split(":", 1)[1].strip() for line in rules.splitlines() if line.strip().startswith("- alert:")}
    tested = {line.split(":", 1)[1].strip() for line in tests.splitlines() if line.strip().startswith("alertname:")}
    assert alerts == {
        "GatewayLpuFailureRatioHigh",
        "GatewaySessionsHittingDeadline",
        "GatewayUpstreamErrorRateHigh",
        "GatewayRetiredAppCallingAgain",
    }
    assert tested == alerts
