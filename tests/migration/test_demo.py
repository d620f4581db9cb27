"""The issue's "done when", end to end: scripts/migration_demo.py run as a reviewer runs it (its
own process, the sandbox and a gateway on loopback, `gateway migration-report` as a process of
its own), and what it shows; and the CLI's refusals."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
from typing import Any

from gateway.migration.clock import ManualClock
from tests.support import ROOT
from tests.support.migration import ADMIN_TOKEN, migration_config, serve

DEMO_LIMIT = 120


def test_the_demo_shows_fading_and_silent_cohorts_then_a_dry_run_then_one_cohort_refused() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "migration_demo.py"), "--json"],
        capture_output=True,
        text=True,
        timeout=DEMO_LIMIT,
        env=env,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    *shown, last = done.stdout.strip().splitlines()
    summary = json.loads(last)
    # 1. The report, as the CLI prints it: one cohort of each kind.
    assert summary["verdicts"] == {
        "alpha/android/5.0": "active",
        "beta/ios/4.9": "fading",
        "gamma/web/3.1": "silent for 12 days",
    }
    table = [line.split() for line in shown]
    assert ["COHORT", "LAST", "SEEN", "7D", "30D", "SHARE", "30D", "TREND", "DRY", "RUN", "REFUSED", "VERDICT"] in table
    assert any(row[:1] == ["gamma/web/3.1"] and row[-4:] == ["silent", "for", "12", "days"] for row in table)
    # 2. The announcement.
    assert any(line.strip().startswith("Deprecation: @") for line in shown)
    assert any(
        line.strip().startswith('Link: <https://example.org/visit-api-migration>; rel="deprecation"') for line in shown
    )
    # 3. The dry run refuses nobody, and names who it would have hit.
    assert summary["dry_run"] == {"alpha 200": 6, "beta 200": 4}
    assert "brownout beta-dry-run (dry_run, open): beta/ios/4.9: 4" in shown
    # 4. For real: beta's creates, and only beta's, are refused until the window closes.
    assert summary["brownout"] == {"alpha 200": 6, "beta 503": 4}
    assert summary["hits"] == {"beta-brownout": {"beta/ios/4.9": 4}}
    assert len(summary["retry_after"]) == 1 and 590 <= int(summary["retry_after"][0]) <= 600


async def test_the_report_command_needs_the_admin_token(upstream: Any, aiohttp_client: Any) -> None:
    _, url = await upstream()
    client = await serve(aiohttp_client, migration_config(url), ManualClock())
    base = str(client.make_url("")).rstrip("/")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}

    def report(token: str | None, *args: str) -> subprocess.CompletedProcess[str]:
        extra = {"GATEWAY_ROLLOUT_ADMIN_TOKEN": token} if token else {}
        return subprocess.run(
            [sys.executable, "-m", "gateway", "migration-report", "--url", base, *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=env | extra,
        )

    no_token, wrong, right = await asyncio.gather(
        asyncio.to_thread(report, None),
        asyncio.to_thread(report, secrets.token_hex(16)),  # well-formed, not the gateway's
        asyncio.to_thread(report, ADMIN_TOKEN, "--json"),
    )
    assert no_token.returncode == 2 and "admin_token" in no_token.stderr
    assert wrong.returncode == 1 and "answered 404" in wrong.stderr
    assert right.returncode == 0, right.stderr
    assert json.loads(right.stdout)["cohorts"] == []
