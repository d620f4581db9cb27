"""The processes the benchmark starts, each on 127.0.0.1 on a port the OS picks.

    python -m bench.servers upstream  --spec SPEC   canned answers of the new API (the fake upstream)
    python -m bench.servers gateway   --spec SPEC   the real gateway (create_app), unmodified
    python -m bench.servers minimal   --spec SPEC   the minimal gateway (bench/minimal.py), the baseline
    python -m bench.servers bare      --spec SPEC   a bare aiohttp handler returning one poll's bytes

SPEC is a JSON object (see `bench.procs`). Each process prints `READY <port>` once it listens and
runs until SIGTERM/SIGINT, or until its stdin closes (so it never outlives the benchmark).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from bench.minimal import minimal_app
from gateway.app import create_app
from gateway.config import Config
from gateway.http.runner import GatewayRunner
from gateway.observability.logs import configure_logging
from gateway.sandbox.data import demo_lpu

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# ---------------------------------------------------------------- upstream (canned answers)


class CannedUpstream:
    """The new API for the benchmark: the sandbox's demo records, each answer serialized once at
    start, so that the fake is not what a figure measures (its CPU share is reported).

    Patients: group "N" has N LPUs, tokens `bench-N-<i>`; every patient's LPUs have GUIDs of their
    own (patients spread over many hospitals, as in life), so the gateway's per-LPU limit on calls
    in flight is not what a figure measures. Every call waits `delay` seconds (one timer), except
    the LPUs of tokens listed in `slow`, which wait `slow_delay` (sessions kept in progress)."""

    def __init__(self, groups: dict[str, int], count: int, delay: float) -> None:
        self.delay = delay
        self.slow: set[str] = set()
        self.slow_delay = 0.0
        self.calls = 0
        self.mkab: dict[str, bytes] = {}
        # (method path, lpu guid) → answer body
        self.answers: dict[tuple[str, str], bytes] = {}
        self.owner: dict[str, str] = {}  # lpu guid → token
        for lpus in groups:
            for i in range(count):
                token = f"bench-{lpus}-{i}"
                entries = []
                for n in range(int(lpus)):
                    lpu = demo_lpu(n + 1)
                    lpu.info["guid"] = guid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{token}/{n}"))
                    entries.append({"mkabGuid": f"mkab-{n}", "lpu": lpu.info})
                    for path, records in (
                        ("/api/v2/visit", lpu.visits),
                        ("/api/v2/calldoctor", lpu.calls),
                        ("/api/v2/disp", lpu.disps),
                    ):
                        self.answers[(path, guid)] = json.dumps(records, ensure_ascii=False).encode()
                    self.owner[guid] = token
                self.mkab[token] = json.dumps(entries, ensure_ascii=False).encode()


CANNED = web.AppKey("canned", CannedUpstream)
_JSON = {"Content-Type": "application/json"}


async def _canned_mkab(request: web.Request) -> web.Response:
    canned = request.app[CANNED]
    canned.calls += 1
    body = canned.mkab.get(request.headers.get("Authorization", "")[7:])
    if body is None:
        return web.Response(status=401, body=b'{"message":"Token is invalid"}', headers=_JSON)
    if canned.delay:
        await asyncio.sleep(canned.delay)
    return web.Response(body=body, headers=_JSON)


async def _canned_lpu(request: web.Request) -> web.Response:
    canned = request.app[CANNED]
    canned.calls += 1
    guid = request.query.get("lpuGuid", "")
    body = canned.answers.get((request.path, guid))
    if body is None:
        return web.Response(status=404, body=b'{"message":"MKAB not found in this LPU"}', headers=_JSON)
    delay = canned.slow_delay if canned.owner[guid] in canned.slow else canned.delay
    if delay:
        await asyncio.sleep(delay)
    return web.Response(body=body, headers=_JSON)


async def _set_delay(request: web.Request) -> web.Response:
    """{"delay": s} for every call; optionally {"slow": [tokens], "slow_delay": s}."""
    canned = request.app[CANNED]
    spec = await request.json()
    canned.delay = float(spec["delay"])
    canned.slow = set(spec.get("slow", ()))
    canned.slow_delay = float(spec.get("slow_delay", 0.0))
    return web.json_response({"delay": canned.delay})


async def _upstream_stats(request: web.Request) -> web.Response:
    canned = request.app[CANNED]
    body = {"calls": canned.calls}
    if request.query.get("reset"):
        canned.calls = 0
    return web.json_response(body)


def upstream_app(spec: dict[str, Any]) -> web.Application:
    app = web.Application()
    app[CANNED] = CannedUpstream(spec["groups"], spec["patients"], spec.get("delay", 0.0))
    app.router.add_get("/api/v2/mkab", _canned_mkab)
    for path in ("/api/v2/visit", "/api/v2/calldoctor", "/api/v2/disp"):
        app.router.add_get(path, _canned_lpu)
    app.router.add_post("/_bench/delay", _set_delay)
    app.router.add_get("/_bench/stats", _upstream_stats)
    return app


# ---------------------------------------------------------------- the gateway, and the minimal gateway


def gateway_app(spec: dict[str, Any]) -> web.Application:
    """The real gateway (create_app), unmodified, with the configuration in `spec`."""
    if spec.get("json") == "stdlib":
        from bench import stdlib_json

        stdlib_json.use_in_gateway()
    config = Config().replace(**spec.get("config", {}))
    log_path = spec.get("log")
    configure_logging(config.log, stream=open(log_path, "a") if log_path else None)
    return create_app(config)


def minimal_app_for(spec: dict[str, Any]) -> web.Application:
    log_path = spec.get("log")
    logging.basicConfig(
        level=logging.INFO, stream=open(log_path, "a") if log_path else sys.stderr, format="%(asctime)s %(message)s"
    )
    return minimal_app(spec["upstream"])


# ---------------------------------------------------------------- bare handlers (the ceilings)

BARE_BODY = web.AppKey("bare_body", bytes)


async def _bare_poll(request: web.Request) -> web.Response:
    return web.Response(body=request.app[BARE_BODY], content_type="application/json")


def bare_app(spec: dict[str, Any]) -> web.Application:
    app = web.Application()
    with open(spec["body"], "rb") as fh:
        app[BARE_BODY] = fh.read()
    app.router.add_get("/poll", _bare_poll)
    return app


# ---------------------------------------------------------------- serving

APPS: dict[str, Callable[[dict[str, Any]], web.Application]] = {
    "upstream": upstream_app,
    "gateway": gateway_app,
    "minimal": minimal_app_for,
    "bare": bare_app,
}


async def serve(app: web.Application, kind: str) -> None:
    # The gateway is served as `gateway serve` serves it (its connection protocol included); the
    # others by aiohttp's own runner.
    factory = GatewayRunner if kind == "gateway" else web.AppRunner
    runner = factory(app, access_log=None, handler_cancellation=False, shutdown_timeout=1.0)
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
        await serve(APPS[args.kind](spec), args.kind)

    with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=runner_factory) as runner:
        runner.run(run())


if __name__ == "__main__":
    main()
