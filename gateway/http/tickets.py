"""The old session contract's two routes (old-api.md §1 and §2): parse and check the request,
then hand it to the session service (gateway/sessions/service.py) or, by the rollout's choice,
to the legacy service, and render the answer. Nothing here knows how a session is run or
stored, nor counts anything: the request's cohort comes classified (`keys.STATE`), and what is
counted of an answer is gateway/http/old_path.py's.
"""

from __future__ import annotations

from aiohttp import web

from gateway.contract import CREATE_PATH, GATEWAY, GUID, LEGACY, POLL_ROUTE, SHADOW, GatewayError, bearer_token
from gateway.http import keys
from gateway.rollout.legacy import LegacyAnswer, forwarded_headers
from gateway.upstream.client import Caller


def caller_of(request: web.Request) -> Caller:
    state = request[keys.STATE]
    return Caller(
        authorization=request.headers["Authorization"],
        request_id=state.request_id,
        client_app=request.headers.get("ClientApplication"),
        trace=state.trace,
    )


async def create_session(request: web.Request) -> web.Response:
    token = bearer_token(request.headers.get("Authorization"))
    state = request[keys.STATE]
    side = state.served_by = request.app[keys.ROLLOUT].decide(token, state.cohort).side
    if side != GATEWAY:
        return await _create_on_legacy(request, token, shadow=side == SHADOW)
    if token is None:
        raise GatewayError("unauthorized")
    guid = await request.app[keys.SESSIONS].create(token, caller_of(request))
    return web.json_response({"session": guid})


async def read_session(request: web.Request) -> web.Response:
    guid = request.match_info["session"]
    if not GUID.fullmatch(guid):
        raise GatewayError("bad_session_id")
    has_auth = "Authorization" in request.headers
    if not has_auth and request.app[keys.CONFIG].session.require_token_on_poll:
        raise GatewayError("unauthorized")
    token = bearer_token(request.headers.get("Authorization"))
    caller = (lambda: caller_of(request)) if has_auth else None
    poll = await request.app[keys.SESSIONS].poll(guid, token, caller)
    if poll is None:
        if keys.LEGACY in request.app:
            # Not one of the gateway's sessions: the legacy service made it, before the gateway
            # was put in front or by the rollout's choice.
            return await _poll_on_legacy(request, guid)
        raise GatewayError("session_not_found")
    request[keys.STATE].poll = poll
    return web.Response(body=poll.body, content_type="application/json")


def origin_form(raw_target: str, relative: str) -> str:
    """The path and query to forward: the raw target as the app sent it, or, for an absolute-form
    target (`GET http://host/path`, which RFC 9112 §3.2.2 says a server must accept), its
    path and query (`relative`) only, so the legacy host is always rollout.legacy_url's."""
    return raw_target if raw_target.startswith("/") else relative


def _outgoing(request: web.Request) -> tuple[str, dict[str, str]]:
    """The target and headers a forwarded request carries to the legacy service."""
    state = request[keys.STATE]
    return origin_form(request.raw_path, str(request.rel_url)), forwarded_headers(
        request.headers, state.request_id, state.trace
    )


async def _forward(request: web.Request, route: str) -> LegacyAnswer:
    target, headers = _outgoing(request)
    return await request.app[keys.LEGACY].forward(request.method, target, headers, route)


async def _create_on_legacy(request: web.Request, token: str | None, shadow: bool) -> web.Response:
    """The legacy service's answer, unchanged; in shadow mode the gateway's own session for the
    same token is then compared in the background, after this answer is in hand."""
    compare = request.app[keys.SHADOW] if shadow else None
    try:
        created = await _forward(request, "create")
    except GatewayError:
        if compare is not None:
            compare.not_compared("legacy_unavailable")
        raise
    if compare is not None and token is not None:
        state = request[keys.STATE]
        headers = forwarded_headers(request.headers, state.request_id, state.trace)
        compare.begin(created, token, caller_of(request), headers, state.cohort)
    return as_response(created)


async def _poll_on_legacy(request: web.Request, guid: str) -> web.Response:
    request[keys.STATE].served_by = LEGACY
    target, headers = _outgoing(request)
    answer = await request.app[keys.LEGACY].forward_unknown_poll(request.remote or "unknown", target, headers)
    request.app[keys.SHADOW].offer(guid, answer.status, answer.body)
    return as_response(answer)


def as_response(answer: LegacyAnswer) -> web.Response:
    return web.Response(status=answer.status, body=answer.body, headers=answer.headers)


def add_routes(app: web.Application) -> None:
    app.router.add_get(CREATE_PATH, create_session, allow_head=False)
    app.router.add_get(POLL_ROUTE, read_session, allow_head=False)
