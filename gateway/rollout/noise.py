"""Noise calibration (Diffy's idea): the legacy service compared against itself tells which fields
differ by nature (ratings that move, a `dateStatus` that is rewritten, records that reorder), so
that a field differing as often between two legacy reads as between legacy and gateway is
reported as noise, not as a regression.

`FieldStats` holds the per-field counters over a window: sessions compared (legacy against
gateway) and in how many each (class, field) differed; calibrations (legacy against a second
legacy session for the same token) and in how many each field differed. `verdict()` is the pure
rule; `report()` is what `GET /admin/rollout/shadow` shows. `Budget` bounds the second reads, so
the legacy service's load stays within what the operator allowed.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from gateway.rollout.compare import MISMATCH_CLASSES
from gateway.window import Window

REGRESSION = "regression"
NOISE = "noise"
VERDICTS = (REGRESSION, NOISE)
_SESSIONS = ("#sessions",)


@dataclass(frozen=True)
class Margin:
    """Diffy's two thresholds: a field is a regression only if its mismatch rate exceeds its noise
    rate by more than `absolute` (a share of sessions) AND by more than `relative` of the noise
    rate itself."""

    relative: float = 0.2
    absolute: float = 0.03


def verdict(mismatch_rate: float, noise_rate: float, margin: Margin) -> str:
    excess = mismatch_rate - noise_rate
    if excess > margin.absolute and mismatch_rate > noise_rate * (1 + margin.relative):
        return REGRESSION
    return NOISE


class FieldStats:
    def __init__(self, window: float, margin: Margin, max_fields: int = 500) -> None:
        self._compared = Window(window, max_keys=max_fields)
        self._calibrated = Window(window, max_keys=max_fields)
        self._margin = margin
        self.window = window

    def add_compare(self, fields: Iterable[tuple[str, str]], now: float | None = None) -> None:
        now = time.time() if now is None else now
        self._compared.add(now, _SESSIONS)
        for key in fields:
            self._compared.add(now, key)

    def add_calibration(self, fields: Iterable[tuple[str, str]], now: float | None = None) -> None:
        now = time.time() if now is None else now
        self._calibrated.add(now, _SESSIONS)
        # The legacy side against itself: any class counts as noise of that field.
        for name in {f for _, f in fields}:
            self._calibrated.add(now, name)

    def regressions(self, fields: Iterable[tuple[str, str]], now: float | None = None) -> list[str]:
        """The fields of one comparison that are regressions by the window's rates, sorted."""
        now = time.time() if now is None else now
        compared, calibrated = self._compared.totals(now), self._calibrated.totals(now)
        sessions, calibrations = compared[_SESSIONS], calibrated[_SESSIONS]
        found = set()
        for cls, name in fields:
            if cls not in MISMATCH_CLASSES:
                continue
            rate = compared[(cls, name)] / sessions if sessions else 1.0
            noise = calibrated[name] / calibrations if calibrations else 0.0
            if verdict(rate, noise, self._margin) == REGRESSION:
                found.add(name)
        return sorted(found)

    def report(self, now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        compared, calibrated = self._compared.totals(now), self._calibrated.totals(now)
        sessions, calibrations = compared[_SESSIONS], calibrated[_SESSIONS]
        fields = []
        for key, count in compared.items():
            if key == _SESSIONS or not isinstance(key, tuple):
                continue
            cls, name = key
            if cls not in MISMATCH_CLASSES:
                continue
            rate = count / sessions
            noise = calibrated[name] / calibrations if calibrations else 0.0
            fields.append(
                {
                    "field": name,
                    "class": cls,
                    "sessions": count,
                    "mismatch_rate": round(rate, 4),
                    "noise_rate": round(noise, 4),
                    "verdict": verdict(rate, noise, self._margin),
                }
            )
        fields.sort(key=lambda f: (f["verdict"] != REGRESSION, -f["mismatch_rate"], f["field"]))
        noisy = [f for f in fields if f["verdict"] == NOISE and f["noise_rate"] > 0]
        return {
            "window_seconds": self.window,
            "compared": sessions,
            "calibrated": calibrations,
            "margin": {"relative": self._margin.relative, "absolute": self._margin.absolute},
            "regressions": [f for f in fields if f["verdict"] == REGRESSION],
            "noise": [f for f in fields if f["verdict"] == NOISE],
            "noise_rates": {
                str(k): round(v / calibrations, 4) for k, v in calibrated.items() if k != _SESSIONS and calibrations
            },
            "suggested_ignore_fields": suggestions(f["field"] for f in noisy),
        }


def suggestions(fields: Iterable[str]) -> list[str]:
    """`shadow_ignore_fields` entries for noisy fields. A pass-through key has no name to give (it
    is hashed), so the pass-through object's list is suggested instead, e.g. `disps`."""
    out = set()
    for name in fields:
        parts = name.split(".")
        hashed = next((i for i, p in enumerate(parts) if p.startswith("~")), None)
        entry = ".".join(parts[:hashed] if hashed is not None else parts)
        entry = entry.split(" (", 1)[0]  # "visits (legacy only)": the list itself
        if entry and entry != "lpus":
            out.add(entry)
    return sorted(out)


class Budget:
    """At most `per_minute` second legacy reads per minute on this replica, in a token bucket
    that holds at most one minute's worth (a quiet hour does not save up a burst)."""

    def __init__(self, per_minute: float) -> None:
        self._rate = per_minute / 60.0
        self._capacity = max(1.0, per_minute)
        self._tokens = self._capacity
        self._at: float | None = None

    def take(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        if self._at is not None:
            self._tokens = min(self._capacity, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._rate <= 0 or self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True
