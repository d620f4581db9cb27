"""A fake legacy `visit` service (old-api.md) for the rollout tests: a real aiohttp server on
127.0.0.1 that creates sessions, answers polls with a fixed body per token, records every
request it receives, and can be made slow or failing, or noisy: `noisy = ("calls", "dateStatus")`
gives that field of every such record a fresh random value in each new session, as a legacy
service that rewrites a field between two reads of the same patient does."""

from __future__ import annotations

import asyncio
import copy
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from tests.support import golden
from tests.support.gateway import TICKETS

GOLDEN = golden("ticket_lists.json")
HOLD_LIMIT = 60.0  # a slow answer still ends; shutdown releases it at once


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    query_string: str
    headers: CIMultiDict[str]


@dataclass
class LegacySession:
    token: str
    body: list[dict[str, Any]]
    polls: int = 0


@dataclass
class FakeLegacy:
    # The final poll body for sessions created with a token; the golden answer otherwise.
    answers: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    sessions: dict[str, LegacySession] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    in_progress_polls: int = 0  # polls answered InProgress before the final body
    create_delay: float = 0.0
    poll_delay: float = 0.0
    # (status, body, headers) to answer instead of the normal one
    create_override: tuple[int, bytes, dict[str, str]] | None = None
    poll_override: tuple[int, bytes, dict[str, str]] | None = None
    # (record list, field): a fresh random value per session in every record of that list
    noisy: tuple[str, str] | None = None
    _release: asyncio.Event = field(default_factory=asyncio.Event)

    def creates(self) -> list[Received]:
        return [r for r in self.received if r.path == TICKETS]

    def polls(self) -> list[Received]:
        return [r for r in self.received if r.path.startswith(TICKETS + "/")]

    def existing(self, token: str, body: list[dict[str, Any]] | None = None) -> str:
        """A session the legacy service made before the gateway was put in front of it."""
        guid = str(uuid.uuid4())
        answer = copy.deepcopy(body if body is not None else GOLDEN)
        if self.noisy is not None:
            records, name = self.noisy
            for entry in answer:
                for record in entry.get(records, []):
                    record[name] = f"noise-{uuid.uuid4().hex[:8]}"
        self.sessions[guid] = LegacySession(token, answer)
        return guid

    async def hold(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._release.wait(), min(seconds, HOLD_LIMIT))
        except TimeoutError:
            pass


LEGACY = web.AppKey("fake_legacy", FakeLegacy)


def _error(status: int, message: str) -> web.Response:
    # Deliberately not the gateway's message codes: a test can tell whose error it is.
    return web.json_response({"code": status, "message": message, "message_code": f"legacy-{status}"}, status=status)


def _token(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    return auth[len("Bearer ") :] if auth.startswith("Bearer ") and len(auth) > len("Bearer ") else None


async def _received(request: web.Request, delay: str, override: str) -> tuple[FakeLegacy, web.Response | None]:
    """Records the request, waits the route's delay; the route's override answer, if set."""
    fake = request.app[LEGACY]
    fake.received.append(Received(request.method, request.path, request.query_string, CIMultiDict(request.headers)))
    if getattr(fake, delay):
        await fake.hold(getattr(fake, delay))
    forced = getattr(fake, override)
    if forced is None:
        return fake, None
    status, body, headers = forced
    return fake, web.Response(status=status, body=body, headers=headers)


async def create(request: web.Request) -> web.Response:
    fake, forced = await _received(request, "create_delay", "create_override")
    if forced is not None:
        return forced
    token = _token(request)
    if token is None:
        return _error(401, "No token")
    return web.json_response({"session": fake.existing(token, fake.answers.get(token))})


async def poll(request: web.Request) -> web.Response:
    fake, forced = await _received(request, "poll_delay", "poll_override")
    if forced is not None:
        return forced
    session = fake.sessions.get(request.match_info["session"].lower())
    token = _token(request)
    if session is None or ("Authorization" in request.headers and token != session.token):
        return _error(404, "Legacy: no such session")
    session.polls += 1
    if session.polls <= fake.in_progress_polls:
        return web.json_response(
            [{"state": "InProgress", "lpu": e["lpu"], "visits": [], "calls": [], "disps": []} for e in session.body]
        )
    return web.json_response(session.body)


async def _release(app: web.Application) -> None:
    app[LEGACY]._release.set()


def create_legacy_app(fake: FakeLegacy) -> web.Application:
    app = web.Application()
    app[LEGACY] = fake
    app.router.add_get(TICKETS, create)
    app.router.add_get(TICKETS + "/{session}", poll)
    app.on_shutdown.append(_release)
    return app


async def start_legacy(aiohttp_server: Callable[..., Any], fake: FakeLegacy | None = None) -> tuple[FakeLegacy, str]:
    """(fake, base URL): the fake legacy service on 127.0.0.1, stopped by aiohttp_server's teardown."""
    fake = fake or FakeLegacy()
    server = await aiohttp_server(create_legacy_app(fake), host="127.0.0.1")
    return fake, str(server.make_url("")).rstrip("/")


def write_flags(path: Path, text: str) -> None:
    """Replaces the flags file in one step, as an editor or a config-map update does, so the
    gateway never reads half a file."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def closed_port_url() -> str:
    """A loopback URL nothing listens on."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"
