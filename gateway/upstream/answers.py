"""How an upstream call fails (CallFailure), and one per-LPU answer from decoded body to the
finished JSON of its part of an entry, within caps (issue 11, row 1), without holding the event
loop: JSON values are counted before parsing (parsing is C code that runs to its end), records
before mapping, mapped bytes after; records are mapped in slices of at most SLICE_SECONDS,
yielding to the loop between them, and one record's own size is bounded by the mapper
(MAX_NESTED_ITEMS). docs/upstream-isolation.md, "Upstream answers", has the measurements that
chose slices over a worker thread.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson


class CallFailure(Exception):
    """An upstream call that failed for good. `reason` is one of the metric reasons:
    timeout, status, invalid_body, connection, too_large, circuit_open (failed fast by the
    target's circuit breaker), limited (no per-LPU slot freed up within the call timeout),
    pool_wait (no pooled connection freed up within `upstream.pool_wait`)."""

    def __init__(self, reason: str, status: int | None = None, detail: str = "") -> None:
        super().__init__(f"{reason}{f' {status}' if status else ''}{f': {detail}' if detail else ''}")
        self.reason = reason
        self.status = status
        self.detail = detail


def parse_body(body: bytes) -> Any:
    """An upstream body as JSON, strictly: NaN and Infinity (which Python's parser accepts) would
    pass through the mapper into answers that the apps' JSON parsers reject. orjson refuses them
    (and numbers that overflow to infinity), and parses in a third of the stdlib's time
    (docs/benchmarks.md)."""
    try:
        return orjson.loads(body)
    except (ValueError, RecursionError):
        raise CallFailure("invalid_body", detail="not JSON") from None


def parse_capped(body: bytes, max_values: int, max_records: int) -> Any:
    """`parse_body` within caps (CallFailure too_large beyond): JSON values counted before
    parsing, as the body's commas + 1 (an upper bound: a comma inside a string counts too),
    because parsing is C code that holds the loop until it ends (2 MiB of `[{},{},…]` is
    700 000 objects, ~75 ms); then top-level records, before anything maps them."""
    if body.count(b",") >= max_values:
        raise CallFailure("too_large", detail="json values")
    raw = parse_body(body)
    if isinstance(raw, list) and len(raw) > max_records:
        raise CallFailure("too_large", detail="records")
    return raw


# Work done between two yields to the loop while mapping one answer.
SLICE_SECONDS = 0.002


@dataclass(frozen=True)
class AnswerCaps:
    """`max_values` (`upstream.max_json_values`) and `max_records` (`upstream.max_records`): see
    parse_capped; `max_bytes` (`session.max_entry_bytes`): the mapped JSON."""

    max_values: int
    max_records: int
    max_bytes: int


def parse_answer(body: bytes, caps: AnswerCaps) -> Any:
    """The parsed answer within the value and record caps (see client.parse_capped)."""
    return parse_capped(body, caps.max_values, caps.max_records)


async def map_answer(raw: Any, mapper: Callable[[Any, int], list[Any]], caps: AnswerCaps) -> bytes:
    """`mapper(items, start)` over `raw` in time-bounded slices, serialized; CallFailure
    too_large past `max_bytes`, MappingError from the mapper."""
    if not isinstance(raw, list):
        return _serialized(mapper(raw, 0), caps)
    mapped: list[Any] = []
    started = time.perf_counter()
    for index in range(len(raw)):
        mapped += mapper(raw[index : index + 1], index)
        if time.perf_counter() - started > SLICE_SECONDS:
            await asyncio.sleep(0)
            started = time.perf_counter()
    return _serialized(mapped, caps)


def _serialized(mapped: list[Any], caps: AnswerCaps) -> bytes:
    body = orjson.dumps(mapped)
    if len(body) > caps.max_bytes:
        raise CallFailure("too_large", detail="mapped bytes")
    return body
