"""The `[migration]` table of the rollout flags file (gateway/rollout/flags.py reads the file and
calls `parse_migration`): per-cohort deprecation signals and brownout windows, and the header
values the signals become.

    [migration]
    link = "https://example.org/migrate"      # default for every deprecation's Link
    brownout_kill_switch = false              # true: every brownout stops at once

    [[migration.deprecation]]
    cohorts = ["beta/android/4.9", "beta/android/4.10"]   # selectors (gateway/cohorts.py)
    deprecated = 2026-06-01T00:00:00Z         # Deprecation (RFC 9745); or unix seconds
    sunset = 2027-01-01T00:00:00Z             # optional: Sunset (RFC 8594)
    link = "https://example.org/beta"         # optional: Link rel="deprecation"
    sunset_link = "https://example.org/eol"   # optional: Link rel="sunset"

    [[migration.brownout]]
    name = "beta-first"
    cohorts = ["beta/*/*"]                    # as above: every platform and version of beta
    start = 2026-12-01T12:00:00Z
    duration = 600                            # seconds, at most 366 days (a switch-off)
    share = 0.25                              # of the cohort's patients (default 1.0)
    mode = "dry_run"                          # dry_run (default) | fail | soft
    delay = 2.0                               # soft: seconds added before the create is served
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any

from gateway.cohorts import Cohort, Selector, SelectorError, matches_any, old_form, parse_selectors, selectors_from

MAX_ENTRIES = 50
# A window may be a short brownout or a cohort's switch-off (docs/migration.md, step 4).
MAX_DURATION = 366 * 86_400
MAX_DELAY = 30.0
MODES = ("dry_run", "fail", "soft")
# RFC 3986 characters only: a URL is written into a header between < and >.
_URL = re.compile(r"https?://[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]{1,2000}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
TABLE_KEYS = ("link", "brownout_kill_switch", "deprecation", "brownout")
# How an entry named its cohorts before selectors did: refused, with the selectors they meant.
OLD_SELECTOR_KEYS = ("app", "platform", "versions")
DEPRECATION_KEYS = ("cohorts", "deprecated", "sunset", "link", "sunset_link")
BROWNOUT_KEYS = ("cohorts", "name", "start", "duration", "share", "mode", "delay")


class SignalsError(ValueError):
    """The `[migration]` table cannot be used; flags.py reports it like any flags file error."""


@dataclass(frozen=True)
class Deprecation:
    cohorts: tuple[Selector, ...]
    deprecated: int
    sunset: int | None = None
    link: str | None = None
    sunset_link: str | None = None

    def headers(self) -> tuple[tuple[str, str], ...]:
        found = [("Deprecation", deprecation_value(self.deprecated))]
        if self.sunset is not None:
            found.append(("Sunset", sunset_value(self.sunset)))
        links = [(url, rel) for url, rel in ((self.link, "deprecation"), (self.sunset_link, "sunset")) if url]
        if links:
            found.append(("Link", link_value(links)))
        return tuple(found)


@dataclass(frozen=True)
class Brownout:
    name: str
    cohorts: tuple[Selector, ...]
    start: int
    duration: int
    share: float = 1.0
    mode: str = "dry_run"
    delay: float = 2.0

    def selects(self, cohort: Cohort) -> bool:
        return matches_any(self.cohorts, cohort)

    @property
    def end(self) -> int:
        return self.start + self.duration

    def open_at(self, now: float) -> bool:
        """The window is [start, start + duration): it closes on the second it says."""
        return self.start <= now < self.end

    def state(self, now: float) -> str:
        return "scheduled" if now < self.start else "open" if now < self.end else "closed"


@dataclass(frozen=True)
class MigrationFlags:
    link: str | None = None
    brownout_kill_switch: bool = False
    deprecations: tuple[Deprecation, ...] = ()
    brownouts: tuple[Brownout, ...] = ()

    def headers_for(self, cohort: Cohort) -> tuple[tuple[str, str], ...]:
        """The signals of the first deprecation that names the cohort (none: no headers)."""
        for deprecation in self.deprecations:
            if matches_any(deprecation.cohorts, cohort):
                return deprecation.headers()
        return ()

    def as_json(self) -> dict[str, Any]:
        return {
            "link": self.link,
            "brownout_kill_switch": self.brownout_kill_switch,
            "deprecations": [{**selected(d.cohorts), "headers": dict(d.headers())} for d in self.deprecations],
            "brownouts": [
                {
                    "name": b.name,
                    **selected(b.cohorts),
                    "start": b.start,
                    "duration": b.duration,
                    "share": b.share,
                    "mode": b.mode,
                    "delay": b.delay,
                }
                for b in self.brownouts
            ],
        }


def deprecation_value(when: int) -> str:
    """RFC 9745 §2.1: `Deprecation = sf-date`, i.e. "@" and the integer unix seconds."""
    return f"@{when}"


def sunset_value(when: int) -> str:
    """RFC 8594 §3: `Sunset = HTTP-date`, in its IMF-fixdate form (RFC 9110 §5.6.7)."""
    return formatdate(when, usegmt=True)


def link_value(links: list[tuple[str, str]]) -> str:
    """RFC 8288 §3: link-values, comma-separated: `<url>; rel="deprecation"`."""
    return ", ".join(f'<{url}>; rel="{rel}"' for url, rel in links)


def _unknown(data: dict[str, Any], known: tuple[str, ...], where: str) -> None:
    extra = sorted(set(data) - set(known))
    if extra:
        raise SignalsError(f"{where}: unknown key {extra[0]!r} (known: {', '.join(known)})")


def _time(raw: Any, where: str) -> int:
    if isinstance(raw, datetime.datetime):
        if raw.tzinfo is None:
            raise SignalsError(f"{where} must have a UTC offset (2026-12-01T12:00:00Z)")
        return int(raw.timestamp())
    if isinstance(raw, int) and not isinstance(raw, bool) and 0 <= raw < 10**11:
        return raw
    raise SignalsError(f"{where} must be an offset date-time or unix seconds")


def _url(raw: Any, where: str) -> str | None:
    if raw is None:
        return None
    if not isinstance(raw, str) or not _URL.fullmatch(raw):
        raise SignalsError(f"{where} must be an http(s) URL of RFC 3986 characters")
    return raw


def selected(cohorts: tuple[Selector, ...]) -> dict[str, Any]:
    """An entry's selectors as the admin report shows them."""
    return {"cohorts": [str(s) for s in cohorts]}


