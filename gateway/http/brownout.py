"""The brownout middleware (gateway/migration/brownout.py has the rule): on the create route
only, a create that an open brownout window picks is refused with the standard 503 and a
Retry-After until the window closes, or held for the soft mode's delay, or, in a dry run, only
counted. Polls never pass through the rule, so a session that exists is served to its end.

It sits inside the error middleware (which renders the refusal) and inside the request context
(whose old-path hook counts the decision and adds the deprecation headers).
"""

from __future__ import annotations

from aiohttp import web

from gateway.contract import CREATE_PATH, GatewayError, bearer_token
from gateway.http import keys
from gateway.http.routes import Handler, route_template
from gateway.migration.brownout import DELAYED, REFUSED


@web.middleware
async def brownouts(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.method != "GET" or route_template(request) != CREATE_PATH:
        return await handler(request)
    migration = request.app[keys.MIGRATION]
    user_agent = request.headers.get("User-Agent")
    app, version = request.app[keys.CLIENTS].classify(request.headers.get("ClientApplication"), user_agent)
    decision = migration.brownout(
        migration.cohort(app, version, user_agent), bearer_token(request.headers.get("Authorization"))
    )
    if decision is None:
        return await handler(request)
    request[keys.BROWNOUT] = decision
    if decision.outcome == REFUSED:
        raise GatewayError("unavailable", retry_after=decision.retry_after)
    if decision.outcome == DELAYED:
        await migration.hold(decision)
    return await handler(request)
