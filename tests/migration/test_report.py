"""The "safe to retire" verdicts, a pure function, on crafted histories; and the table the
CLI prints."""

from __future__ import annotations

import pytest

from gateway.migration.clock import DAY, day_of
from gateway.migration.ledger import History
from gateway.migration.report import Rules, build_report, render_table, trend, verdict
from tests.support.migration import T0

RULES = Rules(retire_after_days=30, silent_after_days=3, fading_ratio=0.5)
TODAY = day_of(T0)


def history(cohort: str, per_day: dict[int, int], last: float | None = None) -> History:
    """`per_day`: days before today → requests; last seen at noon of the latest of them."""
    h = History()
    for offset, n in per_day.items():
        h.days.setdefault(TODAY - offset, {})[cohort] = {"requests": n, "sessions": n // 2, "gateway": n}
    newest = min(per_day)
    h.last[cohort] = last if last is not None else T0 - newest * DAY + 12 * 3600
    h.first[cohort] = T0 - max(per_day) * DAY
    return h


def verdict_of(per_day: dict[int, int], now: float = T0 + 18 * 3600) -> str:
    [cohort] = build_report(history("a/b/c", per_day), now, RULES)["cohorts"]
    return cohort["verdict"]


@pytest.mark.parametrize(
    ("per_day", "expected"),
    [
        # Calls every day, steady: active.
        ({d: 10 for d in range(30)}, "active"),
        # First seen three days ago: nothing to compare with, active.
        ({0: 5, 1: 5, 2: 5}, "active"),
        # 10 a day for weeks, 2 a day this week: fading.
        ({**{d: 10 for d in range(7, 30)}, **{d: 2 for d in range(7)}}, "fading"),
        # Exactly half the earlier daily volume is not yet fading (below half is).
        ({**{d: 14 for d in range(7, 30)}, **{d: 7 for d in range(7)}}, "active"),
        # Last call 2 days ago: still active (silent_after_days is 3).
        ({2: 4, 9: 4}, "active"),
        ({3: 4, 9: 4}, "silent for 3 days"),
        ({29: 4}, "silent for 29 days"),
        ({30: 4}, "safe to retire"),
        ({75: 400}, "safe to retire"),
    ],
)
def test_verdicts_on_crafted_histories(per_day: dict[int, int], expected: str) -> None:
    assert verdict_of(per_day) == expected


def test_verdict_and_trend_edges() -> None:
    assert trend(0, 0) is None and trend(7, 7) is None
    assert trend(7, 30) == pytest.approx(1 / (23 / 23))
    assert verdict(29, 0, 5, RULES) == "silent for 29 days"
    assert verdict(0, 1, 1000, RULES) == "fading"
    assert verdict(0, 1000, 1000, RULES) == "active"
    # A cohort silent for the retire window is safe whatever came before.
    assert verdict(30, 0, 0, Rules(retire_after_days=30)) == "safe to retire"


def test_report_figures_and_shares() -> None:
    h = history("alpha/android/5.0", {0: 30, 10: 60})
    h.days[TODAY]["beta/ios/4.9"] = {"requests": 10, "dry_run": 3, "refused": 1, "legacy": 4}
    h.last["beta/ios/4.9"] = T0 + 13 * 3600
    h.first["beta/ios/4.9"] = T0
    found = build_report(h, T0 + 14 * 3600, RULES)
    assert found["today"] == "2026-11-02" and found["requests_7d"] == 40 and found["requests_30d"] == 100
    beta, alpha = found["cohorts"]  # most recently seen first
    assert (beta["cohort"], beta["share_7d"], beta["share_30d"]) == ("beta/ios/4.9", 0.25, 0.1)
    assert beta["brownouts_30d"] == {"refused": 1, "delayed": 0, "dry_run": 3}
    assert beta["sides_30d"] == {"gateway": 0, "legacy": 4, "shadow": 0}
    assert (alpha["requests_7d"], alpha["requests_30d"], alpha["sessions_30d"]) == (30, 90, 45)
    assert alpha["daily"] == {
        "2026-10-23": {"requests": 60, "sessions": 30},
        "2026-11-02": {"requests": 30, "sessions": 15},
    }
    assert alpha["first_seen"] == "2026-10-23T00:00:00Z" and alpha["last_seen"] == "2026-11-02T12:00:00Z"

    table = render_table(
        found | {"brownouts": [{"name": "b1", "mode": "dry_run", "state": "open", "hits": {"beta/ios/4.9": 3}}]}
    )
    lines = table.splitlines()
    assert lines[1].split() == [
        "COHORT",
        "LAST",
        "SEEN",
        "7D",
        "30D",
        "SHARE",
        "30D",
        "TREND",
        "DRY",
        "RUN",
        "REFUSED",
        "VERDICT",
    ]
    assert lines[2].split() == ["beta/ios/4.9", "2026-11-02T13:00:00Z", "10", "10", "10.0%", "new", "3", "1", "active"]
    assert lines[-1] == "brownout b1 (dry_run, open): beta/ios/4.9: 3"
