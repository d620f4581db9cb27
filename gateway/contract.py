"""The words of the two contracts, each defined once: old-api.md (the routes the apps call, the
session GUID, the bearer rule, the LPU states and the error catalogue) and upstream-api.md (the
methods the gateway calls). Everything else, route tables, validators and metric label lists
included, is built from these names, so no two places can drift apart.

Imports nothing of the package: every other module may import it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# old-api.md §1 and §2. The poll path's prefix is what the legacy service is polled under.
CREATE_PATH = "/api/v2/old/visit/tickets"
POLL_PREFIX = CREATE_PATH + "/"
POLL_PATH = POLL_PREFIX + "{session}"
# The poll route as registered: any one path segment, braces included, so that `{…}` reaches the
# handler and answers 400 4401 (§2) instead of "no such route" (aiohttp's `{session}` excludes braces).
POLL_ROUTE = POLL_PREFIX + "{session:[^/]+}"
# Old-path route → the short name metrics and logs use for it.
OLD_ROUTES = {CREATE_PATH: "create", POLL_PATH: "poll"}

# Which side serves an old-path request (the rollout's modes, and the metrics' `side` label).
LEGACY = "legacy"
GATEWAY = "gateway"
SHADOW = "shadow"
SIDES = (GATEWAY, LEGACY, SHADOW)
# The client-app (and app-version) label values beside the configured ones.
OTHER = "other"  # a header was sent, but it names nothing in the table
UNKNOWN = "unknown"  # no header to classify by

# A session id: a GUID in its 8-4-4-4-12 form, no braces (old-api.md §2: `{…}` is a 400).
GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
ZERO_GUID = "00000000-0000-0000-0000-000000000000"
# RFC 6750 b64token: what a bearer token may contain. Anything else is not a token.
BEARER = re.compile(r"Bearer ([A-Za-z0-9\-._~+/]+=*)")


def bearer_token(authorization: str | None) -> str | None:
    """The token of a well-formed `Authorization: Bearer <token>` value, else None."""
    match = BEARER.fullmatch(authorization or "")
    return match.group(1) if match else None


# Per-LPU states (old-api.md §2).
IN_PROGRESS = "InProgress"
COMPLETE = "Complete"
FAILED = "Failed"

# upstream-api.md §A: the patient's LPU list, then the three per-LPU methods, in the order their
# results appear in a TicketLists element (visits, calls, disps).
MKAB = "mkab"
LPU_METHODS = ("visit", "calldoctor", "disp")
UPSTREAM_METHODS = (MKAB, *LPU_METHODS)
# Why an LPU reads Failed: the upstream call's failure, or the gateway's own reason.
LPU_FAILURE_REASONS = (
    "timeout",
    "status",
    "invalid_body",
    "connection",
    "too_large",
    "circuit_open",
    "limited",
    "pool_wait",
    "deadline",
    "internal",
)


@dataclass(frozen=True)
class ErrorKind:
    status: int
    message_code: str
    message: str


# old-api.md §3: the standard error's catalogue. The README's table is checked against it.
ERRORS: dict[str, ErrorKind] = {
    "bad_request": ErrorKind(400, "4400", "Bad request"),
    "bad_session_id": ErrorKind(400, "4401", "Session id is not a GUID"),
    "unauthorized": ErrorKind(401, "4410", "Authorization header missing or not 'Bearer <token>'"),
    "token_rejected": ErrorKind(401, "4411", "Token is invalid or expired"),
    "session_not_found": ErrorKind(404, "4404", "Session not found"),
    # Not 4404: apps branch on message_code, and "no such route" is not "no such session".
    "route_not_found": ErrorKind(404, "4414", "Resource not found"),
    "method_not_allowed": ErrorKind(405, "4405", "Method not allowed"),
    "too_many_requests": ErrorKind(429, "4429", "Too many requests, retry later"),
    "headers_too_large": ErrorKind(431, "4431", "Request header fields too large"),
    "internal": ErrorKind(500, "4500", "Internal server error"),
    "upstream_failed": ErrorKind(502, "4502", "Upstream service failed"),
    "store_full": ErrorKind(503, "4503", "Too many sessions in progress, retry later"),
    "unavailable": ErrorKind(503, "4513", "Service temporarily unavailable"),
    "upstream_timeout": ErrorKind(504, "4504", "Upstream service timed out"),
}


class GatewayError(Exception):
    """A request's failure in the contract's words (a key of ERRORS); raised anywhere, rendered
    once, by the HTTP edge's error middleware."""

    def __init__(self, kind: str, *, retry_after: int | None = None) -> None:
        super().__init__(kind)
        self.kind = ERRORS[kind]
        self.retry_after = retry_after
