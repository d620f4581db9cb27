"""Runs every figure `runs` times against freshly started processes and prints the table.

python -m bench [--runs 5] [--quick] [--loop asyncio|uvloop] [--only overhead,calls,...]

visit-gateway runs with its default configuration, except that the per-session poll rate and the
per-token session limits are raised out of the way (their checks still run on every request):
the figures poll every 20 ms, and the poll figure polls one session far beyond
`limits.poll_rate`. Each figure of the gateway is measured in the same run as its baseline: the
minimal gateway (bench/minimal.py) or a bare aiohttp handler, alternating run by run, so that a
change in the machine's load hits both.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench import scenarios
from bench.httpload import LoadClient
from bench.machine import describe, load_average
from bench.procs import Proc, started, started_redis, started_serve
from bench.report import render, render_loops
from gateway.cli import loop_factory

FIGURES = ("overhead", "calls", "polls", "redis", "workers", "memory", "amplification")
# (concurrent sessions, LPUs each, upstream delay s) → bursts (full, quick). Every wait is bounded.
OVERHEAD = {(1, 10, 0.1): (10, 5), (20, 10, 0.1): (6, 3), (40, 8, 0.2): (6, 3)}
SIZES = {
    "calls_sessions": (150, 100),
    "polls": (8000, 6000),
    "memory_sessions": (1000, 500),
    "amplification": ((20, 4), (10, 3)),  # (patients, opens each)
}
PATIENTS_PER_GROUP = 200
POLL_CLIENTS = 32
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


def default_loop() -> str:
    """The loop `gateway serve` runs by default here: every process of a run gets the same."""
    return "asyncio" if loop_factory("auto") is None else "uvloop"


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def gateway_spec(up: Proc, logdir: str, loop: str, json_lib: str = "orjson", **config: Any) -> dict[str, Any]:
    upstream_section = {"url": up.url} | config.pop("upstream", {})
    limits = BENCH_LIMITS | config.pop("limits", {})
    return {
        "config": {"upstream": upstream_section, "limits": limits, **config},
        "log": f"{logdir}/gateway.log",
        "loop": loop,
        "json": json_lib,
    }


def minimal_spec(up: Proc, logdir: str, loop: str) -> dict[str, Any]:
    return {"upstream": up.url, "log": f"{logdir}/minimal.log", "loop": loop}


@contextmanager
def targets(upstream: Proc, spec: dict[str, Any], logdir: str, loop: str) -> Iterator[dict[str, scenarios.Target]]:
    """The gateway (with `spec`) and the minimal gateway, both on `upstream`."""
    with started("gateway", spec) as gateway, started("minimal", minimal_spec(upstream, logdir, loop)) as minimal:
        both = {"gateway": scenarios.Target(upstream, gateway), "minimal": scenarios.Target(upstream, minimal)}
        try:
            yield both
        finally:
            for t in both.values():
                t.close()


async def alternate(
    runs: int, names: list[str], measure: Callable[[str], Awaitable[dict[str, float]]]
) -> dict[str, dict[str, float]]:
    """`runs` rounds, each measuring every name in turn; the median per name, with every run's
    figures under "runs" (the report's spreads and per-round ratios)."""
    out: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for _ in range(runs):
        for name in names:
            out[name].append(await measure(name))
    return {name: median_of(values) | {"runs": values} for name, values in out.items()}  # type: ignore[dict-item]


async def measure_all(args: argparse.Namespace, logdir: str) -> dict[str, Any]:
    quick = 1 if args.quick else 0
    runs, loop = args.runs, args.loop
    only = set(args.only.split(",")) if args.only else set(FIGURES)
    out: dict[str, Any] = {}
    upstream_spec = {"groups": {"10": 0, "8": 0, "5": 0}, "patients": PATIENTS_PER_GROUP, "loop": loop}

    with started("upstream", upstream_spec) as upstream:
        up = scenarios.Target(upstream, upstream)
        spec = gateway_spec(upstream, logdir, loop, args.json_lib)
        if {"overhead", "calls", "polls"} & only:
            with targets(upstream, spec, logdir, loop) as both:
                if "overhead" in only:
                    for (concurrent, lpus, delay), bursts in OVERHEAD.items():
                        await up.set_delay(delay)
                        out[f"overhead_{concurrent}x{lpus}"] = await alternate(
                            runs,
                            ["gateway", "minimal"],
                            lambda name, c=concurrent, n=lpus, d=delay, b=bursts[quick]: scenarios.overhead(
                                both[name], c, b, n, d
                            ),
                        )
                await up.set_delay(0.0)
                if "calls" in only:
                    count = SIZES["calls_sessions"][quick]
                    out["calls"] = await alternate(
                        runs, ["gateway", "minimal"], lambda name: scenarios.fanout_calls(both[name], count, 8, 30)
                    )
                if "polls" in only:
                    out["polls"] = await measure_polls(both, runs, quick, loop, logdir)
        if "redis" in only:
            out["redis"] = await measure_redis(upstream, up, runs, quick, loop, logdir, args.json_lib)
        if "workers" in only:
            out["workers"] = await measure_workers(upstream, runs, quick, logdir)
        if "memory" in only:
            with started("gateway", gateway_spec(upstream, logdir, loop, args.json_lib)) as gateway:
                t = scenarios.Target(upstream, gateway)
                try:
                    await scenarios.memory(t, 200)  # warm-up: buffers, pools, first allocations
                    out["memory"] = median_of(
                        [await scenarios.memory(t, SIZES["memory_sessions"][quick]) for _ in range(runs)]
                    )
                finally:
                    t.close()
        if "amplification" in only:
            patients, opens = SIZES["amplification"][quick]
            await up.set_delay(0.1)
            for window in (0.0, 60.0):
                spec = gateway_spec(upstream, logdir, loop, args.json_lib, session={"reuse_window": window})
                with started("gateway", spec) as gateway:
                    t = scenarios.Target(upstream, gateway)
                    try:
                        first = itertools.count(0, patients)
                        out[f"amplification_{int(window)}"] = median_of(
                            [await scenarios.amplification(t, patients, opens, 3.0, next(first)) for _ in range(runs)]
                        )
                    finally:
                        t.close()
        up.close()
    return out


async def finished_session(t: scenarios.Target, lpus: int = 5, patient: int = 0) -> tuple[str, bytes]:
    guid = await t.create(lpus, patient)
    return guid, await t.until_final(guid, lpus, patient)


async def measure_polls(
    both: dict[str, scenarios.Target], runs: int, quick: int, loop: str, logdir: str
) -> dict[str, dict[str, float]]:
    """Server CPU per poll of a finished 5-LPU session: gateway (memory store), minimal gateway,
    and a bare aiohttp handler returning the gateway's bytes."""
    count = SIZES["polls"][quick]
    headers = scenarios.auth(5, 0)
    paths: dict[str, str] = {}
    body = b""
    for name, t in both.items():
        guid, body_of = await finished_session(t)
        paths[name] = scenarios.POLL.format(guid)
        if name == "gateway":
            body = body_of
    body_path = Path(logdir) / "poll-body.json"
    body_path.write_bytes(body)
    with started("bare", {"body": str(body_path), "loop": loop}) as bare:
        clients = {"gateway": both["gateway"].client, "minimal": both["minimal"].client, "bare": LoadClient(bare.port)}
        procs = {"gateway": both["gateway"].server, "minimal": both["minimal"].server, "bare": bare}
        paths["bare"] = "/poll"
        try:
            return await alternate(
                runs,
                ["gateway", "minimal", "bare"],
                lambda name: scenarios.polls(
                    clients[name], [procs[name]], paths[name], headers, count, POLL_CLIENTS, 20
                ),
            )
        finally:
            clients["bare"].close()


async def measure_redis(
    upstream: Proc, up: scenarios.Target, runs: int, quick: int, loop: str, logdir: str, json_lib: str
) -> dict[str, dict[str, float]]:
    """CPU per poll on the Redis store (the gateway and its redis-server together), of a finished
    session and of one still in progress, beside the bare handler's."""
    count = SIZES["polls"][quick]
    with started_redis(logdir) as redis:
        # The call timeout and the deadline are raised so that a session stays in progress for the
        # whole in-progress figure; a poll's work does not depend on either.
        spec = gateway_spec(
            upstream,
            logdir,
            loop,
            json_lib,
            redis={"url": redis.redis_url},
            upstream={"call_timeout": scenarios.WAIT_LIMIT},
            session={"deadline": 2 * scenarios.WAIT_LIMIT},
        )
        with started("gateway", spec) as gateway:
            t = scenarios.Target(upstream, gateway)
            try:
                guid, body = await finished_session(t)
                # Sessions kept in progress: their patient's LPUs answer only after the figure.
                await up.set_delay(0.0, slow=[scenarios.token(5, 1)], slow_delay=scenarios.WAIT_LIMIT)
                body_path = Path(logdir) / "poll-body-redis.json"
                body_path.write_bytes(body)
                with (
                    started("bare", {"body": str(body_path), "loop": loop}) as bare,
                    started("minimal", minimal_spec(upstream, logdir, loop)) as minimal,
                ):
                    bare_client = LoadClient(bare.port)
                    small = scenarios.Target(upstream, minimal)
                    minimal_guid, _ = await finished_session(small)

                    async def measure(name: str) -> dict[str, float]:
                        if name == "bare":
                            return await scenarios.polls(bare_client, [bare], "/poll", scenarios.auth(5, 0), *load)
                        if name == "minimal":  # the targets' baseline: its memory-store poll
                            path = scenarios.POLL.format(minimal_guid)
                            return await scenarios.polls(small.client, [minimal], path, scenarios.auth(5, 0), *load)
                        if name == "finished":
                            path, headers = scenarios.POLL.format(guid), scenarios.auth(5, 0)
                        else:  # a new one each time: it stays in progress until its deadline
                            path, headers = scenarios.POLL.format(await t.create(5, 1)), scenarios.auth(5, 1)
                        return await scenarios.polls(t.client, [gateway, redis], path, headers, *load)

                    load = (count, POLL_CLIENTS, 10)
                    try:
                        return await alternate(runs, ["finished", "in_progress", "minimal", "bare"], measure)
                    finally:
                        bare_client.close()
                        small.close()
            finally:
                await up.set_delay(0.0)
                t.close()


async def measure_workers(upstream: Proc, runs: int, quick: int, logdir: str) -> dict[str, dict[str, float]]:
    """Polls/s and fan-out upstream calls/s (wall) of `gateway serve --workers N` on one Redis, at
    1 and 2 workers, as users start it (its own processes, access log to a file)."""
    config = Path(logdir) / "workers.toml"
    limits = "".join(f"{key} = {value!r}\n" for key, value in BENCH_LIMITS.items())
    config.write_text(f'[upstream]\nurl = "{upstream.url}"\n[limits]\n{limits}')
    count = SIZES["polls"][quick]
    with started_redis(logdir) as redis:
        env = {"GATEWAY_CONFIG": str(config), "GATEWAY_REDIS_URL": redis.redis_url}

        async def measure(name: str) -> dict[str, float]:
            with started_serve(int(name), env) as serve:
                t = scenarios.Target(upstream, serve)
                try:
                    guid, _ = await finished_session(t)
                    polls = await scenarios.polls(
                        t.client, [serve, redis], scenarios.POLL.format(guid), scenarios.auth(5, 0), count, 64, 10
                    )
                    calls = await scenarios.fanout_calls(t, SIZES["calls_sessions"][quick], 16, 20)
                finally:
                    t.close()
            return {"polls_per_s": polls["per_s"], "calls_per_s": calls["per_s"]}

        return await alternate(runs, ["1", "2"], measure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--runs", type=int, default=5, help="runs per figure; the table shows medians")
    parser.add_argument("--quick", action="store_true", help="smaller runs (a smoke test of the benchmark)")
    parser.add_argument(
        "--loop",
        type=_loops,
        default=[default_loop()],
        help="every process's event loop (default: the gateway's own, server.event_loop = auto); "
        "asyncio,uvloop measures every figure under each, one after the other, and compares them",
    )
    parser.add_argument(
        "--json", dest="json_lib", choices=("orjson", "stdlib"), default="orjson", help="the gateway's JSON library"
    )
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(FIGURES)}")
    parser.add_argument("--save", type=Path, help="also write the raw figures here (JSON)")
    args = parser.parse_args(argv)
    saved: dict[str, Any] = {}
    for loop in args.loop:
        machine = describe(loop, args.json_lib)
        machine["load_before"] = load_average()
        started_at = time.time()
        with tempfile.TemporaryDirectory(prefix="gateway-bench-") as logdir:
            results = asyncio.run(measure_all(argparse.Namespace(**{**vars(args), "loop": loop}), logdir))
        machine["load_after"] = load_average()
        machine["duration_s"] = round(time.time() - started_at)
        machine["runs"] = args.runs
        print(render(machine, results), flush=True)
        print()
        saved[loop] = {"machine": machine, "results": results}
    if len(saved) > 1:
        print(render_loops({loop: run["results"] for loop, run in saved.items()}))
    if args.save:
        args.save.write_text(json.dumps(saved if len(saved) > 1 else saved[args.loop[0]], indent=2))
    return 0


def _loops(text: str) -> list[str]:
    loops = [part.strip() for part in text.split(",") if part.strip()]
    if not loops or any(loop not in ("asyncio", "uvloop") for loop in loops):
        raise argparse.ArgumentTypeError("asyncio, uvloop, or both: asyncio,uvloop")
    return loops
