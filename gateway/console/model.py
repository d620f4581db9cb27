"""The console's page data, pure: built from what the report (gateway/migration/report.py), the
ledger's history, the flags in force, the guardrails' `describe()` and the shadow compare's
samples and field report already expose. Nothing here reads a lock of the request path or
parses a cohort's text: cohorts come as the report's (app, platform, version) and the flags'
selectors match them as the request path does."""

from __future__ import annotations

import datetime
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.cohorts import Cohort, matches_any
from gateway.console.chart import DayCount
from gateway.migration.ledger import REQUESTS, History
from gateway.migration.signals import MigrationFlags

# Sort keys of the cohorts table (query parameter `sort`), each with its natural direction.
SORTS: dict[str, tuple[str, bool]] = {
    "cohort": ("Cohort", False),
    "last_seen": ("Last seen", True),
    "share": ("Share (30 days)", True),
    "trend": ("Trend", True),
    "verdict": ("Verdict", False),
    "requests": ("Requests (30 days)", True),
}
DEFAULT_SORT = "last_seen"
# Latest mismatch samples whose paths the page lists per cohort.
SAMPLE_PATHS = 5


def iso(when: float | None) -> str:
    if when is None:
        return "—"
    return datetime.datetime.fromtimestamp(when, datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _date(day: int) -> str:
    return datetime.date.fromordinal(datetime.date(1970, 1, 1).toordinal() + day).isoformat()


def guardrail_name(cohort: Cohort) -> str:
    """The name the guardrails know the cohort by: its one text form, as everywhere."""
    return str(cohort)


@dataclass(frozen=True)
class BrownoutRow:
    name: str
    mode: str
    state: str  # scheduled | open | closed | killed
    start: str
    end: str


@dataclass(frozen=True)
class GuardrailCell:
    name: str  # what the re-arm action is addressed to
    state: str  # armed | tripped | no rules | no data
    since: str = "—"
    why: str = ""

    @property
    def tripped(self) -> bool:
        return self.state == "tripped"


@dataclass(frozen=True)
class CohortRow:
    cohort: Cohort
    key: str
    days: tuple[DayCount, ...]
    last_seen: str
    last_seen_at: str  # ISO, sortable
    days_silent: int
    requests_7d: int
    requests_30d: int
    share_30d: float
    trend: float | None
    verdict: str
    deprecated: str | None
    sunset: str | None
    brownouts: tuple[BrownoutRow, ...]
    next_window: str
    guardrail: GuardrailCell


def window_days(history: History, today: int, retention_days: int) -> range:
    """The chart's days: from the oldest day the ledger holds (within retention) to today, the
    same for every cohort so that the charts compare."""
    oldest = min((d for d in history.days if d > today - retention_days), default=today)
    return range(oldest, today + 1)


def daily(history: History, key: str, days: range) -> tuple[DayCount, ...]:
    return tuple(DayCount(_date(d), history.days.get(d, {}).get(key, {}).get(REQUESTS, 0)) for d in days)


def _brownouts(flags: MigrationFlags, cohort: Cohort, now: float) -> tuple[tuple[BrownoutRow, ...], str]:
    rows, upcoming, open_until = [], [], []
    for b in flags.brownouts:
        if not b.selects(cohort):
            continue
        state = "killed" if flags.brownout_kill_switch else b.state(now)
        rows.append(BrownoutRow(b.name, b.mode, state, iso(b.start), iso(b.end)))
        if state == "open":
            open_until.append((b.end, b.name))
        elif state == "scheduled":
            upcoming.append((b.start, b.name))
    if open_until:
        end, name = min(open_until)
        return tuple(rows), f"{name}: open now, until {iso(end)}"
    if upcoming:
        start, name = min(upcoming)
        return tuple(rows), f"{name}: {iso(start)}"
    return tuple(rows), "none scheduled"


def _guardrail(cohort: Cohort, rails: dict[str, Any] | None) -> GuardrailCell:
    name = guardrail_name(cohort)
    if rails is None or not rails.get("rules"):
        return GuardrailCell(name, "no rules")
    state = rails.get("cohorts", {}).get(name)
    if state is None:
        return GuardrailCell(name, "armed")
    why = state.get("why") or {}
    reason = f"{why['signal']} {why.get('value')} > {why.get('above')} over {why.get('sample')} sessions" if why else ""
    return GuardrailCell(name, state["state"], iso(state.get("since")), reason)


def cohort_rows(
    report: dict[str, Any],
    history: History,
    flags: MigrationFlags,
    rails: dict[str, Any] | None,
    now: float,
    today: int,
    retention_days: int,
) -> list[CohortRow]:
    """One row per cohort of the report, in the report's order (most recently seen first)."""
    days = window_days(history, today, retention_days)
    rows = []
    for entry in report["cohorts"]:
        cohort = Cohort(entry["app"], entry["platform"], entry["version"])
        deprecation = next((d for d in flags.deprecations if matches_any(d.cohorts, cohort)), None)
        brownouts, next_window = _brownouts(flags, cohort, now)
        rows.append(
            CohortRow(
                cohort=cohort,
                key=entry["cohort"],
                days=daily(history, entry["cohort"], days),
                last_seen=entry["last_seen"].replace("T", " ").replace("Z", " UTC"),
                last_seen_at=entry["last_seen"],
                days_silent=entry["days_silent"],
                requests_7d=entry["requests_7d"],
                requests_30d=entry["requests_30d"],
                share_30d=entry["share_30d"],
                trend=entry["trend"],
                verdict=entry["verdict"],
                deprecated=iso(deprecation.deprecated) if deprecation else None,
                sunset=iso(deprecation.sunset) if deprecation and deprecation.sunset is not None else None,
                brownouts=brownouts,
                next_window=next_window,
                guardrail=_guardrail(cohort, rails),
            )
        )
    return rows


def select(rows: Sequence[CohortRow], app: str | None, sort: str | None, reverse: bool = False) -> list[CohortRow]:
    """The rows of `app` (all for None), ordered by `sort` (a key of SORTS; unknown: the report's
    order) in its natural direction, or the other way with `reverse`."""
    chosen = [r for r in rows if not app or r.cohort.app == app]
    if sort not in SORTS or (sort == DEFAULT_SORT and not reverse):
        return chosen
    keys = {
        "cohort": lambda r: r.key,
        "last_seen": lambda r: r.last_seen_at,
        "share": lambda r: r.share_30d,
        "trend": lambda r: -1.0 if r.trend is None else r.trend,
        "verdict": lambda r: (r.verdict, r.key),
        "requests": lambda r: r.requests_30d,
    }
    descending = SORTS[sort][1] != reverse
    return sorted(chosen, key=keys[sort], reverse=descending)


def apps(rows: Iterable[CohortRow]) -> list[str]:
    return sorted({r.cohort.app for r in rows})


@dataclass(frozen=True)
class Overview:
    mode: str
    mode_source: str
    gateway_percent: float
    kill_switch: bool
    legacy_enabled: bool
    flags_version: str
    flags_path: str | None
    flags_valid: bool
    flags_error: str | None
    flags_loaded: str
    requests_today: int
    requests_7d: int
    requests_30d: int
    sessions: int | None
    max_sessions: int
    store_up: bool
    store_backend: str
    open_circuits: int | None
    tripped: tuple[str, ...]


def overview(
    rollout: dict[str, Any],
    report: dict[str, Any],
    history: History,
    today: int,
    sessions: float | None,
    max_sessions: int,
    store_up: bool,
    open_circuits: int | None,
) -> Overview:
    flags, file = rollout["flags"], rollout.get("file") or {}
    rails = rollout.get("guardrails") or {}
    today_counts = history.days.get(today, {})
    return Overview(
        mode=flags["mode"],
        mode_source=flags["mode_source"],
        gateway_percent=flags["gateway_percent"],
        kill_switch=flags["kill_switch"],
        legacy_enabled=rollout["enabled"],
        flags_version=flags["version"] or "—",
        flags_path=file.get("path"),
        flags_valid=file.get("valid", True),
        flags_error=file.get("error"),
        flags_loaded=iso(file.get("loaded_at")),
        requests_today=sum(c.get(REQUESTS, 0) for c in today_counts.values()),
        requests_7d=report["requests_7d"],
        requests_30d=report["requests_30d"],
        sessions=None if sessions is None else int(sessions),
        max_sessions=max_sessions,
        store_up=store_up,
        store_backend=(report.get("ledger") or {}).get("backend", "memory"),
        open_circuits=open_circuits,
        tripped=tuple(sorted(n for n, c in rails.get("cohorts", {}).items() if c["state"] == "tripped")),
    )


@dataclass(frozen=True)
class ShadowCohort:
    cohort: str
    classes: tuple[tuple[str, int], ...]  # class → differences, most first
    samples: int
    paths: tuple[str, ...]  # field paths of the latest samples, never values


@dataclass(frozen=True)
class ShadowView:
    running: bool
    window_seconds: float
    compared: int
    calibrated: int
    cohorts: tuple[ShadowCohort, ...]
    fields: tuple[dict[str, Any], ...]  # the noisiest first: field, class, rates, verdict
    suggested: tuple[str, ...] = field(default=())


def shadow_view(samples: Sequence[dict[str, Any]] | None, report: dict[str, Any] | None, now: float) -> ShadowView:
    """Per cohort, the difference classes of the mismatches within the shadow window (newest
    first, as kept: `rollout.shadow_max_samples`), and the fields by noise rate."""
    if samples is None or report is None:
        return ShadowView(False, 0.0, 0, 0, (), ())
    window = float(report["window_seconds"])
    by_cohort: dict[str, tuple[Counter[str], list[dict[str, Any]]]] = {}
    for sample in samples:
        if now - sample["at"] > window:
            continue
        classes, kept = by_cohort.setdefault(sample.get("cohort") or "unknown", (Counter(), []))
        classes.update(sample.get("classes") or {sample["class"]: 1})
        kept.append(sample)
    cohorts = tuple(
        ShadowCohort(
            name,
            tuple(classes.most_common()),
            len(kept),
            tuple(dict.fromkeys(p for s in kept[:SAMPLE_PATHS] for p in s["paths"])),
        )
        for name, (classes, kept) in sorted(by_cohort.items())
    )
    fields = sorted(
        [*report["regressions"], *report["noise"]],
        key=lambda f: (-f["noise_rate"], -f["mismatch_rate"], f["field"]),
    )
    return ShadowView(
        True,
        window,
        report["compared"],
        report["calibrated"],
        cohorts,
        tuple(fields),
        tuple(report.get("suggested_ignore_fields", ())),
    )
