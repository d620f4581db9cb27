"""Pure functions from the new API's JSON to the old contract's JSON (old-api.md §2).

Rules, also in the README:
- Keys are matched ignoring case and underscores, so `ticketGuid`, `TicketGuid` and
  `ticket_guid` are the same field; output keys are exactly the seed's (`vote_count`, `cityId`).
- A field the upstream omits gets the legacy default of the seed's examples: null for strings,
  the zero GUID for ticket/timetable/doctor GUIDs, `0001-01-01T00:00:00+03:00` for appointment
  times, 0 for numbers, [] for arrays, null for nested objects.
- `planCount`/`usedCount` (visits) and `displayTimeMode`/`stubMessage` (calls) are written only
  when the upstream sends them: the seed's full response example has visits without the first
  two and its call example has neither, and those examples are the golden samples.
- Unknown extra fields are dropped from typed models (the apps were built against a closed
  schema); disp items are passed through whole, their keys camelCased.
- A value of the wrong type raises MappingError; the caller fails that LPU, never the session.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from gateway.contract import ZERO_GUID

MIN_TIME = "0001-01-01T00:00:00+03:00"
MAX_DEPTH = 32


class MappingError(ValueError):
    """Upstream JSON that cannot be turned into the old contract; `path` says where, `reason`
    is the LPU failure reason it is counted as."""

    reason = "invalid_body"

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path or '$'}: {problem}")
        self.path = path or "$"
        self.problem = problem


class TooManyItems(MappingError):
    """A list nested in a record (a visit's history) longer than MAX_NESTED_ITEMS: one record's
    mapping is the unit of work the fan-out cannot split, so its size is bounded here."""

    reason = "too_large"


# Items of a list nested in one record; with it, mapping one record costs at most a few ms.
MAX_NESTED_ITEMS = 1000


# A field spec is (output key, kind, default). Kinds: "str", "int", "num", an object spec
# (tuple of field specs), ("list", object spec). OMIT as default: written only when present.
OMIT = object()
Spec = tuple[tuple[str, Any, Any], ...]

LPU_BASE: Spec = (
    ("guid", "str", None),
    ("name", "str", None),
    ("address", "str", None),
    ("phone", "str", None),
    ("mcod", "str", None),
)
RATING_ITEM: Spec = (
    ("avg", "num", 0),
    ("vote_count", "int", 0),
    ("summa", "num", 0),
    ("detail_1", "int", 0),
    ("detail_2", "int", 0),
    ("detail_3", "int", 0),
    ("detail_4", "int", 0),
    ("detail_5", "int", 0),
)
RATING_ITEMS: Spec = tuple((name, RATING_ITEM, None) for name in ("queue", "result", "attitude", "cleanliness"))
RATINGS: Spec = (("mcod", "str", None), ("avg", "num", 0), ("item", RATING_ITEMS, None))
LPU_INFO: Spec = (
    ("guid", "str", None),
    ("name", "str", None),
    ("address", "str", None),
    ("email", "str", None),
    ("gps", "str", None),
    ("site", "str", None),
    ("phone", "str", None),
    ("mcod", "str", None),
    ("fcod", "str", None),
    ("cityId", "str", None),
    ("ratings", RATINGS, None),
)
CLIENT: Spec = (("mnem", "str", None), ("name", "str", None), ("description", "str", None))
HISTORY: Spec = (
    ("element", "str", None),
    ("elementGuid", "str", ZERO_GUID),
    ("oldValue", "str", None),
    ("newValue", "str", None),
    ("editor", "str", None),
    ("date", "str", MIN_TIME),
    ("client", CLIENT, None),
)
BUSY_TYPE: Spec = (("name", "str", None), ("type", "int", 0), ("code", "str", None))
_TICKET_TAIL: Spec = (
    ("source", "int", 0),
    ("login", "str", None),
    ("sourceName", "str", None),
    ("dispExamGuid", "str", None),
    ("history", ("list", HISTORY), []),
)
_TICKET_TIMES: Spec = (
    ("ticketGuid", "str", ZERO_GUID),
    ("timeTableGuid", "str", ZERO_GUID),
    ("docFio", "str", None),
    ("docGuid", "str", ZERO_GUID),
    ("doctorRole", "str", None),
    ("speciality", "str", None),
    ("beginTime", "str", MIN_TIME),
    ("endTime", "str", MIN_TIME),
    ("dateOfAppointment", "str", MIN_TIME),
)
VISIT: Spec = (
    ("lpu", LPU_BASE, None),
    ("num", "str", None),
    ("uchastokNum", "str", None),
    ("room", "str", None),
    ("flat", "int", 0),
    ("busyType", BUSY_TYPE, None),
    *_TICKET_TIMES,
    ("planCount", "int", OMIT),
    ("usedCount", "int", OMIT),
    *_TICKET_TAIL,
)
CALL: Spec = (
    ("lpu", LPU_BASE, None),
    ("callDoctorGuid", "str", None),
    ("callDoctorId", "int", 0),
    ("address", "str", None),
    ("createdBy", "str", None),
    ("status", "int", 0),
    ("type", "int", 0),
    ("dateStatus", "str", None),
    ("diagnosis", "str", None),
    ("displayTimeMode", "str", OMIT),
    ("stubMessage", "str", OMIT),
    *_TICKET_TIMES,
    *_TICKET_TAIL,
)


def _norm(key: str) -> str:
    return key.replace("_", "").lower()


def _fold(raw: Mapping[str, Any]) -> dict[str, Any]:
    folded: dict[str, Any] = {}
    for key, value in raw.items():
        folded.setdefault(_norm(key), value)
    return folded


def _value(value: Any, kind: Any, parent: str, name: str) -> Any:
    # The field's path is built only for an error or a nested record: this runs for every
    # field of every record of the fan-out (docs/benchmarks.md, profile).
    if kind == "str":
        if value is None or isinstance(value, str):
            return value
        raise MappingError(f"{parent}.{name}", "expected a string")
    if kind == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise MappingError(f"{parent}.{name}", "expected an integer")
    if kind == "num":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
        raise MappingError(f"{parent}.{name}", "expected a number")
    if isinstance(kind, tuple) and kind and kind[0] == "list":
        if value is None:
            return []
        if isinstance(value, list) and len(value) > MAX_NESTED_ITEMS:
            raise TooManyItems(f"{parent}.{name}", f"more than {MAX_NESTED_ITEMS} items")
        return map_list(value, kind[1], f"{parent}.{name}")
    if value is None:
        return None
    return map_object(value, kind, f"{parent}.{name}")


def map_object(raw: Any, spec: Spec, path: str = "") -> dict[str, Any]:
    """One typed record: output keys in the seed's order, defaults for omitted fields.

    A key spelled exactly as the output key is taken as is; only the other fields are looked
    up case- and underscore-insensitively (so an exact spelling wins over another spelling of
    the same field in one record)."""
    if not isinstance(raw, Mapping):
        raise MappingError(path, "expected an object")
    if len(raw) > MAX_NESTED_ITEMS:
        raise TooManyItems(path, f"more than {MAX_NESTED_ITEMS} fields")
    folded: dict[str, Any] | None = None
    out: dict[str, Any] = {}
    for name, kind, default in spec:
        if name in raw:
            value = raw[name]
        else:
            if folded is None:
                folded = _fold(raw)
            key = _norm(name)
            if key not in folded:
                if default is OMIT:
                    continue
                out[name] = list(default) if isinstance(default, list) else default
                continue
            value = folded[key]
        out[name] = _value(value, kind, path, name)
    return out


def map_list(raw: Any, spec: Spec, path: str = "", start: int = 0) -> list[dict[str, Any]]:
    """A list of typed records; `start` is the index of raw[0] in the whole list (for paths),
    when the list is mapped in slices."""
    if not isinstance(raw, list):
        raise MappingError(path, "expected an array")
    return [map_object(item, spec, f"{path}[{start + i}]") for i, item in enumerate(raw)]


_LEADING_CAPS = re.compile(r"^[A-Z]+(?=[A-Z][a-z0-9]|$)|^[A-Z]")


def camel_key(key: str) -> str:
    """`TicketGuid` → `ticketGuid`, `GPS` → `gps`, `LPUGuid` → `lpuGuid`; camelCase unchanged."""
    return _LEADING_CAPS.sub(lambda m: m.group(0).lower(), key, count=1)


def camelize(value: Any, path: str = "", depth: int = 0) -> Any:
    """Keys of any JSON value camelCased, values untouched (for pass-through disp items).

    An error's path names a pass-through key by its position (`disps[0].{2}`: the third key),
    never by its text: the keys are the upstream's, may carry personal data, and the path is
    logged with the LPU's failure."""
    if depth > MAX_DEPTH:
        raise MappingError(path, "nested too deep")
    if isinstance(value, (dict, list)) and len(value) > MAX_NESTED_ITEMS:
        raise TooManyItems(path, f"more than {MAX_NESTED_ITEMS} items")
    if isinstance(value, dict):
        return {camel_key(k): camelize(v, f"{path}.{{{n}}}", depth + 1) for n, (k, v) in enumerate(value.items())}
    if isinstance(value, list):
        return [camelize(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value)]
    return value


def map_visits(raw: Any, start: int = 0) -> list[dict[str, Any]]:
    return map_list(raw, VISIT, "visits", start)


def map_calls(raw: Any, start: int = 0) -> list[dict[str, Any]]:
    return map_list(raw, CALL, "calls", start)


def map_disps(raw: Any, start: int = 0) -> list[dict[str, Any]]:
    if not isinstance(raw, list):
        raise MappingError("disps", "expected an array")
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise MappingError(f"disps[{start + i}]", "expected an object")
    return [camelize(item, f"disps[{start + i}]", 1) for i, item in enumerate(raw)]


def map_lpu_info(raw: Any, path: str = "lpu") -> dict[str, Any]:
    return map_object(raw, LPU_INFO, path)


def map_mkab_list(raw: Any) -> list[dict[str, Any]]:
    """The patient's MKAB list → the LpuInfo of each LPU, in the upstream's order.

    Each LPU needs a GUID: it is what the fan-out asks for. An entry without one makes the
    whole list unusable, which the caller answers with 502. Two MKABs in one LPU give one
    entry (the first): the old contract has one TicketLists per LPU, and the per-LPU calls
    would return the same records twice.
    """
    if not isinstance(raw, list):
        raise MappingError("mkab", "expected an array")
    lpus = []
    seen: set[str] = set()
    for i, entry in enumerate(raw):
        if not isinstance(entry, Mapping):
            raise MappingError(f"mkab[{i}]", "expected an object")
        raw_lpu = _fold(entry).get("lpu")
        if raw_lpu is None:
            raise MappingError(f"mkab[{i}].lpu", "missing")
        lpu = map_lpu_info(raw_lpu, f"mkab[{i}].lpu")
        if not lpu["guid"]:
            raise MappingError(f"mkab[{i}].lpu.guid", "missing")
        if lpu["guid"].lower() in seen:
            continue
        seen.add(lpu["guid"].lower())
        lpus.append(lpu)
    return lpus
