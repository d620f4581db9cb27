"""`gateway serve | sandbox | demo | check-config | migration-report`, `gateway --version`: the console
entry point."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Callable, Sequence

import aiohttp
import structlog
from aiohttp import web

from gateway import __version__
from gateway.app import create_app, create_metrics_app
from gateway.config import Config, ConfigError, load_config_with_sources, render_toml
from gateway.http import keys
from gateway.http.admin import ADMIN_HEADER, MIGRATION_PATH
from gateway.http.health import start_draining
from gateway.http.runner import GatewayRunner, raise_fd_limit
from gateway.migration.report import render_table
from gateway.observability import otel
from gateway.observability.logs import configure_logging
from gateway.sandbox.app import create_sandbox_app
from gateway.workers import supervise

log = structlog.get_logger("gateway.cli")


async def run_apps(
    apps: Sequence[tuple[str, web.Application, str, int]], config: Config, reuse_port: bool = False
) -> None:
    """Serves each app on its host and port until SIGINT or SIGTERM, then shuts down gracefully:
    drain (server.drain_seconds), stop listening, answer in-flight requests (up to
    server.shutdown_timeout), clean up."""
    runners: list[web.AppRunner] = []
    # Which loop runs is an operator's question (server.event_loop = auto): the start says it.
    loop_name = type(asyncio.get_running_loop()).__module__.partition(".")[0]
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
            await web.TCPSite(runner, host, port, reuse_port=reuse_port or None).start()
            log.info("listening", app=name, url=f"http://{host}:{port}", loop=loop_name)
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
    """SIGHUP: re-read the rollout flags file now (docs/rollout.md)."""
    for app in apps:
        rollout = app.get(keys.ROLLOUT)
        if rollout is not None:
            rollout.request_reload()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gateway", description=__doc__)
    parser.add_argument("--version", action="version", version=f"visit-gateway {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gateway (config: GATEWAY_CONFIG and GATEWAY_* variables)")
    serve.add_argument(
        "--workers", type=int, default=1, help="gateway processes sharing the ports (more than 1 needs redis.url)"
    )
    # Set by the supervisor of --workers for each worker it starts: bind with SO_REUSEPORT.
    serve.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    sub.add_parser(
        "check-config",
        help="print the effective configuration (file, then GATEWAY_* variables) with secrets masked; "
        "exit 2 naming the offending key or variable",
    )
    sandbox = sub.add_parser("sandbox", help="run the simulated new API")
    sandbox.add_argument("--host", default="127.0.0.1")
    sandbox.add_argument("--port", type=int, default=8081)
    demo = sub.add_parser("demo", help="run the sandbox and a gateway pointed at it, in one process")
    demo.add_argument("--sandbox-port", type=int, default=8081)
    report = sub.add_parser(
        "migration-report",
        help="who still calls the old path, and which cohorts are safe to retire (docs/migration.md)",
    )
    report.add_argument("--url", help="a running gateway (default: http://server.host:server.port of the config)")
    report.add_argument("--json", action="store_true", help="the report as JSON, as GET /admin/migration gives it")
    args = parser.parse_args(argv)

    try:
        config, sources = load_config_with_sources()
        if args.command == "demo":
            config = config.replace(upstream={"url": f"http://127.0.0.1:{args.sandbox_port}"})
        otel.require(config.tracing)
        new_loop = loop_factory(config.server.event_loop)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.command == "check-config":
        # The same load as `serve`, so what it prints is what a start with this environment runs.
        sys.stdout.write(render_toml(config, sources))
        return 0
    if args.command == "migration-report":
        return migration_report(config, args.url, args.json)
    if args.command == "serve" and args.workers > 1:
        if not config.redis.url:
            print("gateway: --workers needs redis.url (GATEWAY_REDIS_URL): sessions must be shared", file=sys.stderr)
            return 2
        # Each worker drains (server.drain_seconds), then finishes its requests in flight.
        stop_within = config.server.drain_seconds + config.server.shutdown_timeout
        return supervise(args.workers, ["serve", "--reuse-port"], stop_within)
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
        with asyncio.Runner(loop_factory=new_loop) as runner:
            runner.run(run_apps(apps, config, reuse_port=args.command == "serve" and args.reuse_port))
    except OSError as exc:
        print(f"gateway: cannot listen: {exc.strerror}", file=sys.stderr)
        return 1
    return 0


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """server.event_loop: uvloop (a dependency on Linux) unless it is "asyncio" or not installed;
    None is asyncio's own loop."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ConfigError("server.event_loop = uvloop, but uvloop is not installed") from None
        return None
    return uvloop.new_event_loop


REPORT_TIMEOUT = 30.0


def migration_report(config: Config, url: str | None, as_json: bool) -> int:
    """Asks a running gateway (GET /admin/migration) rather than reading Redis: the gateway knows
    its cohort table, its clock and its ledger backend, in-process or Redis alike. The admin
    token comes from the config or GATEWAY_ROLLOUT_ADMIN_TOKEN, never argv (which `ps` shows)."""
    base = (url or f"http://{config.server.host}:{config.server.port}").rstrip("/")
    token = config.rollout.admin_token
    if not token:
        print("gateway: migration-report needs rollout.admin_token (or GATEWAY_ROLLOUT_ADMIN_TOKEN)", file=sys.stderr)
        return 2
    try:
        status, body = asyncio.run(_fetch_report(base + MIGRATION_PATH, token))
    except (aiohttp.ClientError, TimeoutError) as exc:
        print(f"gateway: cannot reach {base}: {type(exc).__name__}", file=sys.stderr)
        return 1
    if status != 200:
        # A wrong token reads as "no such route" by design (gateway/http/admin.py).
        print(f"gateway: {base}{MIGRATION_PATH} answered {status} (wrong or no admin token)", file=sys.stderr)
        return 1
    print(json.dumps(body, indent=2) if as_json else render_table(body), end="\n" if as_json else "")
    return 0


async def _fetch_report(url: str, token: str) -> tuple[int, object]:
    timeout = aiohttp.ClientTimeout(total=REPORT_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as http, http.get(url, headers={ADMIN_HEADER: token}) as resp:
        return resp.status, await resp.json() if resp.status == 200 else None
