"""Runs every figure `runs` times against freshly started processes and prints the table.

python -m bench [--runs 5] [--quick] [--loop asyncio|uvloop] [--only overhead,calls,...]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench import scenarios
from bench.httpload import LoadClient
from bench.machine import describe, load_average
from bench.procs import Proc, run_plain_client, started
from bench.report import render

FIGURES = ("overhead", "calls", "polls", "creates", "memory", "amplification")
# Counts per run: (full, quick). Every loop is also bounded in time.
SIZES = {
    "overhead_bursts": {1: (40, 15), 20: (10, 4), 100: (4, 2)},
    "calls_sessions": (400, 120),
    "polls": (20000, 6000),
    "creates": (1000, 300),
    "memory_sessions": (2000, 500),
    "amplification": ((20, 4), (10, 3)),  # (patients, opens each)
}
# upstream.max_connections of the gateway (and the plain client) for the overhead figure: 100
# sessions × 10 LPUs are 3,000 calls at once; the default pool of 256 would queue them
# (docs/benchmarks.md has a run with --pool 256).
OVERHEAD_POOL = 4096
PATIENTS_PER_GROUP = 200


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


# The protective limits are raised out of the way (their checks still run on every request): the
# polls figure polls one session far beyond limits.poll_rate, and the creates figure keeps more
# fan-outs of one token in flight than limits.sessions_per_token allows, and creates with one
# token far faster and more often than the per-token quota allows.
BENCH_LIMITS = {
    "poll_rate": 1e9,
    "poll_burst": 10**9,
    "sessions_per_token": 10**6,
    "live_sessions_per_token": 10**6,
    "token_share": 1.0,
    "create_rate_per_token": 1e9,
    "create_burst_per_token": 10**9,
}


def gateway_spec(up: Proc, logdir: str, loop: str, json_lib: str = "orjson", **config: Any) -> dict[str, Any]:
    upstream_section = {"url": up.url} | config.pop("upstream", {})
    return {
        "config": {"upstream": upstream_section, "limits": BENCH_LIMITS, **config},
        "log": f"{logdir}/gateway.log",
        "loop": loop,
        "json": json_lib,
    }


async def repeat(runs: int, measure: Callable[[], Awaitable[dict[str, float]]]) -> dict[str, float]:
    return median_of([await measure() for _ in range(runs)])


async def measure_all(args: argparse.Namespace, logdir: str) -> dict[str, Any]:
    quick = 1 if args.quick else 0
    runs, loop = args.runs, args.loop
    only = set(args.only.split(",")) if args.only else set(FIGURES)
    out: dict[str, Any] = {}
    upstream_spec = {"groups": {"10": 0, "5": 0}, "patients": PATIENTS_PER_GROUP, "delay": 0.1, "loop": loop}

    with started("upstream", upstream_spec) as upstream:
        spec = gateway_spec(upstream, logdir, loop, args.json_lib, upstream={"max_connections": args.pool})
        with started("gateway", spec) as gateway:
            t = scenarios.Target(upstream, gateway)
            try:
                if "overhead" in only:
                    await t.set_delay(0.1)
                    for concurrent, sizes in SIZES["overhead_bursts"].items():
                        out[f"overhead_{concurrent}"] = await measure_overhead(
                            t, upstream, runs, concurrent, sizes[quick], loop, args.pool
                        )
                await t.set_delay(0.0)
                if "calls" in only:
                    out["calls"] = await measure_calls(t, upstream, runs, SIZES["calls_sessions"][quick], loop)
                if {"polls", "creates"} & only:
                    out.update(await measure_against_bare(t, upstream, only, runs, quick, loop, logdir))
            finally:
                t.close()

        if "memory" in only:
            with started("gateway", gateway_spec(upstream, logdir, loop, args.json_lib)) as gateway:
                t = scenarios.Target(upstream, gateway)
                try:
                    await t.set_delay(0.0)
                    await scenarios.memory(t, 200)  # warm-up: buffers, pools, first allocations
                    out["memory"] = await repeat(runs, lambda: scenarios.memory(t, SIZES["memory_sessions"][quick]))
                finally:
                    t.close()

        if "amplification" in only:
            patients, opens = SIZES["amplification"][quick]
            for window in (0.0, 60.0):
                spec = gateway_spec(upstream, logdir, loop, args.json_lib, session={"reuse_window": window})
                with started("gateway", spec) as gateway:
                    t = scenarios.Target(upstream, gateway)
                    try:
                        await t.set_delay(0.1)
                        first = itertools.count(0, patients)
                        out[f"amplification_{int(window)}"] = await repeat(
                            runs, lambda t=t, n=first: scenarios.amplification(t, patients, opens, 3.0, next(n))
                        )
                    finally:
                        t.close()
    return out


async def measure_overhead(
    t: scenarios.Target, upstream: Proc, runs: int, concurrent: int, bursts: int, loop: str, pool: int
) -> dict[str, Any]:
    gateway_runs, plain_runs = [], []
    for _ in range(runs):
        gateway_runs.append(await scenarios.overhead(t, concurrent, bursts))
        await t.upstream_stats(reset=True)
        spec = plain_spec(upstream, loop, mode="bursts", concurrency=concurrent, bursts=bursts)
        spec["max_connections"] = pool
        plain_runs.append(await scenarios.plain_overhead(t, await asyncio.to_thread(run_plain_client, spec, 300)))
    return {"gateway": median_of(gateway_runs), "ceiling": median_of(plain_runs)}


def plain_spec(upstream: Proc, loop: str, **spec: Any) -> dict[str, Any]:
    tokens = [scenarios.token(10, i) for i in range(PATIENTS_PER_GROUP)]
    return {"upstream": upstream.url, "tokens": tokens, "loop": loop, **spec}


async def measure_calls(t: scenarios.Target, upstream: Proc, runs: int, sessions: int, loop: str) -> dict[str, Any]:
    """Gateway and plain client alternate, so a change in the machine's load hits both."""
    gateway_runs, plain_runs = [], []
    for _ in range(runs):
        gateway_runs.append(await scenarios.fanout_calls(t, sessions, concurrency=8, time_limit=30))
        spec = plain_spec(upstream, loop, mode="calls", concurrency=8, sessions=sessions, time_limit=30)
        up_cpu = upstream.cpu()
        plain = await asyncio.to_thread(run_plain_client, spec, 120)
        # Approximate (includes the client's start-up): is the fake upstream the bottleneck?
        plain["upstream_busy"] = (upstream.cpu() - up_cpu) / plain["wall"]
        plain["per_cpu_s"] = plain["calls"] / plain["cpu"]
        plain["per_s"] = plain["calls"] / plain["wall"]
        plain_runs.append(plain)
    return {"gateway": median_of(gateway_runs), "ceiling": median_of(plain_runs)}


