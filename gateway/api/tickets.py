"""The old session contract (old-api.md §1 and §2): create a session, poll it."""

from __future__ import annotations

import re
import time

from aiohttp import web

from gateway import keys
from gateway.errors import GatewayError
from gateway.legacy import as_response, forwarded_headers
from gateway.rollout import GATEWAY, LEGACY, SHADOW
from gateway.store.base import StoreUnavailable, same_token, token_hash
from gateway.upstream import Caller

CREATE_PATH = "/api/v2/old/visit/tickets"
POLL_PATH = "/api/v2/old/visit/tickets/{session}"

_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
# RFC 6750 b64token: what a bearer token may contain. Anything else is not a token.
_BEARER = re.compile(r"Bearer ([A-Za-z0-9\-._~+/]+=*)")


def bearer_token(request: web.Request) -> str | None:
    """The token of a well-formed `Authorization: Bearer <token>`, else None."""
    match = _BEARER.fullmatch(request.headers.get("Authorization", ""))
    return match.group(1) if match else None


def caller_of(request: web.Request) -> Caller:
    return Caller(
        authorization=request.headers["Authorization"],
        request_id=request[keys.REQUEST_ID],
        client_app=request.headers.get("ClientApplication"),
    )


async def create_session(request: web.Request) -> web.Response:
    token = bearer_token(request)
    side = request.app[keys.ROLLOUT].decide(token, request.headers.get("ClientApplication")).side
    request[keys.SERVED_BY] = side
    if side != GATEWAY:
        return await _create_on_legacy(request, token, shadow=side == SHADOW)
    if token is None:
        raise GatewayError("unauthorized")
    # Admitted before the MKAB call: a refused creation costs the upstream nothing.
    admission = request.app[keys.LIMITS].admit(token_hash(token))
    try:
        guid = await request.app[keys.FANOUT].open_session(token, caller_of(request), on_done=admission.release)
    except BaseException:
        admission.release()
        raise
    return web.json_response({"session": guid})


async def read_session(request: web.Request) -> web.Response:
    request[keys.SERVED_BY] = GATEWAY
    guid = request.match_info["session"]
    if not _GUID.fullmatch(guid):
        raise GatewayError("bad_session_id")
    has_auth = "Authorization" in request.headers
    if not has_auth and request.app[keys.CONFIG].session.require_token_on_poll:
        raise GatewayError("unauthorized")
    try:
        session = await request.app[keys.STORE].load(guid.lower())
    except StoreUnavailable:
        raise GatewayError("unavailable", retry_after=1) from None
    if session is None:
        if keys.LEGACY in request.app:
            # Not one of the gateway's sessions: the legacy service made it, before the gateway
            # was put in front or by the rollout's choice.
            return await _poll_on_legacy(request, guid)
        raise GatewayError("session_not_found")
    if has_auth:
        token = bearer_token(request)
        # Another patient's token gets the same 404 as an unknown GUID: never reveal existence.
        if token is None or not same_token(session.token_hash, token):
            raise GatewayError("session_not_found")
    request.app[keys.LIMITS].check_poll(session.guid)
    if session.orphaned:
        # The replica that ran this session is gone: finish it here (README, "Replicas and Redis").
        await request.app[keys.FANOUT].take_over(session, caller_of(request) if has_auth else None)
    now = time.time()
    request.app[keys.METRICS].polls.labels("true" if session.is_final(now) else "false").inc()
    return web.Response(body=session.body(now), content_type="application/json")


async def _create_on_legacy(request: web.Request, token: str | None, shadow: bool) -> web.Response:
    """The legacy service's answer, unchanged; in shadow mode the gateway's own session for the
    same token is then compared in the background, after this answer is in hand."""
    compare = request.app[keys.SHADOW] if shadow else None
    try:
        created = await request.app[keys.LEGACY].forward(request, request[keys.REQUEST_ID], "create")
    except GatewayError:
        if compare is not None:
            compare.not_compared("legacy_unavailable")
        raise
    if compare is not None and token is not None:
        compare.begin(created, token, caller_of(request), forwarded_headers(request, request[keys.REQUEST_ID]))
    return as_response(created)


async def _poll_on_legacy(request: web.Request, guid: str) -> web.Response:
    request[keys.SERVED_BY] = LEGACY
    answer = await request.app[keys.LEGACY].forward(request, request[keys.REQUEST_ID], "poll")
    request.app[keys.SHADOW].offer(guid, answer.status, answer.body)
    return as_response(answer)


def add_routes(app: web.Application) -> None:
    app.router.add_get(CREATE_PATH, create_session, allow_head=False)
    app.router.add_get(POLL_PATH, read_session, allow_head=False)
