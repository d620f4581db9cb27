"""The baseline: the simplest correct gateway for the same two routes, as a developer would write
it in an afternoon with the same client library. `python -m bench` measures visit-gateway against
it in the same run, on the same fake upstream and the same load.

- create: the MKAB list call, a session GUID, then one task per LPU that gathers its three calls;
- each LPU's answers are parsed and its TicketLists element is serialized once, into a dict;
- poll: the stored bytes of every LPU joined, `InProgress` for the unfinished ones.

No limits, metrics, breakers, retries, store interface or mapping of field names (the bench's
upstream already answers in the old contract's shapes); one log line per create. Connections
are opened lazily, as a naive gateway's would be, from a pool without a limit (aiohttp's default
of 100 would queue the bursts the benchmark sends, and make the baseline weaker than it is).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from typing import Any

import aiohttp
from aiohttp import web

log = logging.getLogger("minimal")

CREATE = "/api/v2/old/visit/tickets"
BEARER = re.compile(r"Bearer ([A-Za-z0-9\-._~+/]+=*)")
METHODS = (("visits", "/api/v2/visit"), ("calls", "/api/v2/calldoctor"), ("disps", "/api/v2/disp"))
DEADLINE = 20.0
TTL = 600.0

CLIENT = web.AppKey("client", aiohttp.ClientSession)
UPSTREAM = web.AppKey("upstream", str)
SESSIONS = web.AppKey("sessions", dict)
TASKS = web.AppKey("tasks", set)


def _error(status: int, code: str, message: str) -> web.Response:
    body = {"code": status, "message": message, "message_code": code}
    return web.json_response(body, status=status)


def _entry(state: str, lpu: Any, answers: dict[str, Any] | None = None) -> bytes:
    answers = answers or {}
    element = {"state": state, "lpu": lpu} | {name: answers.get(name, []) for name, _ in METHODS}
    return json.dumps(element, ensure_ascii=False, separators=(",", ":")).encode()


class Session:
    def __init__(self, lpus: list[Any]) -> None:
        self.created = time.monotonic()
        self.lpus = lpus
        self.entries: list[bytes | None] = [None] * len(lpus)

    def body(self) -> bytes:
        late = time.monotonic() - self.created > DEADLINE
        parts = [
            e if e is not None else _entry("Failed" if late else "InProgress", lpu)
            for e, lpu in zip(self.entries, self.lpus, strict=True)
        ]
        return b"[" + b",".join(parts) + b"]"


async def _run_lpu(app: web.Application, session: Session, index: int, headers: dict[str, str]) -> None:
    lpu = session.lpus[index]
    client, base = app[CLIENT], app[UPSTREAM]

    async def call(path: str) -> Any:
        async with client.get(base + path, params={"lpuGuid": lpu["guid"]}, headers=headers) as resp:
            if resp.status != 200:
                raise RuntimeError(f"status {resp.status}")
            return await resp.json()

    try:
        results = await asyncio.wait_for(asyncio.gather(*(call(path) for _, path in METHODS)), DEADLINE)
        session.entries[index] = _entry("Complete", lpu, dict(zip((n for n, _ in METHODS), results, strict=True)))
    except Exception:
        session.entries[index] = _entry("Failed", lpu)


async def create(request: web.Request) -> web.Response:
    auth = request.headers.get("Authorization", "")
    if not BEARER.fullmatch(auth):
        return _error(401, "4410", "Authorization header missing or not 'Bearer <token>'")
    app = request.app
    headers = {"Authorization": auth, "Accept": "application/json"}
    if "X-Request-Id" in request.headers:
        headers["X-Request-Id"] = request.headers["X-Request-Id"]
    try:
        async with app[CLIENT].get(app[UPSTREAM] + "/api/v2/mkab", headers=headers) as resp:
            if resp.status != 200:
                return _error(502, "4502", "Upstream service failed")
            mkab = await resp.json()
    except (aiohttp.ClientError, TimeoutError):
        return _error(502, "4502", "Upstream service failed")
    guid = str(uuid.uuid4())
    session = Session([entry["lpu"] for entry in mkab])
    app[SESSIONS][guid] = session
    for index in range(len(session.lpus)):
        task = asyncio.get_running_loop().create_task(_run_lpu(app, session, index, headers))
        app[TASKS].add(task)
        task.add_done_callback(app[TASKS].discard)
    log.info("created session with %d LPUs", len(session.lpus))
    return web.json_response({"session": guid})


async def poll(request: web.Request) -> web.Response:
    session = request.app[SESSIONS].get(request.match_info["session"].lower())
    if session is None or time.monotonic() - session.created > TTL:
        return _error(404, "4404", "Session not found")
    return web.Response(body=session.body(), content_type="application/json")


async def _client(app: web.Application) -> Any:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as client:
        app[CLIENT] = client
        yield
        for task in list(app[TASKS]):
            task.cancel()


def minimal_app(upstream: str) -> web.Application:
    app = web.Application()
    app[UPSTREAM] = upstream.rstrip("/")
    app[SESSIONS] = {}
    app[TASKS] = set()
    app.cleanup_ctx.append(_client)
    app.router.add_get(CREATE, create)
    app.router.add_get(CREATE + "/{session}", poll)
    return app
