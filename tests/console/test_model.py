"""The console's page data from crafted inputs: one chart point per day of the ledger's window,
the report's verdicts, deprecation and brownout schedule matched by the flags' own selectors, the
guardrail state of each cohort, sorting and filtering by app, and the shadow view without values."""

from __future__ import annotations

from gateway.cohorts import Cohort
from gateway.console import model
from gateway.migration.clock import DAY, day_of
from gateway.migration.ledger import REQUESTS, History
from gateway.migration.report import Rules, build_report
from gateway.migration.signals import Brownout, Deprecation, MigrationFlags, Selector

NOW = 1_793_577_600.0 + 12 * 3600  # midday
TODAY = day_of(NOW)
ALPHA, BETA = Cohort("alpha", "android", "5.0"), Cohort("beta", "ios", "4.9")


def _history() -> History:
    history = History()
    for ago in range(10):
        history.days.setdefault(TODAY - ago, {})[str(ALPHA)] = {REQUESTS: 2}
    history.days[TODAY - 9][str(BETA)] = {REQUESTS: 7}
    history.first = {str(ALPHA): NOW - 9 * DAY, str(BETA): NOW - 9 * DAY}
    history.last = {str(ALPHA): NOW, str(BETA): NOW - 9 * DAY}
    return history


def _rows(flags: MigrationFlags | None = None, rails: dict | None = None) -> list[model.CohortRow]:
    history, flags = _history(), flags or MigrationFlags()
    report = build_report(history, NOW, Rules())
    return model.cohort_rows(report, history, flags, rails, NOW, TODAY, 90)


def test_each_cohort_has_one_point_per_day_of_the_window_and_the_reports_verdict() -> None:
    rows = _rows()
    assert [r.key for r in rows] == [str(ALPHA), str(BETA)]
    for row in rows:
        assert len(row.days) == 10 and row.days[-1].date == "2026-11-02"
    assert [d.requests for d in rows[0].days] == [2] * 10
    assert [d.requests for d in rows[1].days] == [7] + [0] * 9
    assert [r.verdict for r in rows] == ["active", "silent for 9 days"]


def test_deprecations_and_brownouts_come_from_the_flags_selectors() -> None:
    flags = MigrationFlags(
        deprecations=(Deprecation((Selector("beta"),), int(NOW - DAY), int(NOW + 30 * DAY)),),
        brownouts=(
            Brownout("later", (Selector("beta", "ios"),), int(NOW + 2 * DAY), 600),
            Brownout("sooner", (Selector("beta"),), int(NOW + DAY), 600, mode="fail"),
            Brownout("over", (Selector("beta"),), int(NOW - 2 * DAY), 600),
            Brownout("android-only", (Selector("beta", "android"),), int(NOW + DAY), 600),
        ),
    )
    alpha, beta = _rows(flags)
    assert alpha.deprecated is None and alpha.brownouts == () and alpha.next_window == "none scheduled"
    assert beta.deprecated == "2026-11-01 12:00 UTC" and beta.sunset == "2026-12-02 12:00 UTC"
    assert [(b.name, b.state) for b in beta.brownouts] == [
        ("later", "scheduled"),
        ("sooner", "scheduled"),
        ("over", "closed"),
    ]
    assert beta.next_window == "sooner: 2026-11-03 12:00 UTC"
    opened = MigrationFlags(brownouts=(Brownout("now", (Selector("beta"),), int(NOW - 60), 600),))
    assert _rows(opened)[1].next_window == "now: open now, until 2026-11-02 12:09 UTC"


def test_the_guardrail_state_of_each_cohort() -> None:
    rails = {
        "rules": [{"signal": "error_ratio"}],
        "cohorts": {
            "alpha/android/5.0": {
                "state": "tripped",
                "since": NOW,
                "why": {"signal": "error_ratio", "value": 0.5, "above": 0.1, "sample": 9},
            }
        },
    }
    alpha, beta = _rows(rails=rails)
    assert (
        alpha.guardrail.tripped
        and alpha.guardrail.name == "alpha/android/5.0"
        and "error_ratio 0.5 > 0.1" in alpha.guardrail.why
    )
    assert beta.guardrail.state == "armed"
    assert _rows()[0].guardrail.state == "no rules"


def test_sorted_and_filtered_by_app() -> None:
    rows = _rows()
    assert [r.key for r in model.select(rows, "beta", None)] == [str(BETA)]
    assert model.select(rows, "nobody", "share") == []
    assert [r.key for r in model.select(rows, None, "cohort")] == [str(ALPHA), str(BETA)]
    assert [r.key for r in model.select(rows, None, "cohort", reverse=True)] == [str(BETA), str(ALPHA)]
    assert [r.key for r in model.select(rows, None, "last_seen", reverse=True)] == [str(BETA), str(ALPHA)]
    assert [r.key for r in model.select(rows, None, "made-up")] == [str(ALPHA), str(BETA)]
    assert model.apps(rows) == ["alpha", "beta"]


def test_the_shadow_view_counts_classes_per_cohort_in_the_window_and_shows_paths_only() -> None:
    samples = [
        {
            "at": NOW - 10,
            "cohort": "alpha/android/5.0",
            "class": "content",
            "classes": {"content": 2},
            "paths": ["[0].visits[0].room"],
        },
        {
            "at": NOW - 20,
            "cohort": "alpha/android/5.0",
            "class": "state",
            "classes": {"state": 1},
            "paths": ["[1].state"],
        },
        {"at": NOW - 5000, "cohort": "beta:4.9", "class": "content", "classes": {"content": 1}, "paths": ["[0].x"]},
    ]
    report = {
        "window_seconds": 600.0,
        "compared": 5,
        "calibrated": 2,
        "regressions": [
            {
                "field": "visits.room",
                "class": "content",
                "sessions": 3,
                "mismatch_rate": 0.6,
                "noise_rate": 0.0,
                "verdict": "regression",
            }
        ],
        "noise": [
            {
                "field": "calls.dateStatus",
                "class": "content",
                "sessions": 5,
                "mismatch_rate": 1.0,
                "noise_rate": 1.0,
                "verdict": "noise",
            }
        ],
        "suggested_ignore_fields": ["calls.dateStatus"],
    }
    view = model.shadow_view(samples, report, NOW)
    [alpha] = view.cohorts
    assert (
        alpha.cohort == "alpha/android/5.0" and alpha.classes == (("content", 2), ("state", 1)) and alpha.samples == 2
    )
    assert alpha.paths == ("[0].visits[0].room", "[1].state")
    assert [f["field"] for f in view.fields] == ["calls.dateStatus", "visits.room"], "the noisiest first"
    assert view.suggested == ("calls.dateStatus",)
    assert not model.shadow_view(None, None, NOW).running
