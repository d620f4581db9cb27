"""The standard error response (old-api.md §3), rendered from the contract's catalogue: the one
place an error becomes bytes. The error middleware, the runner's parser refusals and the
forwarding of legacy failures all answer through `error_response`.
"""

from __future__ import annotations

import json

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
