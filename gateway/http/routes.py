"""What every middleware reads of a request's route, defined once below them all: the handler
type a middleware wraps, and the route template a request matched."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def route_template(request: web.Request) -> str:
    """The route as registered (`/api/v2/old/visit/tickets/{session}`), never the raw path:
    a session GUID in a log key or metric label would be unbounded."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"
