"""A py-spy profile of the gateway process under one load: where its CPU goes.

    python -m bench.profile polls|fanout [--seconds 8] [--loop asyncio|uvloop] [--top 25]
                            [--server gateway|minimal] [--native] [--raw FILE]

Starts the fake upstream and the gateway (or the minimal gateway) as `python -m bench` does,
samples it with `py-spy record` (from the `bench` extra) while the load runs, and prints the
functions with the most samples: "self" (the function itself was running) and "total" (it was on the stack).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import scenarios
from bench.httpload import closed_loop
from bench.procs import started
from bench.run import gateway_spec, minimal_spec


def _function(frame: str) -> str:
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit('/', 1)[-1].split(':', 1)[0].rstrip(')')})" if where else name


def summarize(raw: str, top: int, us_per_unit: float, unit: str) -> str:
    """The frames with the most samples, each as a share of the samples and as µs of the
    process's CPU per `unit` (its share of the CPU measured over the same window)."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        samples += n
        # One row per function (its lines summed): "name (file.py)".
        frames = [_function(f) for f in stack.split(";")]
        own[frames[-1]] += n
        for frame in set(frames):
            total[frame] += n
    per = us_per_unit / samples
    out = [f"{samples} samples; process CPU {us_per_unit:.1f} µs per {unit}", "", f"self %  µs/{unit}  function"]
    out += [f"{100 * n / samples:5.1f}  {n * per:7.1f}  {name}" for name, n in own.most_common(top)]
    out += ["", f"total %  µs/{unit}  function"]
    out += [f"{100 * n / samples:5.1f}  {n * per:7.1f}  {name}" for name, n in total.most_common(top)]
    return "\n".join(out)


async def load(t: scenarios.Target, kind: str, seconds: float) -> int:
    """The load for `seconds`; how many requests (polls) or sessions (fanout) it made."""
    if kind == "polls":
        guid = await t.create(5, 0)
        await t.until_final(guid, 5, 0)
        headers = scenarios.auth(5, 0)

        async def poll(_: int) -> None:
            await t.client.get(scenarios.POLL.format(guid), headers)

        return (await closed_loop(16, 10**7, seconds, poll))[0]

    async def session(i: int) -> None:
        await t.until_final(await t.create(10, i % 200), 10, i % 200)

    return (await closed_loop(8, 10**7, seconds, session))[0]


async def main_async(args: argparse.Namespace, tmp: str) -> str:
    upstream_spec = {"groups": {"10": 0, "5": 0}, "patients": 200, "loop": args.loop}
    with started("upstream", upstream_spec) as upstream:
        spec = (
            gateway_spec(upstream, tmp, args.loop)
            if args.server == "gateway"
            else minimal_spec(upstream, tmp, args.loop)
        )
        with started(args.server, spec) as gateway:
            t = scenarios.Target(upstream, gateway)
            try:
                await load(t, args.kind, 1.0)  # warm-up
                out = Path(tmp) / "profile.txt"
                command = [args.py_spy, "record", "--pid", str(gateway.pid), "--format", "raw", "--output", str(out)]
                command += ["--duration", str(int(args.seconds) + 2), "--rate", "250"]
                # Native stacks need the process stopped while sampled; Python-only ones do not.
                command.append("--native" if args.native else "--nonblocking")
                spy = await asyncio.to_thread(
                    subprocess.Popen, command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
                )
                await asyncio.sleep(1.0)  # py-spy attaches
                cpu0 = gateway.cpu()
                done = await load(t, args.kind, args.seconds)
                cpu = gateway.cpu() - cpu0
                _, err = await asyncio.to_thread(spy.communicate, timeout=60)
                if spy.returncode != 0:
                    raise RuntimeError(f"py-spy failed: {err.decode()[-500:]}")
            finally:
                t.close()
    if args.raw:
        args.raw.write_text(out.read_text())
    unit = "poll" if args.kind == "polls" else "session"
    return summarize(out.read_text(), args.top, cpu / max(1, done) * 1e6, unit)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("kind", choices=("polls", "fanout"))
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--server", choices=("gateway", "minimal"), default="gateway", help="the process profiled")
    parser.add_argument("--native", action="store_true", help="C frames too (py-spy --native)")
    parser.add_argument("--raw", type=Path, help="also keep py-spy's raw stacks here")
    args = parser.parse_args()
    args.py_spy = shutil.which("py-spy", path=os.path.dirname(sys.executable)) or shutil.which("py-spy")
    if args.py_spy is None:
        print("py-spy not found: make bench-setup (or pip install -e '.[bench]')", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="gateway-profile-") as tmp:
        print(asyncio.run(main_async(args, tmp)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
