"""Comparing two final old-contract answers (lists of TicketLists), for shadow mode. Pure.

The compare understands the session protocol: every difference is classified as one of
CLASSES, per LPU:
- `missing_lpu` / `extra_lpu`: an LPU only the legacy / only the gateway listed;
- `state`: the LPU is `Complete` on one side and `Failed` on the other (its records are then
  not compared: a Failed LPU carries none);
- `content`: a field, or a whole record, differs inside an LPU both sides list in one state;
- `timing`: the gateway's session was final much later than the legacy one (session-wide,
  from the per-side time-to-final the shadow runner measures);
- `order`: the same LPUs or records, in another order. Order is reported but is not a mismatch:
  the apps sort what they show.

LPUs are paired by their `lpu.guid`, records by being equal or else by their identity key
(`ticketGuid`, `callDoctorGuid`, `dispExamGuid`), never by position. Differences are field paths
only, never values: `[0].visits[1].room` is field `room` of the second visit of the first LPU,
positions counted in the legacy answer; `[1] (legacy only)` is an LPU the gateway did not list,
`[0].calls.gateway[2] (gateway only)` a call only the gateway returned (counted in the gateway's
list). Each difference also names its `field`, the path without positions (`visits.room`), which
is what the per-field counters and the noise calibration count.

Pass-through objects (disp items: the gateway passes them on as the upstream gives them, so their
keys are free-form and may carry personal data) never show their keys' text: a key there is
`~` and 8 hex digits of a keyed hash (`disps.~3fa1c2d0`), the same key giving the same name under
one `secret`. Only the contract's own identity key (`dispExamGuid`) is shown as it is.

Ignored fields: a name without a dot ("ratings") is ignored at any depth; a dotted path
("lpu.ratings.avg", "visits.history") is ignored where it matches the path from the TicketLists
element, list positions left out. Everything under an ignored field is ignored too.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from gateway.contract import ZERO_GUID

RECORD_LISTS = ("visits", "calls", "disps")
IDENTITY_KEYS = ("ticketGuid", "callDoctorGuid", "dispExamGuid")
# Record lists whose items are passed through unmapped: their keys are data, not contract names.
PASS_THROUGH = frozenset({"disps"})
SHOWN_PASS_THROUGH_KEYS = frozenset({"dispExamGuid"})
# Difference classes, most telling first: a session is counted under the first that applies.
CLASSES = ("missing_lpu", "extra_lpu", "state", "content", "timing", "order")
# Classes that make a session a mismatch (order alone does not).
MISMATCH_CLASSES = frozenset(CLASSES) - {"order"}
# The older, coarser reasons (gateway_shadow_results_total{reason}), most telling first.
REASONS = ("lpus", "state", "records", "lpu_info", "timing", "other")
MAX_PATHS = 100
# The field of a session-wide timing difference, and of an order difference between LPUs.
TIMING_FIELD = "final_seconds"
LPUS_FIELD = "lpus"


@dataclass(frozen=True)
class Difference:
    cls: str  # one of CLASSES
    field: str  # the path without positions: "visits.room", "state", "lpus", "disps.~3fa1c2d0"
    path: str  # where: "[0].visits[1].room"


@dataclass(frozen=True)
class Timing:
    """Seconds from the session's creation until each side was final."""

    legacy: float
    gateway: float


@dataclass(frozen=True)
class Comparison:
    paths: tuple[str, ...]  # the mismatching paths (order differences left out), capped
    reason: str  # "equal" when paths is empty, else one of REASONS
    total: int  # differing paths before the cap
    differences: tuple[Difference, ...] = ()  # every difference, order included, capped
    # Each (class, field) that differs at least once in this session: what the per-field
    # counters count, once per session whatever the number of records.
    fields: frozenset[tuple[str, str]] = field(default_factory=frozenset)

    @property
    def match(self) -> bool:
        return not self.paths

    @property
    def cls(self) -> str:
        """The session's most telling difference class, "equal" when nothing differs."""
        present = {c for c, _ in self.fields}
        return next((c for c in CLASSES if c in present), "equal")

    def classes(self) -> dict[str, int]:
        """How many differences of each class (before the cap)."""
        counts = dict.fromkeys(CLASSES, 0)
        for diff in self.differences:
            counts[diff.cls] += 1
        return counts