async def measure_against_bare(
    t: scenarios.Target, upstream: Proc, only: set[str], runs: int, quick: int, loop: str, logdir: str
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    # The finished session every poll reads, and the same bytes for the bare handler.
    guid = await t.create(5, 0)
    await t.done_at(guid)
    headers = scenarios.auth(5, 0)
    status, body = await t.gw.get(scenarios.POLL.format(guid), headers)
    assert status == 200 and b"InProgress" not in body
    body_path = Path(logdir) / "poll-body.json"
    body_path.write_bytes(body)
    bare_spec = {"body": str(body_path), "upstream": upstream.url, "loop": loop}
    with started("bare", bare_spec) as bare:
        bare_client = LoadClient(bare.port)
        try:
            if "polls" in only:
                count = SIZES["polls"][quick]
                gw_runs, bare_runs = [], []
                for _ in range(runs):
                    gw_runs.append(
                        await scenarios.polls(t.gw, t.gateway, scenarios.POLL.format(guid), headers, count, 16, 20)
                    )
                    bare_runs.append(await scenarios.polls(bare_client, bare, "/poll", headers, count, 16, 20))
                out["polls"] = {"gateway": median_of(gw_runs), "ceiling": median_of(bare_runs)}
            if "creates" in only:
                count = SIZES["creates"][quick]
                gw_runs, bare_runs = [], []
                for _ in range(runs):
                    gw_runs.append(
                        await scenarios.creates(t.gw, t.gateway, scenarios.CREATE, 5, count, 16, 30, recorder=t)
                    )
                    bare_runs.append(await scenarios.creates(bare_client, bare, "/create", 5, count, 16, 30))
                out["creates"] = {"gateway": median_of(gw_runs), "ceiling": median_of(bare_runs)}
        finally:
            bare_client.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--runs", type=int, default=5, help="runs per figure; the table shows medians")
    parser.add_argument("--quick", action="store_true", help="smaller runs (a smoke test of the benchmark)")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio", help="every process's event loop")
    parser.add_argument(
        "--json", dest="json_lib", choices=("orjson", "stdlib"), default="orjson", help="the gateway's JSON library"
    )
    parser.add_argument("--pool", type=int, default=OVERHEAD_POOL, help="upstream.max_connections, overhead figure")
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(FIGURES)}")
    parser.add_argument("--save", type=Path, help="also write the raw figures here (JSON)")
    args = parser.parse_args(argv)
    machine = describe(args.loop, args.json_lib)
    machine["load_before"] = load_average()
    started_at = time.time()
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as logdir:
        results = asyncio.run(measure_all(args, logdir))
    machine["load_after"] = load_average()
    machine["duration_s"] = round(time.time() - started_at)
    machine["runs"] = args.runs
    machine["pool"] = args.pool
    print(render(machine, results))
    if args.save:
        args.save.write_text(json.dumps({"machine": machine, "results": results}, indent=2))
    return 0
