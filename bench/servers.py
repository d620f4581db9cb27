"""The processes the benchmark starts, each on 127.0.0.1 on a port the OS picks.

    python -m bench.servers upstream  --spec SPEC   the sandbox (the project's fake upstream)
    python -m bench.servers gateway   --spec SPEC   the real gateway (create_app), instrumented
    python -m bench.servers bare      --spec SPEC   the ceilings: bare aiohttp handlers

SPEC is a JSON object (see `bench.procs`). Each process prints `READY <port>` once it listens and
runs until SIGTERM/SIGINT, or until its stdin closes (so it never outlives the benchmark).

The gateway's instrumentation is two thin wrappers around its store's `create` and
`finish_lpu` (any store of the SessionStore protocol), recording the monotonic time at which the
last LPU of each session became terminal, plus `/_bench/*` routes to read it. It adds a dict
operation per LPU result; every request the apps make goes through the unmodified app.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web

from gateway.app import create_app
from gateway.config import Config
from gateway.http import keys
from gateway.observability.logs import configure_logging
from gateway.sandbox.app import Sandbox as _Sandbox
from gateway.sandbox.app import create_sandbox_app
from gateway.sandbox.data import LpuKnobs, SandboxPatient, demo_lpu
from gateway.store.session import Session

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
WAIT_LIMIT = 60.0  # no bench wait lasts longer than this


# ---------------------------------------------------------------- upstream (the sandbox)


def bench_patients(groups: dict[str, int], count: int, delay: float) -> list[SandboxPatient]:
    """`count` patients per group; group "10" has 10 LPUs, token `bench-10-<i>`. Each patient's
    LPUs have GUIDs of their own (patients spread over many hospitals, as in life), so that the
    gateway's per-LPU limit on calls in flight is not what a figure measures."""
    patients = []
    for lpus in groups:
        for i in range(count):
            token = f"bench-{lpus}-{i}"
            own = [demo_lpu(n + 1, LpuKnobs(delay=delay)) for n in range(int(lpus))]
            for n, lpu in enumerate(own):
                lpu.info["guid"] = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{token}/{n}"))
            patients.append(SandboxPatient(token, own))
    return patients


class BenchSandbox(_Sandbox):
    """The sandbox, counting calls instead of keeping a record of each (a long run would
    otherwise hold every call in memory)."""

    def __init__(self, patients: list[SandboxPatient]) -> None:
        super().__init__(patients)
        self.total = 0
        # request id → [MKAB handler seconds, slowest per-LPU handler seconds]
        self.by_request: dict[str, list[float]] = {}

    def record(self, call: Any) -> None:
        self.total += 1


BENCH_SANDBOX = web.AppKey("bench_sandbox", BenchSandbox)


@web.middleware
async def _handler_time(request: web.Request, handler: Handler) -> web.StreamResponse:
    """How long the upstream spent on each call, from the handler's start to its answer:
    the part of a call's latency that is the upstream's own doing."""
    started = time.perf_counter()
    response = await handler(request)
    took = time.perf_counter() - started
    rid = request.headers.get("X-Request-Id")
    if rid is not None and rid.startswith("bench-"):
        times = request.app[BENCH_SANDBOX].by_request.setdefault(rid, [0.0, 0.0])
        slot = 0 if request.path.endswith("/mkab") else 1
        times[slot] = max(times[slot], took)
    return response


async def _set_delay(request: web.Request) -> web.Response:
    delay = float((await request.json())["delay"])
    for patient in request.app[BENCH_SANDBOX].patients.values():
        for lpu in patient.lpus:
            lpu.knobs = LpuKnobs(delay=delay)
    return web.json_response({"delay": delay})


async def _upstream_stats(request: web.Request) -> web.Response:
    sandbox = request.app[BENCH_SANDBOX]
    body = {"calls": sandbox.total, "by_request": sandbox.by_request}
    if request.query.get("reset"):
        sandbox.total = 0
        sandbox.by_request = {}
    return web.json_response(body)


def upstream_app(spec: dict[str, Any]) -> web.Application:
    sandbox = BenchSandbox(bench_patients(spec["groups"], spec["patients"], spec.get("delay", 0.0)))
    app = create_sandbox_app(sandbox)
    app[BENCH_SANDBOX] = sandbox
    app.middlewares.append(_handler_time)
    app.router.add_post("/_bench/delay", _set_delay)
    app.router.add_get("/_bench/stats", _upstream_stats)
    return app


# ---------------------------------------------------------------- gateway (instrumented)


