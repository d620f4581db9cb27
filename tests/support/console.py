"""The migration console's scenario: the migration demo's 46 days of three apps
(scripts/migration_demo.py: alpha every day, beta fading, gamma silent for 12 days) written into a
gateway's ledger, gateways in front of a fake legacy service with a guardrail rule that one
failing session trips, and the console's sign-in as a browser makes it.

The history is generated from the demo's own plan (its PLAN, CLIENTS and HEADERS, loaded from the
script), one ledger batch per day, rather than replayed request by request: what the console is
tested on is what it shows of a ledger, and the demo's own test covers the replay.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.cohorts import Cohort
from gateway.config import Config
from gateway.contract import GATEWAY
from gateway.http import keys
from gateway.migration.clock import DAY, ManualClock, day_of
from gateway.migration.ledger import CREATES, REQUESTS, SESSIONS, Batch
from tests.support import ROOT
from tests.support.fake_legacy import write_flags
from tests.support.gateway import QUOTA_OFF, GatewayTestServer

ADMIN_TOKEN = "console-admin-token-0123456789abcdef"
ARTIFACTS = ROOT / "test-artifacts"


def demo() -> ModuleType:
    """scripts/migration_demo.py as a module: the scenario is written once, there."""
    spec = importlib.util.spec_from_file_location("migration_demo", ROOT / "scripts" / "migration_demo.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("migration_demo", module)
    spec.loader.exec_module(module)
    return module


DEMO = demo()
# app → its cohort in the ledger, as the gateway classifies the demo's headers.
COHORTS = {
    "alpha": Cohort("alpha", "android", "5.0"),
    "beta": Cohort("beta", "ios", "4.9"),
    "gamma": Cohort("gamma", "web", "3.1"),
}
# The guardrails' name of alpha's cohort (the one the test trips): the one text form.
ALPHA = COHORTS["alpha"]
ALPHA_RAIL = str(ALPHA)


def flags(now: float, rule: bool = True) -> str:
    """The demo's flags (beta deprecated, a sunset) with a brownout of beta scheduled tomorrow,
    the gateway serving every session, and a guardrail one failing session of alpha trips."""
    # The demo's text starts with its version, the last plain key (docs/rollout-flags.md).
    text = 'mode = "gateway"\n' + DEMO._flags(now, None)
    text += f"""
[[migration.brownout]]
name = "beta-tomorrow"
cohorts = ["beta/*/*"]
start = {DEMO._iso(now + DAY)}
duration = 600
share = 0.25
mode = "fail"
"""
    if rule:
        text += """
[guardrails]
cooldown = 0

[[guardrails.rule]]
signal = "failed_lpu_ratio"
above = 0.5
window = 600
min_sessions = 1
cohorts = ["alpha/*/*"]
"""
    return text


def console_config(upstream_url: str, legacy_url: str, redis_url: str, flags_file: Path, **sections: Any) -> Config:
    rollout = {
        "admin_token": ADMIN_TOKEN,
        "legacy_url": legacy_url,
        "flags_file": str(flags_file),
        "flags_poll_interval": 0.05,
        "guardrail_interval": 0.1,
    } | sections.pop("rollout", {})
    return Config().replace(
        upstream={"url": upstream_url, "retry_backoff": 0.0},
        rollout=rollout,
        clients=DEMO.CLIENTS,
        redis={"url": redis_url},
        limits=QUOTA_OFF,
        **sections,
    )


async def serve(aiohttp_client: Any, config: Config, clock: ManualClock) -> TestClient:
    return await aiohttp_client(GatewayTestServer(create_app(config, clock=clock), host="127.0.0.1"))


def history_batch(now: float) -> Batch:
    """The demo's 46 days as one ledger batch: per day and app, PLAN's creates, each a session
    the gateway served; first and last seen where the plan puts them."""
    batch = Batch()
    for days_ago in range(DEMO.HISTORY_DAYS - 1, -1, -1):
        when = now - days_ago * DAY
        for app, per_day in DEMO.PLAN.items():
            n = per_day(days_ago)
            if not n:
                continue
            cohort = COHORTS[app]
            for name in (REQUESTS, CREATES, SESSIONS, GATEWAY):
                batch.counts[(day_of(when), cohort, name)] = n
            # A second early: the ledger keeps milliseconds, and "12 days ago" must not round to 11.99.
            first, _ = batch.seen.get(cohort, (when - 1, when - 1))
            batch.seen[cohort] = (first, when - 1)
    return batch


def planned(app: str, now: float, days: int) -> list[int]:
    """The plan's requests per day for `app`, oldest first, over the last `days` days."""
    return [DEMO.PLAN[app](days_ago) for days_ago in range(days - 1, -1, -1)]


async def write_history(client: TestClient, now: float) -> None:
    await client.app[keys.MIGRATION].writer.ledger.apply(history_batch(now), now)


def set_flags(path: Path, text: str) -> None:
    write_flags(path, text)
