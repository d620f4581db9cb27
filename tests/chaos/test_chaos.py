"""The shortened `make chaos` (docs/reliability.md, "Chaos"): three replicas behind HAProxy, Redis
with three sentinels, the sandbox, apps creating and polling through HAProxy, and four faults on
the seeded schedule (a replica SIGKILLed, an idle-connection flood up to a replica's cap, a
rolling SIGTERM restart of all three, the Redis primary killed). About two and a half minutes,
all on loopback; the run's own targets are asserted one by one, so a regression names itself.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT

P95_BOUND = 5.0


@pytest.mark.timeout(600)
def test_the_short_chaos_run_meets_every_target(tmp_path: Path) -> None:
    report_path = tmp_path / "chaos.json"
    run = subprocess.run(
        [sys.executable, "scripts/chaos.py", "--short", "--json", str(report_path), "--keep", str(tmp_path / "run")],
        cwd=ROOT, capture_output=True, text=True, timeout=540,
    )  # fmt: skip
    assert report_path.exists(), run.stdout[-4000:] + run.stderr[-4000:]
    report = json.loads(report_path.read_text())
    faults = {f["fault"]: f for f in report["faults"]}
    assert sorted(faults) == sorted(["kill_replica", "idle_flood", "rolling_restart", "redis_failover"])
    for name, fault in faults.items():
        assert fault["fired"], (name, fault)
    # The idle flood reached the cap and a new patient was served on that replica at once.
    flood = faults["idle_flood"]["evidence"]
    assert flood["direct_create"] == "200" and flood["direct_create_s"] < 1.0, flood
    assert flood["idle_closed_metric"] > 0 and flood["haproxy_kept_it_up"], flood
    # Every target as `make chaos` checks it, but for the neighbours' p95: about a hundred polls per
    # fault window, on a 2-core machine that CI shares with other jobs, swing by 2-3x between
    # runs (docs/reliability.md, "Chaos"); here a window fails at 5x its quiet neighbourhood,
    # which a replica that stalls its neighbours (seconds, not tens of ms) still crosses.
    failed = [c for c in report["checks"] if not c["ok"] and not c["check"].startswith("neighbours' poll p95")]
    assert not failed, f"{failed}\n{run.stdout[-6000:]}"
    for row in report["poll_p95"]:
        if row["judged"]:
            assert row["p95_ms"] <= P95_BOUND * row["baseline_ms"], (row, run.stdout[-6000:])