class Recorder:
    """When each session's last LPU result reached the store."""

    def __init__(self) -> None:
        self.remaining: dict[str, int] = {}
        self.done_at: dict[str, float] = {}
        self.keep_times = True
        self.completed = 0
        self.last_done = 0.0
        self._changed = asyncio.Event()

    def _done(self, guid: str) -> None:
        now = time.monotonic()
        self.completed += 1
        self.last_done = now
        if self.keep_times:
            self.done_at[guid] = now
        self._changed.set()

    async def attach(self, app: web.Application) -> None:
        store = app[keys.STORE]
        create, finish_lpu = store.create, store.finish_lpu

        async def recording_create(session: Session) -> None:
            await create(session)
            left = len(session.lpus) - len(session.results)
            if left:
                self.remaining[session.guid] = left
            else:
                self._done(session.guid)

        async def recording_finish(guid: str, index: int, entry: bytes) -> bool:
            won = await finish_lpu(guid, index, entry)
            if won and guid in self.remaining:
                self.remaining[guid] -= 1
                if not self.remaining[guid]:
                    del self.remaining[guid]
                    self._done(guid)
            return won

        store.create = recording_create  # type: ignore[method-assign]
        store.finish_lpu = recording_finish  # type: ignore[method-assign]

    async def _wait(self, ready: Callable[[], bool]) -> bool:
        async with asyncio.timeout(WAIT_LIMIT):
            while not ready():
                self._changed.clear()
                await self._changed.wait()
        return True

    async def done(self, request: web.Request) -> web.Response:
        """Answers once the session is all-terminal: {"t": monotonic time it became so}."""
        guid = request.match_info["guid"]
        await self._wait(lambda: guid in self.done_at)
        return web.json_response({"t": self.done_at.pop(guid)})

    async def completed_count(self, request: web.Request) -> web.Response:
        """Answers once at least `n` sessions completed since the last reset."""
        n = int(request.query["n"])
        await self._wait(lambda: self.completed >= n)
        return web.json_response({"completed": self.completed, "last": self.last_done})

    async def reset(self, request: web.Request) -> web.Response:
        self.keep_times = request.query.get("keep", "1") == "1"
        self.done_at.clear()
        self.completed = 0
        self.last_done = 0.0
        return web.json_response({})


def gateway_app(spec: dict[str, Any]) -> web.Application:
    if spec.get("json") == "stdlib":
        from bench import stdlib_json

        stdlib_json.use_in_gateway()
    config = Config().replace(**spec.get("config", {}))
    log_path = spec.get("log")
    configure_logging(config.log, stream=open(log_path, "a") if log_path else None)
    app = create_app(config)
    recorder = Recorder()
    app.on_startup.append(recorder.attach)  # after the cleanup contexts: the store exists
    app.router.add_get("/_bench/done/{guid}", recorder.done)
    app.router.add_get("/_bench/completed", recorder.completed_count)
    app.router.add_post("/_bench/reset", recorder.reset)
    return app


# ---------------------------------------------------------------- bare handlers (the ceilings)

BARE_CLIENT = web.AppKey("bare_client", aiohttp.ClientSession)
BARE_BODY = web.AppKey("bare_body", bytes)
BARE_UPSTREAM = web.AppKey("bare_upstream", str)
BARE_POOL = web.AppKey("bare_pool", int)


async def _bare_poll(request: web.Request) -> web.Response:
    return web.Response(body=request.app[BARE_BODY], content_type="application/json")


async def _bare_create(request: web.Request) -> web.Response:
    """What creating a session needs from the network, and nothing else: the MKAB list, then
    three calls per LPU concurrently, bodies read but not mapped, nothing stored or logged."""
    client, base = request.app[BARE_CLIENT], request.app[BARE_UPSTREAM]
    headers = {"Authorization": request.headers["Authorization"], "Accept": "application/json"}
    async with client.get(base + "/api/v2/mkab", headers=headers) as resp:
        lpus = [entry["lpu"]["guid"] for entry in await resp.json()]

    async def call(path: str, guid: str) -> None:
        async with client.get(base + path, params={"lpuGuid": guid}, headers=headers) as resp:
            await resp.read()

    await asyncio.gather(
        *(call(path, guid) for guid in lpus for path in ("/api/v2/visit", "/api/v2/calldoctor", "/api/v2/disp"))
    )
    return web.json_response({"session": str(uuid.uuid4())})


async def _bare_client(app: web.Application) -> Any:
    connector = aiohttp.TCPConnector(limit=app[BARE_POOL], limit_per_host=0)
    async with aiohttp.ClientSession(connector=connector) as client:
        app[BARE_CLIENT] = client
        yield


def bare_app(spec: dict[str, Any]) -> web.Application:
    app = web.Application()
    with open(spec["body"], "rb") as fh:
        app[BARE_BODY] = fh.read()
    app[BARE_UPSTREAM] = spec.get("upstream", "")
    app[BARE_POOL] = spec.get("max_connections", 256)  # the gateway's default pool
    app.cleanup_ctx.append(_bare_client)
    app.router.add_get("/poll", _bare_poll)
    app.router.add_get("/create", _bare_create)
    return app


# ---------------------------------------------------------------- serving

APPS: dict[str, Callable[[dict[str, Any]], web.Application]] = {
    "upstream": upstream_app,
    "gateway": gateway_app,
    "bare": bare_app,
}


async def serve(app: web.Application) -> None:
    runner = web.AppRunner(app, access_log=None, handler_cancellation=False, shutdown_timeout=1.0)
    await runner.setup()
    # A large accept backlog: a burst of new upstream connections must not wait for SYN retries.
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=4096)
    await site.start()
    port = runner.addresses[0][1]
    print(f"READY {port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # The benchmark holds our stdin open; when it goes away (even killed), so do we.
    loop.add_reader(sys.stdin.fileno(), stop.set)
    try:
        await stop.wait()
    finally:
        loop.remove_reader(sys.stdin.fileno())
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=sorted(APPS))
    parser.add_argument("--spec", default="{}")
    args = parser.parse_args()
    spec = json.loads(args.spec)
    runner_factory: Any = None
    if spec.get("loop") == "uvloop":
        import uvloop

        runner_factory = uvloop.new_event_loop

    async def run() -> None:
        await serve(APPS[args.kind](spec))

    with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=runner_factory) as runner:
        runner.run(run())


if __name__ == "__main__":
    main()
