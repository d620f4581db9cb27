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


def summarize(raw: str, top: int) -> str:
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        samples += n
        frames = [f.split(" (", 1)[0] + " (" + f.rsplit("/", 1)[-1] if "/" in f else f for f in stack.split(";")]
        own[frames[-1]] += n
        for frame in set(frames):
            total[frame] += n
    out = [f"{samples} samples", "", "self %  function"]
    out += [f"{100 * n / samples:5.1f}  {name}" for name, n in own.most_common(top)]
    out += ["", "total %  function"]
    out += [f"{100 * n / samples:5.1f}  {name}" for name, n in total.most_common(top)]
    return "\n".join(out)


async def load(t: scenarios.Target, kind: str, seconds: float) -> None:
    if kind == "polls":
        guid = await t.create(5, 0)
        await t.until_final(guid, 5, 0)
        headers = scenarios.auth(5, 0)

        async def poll(_: int) -> None:
            await t.client.get(scenarios.POLL.format(guid), headers)

        await closed_loop(16, 10**7, seconds, poll)
    else:

        async def session(i: int) -> None:
            await t.until_final(await t.create(10, i % 200), 10, i % 200)

        await closed_loop(8, 10**7, seconds, session)


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
                command += ["--duration", str(int(args.seconds)), "--rate", "250"]
                # py-spy reads C frames only from a paused process; without them it need not pause it.
                command.append("--native" if args.native else "--nonblocking")
                spy = await asyncio.to_thread(
                    subprocess.Popen, command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
                )
                await asyncio.sleep(0.5)  # py-spy attaches
                await load(t, args.kind, args.seconds)
                _, err = await asyncio.to_thread(spy.communicate, timeout=60)
                if spy.returncode != 0:
                    raise RuntimeError(f"py-spy failed: {err.decode()[-500:]}")
            finally:
                t.close()
    if args.raw is not None:
        args.raw.write_text(out.read_text())
    return summarize(out.read_text(), args.top)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("kind", choices=("polls", "fanout"))
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--server", choices=("gateway", "minimal"), default="gateway", help="the process profiled")
    parser.add_argument("--native", action="store_true", help="C frames too (py-spy --native)")
    parser.add_argument("--raw", type=Path, help="also keep py-spy's raw stacks here (one line a stack)")
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
