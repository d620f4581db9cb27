"""Everything the gateway does per old-path request beyond serving it, in one pass: the create
route's brownout (before the handler), and once the answer is in hand, who still calls (the
usage metrics), the guardrails' feed, the migration ledger and the cohort's deprecation
headers (docs/migration.md). The request's cohort was classified once, by the request context
(`keys.COHORT`); a poll's handler leaves its result (`keys.POLL`), which carries what is counted
of it, so no answer is read twice.

The brownout middleware sits inside the error middleware (which renders the refusal) and inside
the request context (which calls `account` with the decision). Polls never pass through the
brownout rule, so a session that exists is served to its end.
"""

from __future__ import annotations

import time

from aiohttp import web

from gateway.contract import CREATE_PATH, GATEWAY, GatewayError, bearer_token
from gateway.http import keys
from gateway.http.routes import Handler, route_template
from gateway.migration.brownout import DELAYED, REFUSED


@web.middleware
async def brownouts(request: web.Request, handler: Handler) -> web.StreamResponse:
    """On the create route only, a create that an open brownout window picks is refused with the
    standard 503 and a Retry-After until the window closes, or held for the soft mode's delay,
    or, in a dry run, only counted."""
    if request.method != "GET" or route_template(request) != CREATE_PATH:
        return await handler(request)
    migration = request.app[keys.MIGRATION]
    decision = migration.brownout(request[keys.COHORT], bearer_token(request.headers.get("Authorization")))
    if decision is None:
        return await handler(request)
    request[keys.BROWNOUT] = decision
    if decision.outcome == REFUSED:
        raise GatewayError("unavailable", retry_after=decision.retry_after)
    if decision.outcome == DELAYED:
        await migration.hold(decision)
    return await handler(request)


def account(request: web.Request, route: str, response: web.StreamResponse, status_class: str) -> None:
    """One answered old-path request: by route, serving side, cohort and status class, and the
    cohort's last-seen time (the dashboards' "who still calls" and the retirement alert read
    these); a gateway-side answer for the guardrails, and a poll's first final answer with its
    LPUs and Failed ones; the ledger's count; the cohort's deprecation signals on the answer."""
    cohort = request[keys.COHORT]
    label = str(cohort)
    # The rollout marks requests it forwarded ("legacy") or shadowed; the rest the gateway served.
    side = request.get(keys.SERVED_BY, GATEWAY)
    app = request.app
    app[keys.TALLY].old_path(route, side, label, status_class, time.time())
    rollout = app.get(keys.ROLLOUT)
    rails = rollout.guardrails if rollout is not None else None
    if side == GATEWAY and rails is not None and rails.active:
        rails.record_answer(cohort, route, response.status)
        poll = request.get(keys.POLL)
        if poll is not None and poll.first_final:
            rails.record_final(cohort, poll.lpus, poll.failed)
    migration = app[keys.MIGRATION]
    migration.observe(cohort, route, side, response.status, request.get(keys.BROWNOUT))
    headers = migration.headers(cohort)
    if headers:
        response.headers.extend(headers)
