"""The retirement of the old path, end to end on loopback (docs/migration.md, "The demo").

    .venv/bin/python scripts/migration_demo.py            # about 10 s, then exits
    .venv/bin/python scripts/migration_demo.py --serve    # then keeps the gateway up for you
    .venv/bin/python scripts/migration_demo.py --redis-url redis://127.0.0.1:6379/0

It starts the sandbox and a gateway in front of it (127.0.0.1, free ports) whose migration clock
the script moves, and plays 46 days of three apps on the old path: alpha calls every day, beta
has been moving off it for a week (fading), gamma stopped 12 days ago (silent). Then, each step
printed with `gateway migration-report` run as a reviewer would run it:

1. the report: alpha active, beta fading, gamma silent for 12 days;
2. beta is announced: Deprecation, Sunset and Link headers on its answers;
3. a dry-run brownout of beta: nobody is refused, the report shows who would have been;
4. the brownout for real: beta's creates answer 503 with Retry-After, alpha's do not (gamma,
   silent, stays silent).

Bounded: a fixed number of requests (under 700), every wait with a timeout. `--json` ends with
one JSON line of what happened, for the end-to-end test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from gateway.app import create_app
from gateway.config import Config, LogConfig
from gateway.http import keys
from gateway.migration.clock import DAY, ManualClock
from gateway.observability.logs import configure_logging
from gateway.sandbox.app import Sandbox, create_sandbox_app
from gateway.sandbox.data import SandboxPatient, demo_lpu

TICKETS = "/api/v2/old/visit/tickets"
ALPHA_GUID = "a1a1a1a1-1b8f-4c5b-8d1e-1c0f3b0e5a11"
BETA_GUID = "b2b2b2b2-1b8f-4c5b-8d1e-1c0f3b0e5a11"
CLIENTS = {
    "by_guid": {ALPHA_GUID: "alpha", BETA_GUID: "beta"},
    "by_user_agent": {r"^gamma-web/(?P<version>[0-9.]+)": "gamma"},
    "versions": ["4.9", "5.0", "3.1"],
}
HEADERS = {
    "alpha": {"ClientApplication": ALPHA_GUID, "User-Agent": "alpha/5.0.1 (Linux; Android 13)"},
    "beta": {"ClientApplication": BETA_GUID, "User-Agent": "beta/4.9.7 CFNetwork/1408 Darwin/22"},
    "gamma": {"User-Agent": "gamma-web/3.1 Mozilla/5.0 (X11; Linux x86_64)"},
}
HISTORY_DAYS = 46
# Requests per app on day d (0 = today, 45 = 45 days ago).
PLAN = {
    "alpha": lambda d: 2,
    "beta": lambda d: 1 if d < 7 else 5 if d < 30 else 0,
    "gamma": lambda d: 2 if 12 <= d < 30 else 0,
}
# Today, in the brownout steps: gamma stays silent; beta is 40 % of the creates.
TODAY = {"alpha": 6, "beta": 4}
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=10)


def _iso(when: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))


def _flags(now: float, brownout_mode: str | None, name: str = "beta-dry-run") -> str:
    text = f"""version = "migration-demo"
[migration]
link = "https://example.org/visit-api-migration"

[[migration.deprecation]]
cohorts = ["beta/*/*"]
deprecated = {_iso(now - 30 * DAY)}
sunset = {_iso(now + 60 * DAY)}
"""
    if brownout_mode:
        text += f"""
[[migration.brownout]]
name = "{name}"
cohorts = ["beta/*/*"]
start = {_iso(now - 1)}
duration = 600
share = 1.0
mode = "{brownout_mode}"
"""
    return text


class Demo:
    def __init__(self, http: aiohttp.ClientSession, url: str, app: web.Application) -> None:
        self.http, self.url, self.app = http, url, app
        self.tokens = {name: f"demo-{name}-{secrets.token_hex(8)}" for name in HEADERS}

    async def visit(self, name: str) -> tuple[int, Any]:
        """One create as the app makes it, then polls until the session is final (bounded)."""
        headers = HEADERS[name] | {"Authorization": f"Bearer {self.tokens[name]}"}
        async with self.http.get(self.url + TICKETS, headers=headers) as resp:
            status, body, answer_headers = resp.status, await resp.json(), resp.headers
        if status != 200:
            return status, answer_headers
        end = time.monotonic() + 10
        while time.monotonic() < end:
            async with self.http.get(f"{self.url}{TICKETS}/{body['session']}", headers=headers) as resp:
                entries = await resp.json()
            if resp.status != 200 or all(e["state"] != "InProgress" for e in entries):
                break
            await asyncio.sleep(0.005)
        return status, answer_headers

    async def set_flags(self, text: str) -> None:
        rollout = self.app[keys.ROLLOUT]
        assert rollout.file is not None
        path = Path(rollout.file.path)
        path.with_suffix(".tmp").write_text(text)
        os.replace(path.with_suffix(".tmp"), path)
        # As SIGHUP does for `gateway serve`: read it now rather than at the next poll.
        if not await rollout.reload(force=True):
            raise SystemExit(f"flags file refused: {rollout.file.error}")

    async def report(self, as_json: bool = False) -> str:
        """`gateway migration-report`, run as its own process, as a reviewer runs it."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        env["GATEWAY_ROLLOUT_ADMIN_TOKEN"] = self.app[keys.CONFIG].rollout.admin_token
        args = [
            sys.executable,
            "-m",
            "gateway",
            "migration-report",
            "--url",
            self.url,
            *(["--json"] if as_json else []),
        ]
        proc = await asyncio.create_subprocess_exec(*args, env=env, stdout=asyncio.subprocess.PIPE)
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        if proc.returncode != 0:
            raise SystemExit(f"gateway migration-report failed ({proc.returncode})")
        return out.decode()


