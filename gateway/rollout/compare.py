"""Comparing two final old-contract answers (lists of TicketLists), for shadow mode. Pure.

The compare is order-insensitive: LPUs are paired by their `lpu.guid`, records by being equal
or else by their identity key (`ticketGuid`, `callDoctorGuid`, `dispExamGuid`). Differences are
reported as field paths only, never values: `[0].visits[1].room` is field `room` of the second
visit of the first LPU, positions counted in the legacy answer; `[1] (legacy only)` is an LPU the
gateway did not list, `[0].calls.gateway[2] (gateway only)` a call only the gateway returned
(counted in the gateway's list).

Ignored fields: a name without a dot ("ratings") is ignored at any depth; a dotted path
("lpu.ratings.avg", "visits.history") is ignored where it matches the path from the TicketLists
element, list positions left out. Everything under an ignored field is ignored too.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from gateway.contract import ZERO_GUID

RECORD_LISTS = ("visits", "calls", "disps")
IDENTITY_KEYS = ("ticketGuid", "callDoctorGuid", "dispExamGuid")
# Mismatch reasons, most telling first; a comparison is counted under the first that applies.
REASONS = ("lpus", "state", "records", "lpu_info", "other")
MAX_PATHS = 100


@dataclass(frozen=True)
class Comparison:
    paths: tuple[str, ...]
    reason: str  # "equal" when paths is empty, else one of REASONS
    total: int  # differing paths before the cap

    @property
    def match(self) -> bool:
        return not self.paths


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


def _diff(a: Any, b: Any, path: str, generic: str, ignored: _Ignore, out: list[str]) -> None:
    """Paths where two already-stripped values differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            sub = f"{path}.{key}"
            if key not in a or key not in b:
                out.append(sub)
            else:
                _diff(a[key], b[key], sub, _join(generic, key), ignored, out)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            out.append(f"{path}.length")
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            _diff(x, y, f"{path}[{i}]", generic, ignored, out)
    elif not _same_scalar(a, b):
        out.append(path)


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


def _records(legacy: list[Any], gateway: list[Any], path: str, generic: str, ignored: _Ignore, out: list[str]) -> None:
    """An order-insensitive compare of two record lists."""
    legacy = [_strip(r, generic, ignored) for r in legacy]
    gateway = [_strip(r, generic, ignored) for r in gateway]
    unused: dict[str, list[int]] = {}
    for j, record in enumerate(gateway):
        unused.setdefault(_canonical(record), []).append(j)
    left: list[int] = []
    for i, record in enumerate(legacy):
        same = unused.get(_canonical(record))
        if same:
            same.pop(0)
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
            _diff(legacy[i], gateway[j], f"{path}[{i}]", generic, ignored, out)
        else:
            out.append(f"{path}[{i}] (legacy only)")
    out.extend(f"{path}.gateway[{j}] (gateway only)" for j in right if j not in paired)


def _lpu_key(entry: Any) -> str:
    lpu = entry.get("lpu") if isinstance(entry, dict) else None
    guid = lpu.get("guid") if isinstance(lpu, dict) else None
    return guid.lower() if isinstance(guid, str) else ""


def _entry(legacy: dict[str, Any], gateway: dict[str, Any], path: str, ignored: _Ignore, out: list[str]) -> None:
    if not ignored("state") and legacy.get("state") != gateway.get("state"):
        # A Failed LPU carries no records: its content says nothing about the mapping.
        out.append(f"{path}.state")
        return
    for key in sorted(set(legacy) | set(gateway)):
        if key == "state" or ignored(key):
            continue
        sub = f"{path}.{key}"
        if key not in legacy or key not in gateway:
            out.append(sub)
        elif key in RECORD_LISTS and isinstance(legacy[key], list) and isinstance(gateway[key], list):
            _records(legacy[key], gateway[key], sub, key, ignored, out)
        else:
            _diff(_strip(legacy[key], key, ignored), _strip(gateway[key], key, ignored), sub, key, ignored, out)


def _reason(paths: list[str]) -> str:
    def kind(p: str) -> str:
        if p.startswith("gateway[") or (p.endswith("(legacy only)") and p.count("[") == 1):
            return "lpus"
        field = p.split("].", 1)[1] if "]." in p else ""
        head = field.split(".", 1)[0].split("[", 1)[0]
        if head == "state":
            return "state"
        if head in RECORD_LISTS:
            return "records"
        if head == "lpu":
            return "lpu_info"
        return "other"

    kinds = {kind(p) for p in paths}
    return next(r for r in REASONS if r in kinds)


def compare_sessions(legacy: list[Any], gateway: list[Any], ignore: Iterable[str] = ()) -> Comparison:
    """Where the gateway's final answer differs from the legacy service's, per LPU."""
    ignored = _Ignore(ignore)
    out: list[str] = []
    slots: dict[str, list[int]] = {}
    for j, entry in enumerate(gateway):
        slots.setdefault(_lpu_key(entry), []).append(j)
    for i, entry in enumerate(legacy):
        same_lpu = slots.get(_lpu_key(entry))
        if not same_lpu:
            out.append(f"[{i}] (legacy only)")
            continue
        other = gateway[same_lpu.pop(0)]
        if isinstance(entry, dict) and isinstance(other, dict):
            _entry(entry, other, f"[{i}]", ignored, out)
        elif entry != other:
            out.append(f"[{i}]")
    out.extend(f"gateway[{j}] (gateway only)" for js in slots.values() for j in js)
    if not out:
        return Comparison((), "equal", 0)
    return Comparison(tuple(out[:MAX_PATHS]), _reason(out), len(out))
