"""The "safe to retire" report: pure functions from the ledger's history to a verdict per
cohort, and the terminal table `gateway migration-report` prints.

A verdict (docs/migration.md, "Reading the report"):
- `safe to retire`: silent (no old-path request) for `retire_after_days` or more;
- `silent for N days`: silent for `silent_after_days` or more;
- `fading`: the last 7 days' daily volume is below `fading_ratio` × the daily volume of the 23
  days before;
- `active`: anything else, a cohort first seen within the last 7 days included.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

from gateway.cohorts import Cohort
from gateway.contract import SIDES
from gateway.migration.clock import DAY, day_of
from gateway.migration.ledger import BROWNOUT_FIELDS, CREATES, ERRORS, REQUESTS, SESSIONS, History

ACTIVE = "active"
FADING = "fading"
SAFE = "safe to retire"


@dataclass(frozen=True)
class Rules:
    retire_after_days: int = 30
    silent_after_days: int = 3
    fading_ratio: float = 0.5


def trend(last_7: int, last_30: int) -> float | None:
    """The last 7 days' daily volume over that of the 23 days before; None if those had none."""
    before = (last_30 - last_7) / 23
    return None if before <= 0 else (last_7 / 7) / before


def verdict(days_silent: int, last_7: int, last_30: int, rules: Rules) -> str:
    if days_silent >= rules.retire_after_days:
        return SAFE
    if days_silent >= rules.silent_after_days:
        return f"silent for {days_silent} days"
    ratio = trend(last_7, last_30)
    if ratio is not None and ratio < rules.fading_ratio:
        return FADING
    return ACTIVE


def _iso(when: float) -> str:
    return datetime.datetime.fromtimestamp(when, datetime.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _date(day: int) -> str:
    return datetime.date.fromordinal(datetime.date(1970, 1, 1).toordinal() + day).isoformat()


def _sum(history: History, key: str, name: str, days: range) -> int:
    return sum(history.days.get(d, {}).get(key, {}).get(name, 0) for d in days)


def build_report(history: History, now: float, rules: Rules, daily_days: int = 30) -> dict[str, Any]:
    """Every cohort the ledger knows, most recently seen first, with its verdict."""
    today = day_of(now)
    last_7, last_30 = range(today - 6, today + 1), range(today - 29, today + 1)
    totals = {
        span: sum(_sum(history, key, REQUESTS, days) for key in history.last)
        for span, days in (("7d", last_7), ("30d", last_30))
    }
    cohorts = []
    for key, last in sorted(history.last.items(), key=lambda item: -item[1]):
        cohort = Cohort.parse(key)
        if cohort is None:
            continue
        app, platform, version = cohort
        v7, v30 = _sum(history, key, REQUESTS, last_7), _sum(history, key, REQUESTS, last_30)
        days_silent = max(0, int((now - last) // DAY))
        ratio = trend(v7, v30)
        daily = {}
        for day in range(today - daily_days + 1, today + 1):
            counted = history.days.get(day, {}).get(key)
            if counted:
                daily[_date(day)] = {name: counted.get(name, 0) for name in (REQUESTS, SESSIONS)}
        cohorts.append(
            {
                "cohort": key,
                "app": app,
                "platform": platform,
                "version": version,
                "first_seen": _iso(history.first.get(key, last)),
                "last_seen": _iso(last),
                "days_silent": days_silent,
                "requests_7d": v7,
                "requests_30d": v30,
                "sessions_7d": _sum(history, key, SESSIONS, last_7),
                "sessions_30d": _sum(history, key, SESSIONS, last_30),
                "share_7d": round(v7 / totals["7d"], 4) if totals["7d"] else 0.0,
                "share_30d": round(v30 / totals["30d"], 4) if totals["30d"] else 0.0,
                "sides_30d": {side: _sum(history, key, side, last_30) for side in SIDES},
                "errors_30d": _sum(history, key, ERRORS, last_30),
                "creates_30d": _sum(history, key, CREATES, last_30),
                "brownouts_30d": {name: _sum(history, key, name, last_30) for name in BROWNOUT_FIELDS},
                "trend": None if ratio is None else round(ratio, 3),
                "verdict": verdict(days_silent, v7, v30, rules),
                "daily": daily,
            }
        )
    return {
        "generated_at": _iso(now),
        "today": _date(today),
        "rules": {
            "retire_after_days": rules.retire_after_days,
            "silent_after_days": rules.silent_after_days,
            "fading_ratio": rules.fading_ratio,
        },
        "requests_7d": totals["7d"],
        "requests_30d": totals["30d"],
        "cohorts": cohorts,
    }


def _trend_text(ratio: float | None) -> str:
    return "new" if ratio is None else f"x{ratio:.2f}"


def render_table(report: dict[str, Any]) -> str:
    """The report as the terminal table of `gateway migration-report`."""
    head = ("COHORT", "LAST SEEN", "7D", "30D", "SHARE 30D", "TREND", "DRY RUN", "REFUSED", "VERDICT")
    rows = [
        (
            c["cohort"],
            c["last_seen"],
            str(c["requests_7d"]),
            str(c["requests_30d"]),
            f"{c['share_30d'] * 100:.1f}%",
            _trend_text(c["trend"]),
            str(c["brownouts_30d"]["dry_run"]),
            str(c["brownouts_30d"]["refused"]),
            c["verdict"],
        )
        for c in report["cohorts"]
    ]
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]
    lines = [f"old-path report, {report['generated_at']} ({report['requests_30d']} requests in 30 days)"]
    for row in [head, *rows]:
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    for brownout in report.get("brownouts", []):
        hits = ", ".join(f"{cohort}: {n}" for cohort, n in sorted(brownout["hits"].items())) or "nobody yet"
        lines.append(f"brownout {brownout['name']} ({brownout['mode']}, {brownout['state']}): {hits}")
    return "\n".join(lines) + "\n"