async def run(redis_url: str, serve: bool, as_json: bool) -> dict[str, Any]:
    clock = ManualClock(time.time() - HISTORY_DAYS * DAY)
    sandbox = Sandbox([])
    workdir = tempfile.TemporaryDirectory(prefix="migration-demo-")
    flags_file = Path(workdir.name) / "flags.toml"
    flags_file.write_text(_flags(time.time(), None))
    runners: list[web.AppRunner] = []

    async def listen(app: web.Application) -> str:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        runners.append(runner)
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    try:
        sandbox_url = await listen(create_sandbox_app(sandbox))
        config = Config().replace(
            upstream={"url": sandbox_url, "retry_backoff": 0.0},
            rollout={"flags_file": str(flags_file), "admin_token": secrets.token_hex(16)},
            clients=CLIENTS,
            redis={"url": redis_url},
            # Beta is 40 % of today's demo traffic; the default guard (20 %) would pause the
            # brownout, as it should for a cohort that big (docs/migration.md, "Guards").
            migration={"brownout_max_share": 0.5},
            # One token per app replays 46 days of its creates in seconds: far above the per-token
            # create rate and live sessions a real patient gets (the quota runs on real time).
            limits={
                "create_rate_per_token": 1e6,
                "create_burst_per_token": 10**6,
                "live_sessions_per_token": 10**6,
                "token_share": 1.0,
            },
        )
        app = create_app(config, clock=clock)
        url = await listen(app)
        async with aiohttp.ClientSession(timeout=REQUEST_TIMEOUT) as http:
            demo = Demo(http, url, app)
            for token in demo.tokens.values():
                sandbox.patients[token] = SandboxPatient(token, [demo_lpu(1)])
            print(f"sandbox {sandbox_url}, gateway {url}: playing {HISTORY_DAYS} days of alpha, beta and gamma")
            start = time.time()
            for days_ago in range(HISTORY_DAYS - 1, -1, -1):
                clock.set(start - days_ago * DAY)
                for name, per_day in PLAN.items():
                    for _ in range(per_day(days_ago)):
                        status, _ = await demo.visit(name)
                        assert status == 200, (name, status)
            clock.set(time.time())

            print("\n1. Who still calls the old path: `gateway migration-report`\n")
            print(await demo.report())

            await demo.set_flags(_flags(clock.now(), None))
            _, headers = await demo.visit("beta")
            print("2. beta is announced: its old-path answers now carry")
            for name in ("Deprecation", "Sunset", "Link"):
                print(f"   {name}: {headers[name]}")

            print("\n3. A dry-run brownout of beta: everybody is served, the report counts who would not be\n")
            await demo.set_flags(_flags(clock.now(), "dry_run"))
            dry: Counter[str] = Counter()
            for name, n in TODAY.items():
                for _ in range(n):
                    dry[f"{name} {(await demo.visit(name))[0]}"] += 1
            print(f"   answers: {dict(sorted(dry.items()))}")
            dry_report = await demo.report()
            print(dry_report)

            print("4. The brownout for real, on beta only\n")
            await demo.set_flags(_flags(clock.now(), "fail", name="beta-brownout"))
            real: Counter[str] = Counter()
            retry_after = set()
            for name, n in TODAY.items():
                for _ in range(n):
                    status, headers = await demo.visit(name)
                    real[f"{name} {status}"] += 1
                    if status == 503:
                        retry_after.add(headers.get("Retry-After"))
            print(f"   answers: {dict(sorted(real.items()))}, Retry-After {sorted(retry_after)}")
            final = json.loads(await demo.report(as_json=True))
            for brownout in final["brownouts"]:
                print(f"   brownout {brownout['name']} ({brownout['mode']}, {brownout['state']}): {brownout['hits']}")
            summary = {
                "verdicts": {c["cohort"]: c["verdict"] for c in final["cohorts"]},
                "dry_run": dict(dry),
                "brownout": dict(real),
                "retry_after": sorted(retry_after),
                "hits": {b["name"]: b["hits"] for b in final["brownouts"]},
            }
            if serve:
                clock.release()
                print(f"\nThe gateway stays up at {url} (Ctrl-C to stop). In another terminal:")
                print(f"  GATEWAY_ROLLOUT_ADMIN_TOKEN={config.rollout.admin_token} \\")
                print(f"    .venv/bin/gateway migration-report --url {url}")
                print(f"  flags file (re-read on change; its clock is now the real one): {flags_file}")
                stop = asyncio.Event()
                for sig in (signal.SIGINT, signal.SIGTERM):
                    asyncio.get_running_loop().add_signal_handler(sig, stop.set)
                await stop.wait()
            return summary
    finally:
        for runner in reversed(runners):
            await runner.cleanup()
        workdir.cleanup()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--redis-url", default="", help="a Redis for the ledger (default: in memory)")
    parser.add_argument("--serve", action="store_true", help="keep the gateway up afterwards, until Ctrl-C")
    parser.add_argument("--json", action="store_true", help="end with one JSON line of what happened")
    args = parser.parse_args()
    configure_logging(LogConfig(level="warning", format="console"), stream=sys.stderr)
    try:
        summary = asyncio.run(run(args.redis_url, args.serve, args.json))
    except KeyboardInterrupt:  # before --serve's own handler is in place
        return 0
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
