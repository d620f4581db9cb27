"""The standard error response (old-api.md §3), rendered from the contract's catalogue: the one
place an error becomes bytes. The error middleware, the runner's parser refusals and the
forwarding of legacy failures all answer through `error_response`; the connection refusals
written straight to a socket, before any request exists, through `error_bytes`.
"""

from __future__ import annotations

import json
from http import HTTPStatus

from aiohttp import web

from gateway.contract import ERRORS, ErrorKind


def error_body(kind: ErrorKind) -> bytes:
    return json.dumps(
        {"code": kind.status, "message": kind.message, "message_code": kind.message_code},
        ensure_ascii=False,
    ).encode()


def error_response(kind: ErrorKind, *, retry_after: int | None = None) -> web.Response:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return web.Response(status=kind.status, body=error_body(kind), content_type="application/json", headers=headers)


def error_bytes(kind: ErrorKind, *, retry_after: int | None = None) -> bytes:
    """The same error as a whole HTTP/1.1 response that closes its connection."""
    body = error_body(kind)
    head = [
        f"HTTP/1.1 {kind.status} {HTTPStatus(kind.status).phrase}",
        "Content-Type: application/json; charset=utf-8",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    if retry_after is not None:
        head.append(f"Retry-After: {retry_after}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


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
