"""Every metric family a gateway exposes is watched somewhere: on a dashboard panel, in an alert or
recording rule, or named in docs/metrics.md's "Diagnostic only" table with the reason it is on
neither. A family added without one of those fails here."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import aiohttp

from tests.support import ROOT
from tests.support.dashboards import RULE_FILES, families, panel_queries
from tests.support.fake_legacy import start_legacy
from tests.support.workload import Patients, rollout_section, serve_gateway, workload_config

_NAME = re.compile(r"\b(?:gateway|process|python)_[a-z0-9_]+")
_HISTOGRAM_SUFFIX = re.compile(r"_(bucket|count|sum)$")


def watched() -> set[str]:
    """Metric names on the dashboards and in the rule files, histogram series folded."""
    text = "\n".join([*(q.expr for q in panel_queries()), *(path.read_text() for path in RULE_FILES)])
    return {_HISTOGRAM_SUFFIX.sub("", name) for name in _NAME.findall(text)}


def diagnostic_only() -> dict[str, str]:
    """docs/metrics.md's "Diagnostic only" table: metric name → why it is on no panel or rule."""
    text = (ROOT / "docs" / "metrics.md").read_text()
    section = re.search(r"^### Diagnostic only\n(.*?)(?=^#)", text, re.M | re.S)
    assert section, 'docs/metrics.md has no "### Diagnostic only" section'
    rows = re.findall(r"^\| `([a-z_]+)` \| (.+?) \|$", section[1], re.M)
    return dict(rows)


async def test_every_exposed_family_is_on_a_dashboard_in_a_rule_or_diagnostic_only(
    upstream: Any, aiohttp_server: Any, tmp_path: Path
) -> None:
    # Every feature on: a gateway in front of a legacy service with rollout flags (shadow,
    # guardrails), the migration ledger and the process collectors.
    _, url = await upstream(*Patients().all())
    _, legacy_url = await start_legacy(aiohttp_server)
    async with serve_gateway(workload_config(url, rollout=rollout_section(legacy_url, tmp_path))) as gw:
        async with aiohttp.ClientSession() as http, http.get(f"{gw.metrics_url}/metrics") as resp:
            assert resp.status == 200
            exposed = families(await resp.text())
    assert "process_resident_memory_bytes" in exposed and "gateway_old_requests_total" in exposed
    diagnostic = diagnostic_only()
    assert all(len(why.split()) >= 4 for why in diagnostic.values()), "each diagnostic metric says why"
    unwatched = exposed - watched() - set(diagnostic)
    assert not unwatched, f"on no dashboard, in no rule, not diagnostic only: {sorted(unwatched)}"
    assert not set(diagnostic) - exposed, "docs/metrics.md lists as diagnostic metrics that are not exposed"
    assert not set(diagnostic) & watched(), "a diagnostic-only metric is on a dashboard or in a rule"
