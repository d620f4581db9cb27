"""Noise calibration's arithmetic, pure: the verdict, per-field counters over a window, the
suggestions and the legacy-load budget."""

from __future__ import annotations

from gateway.rollout.noise import NOISE, REGRESSION, Budget, FieldStats, Margin, suggestions, verdict
from gateway.window import OVERFLOW, Window

MARGIN = Margin(relative=0.2, absolute=0.03)


def test_verdict_needs_both_thresholds() -> None:
    assert verdict(1.0, 0.0, MARGIN) == REGRESSION
    assert verdict(1.0, 1.0, MARGIN) == NOISE  # legacy differs from itself as often
    assert verdict(0.02, 0.0, MARGIN) == NOISE  # under the absolute threshold
    assert verdict(0.55, 0.5, MARGIN) == NOISE  # 5 points more, but within 20 % of the noise
    assert verdict(0.65, 0.5, MARGIN) == REGRESSION


def test_field_stats_separate_regression_from_noise_over_the_window() -> None:
    stats = FieldStats(window=100.0, margin=MARGIN)
    room, status = ("content", "visits.room"), ("content", "calls.dateStatus")
    for i in range(10):
        stats.add_compare({room, status, ("order", "visits")}, now=float(i))
        stats.add_calibration({status}, now=float(i))
    assert stats.regressions({room, status}, now=10.0) == ["visits.room"]
    report = stats.report(now=10.0)
    assert report["compared"] == 10 and report["calibrated"] == 10
    assert [f["field"] for f in report["regressions"]] == ["visits.room"]
    assert [f["field"] for f in report["noise"]] == ["calls.dateStatus"]
    assert report["suggested_ignore_fields"] == ["calls.dateStatus"]
    assert all(f["class"] != "order" for f in report["regressions"] + report["noise"]), "order is not judged"
    # Outside the window nothing is left.
    assert stats.report(now=500.0)["compared"] == 0


def test_suggestions_never_name_a_hashed_key() -> None:
    assert suggestions(["disps.~3fa1c2d0", "calls.history.date", "visits (legacy only)", "lpus"]) == [
        "calls.history.date",
        "disps",
        "visits",
    ]


def test_the_budget_allows_per_minute_and_refills() -> None:
    budget = Budget(per_minute=2)
    assert [budget.take(now=0.0) for _ in range(3)] == [True, True, False]
    assert budget.take(now=29.0) is False
    assert budget.take(now=31.0) is True  # one more after half a minute
    assert Budget(per_minute=0).take(now=0.0) is False


def test_window_expires_slices_and_bounds_keys() -> None:
    window = Window(10.0, slices=10, max_keys=2)
    window.add(0.0, "a")
    window.add(5.0, "b")
    window.add(5.0, "c")
    window.add(5.0, "d")  # a third key in one slice: counted as overflow
    assert window.totals(5.0) == {"a": 1, "b": 1, "c": 1, OVERFLOW: 1}
    assert window.totals(10.5) == {"b": 1, "c": 1, OVERFLOW: 1}
    assert window.totals(100.0) == {}
