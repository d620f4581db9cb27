"""One per-LPU answer from decoded body to the finished JSON of its part of an entry, within
caps (issue 11, row 1): JSON values counted before parsing, records after, mapped bytes after
mapping. Pure: the fan-out runs it on the event loop for small bodies and in a worker thread
for large ones (docs/reliability.md, "Upstream answers").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.upstream.client import CallFailure, parse_body


@dataclass(frozen=True)
class AnswerCaps:
    """`max_values`: JSON values per answer, bounded before parsing by its commas + 1 (an upper
    bound: a comma inside a string counts too), because parsing is C code that holds the loop
    for as long as it runs (2 MiB of `[{},{},…]` is 700 000 objects, ~75 ms). `max_records`:
    top-level records, checked before mapping. `max_bytes`: the mapped JSON of one answer."""

    max_values: int
    max_records: int
    max_bytes: int


def decode_answer(body: bytes, mapper: Callable[[Any], Any], caps: AnswerCaps) -> bytes:
    """The mapped, serialized answer; CallFailure("too_large") past a cap, CallFailure
    ("invalid_body") for a body that is not JSON, MappingError for JSON of the wrong shape."""
    if body.count(b",") >= caps.max_values:
        raise CallFailure("too_large", detail="json values")
    raw = parse_body(body)
    if isinstance(raw, list) and len(raw) > caps.max_records:
        raise CallFailure("too_large", detail="records")
    mapped = orjson.dumps(mapper(raw))
    if len(mapped) > caps.max_bytes:
        raise CallFailure("too_large", detail="mapped bytes")
    return mapped