class _Ignore:
    def __init__(self, fields: Iterable[str]) -> None:
        self._names = frozenset(f for f in fields if "." not in f)
        self._paths = frozenset(f for f in fields if "." in f)

    def __bool__(self) -> bool:
        return bool(self._names or self._paths)

    def __call__(self, generic: str) -> bool:
        # Callers descend only into fields that are not ignored, so the last name and the exact
        # path are all there is to check.
        return generic.rpartition(".")[2] in self._names or generic in self._paths


def key_name(key: str, secret: bytes) -> str:
    """What a pass-through key is called in a path: never its text."""
    if key in SHOWN_PASS_THROUGH_KEYS:
        return key
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), key=secret[:64], digest_size=4).hexdigest()
    return f"~{digest}"


def metric_field(name: str) -> str:
    """A field as a metric label: hashed pass-through keys collapse to `*`, so that an upstream
    inventing keys cannot add series."""
    return ".".join("*" if part.startswith("~") else part for part in name.split("."))


def _join(generic: str, key: str) -> str:
    return f"{generic}.{key}" if generic else key


def _strip(value: Any, generic: str, ignored: _Ignore) -> Any:
    """The value without its ignored fields."""
    if not ignored:
        return value
    if isinstance(value, dict):
        return {k: _strip(v, _join(generic, k), ignored) for k, v in value.items() if not ignored(_join(generic, k))}
    if isinstance(value, list):
        return [_strip(v, generic, ignored) for v in value]
    return value


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


@dataclass
class _Out:
    """The differences found so far, and how pass-through keys are named."""

    secret: bytes
    found: list[Difference] = field(default_factory=list)

    def add(self, cls: str, name: str, path: str) -> None:
        self.found.append(Difference(cls, name, path))

    def name(self, key: Any, passthrough: bool) -> str:
        return key_name(str(key), self.secret) if passthrough else str(key)