def _cohorts(data: dict[str, Any], where: str) -> tuple[Selector, ...]:
    if any(key in data for key in OLD_SELECTOR_KEYS):
        example = selectors_from(data.get("app"), data.get("platform"), data.get("versions"))
        raise SignalsError(str(old_form(where, "app/platform/versions", "cohorts", example)))
    if "cohorts" not in data:
        raise SignalsError(f'{where}.cohorts is required, e.g. cohorts = ["beta/*/4.9"] (*/*/* for every client)')
    try:
        cohorts = parse_selectors(data["cohorts"], f"{where}.cohorts", 100)
    except SelectorError as exc:
        raise SignalsError(str(exc)) from None
    if not cohorts:
        raise SignalsError(f"{where}.cohorts must name at least one cohort (*/*/* for every client)")
    return cohorts


def _number(data: dict[str, Any], key: str, default: float, low: float, high: float, where: str) -> float:
    raw = data.get(key, default)
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not low <= raw <= high:
        raise SignalsError(f"{where}.{key} must be a number from {low:g} to {high:g}")
    return float(raw)


def _entries(data: dict[str, Any], key: str) -> list[dict[str, Any]]:
    raw = data.get(key, [])
    if not isinstance(raw, list) or len(raw) > MAX_ENTRIES or not all(isinstance(e, dict) for e in raw):
        raise SignalsError(f"migration.{key} must be at most {MAX_ENTRIES} [[migration.{key}]] tables")
    return raw


def parse_migration(data: Any) -> MigrationFlags:
    """The `[migration]` table of a flags file, or SignalsError. Unknown keys are errors."""
    if not isinstance(data, dict):
        raise SignalsError("migration must be a table")
    _unknown(data, TABLE_KEYS, "migration")
    link = _url(data.get("link"), "migration.link")
    kill = data.get("brownout_kill_switch", False)
    if not isinstance(kill, bool):
        raise SignalsError("migration.brownout_kill_switch must be true or false")
    deprecations = []
    for i, entry in enumerate(_entries(data, "deprecation")):
        where = f"migration.deprecation[{i}]"
        cohorts = _cohorts(entry, where)
        _unknown(entry, DEPRECATION_KEYS, where)
        if "deprecated" not in entry:
            raise SignalsError(f"{where}.deprecated is required")
        deprecated = _time(entry["deprecated"], f"{where}.deprecated")
        sunset = _time(entry["sunset"], f"{where}.sunset") if "sunset" in entry else None
        if sunset is not None and sunset < deprecated:
            # RFC 9745 §4: a resource is deprecated before (or when) it sunsets, never after.
            raise SignalsError(f"{where}.sunset must not be before deprecated")
        deprecations.append(
            Deprecation(
                cohorts,
                deprecated,
                sunset,
                _url(entry.get("link"), f"{where}.link") or link,
                _url(entry.get("sunset_link"), f"{where}.sunset_link"),
            )
        )
    brownouts = []
    names = set()
    for i, entry in enumerate(_entries(data, "brownout")):
        where = f"migration.brownout[{i}]"
        cohorts = _cohorts(entry, where)
        _unknown(entry, BROWNOUT_KEYS, where)
        name = entry.get("name")
        if not isinstance(name, str) or not _NAME.fullmatch(name) or name in names:
            raise SignalsError(f"{where}.name must be a unique name of {_NAME.pattern}")
        names.add(name)
        if "start" not in entry or "duration" not in entry:
            raise SignalsError(f"{where} needs start and duration")
        mode = entry.get("mode", "dry_run")
        if mode not in MODES:
            raise SignalsError(f"{where}.mode must be one of {', '.join(MODES)}")
        share = _number(entry, "share", 1.0, 0.0, 1.0, where)
        if share <= 0:
            raise SignalsError(f"{where}.share must be above 0")
        brownouts.append(
            Brownout(
                name=name,
                cohorts=cohorts,
                start=_time(entry["start"], f"{where}.start"),
                duration=int(_number(entry, "duration", 0, 1, MAX_DURATION, where)),
                share=share,
                mode=mode,
                delay=_number(entry, "delay", 2.0, 0.0, MAX_DELAY, where),
            )
        )
    return MigrationFlags(link, kill, tuple(deprecations), tuple(brownouts))
