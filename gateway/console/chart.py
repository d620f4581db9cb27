"""The burndown chart: one cohort's old-path requests per day as an SVG bar chart, rendered on
the server (no script, no charting library). Every day is one bar, a day without requests a bar
of height 0, so the chart has exactly one point per day of its window. Each bar has its own
<title> (date and count) and the chart one for the whole, for screen readers; the page puts the
same numbers in a table beside it. Bars are `currentColor`, so the chart prints in the text's
colour, and the SVG scales to the width it is given (a narrow window included)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from markupsafe import Markup, escape

# Drawing units: each day is BAR wide with GAP between; the viewBox scales to the page's width.
BAR, GAP, HEIGHT = 4, 1, 40


class DayCount(NamedTuple):
    date: str  # ISO date, UTC
    requests: int


def _plural(n: int) -> str:
    return f"{n} request" if n == 1 else f"{n} requests"


def summary(days: Sequence[DayCount]) -> str:
    """The chart in one sentence, its title: the window, the total and the busiest day."""
    if not days:
        return "No days in the window"
    total = sum(d.requests for d in days)
    peak = max(days, key=lambda d: d.requests)
    return (
        f"Old-path requests per day, {days[0].date} to {days[-1].date} ({len(days)} days): "
        f"{_plural(total)} in all, at most {peak.requests} a day, last day {days[-1].requests}"
    )


def burndown_svg(days: Sequence[DayCount], label: str) -> Markup:
    """The chart for `days` (oldest first). `label` names the cohort in the chart's title."""
    width = max(1, len(days) * (BAR + GAP) - GAP)
    top = max((d.requests for d in days), default=0) or 1
    title = escape(f"{label}: {summary(days)}")
    bars = []
    for i, day in enumerate(days):
        height = round(HEIGHT * day.requests / top, 2)
        bars.append(
            f'<rect class="day" x="{i * (BAR + GAP)}" y="{HEIGHT - height}" width="{BAR}" height="{height}"'
            f' data-date="{escape(day.date)}" data-requests="{day.requests}">'
            f"<title>{escape(day.date)}: {_plural(day.requests)}</title></rect>"
        )
    return Markup(
        f'<svg class="burndown" viewBox="0 0 {width} {HEIGHT}" preserveAspectRatio="none" role="img"'
        f' xmlns="http://www.w3.org/2000/svg" focusable="false"><title>{title}</title>'
        f'<line class="axis" x1="0" y1="{HEIGHT}" x2="{width}" y2="{HEIGHT}"/>{"".join(bars)}</svg>'
    )