def _diff(a: Any, b: Any, path: str, shown: str, passthrough: bool, out: _Out) -> None:
    """Content differences of two already-stripped values; `shown` is the field so far."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            name = out.name(key, passthrough)
            sub, sub_shown = f"{path}.{name}", _join(shown, name)
            if key not in a or key not in b:
                out.add("content", sub_shown, sub)
            else:
                _diff(a[key], b[key], sub, sub_shown, passthrough, out)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            out.add("content", _join(shown, "length"), f"{path}.length")
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            _diff(x, y, f"{path}[{i}]", shown, passthrough, out)
    elif not _same_scalar(a, b):
        out.add("content", shown, path)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _same_scalar(a: Any, b: Any) -> bool:
    # 4 and 4.0 are the same JSON number; 1 and true, or "1" and 1, are not the same value.
    if _number(a) and _number(b):
        return a == b
    return type(a) is type(b) and a == b


def _identity(record: Any) -> tuple[str, Any] | None:
    if not isinstance(record, dict):
        return None
    for key in IDENTITY_KEYS:
        value = record.get(key)
        if isinstance(value, str) and value and value != ZERO_GUID:
            return key, value.lower()
    return None


def _in_order(pairs: list[tuple[int, int]]) -> bool:
    """Whether the gateway positions of paired items rise with the legacy positions."""
    ordered = [j for _, j in sorted(pairs)]
    return all(x < y for x, y in itertools.pairwise(ordered))


def _records(legacy: list[Any], gateway: list[Any], path: str, key: str, ignored: _Ignore, out: _Out) -> None:
    """An order-insensitive compare of two record lists."""
    legacy = [_strip(r, key, ignored) for r in legacy]
    gateway = [_strip(r, key, ignored) for r in gateway]
    passthrough = key in PASS_THROUGH
    unused: dict[str, list[int]] = {}
    for j, record in enumerate(gateway):
        unused.setdefault(_canonical(record), []).append(j)
    pairs: list[tuple[int, int]] = []
    left: list[int] = []
    for i, record in enumerate(legacy):
        same = unused.get(_canonical(record))
        if same:
            pairs.append((i, same.pop(0)))
        else:
            left.append(i)
    right = sorted(j for js in unused.values() for j in js)
    by_identity: dict[tuple[str, Any], list[int]] = {}
    for j in right:
        ident = _identity(gateway[j])
        if ident is not None:
            by_identity.setdefault(ident, []).append(j)
    paired: set[int] = set()
    for i in left:
        ident = _identity(legacy[i])
        candidates = by_identity.get(ident) if ident is not None else None
        if candidates:
            j = candidates.pop(0)
            paired.add(j)
            pairs.append((i, j))
            _diff(legacy[i], gateway[j], f"{path}[{i}]", key, passthrough, out)
        else:
            out.add("content", f"{key} (legacy only)", f"{path}[{i}] (legacy only)")
    for j in right:
        if j not in paired:
            out.add("content", f"{key} (gateway only)", f"{path}.gateway[{j}] (gateway only)")
    if not _in_order(pairs):
        out.add("order", key, f"{path} (order)")


def _lpu_key(entry: Any) -> str:
    lpu = entry.get("lpu") if isinstance(entry, dict) else None
    guid = lpu.get("guid") if isinstance(lpu, dict) else None
    return guid.lower() if isinstance(guid, str) else ""


def _entry(legacy: dict[str, Any], gateway: dict[str, Any], path: str, ignored: _Ignore, out: _Out) -> None:
    if not ignored("state") and legacy.get("state") != gateway.get("state"):
        # A Failed LPU carries no records: its content says nothing about the mapping.
        out.add("state", "state", f"{path}.state")
        return
    for key in sorted(set(legacy) | set(gateway)):
        if key == "state" or ignored(key):
            continue
        sub = f"{path}.{key}"
        if key not in legacy or key not in gateway:
            out.add("content", key, sub)
        elif key in RECORD_LISTS and isinstance(legacy[key], list) and isinstance(gateway[key], list):
            _records(legacy[key], gateway[key], sub, key, ignored, out)
        else:
            _diff(_strip(legacy[key], key, ignored), _strip(gateway[key], key, ignored), sub, key, False, out)


def _reason(found: list[Difference]) -> str:
    def kind(d: Difference) -> str:
        if d.cls in ("missing_lpu", "extra_lpu"):
            return "lpus"
        if d.cls in ("state", "timing"):
            return d.cls
        head = d.field.split(".", 1)[0].split(" ", 1)[0]
        if head in RECORD_LISTS:
            return "records"
        if head == "lpu":
            return "lpu_info"
        return "other"

    kinds = {kind(d) for d in found}
    return next(r for r in REASONS if r in kinds)


def late(timing: Timing, margin: float, ratio: float) -> bool:
    """Whether the gateway was final later than the legacy side by more than the margin:
    `margin` seconds and `ratio` times the legacy side's own time, whichever is more. Being
    faster is never a difference."""
    return timing.gateway - timing.legacy > max(margin, ratio * timing.legacy)


def compare_sessions(
    legacy: list[Any],
    gateway: list[Any],
    ignore: Iterable[str] = (),
    *,
    timing: Timing | None = None,
    timing_margin: float = 5.0,
    timing_ratio: float = 1.0,
    secret: bytes = b"",
) -> Comparison:
    """Where the gateway's final answer differs from the legacy service's, per LPU; `secret`
    keys the names of pass-through keys."""
    ignored = _Ignore(ignore)
    out = _Out(secret)
    slots: dict[str, list[int]] = {}
    for j, entry in enumerate(gateway):
        slots.setdefault(_lpu_key(entry), []).append(j)
    pairs: list[tuple[int, int]] = []
    for i, entry in enumerate(legacy):
        same_lpu = slots.get(_lpu_key(entry))
        if not same_lpu:
            out.add("missing_lpu", LPUS_FIELD, f"[{i}] (legacy only)")
            continue
        j = same_lpu.pop(0)
        pairs.append((i, j))
        other = gateway[j]
        if isinstance(entry, dict) and isinstance(other, dict):
            _entry(entry, other, f"[{i}]", ignored, out)
        elif entry != other:
            out.add("content", "", f"[{i}]")
    for js in slots.values():
        for j in js:
            out.add("extra_lpu", LPUS_FIELD, f"gateway[{j}] (gateway only)")
    if not _in_order(pairs):
        out.add("order", LPUS_FIELD, "(order)")
    if timing is not None and late(timing, timing_margin, timing_ratio):
        out.add("timing", TIMING_FIELD, TIMING_FIELD)
    found = out.found
    fields = frozenset((d.cls, d.field) for d in found)
    mismatching = [d for d in found if d.cls in MISMATCH_CLASSES]
    if not mismatching:
        return Comparison((), "equal", 0, tuple(found[:MAX_PATHS]), fields)
    paths = tuple(d.path for d in mismatching[:MAX_PATHS])
    return Comparison(paths, _reason(mismatching), len(mismatching), tuple(found[:MAX_PATHS]), fields)
