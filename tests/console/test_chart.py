"""The burndown chart as a pure function: one bar per day, heights to scale, a title for the whole
and for each bar, and nothing from its input unescaped."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from gateway.console.chart import HEIGHT, DayCount, burndown_svg, summary

SVG = "{http://www.w3.org/2000/svg}"


def _days(*counts: int) -> list[DayCount]:
    return [DayCount(f"2026-11-{i + 1:02d}", n) for i, n in enumerate(counts)]


def test_one_bar_per_day_zero_days_included_heights_to_scale() -> None:
    svg = ET.fromstring(str(burndown_svg(_days(4, 0, 2, 1), "beta/ios/4.9")))
    bars = svg.findall(f"{SVG}rect")
    assert [b.get("data-requests") for b in bars] == ["4", "0", "2", "1"]
    assert [float(b.get("height", "")) for b in bars] == [HEIGHT, 0.0, HEIGHT / 2, HEIGHT / 4]
    assert all(float(b.get("y", "")) + float(b.get("height", "")) == HEIGHT for b in bars), "bars stand on the axis"
    xs = [float(b.get("x", "")) for b in bars]
    assert xs == sorted(xs) and len(set(xs)) == 4


def test_every_number_has_a_title_for_screen_readers() -> None:
    svg = ET.fromstring(str(burndown_svg(_days(1, 3), "alpha/android/5.0")))
    assert svg.get("role") == "img"
    title = svg.find(f"{SVG}title")
    assert title is not None and title.text is not None
    assert title.text.startswith("alpha/android/5.0: Old-path requests per day, 2026-11-01 to 2026-11-02 (2 days)")
    assert "4 requests in all, at most 3 a day, last day 3" in title.text
    assert [t.text for t in svg.iter(f"{SVG}title")][1:] == ["2026-11-01: 1 request", "2026-11-02: 3 requests"]


def test_a_silent_window_draws_flat_and_nothing_is_unescaped() -> None:
    svg = ET.fromstring(str(burndown_svg(_days(0, 0, 0), '<script>"x"</script>')))
    assert [float(b.get("height", "")) for b in svg.findall(f"{SVG}rect")] == [0.0, 0.0, 0.0]
    assert "<script>" not in str(burndown_svg(_days(0), "<script>"))
    assert summary([]) == "No days in the window"
