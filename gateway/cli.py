"""`gateway serve | sandbox | demo`: the console entry point."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence

import structlog
from aiohttp import web

from gateway.app import create_app
from gateway.config import Config, ConfigError, load_config
from gateway.http import keys
from gateway.http.health import start_draining
from gateway.http.runner import GatewayRunner, raise_fd_limit
from gateway.http.scrape import create_metrics_app
from gateway.observability.logs import configure_logging
from gateway.sandbox.app import create_sandbox_app

log = structlog.get_logger("gateway.cli")


async def run_apps(apps: Sequence[tuple[str, web.Application, str, int]], config: Config) -> None:
    """Serves each app on its host and port until SIGINT or SIGTERM, then shuts down gracefully:
    stop listening, answer in-flight requests (up to server.shutdown_timeout), clean up."""
    runners: list[web.AppRunner] = []
    try:
        for name, app, host, port in apps:
            # The gateway app carries its own parser limits (create_app's handler_args).
            runner = GatewayRunner(
                app,
                access_log=None,
                shutdown_timeout=config.server.shutdown_timeout,
                handler_cancellation=False,
            )
            await runner.setup()
            runners.append(runner)
            await web.TCPSite(runner, host, port).start()
            log.info("listening", app=name, url=f"http://{host}:{port}")
        stop, hurry = asyncio.Event(), asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            # The first signal starts the drain; a second one ends it at once.
            loop.add_signal_handler(sig, lambda: hurry.set() if stop.is_set() else stop.set())
        loop.add_signal_handler(signal.SIGHUP, _reload_flags, [app for _, app, _, _ in apps])
        await stop.wait()
        await _drain([app for _, app, _, _ in apps], config.server.drain_seconds, hurry)
    finally:
        # Also when a later listener failed to start: what was opened is closed, in reverse.
        log.info("shutting_down")
        for runner in reversed(runners):
            await runner.cleanup()


async def _drain(apps: list[web.Application], seconds: float, hurry: asyncio.Event) -> None:
    """/readyz answers 503 at once; requests are served for `seconds` more, so that the load
    balancer sees the replica unready and stops sending before the listener closes
    (docs/connections.md, "Graceful drain")."""
    draining = [app for app in apps if keys.DRAINING in app]
    if not draining or seconds <= 0:
        return
    for app in draining:
        start_draining(app)
    log.info("draining", seconds=seconds)
    try:
        await asyncio.wait_for(hurry.wait(), seconds)
    except TimeoutError:
        pass


def _reload_flags(apps: list[web.Application]) -> None:
    """SIGHUP: re-read the rollout flags file now (README "Rollout")."""
    for app in apps:
        rollout = app.get(keys.ROLLOUT)
        if rollout is not None:
            rollout.request_reload()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gateway", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the gateway (config: GATEWAY_CONFIG and GATEWAY_* variables)")
    sandbox = sub.add_parser("sandbox", help="run the simulated new API")
    sandbox.add_argument("--host", default="127.0.0.1")
    sandbox.add_argument("--port", type=int, default=8081)
    demo = sub.add_parser("demo", help="run the sandbox and a gateway pointed at it, in one process")
    demo.add_argument("--sandbox-port", type=int, default=8081)
    args = parser.parse_args(argv)

    try:
        config = load_config()
        if args.command == "demo":
            config = config.replace(upstream={"url": f"http://127.0.0.1:{args.sandbox_port}"})
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    configure_logging(config.log)
    raise_fd_limit()

    apps: list[tuple[str, web.Application, str, int]] = []
    if args.command in ("sandbox", "demo"):
        host, port = (args.host, args.port) if args.command == "sandbox" else ("127.0.0.1", args.sandbox_port)
        apps.append(("sandbox", create_sandbox_app(), host, port))
    if args.command in ("serve", "demo"):
        gateway = create_app(config)
        apps.append(("gateway", gateway, config.server.host, config.server.port))
        if config.metrics.port:
            host = config.metrics.host or config.server.host
            apps.append(("metrics", create_metrics_app(gateway), host, config.metrics.port))
    try:
        asyncio.run(run_apps(apps, config))
    except OSError as exc:
        print(f"gateway: cannot listen: {exc.strerror}", file=sys.stderr)
        return 1
    return 0
