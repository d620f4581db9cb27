"""W3C Trace Context (https://www.w3.org/TR/trace-context/): the `traceparent` and `tracestate` an
app's request brings, checked strictly, and the context the gateway sends on to the new API and the
legacy service. Pure functions: the request middleware parses, the clients render.

The gateway is one hop of the trace: what it sends keeps the caller's trace id, flags and
tracestate, with its own parent id (the span of its handling of the request). A request without a
valid traceparent starts a new trace (random ids, not sampled: the gateway records no spans unless
OpenTelemetry is on), and its tracestate is dropped, as the specification asks.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable
from dataclasses import dataclass

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"

# version "-" trace-id "-" parent-id "-" trace-flags, lower-case hex only (§3.2.2). A later version
# may append fields after a "-"; version ff is invalid.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
# list-member = key "=" value (§3.3.1.3); a key is simple or tenant@system.
_TRACESTATE_MEMBER = re.compile(
    r"(?:[a-z][a-z0-9_\-*/]{0,255}|[a-z0-9][a-z0-9_\-*/]{0,240}@[a-z][a-z0-9_\-*/]{0,13})"
    r"=[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]"
)
TRACESTATE_MAX_MEMBERS = 32
# The length every hop must propagate at least (§3.3.1.5); longer is dropped, not truncated,
# so that a client cannot make the gateway forward an unbounded header.
TRACESTATE_MAX_LENGTH = 512
_ZERO_TRACE = "0" * 32
_ZERO_PARENT = "0" * 16


@dataclass(frozen=True)
class TraceContext:
    trace_id: str
    parent_id: str
    flags: str = "00"
    tracestate: str = ""

    def headers(self) -> dict[str, str]:
        """The headers that carry this context to the next hop (always version 00, §3.2.4)."""
        headers = {TRACEPARENT: f"00-{self.trace_id}-{self.parent_id}-{self.flags}"}
        if self.tracestate:
            headers[TRACESTATE] = self.tracestate
        return headers


def parse_traceparent(values: list[str]) -> tuple[str, str, str] | None:
    """(trace id, parent id, flags) of a valid traceparent, or None. Given every value of the
    header: more than one is invalid."""
    if len(values) != 1:
        return None
    match = _TRACEPARENT.fullmatch(values[0])
    if match is None:
        return None
    version, trace_id, parent_id, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return None
    if trace_id == _ZERO_TRACE or parent_id == _ZERO_PARENT:
        return None
    # Only the sampled bit is defined (§3.2.2.5); the others are sent on as 0, whatever the version.
    return trace_id, parent_id, f"{int(flags, 16) & 0x01:02x}"


def parse_tracestate(values: Iterable[str]) -> str:
    """A valid tracestate (its headers joined, empty members dropped), or "" when any member is
    invalid, a key repeats, or it is too long: a header that cannot be parsed is discarded whole."""
    members = [m.strip(" \t") for value in values for m in value.split(",")]
    members = [m for m in members if m]
    if not members or len(members) > TRACESTATE_MAX_MEMBERS:
        return ""
    if not all(_TRACESTATE_MEMBER.fullmatch(m) for m in members):
        return ""
    keys = [m.partition("=")[0] for m in members]
    joined = ",".join(members)
    if len(set(keys)) != len(keys) or len(joined) > TRACESTATE_MAX_LENGTH:
        return ""
    return joined


def new_parent_id() -> str:
    # Ids, not secrets: the interpreter's generator, without a system call per request.
    while (parent := f"{random.getrandbits(64):016x}") == _ZERO_PARENT:
        pass
    return parent


def new_trace_id() -> str:
    while (trace := f"{random.getrandbits(128):032x}") == _ZERO_TRACE:
        pass
    return trace


def continue_trace(traceparent: list[str], tracestate: list[str]) -> TraceContext:
    """The gateway's hop of the caller's trace, or a new trace when the caller sent none (or an
    invalid one)."""
    parsed = parse_traceparent(traceparent)
    if parsed is None:
        return TraceContext(new_trace_id(), new_parent_id())
    trace_id, _, flags = parsed
    return TraceContext(trace_id, new_parent_id(), flags, parse_tracestate(tracestate))
