"""Where a poll's CPU goes beyond a bare aiohttp handler, without the network: the Python time
of `Application._handle` for one poll of a finished 5-LPU session, per variant of the app.

    python -m bench.costs [--polls 3000] [--repeats 9]

Each variant runs in its own process (structlog binds its configuration on first use); the
figure is the fastest of `repeats` batches (the least disturbed by other load on the machine).
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
import uuid

from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from gateway.app import create_app
from gateway.config import Config, LogConfig
from gateway.contract import COMPLETE
from gateway.http import keys, middleware
from gateway.observability.logs import configure_logging
from gateway.observability.trace import continue_trace
from gateway.sessions.tokens import token_hash
from gateway.store.session import Session, entry_bytes

VARIANTS = {
    "bare": "a bare aiohttp handler returning the same bytes",
    "handler": "the gateway's poll handler alone (no middleware)",
    "errors": "+ the error middleware",
    "context": "+ the request-context middleware (ids, metrics, old-path usage), access log off",
    "full": "+ the access log line (the gateway as it runs)",
}


async def measure(variant: str, polls: int, repeats: int) -> float:
    configure_logging(LogConfig(level="warning" if variant == "context" else "info"), stream=sys.stderr)
    # Limits out of the way, and a lease that outlives the run: no fan-out runs this session.
    app = create_app(Config().replace(limits={"poll_rate": 1e9, "poll_burst": 10**9}, redis={"lease_ttl": 3600.0}))
    # The middleware chain is fixed when the app starts: choose it before.
    if variant == "handler":
        app._middlewares = type(app.middlewares)([])
    elif variant == "errors":
        app._middlewares = type(app.middlewares)([middleware.errors])
    runner = web.AppRunner(app)
    await runner.setup()
    now = time.time()
    lpus = tuple(b'{"guid":"%d","name":"%s"}' % (i, b"x" * 800) for i in range(5))
    session = Session(str(uuid.uuid4()), token_hash("t"), now, now + 60, lpus, tuple("abcde"))
    await app[keys.STORE].create(session)
    for i, lpu in enumerate(lpus):
        await app[keys.STORE].finish_lpu(session.guid, i, entry_bytes(COMPLETE, lpu, b"[" + b"1," * 1000 + b"1]"))
    body = session.body(now)
    path = f"/api/v2/old/visit/tickets/{session.guid}"
    if variant == "bare":
        app = web.Application()

        async def bare(request: web.Request) -> web.Response:
            return web.Response(body=body, content_type="application/json")

        app.router.add_get(path, bare)
        await web.AppRunner(app).setup()
    best = float("inf")
    for _ in range(repeats):
        headers = {"Authorization": "Bearer t"}
        requests = [make_mocked_request("GET", path, headers=headers, app=app) for _ in range(polls)]
        if variant in ("handler", "errors"):
            # What the request context would have set (the handler reads it).
            for request in requests:
                request[keys.STATE] = keys.RequestState("bench", continue_trace([], []))
        started = time.process_time()
        for request in requests:
            response = await app._handle(request)
            assert response.status == 200
        best = min(best, (time.process_time() - started) / polls)
    await runner.cleanup()
    return best * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.costs", description=__doc__)
    parser.add_argument("--polls", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--variant", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(asyncio.run(measure(args.variant, args.polls, args.repeats)))
        return 0
    print("| variant | µs of Python per poll |\n|---|---|")
    for variant, meaning in VARIANTS.items():
        command = [sys.executable, "-m", "bench.costs", "--variant", variant]
        command += ["--polls", str(args.polls), "--repeats", str(args.repeats)]
        # The log lines go to the child's stderr, discarded like a log shipper would take them.
        out = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, check=True, timeout=300)
        print(f"| {meaning} | {float(out.stdout):.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
