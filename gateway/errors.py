"""The standard error response (old-api.md §3) and the table of its message codes.

Every error the gateway returns is built here, so the table in the README and the code cannot
drift apart: tests render every entry of ERRORS and compare it with the README.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from aiohttp import web


@dataclass(frozen=True)
class ErrorKind:
    status: int
    message_code: str
    message: str


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
    """Raised anywhere in request handling; the error middleware renders it."""

    def __init__(self, kind: str, *, retry_after: int | None = None) -> None:
        super().__init__(kind)
        self.kind = ERRORS[kind]
        self.retry_after = retry_after


def error_body(kind: ErrorKind) -> bytes:
    return json.dumps(
        {"code": kind.status, "message": kind.message, "message_code": kind.message_code},
        ensure_ascii=False,
    ).encode()


def error_response(kind: ErrorKind, *, retry_after: int | None = None) -> web.Response:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return web.Response(status=kind.status, body=error_body(kind), content_type="application/json", headers=headers)


def kind_for_status(status: int) -> ErrorKind:
    """The error for an aiohttp HTTPException raised by routing or the server itself."""
    by_status = {
        400: "bad_request",
        404: "route_not_found",
        405: "method_not_allowed",
        413: "bad_request",
        429: "too_many_requests",
        431: "headers_too_large",
        502: "upstream_failed",
        503: "unavailable",
        504: "upstream_timeout",
    }
    name = by_status.get(status)
    if name:
        return ERRORS[name]
    if 400 <= status < 500:
        # The status is kept; the code is the generic one, since "4" + status would collide
        # with codes that mean something else (414 → 4414 is "no such route").
        return ErrorKind(status, ERRORS["bad_request"].message_code, ERRORS["bad_request"].message)
    return ERRORS["internal"]
