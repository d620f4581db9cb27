"""Guarded brownouts: in a scheduled window, a share of one cohort's creates is refused (503 and
Retry-After), delayed ("soft"), or only counted ("dry_run"). Polls are never touched: a session
that exists is served to its end.

`decide_brownout` is the pure rule. Precedence: the kill switch, then the guards (the cohort
carries more than `brownout_max_share` of this replica's creates, or its own 5xx rate is above
`brownout_max_error_rate`: paused), then the share, then the window's mode.

The share is chosen by a hash of the brownout's name and the patient's token: deterministic, the
same on every replica; a patient in the share is in it for the whole window (and Retry-After
says when the window closes), a patient outside it is never touched. Another brownout name
draws another share.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

from gateway.cohorts import Cohort
from gateway.migration.clock import Clock
from gateway.migration.signals import Brownout, MigrationFlags, selected
from gateway.window import Window

BUCKETS = 10_000
REFUSED, DELAYED, DRY_RUN = "refused", "delayed", "dry_run"
SPARED, PAUSED_SHARE, PAUSED_ERRORS, KILLED = "spared", "paused_share", "paused_errors", "killed"
OUTCOMES = (REFUSED, DELAYED, DRY_RUN, SPARED, PAUSED_SHARE, PAUSED_ERRORS, KILLED)
# What each mode does to a request in the share.
_MODE_OUTCOME = {"fail": REFUSED, "soft": DELAYED, "dry_run": DRY_RUN}
# The error-rate guard judges a cohort once this many of its creates were served in the window.
MIN_ERROR_SAMPLE = 5
_SLOTS = 30
MAX_RETRY_AFTER = 86_400


@dataclass(frozen=True)
class Guards:
    min_requests: int = 20
    max_share: float = 0.2
    max_error_rate: float = 0.2


@dataclass(frozen=True)
class GuardView:
    """One replica's creates in the guard window: all, and the cohort's (served: not refused by
    a brownout; errors: 5xx among those served)."""

    creates: int = 0
    cohort_creates: int = 0
    cohort_served: int = 0
    cohort_errors: int = 0


@dataclass(frozen=True)
class BrownoutDecision:
    brownout: str
    outcome: str
    retry_after: int = 1
    delay: float = 0.0


def share_bucket(name: str, token: str) -> int:
    """0..9999 from the brownout's name and the token, identical in every process."""
    digest = hashlib.sha256(b"visit-gateway/brownout\0" + name.encode() + b"\0" + token.encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def open_window(flags: MigrationFlags, cohort: Cohort, now: float) -> Brownout | None:
    for brownout in flags.brownouts:
        if brownout.open_at(now) and brownout.selects(cohort):
            return brownout
    return None


def decide_brownout(
    flags: MigrationFlags, cohort: Cohort, token: str | None, now: float, view: GuardView, guards: Guards
) -> BrownoutDecision | None:
    """What a create of `cohort` meets now; None outside every window that names the cohort."""
    window = open_window(flags, cohort, now)
    if window is None:
        return None
    # Until the window closes; a switch-off's window is months long, but a client is told to try
    # again within a day (the window may be lifted).
    retry_after = min(MAX_RETRY_AFTER, max(1, math.ceil(window.end - now)))
    if flags.brownout_kill_switch:
        return BrownoutDecision(window.name, KILLED)
    if view.creates >= guards.min_requests and view.cohort_creates > guards.max_share * view.creates:
        return BrownoutDecision(window.name, PAUSED_SHARE)
    if view.cohort_served >= MIN_ERROR_SAMPLE and view.cohort_errors > guards.max_error_rate * view.cohort_served:
        return BrownoutDecision(window.name, PAUSED_ERRORS)
    # A create without a token is refused by the create route anyway; it draws no share.
    if token is None or share_bucket(window.name, token) >= round(window.share * BUCKETS):
        return BrownoutDecision(window.name, SPARED)
    outcome = _MODE_OUTCOME[window.mode]
    return BrownoutDecision(window.name, outcome, retry_after, window.delay if window.mode == "soft" else 0.0)


class GuardWindow:
    """This replica's creates over the last `window` seconds, per cohort, on the clock: the one
    sliding window (gateway/window.py) in 30 slices, bounded by slices × cohorts (`cohorts`, the
    number the config can produce), and a view is a few dict lookups."""

    def __init__(self, clock: Clock, window: float, cohorts: int = 1000) -> None:
        self._clock = clock
        self._window = Window(window, slices=_SLOTS, max_keys=3 * cohorts + 1)

    def record(self, cohort: Cohort, refused: bool, error: bool) -> None:
        if refused:
            counted: tuple[tuple[Cohort | None, str], ...] = ((None, "creates"), (cohort, "creates"))
        elif error:
            counted = ((None, "creates"), (cohort, "creates"), (cohort, "served"), (cohort, "errors"))
        else:
            counted = ((None, "creates"), (cohort, "creates"), (cohort, "served"))
        self._window.add_all(self._clock.now(), counted)

    def view(self, cohort: Cohort) -> GuardView:
        now, count = self._clock.now(), self._window.count
        return GuardView(
            count(now, (None, "creates")),
            count(now, (cohort, "creates")),
            count(now, (cohort, "served")),
            count(now, (cohort, "errors")),
        )


class BrownoutCounts:
    """Per brownout, per cohort, what it did (refused, delayed, dry run): "who it would hit",
    for the admin report. Only brownouts of the current flags are kept."""

    def __init__(self) -> None:
        self._hits: dict[str, Counter[str]] = {}

    def add(self, decision: BrownoutDecision, cohort: Cohort) -> None:
        if decision.outcome in (REFUSED, DELAYED, DRY_RUN):
            self._hits.setdefault(decision.brownout, Counter())[str(cohort)] += 1

    def describe(self, flags: MigrationFlags, now: float) -> list[dict[str, Any]]:
        names = {b.name for b in flags.brownouts}
        for name in [n for n in self._hits if n not in names]:
            del self._hits[name]
        return [
            {
                "name": b.name,
                "mode": b.mode,
                "state": "killed" if flags.brownout_kill_switch else b.state(now),
                "start": b.start,
                "end": b.end,
                "share": b.share,
                **selected(b.cohorts),
                "hits": dict(self._hits.get(b.name, {})),
            }
            for b in flags.brownouts
        ]
