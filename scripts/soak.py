"""Bounded soak on loopback: clients creating and polling sessions for N minutes against the
sandbox with 10 % faulty LPUs, then a report and an exit status (docs/reliability.md, "Soak").

    make soak                 # 2 minutes
    make soak MINUTES=1
    .venv/bin/python scripts/soak.py --minutes 1 --clients 30

The sandbox and the gateway each run on an event loop in a thread of their own (the gateway's
tasks are counted on its loop alone); the clients run on the main loop. Everything listens on
127.0.0.1 and stops by itself: the run is bounded in time, and each client in sessions.

Targets (exit 1 if any is missed): sessions lost 0, gateway 5xx 0, sessions past the deadline 0,
RSS growth after warm-up < 10 %, asyncio tasks of the gateway at rest back to the baseline.

The hostile mix (on by default; `--calm` turns it off) runs beside those clients, who are then
"the neighbours": a share of clients that loop creates with one token and never poll, idle and
slow connections held open for the whole run (re-opened when the gateway closes them), and one
patient whose LPU answers huge bodies of empty records. The targets above are the neighbours';
what the hostile clients got is reported apart (issue 11: no client degrades other patients).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from prometheus_client import CollectorRegistry

from gateway.app import create_app
from gateway.config import Config, LogConfig
from gateway.http import keys
from gateway.http.testing import ThreadedServer
from gateway.observability.logs import configure_logging
from gateway.sandbox.app import SANDBOX, Sandbox, create_sandbox_app
from gateway.sandbox.data import LpuKnobs, SandboxPatient, demo_lpu

FAULTS = [
    LpuKnobs(fault="hang"),
    LpuKnobs(fault="status", status=500),
    LpuKnobs(fault="status", status=503),
    LpuKnobs(fault="reset"),
    LpuKnobs(fault="reset_mid_body"),
    LpuKnobs(fault="drip", drip_interval=0.2),
    LpuKnobs(fault="invalid_json"),
    LpuKnobs(fault="wrong_type"),
    LpuKnobs(fault="oversize", oversize_bytes=120_000),
    LpuKnobs(delay=5.0),
]
DEADLINE = 3.0
TTL = 15.0
POLL_INTERVAL = 0.25
# A poll may see InProgress up to this long after the deadline only through clock skew between
# the gateway's view of the deadline and the client's (they share a clock here).
LATE = 0.5


# The huge-body patient's LPU: empty records by the thousand, just under the soak's body cap
# (`[{}, {}, ...]`, 4 bytes each as the sandbox writes them), each mapped to a whole
# default-filled record.
MAX_BODY = 100_000
HUGE_RECORDS = MAX_BODY // 4 - 1_000
IDLE_KINDS = ("silent", "kept_alive", "slowloris")


@dataclass
class Hostile:
    creates: Counter[str] = field(default_factory=Counter)  # by status
    huge_sessions: Counter[str] = field(default_factory=Counter)  # final LPU states of the huge patient
    idle_opened: int = 0
    idle_closed_by_gateway: Counter[str] = field(default_factory=Counter)


@dataclass
class Tally:
    created: int = 0
    completed: int = 0
    lost: int = 0
    past_deadline: int = 0
    server_errors: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    lpu_states: Counter[str] = field(default_factory=Counter)
    client_errors: Counter[str] = field(default_factory=Counter)
    # (when, seconds) from the create's answer until no LPU was InProgress, per completed
    # session, and per request (create or poll) until its answer; (when, what) per failure, so
    # that the figures can be told apart before and during the hostile mix.
    to_final: list[tuple[float, float]] = field(default_factory=list)
    request_seconds: list[tuple[float, float]] = field(default_factory=list)
    failures: list[tuple[float, str]] = field(default_factory=list)

    def failed(self, what: str) -> None:
        self.failures.append((time.monotonic(), what))


def p95(values: list[float]) -> float:
    return sorted(values)[int(len(values) * 0.95)] if values else 0.0


def phase_figures(tally: Tally, start: float, end: float) -> str:
    """The neighbours' p95s and failures for what happened in [start, end)."""
    finals = [v for t, v in tally.to_final if start <= t < end]
    requests = [v for t, v in tally.request_seconds if start <= t < end]
    failures = Counter(what for t, what in tally.failures if start <= t < end)
    return (
        f"{len(finals)} sessions, time to final p95 {p95(finals):.2f} s, request p95 {p95(requests) * 1000:.0f} ms "
        f"({len(requests)} requests), failures {dict(failures) or 0}"
    )


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def counts(registry: CollectorRegistry, counter: str, label: str) -> dict[str, int]:
    """A counter's non-zero totals by one label."""
    return {
        s.labels[label]: int(s.value)
        for m in registry.collect()
        if m.name == counter
        for s in m.samples
        if s.name.endswith("_total") and s.value
    }


def make_patients(count: int, lpus: int, faulty: float, rng: random.Random) -> list[SandboxPatient]:
    """`count` patients of `lpus` LPUs each; exactly round(faulty × all LPUs) of them, chosen at
    random, misbehave (the kinds of FAULTS in turn), the others answer within 10-300 ms."""
    total = count * lpus
    bad = sorted(rng.sample(range(total), round(total * faulty)))
    knobs = [LpuKnobs(delay=rng.uniform(0.01, 0.3)) for _ in range(total)]
    for n, index in enumerate(bad):
        knobs[index] = FAULTS[n % len(FAULTS)]
    return [
        SandboxPatient(f"soak-patient-{p}", [demo_lpu(i + 1, knobs[i]) for i in range(p * lpus, (p + 1) * lpus)])
        for p in range(count)
    ]


async def one_session(http: aiohttp.ClientSession, base: str, token: str, tally: Tally) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    asked = time.monotonic()
    async with http.get(f"{base}/api/v2/old/visit/tickets", headers=headers) as resp:
        tally.request_seconds.append((time.monotonic(), time.monotonic() - asked))
        if resp.status >= 500 and resp.status != 503:
            tally.server_errors += 1
            tally.failed(str(resp.status))
        if resp.status != 200:
            tally.refused[str(resp.status)] += 1
            await asyncio.sleep(POLL_INTERVAL)
            return
        guid = (await resp.json())["session"]
    created = time.monotonic()
    tally.created += 1
    while True:
        await asyncio.sleep(POLL_INTERVAL)
        asked = time.monotonic()
        async with http.get(f"{base}/api/v2/old/visit/tickets/{guid}", headers=headers) as resp:
            tally.request_seconds.append((time.monotonic(), time.monotonic() - asked))
            if resp.status >= 500:
                tally.server_errors += 1
                tally.failed(str(resp.status))
            if resp.status == 404:
                tally.lost += 1
                tally.failed("lost")
                return
            if resp.status != 200:
                tally.refused[str(resp.status)] += 1
                continue
            body = await resp.json()
        states = [e["state"] for e in body]
        if "InProgress" not in states:
            tally.completed += 1
            tally.to_final.append((time.monotonic(), time.monotonic() - created))
            tally.lpu_states.update(states)
            return
        if time.monotonic() - created > DEADLINE + LATE:
            tally.past_deadline += 1
            tally.failed("past_deadline")
            return


async def client(base: str, tokens: list[str], end: float, max_sessions: int, tally: Tally, seed: int) -> None:
    rng = random.Random(seed)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        for _ in range(max_sessions):
            if time.monotonic() >= end:
                return
            try:
                await one_session(http, base, rng.choice(tokens), tally)
            except (aiohttp.ClientError, TimeoutError) as exc:
                # A session whose answers stopped coming is lost to its app.
                tally.client_errors[type(exc).__name__] += 1
                tally.lost += 1
                tally.failed(type(exc).__name__)


async def load(base: str, tokens: list[str], seconds: float, clients: int, tally: Tally) -> None:
    end = time.monotonic() + seconds
    await asyncio.gather(*(client(base, tokens, end, 100_000, tally, seed) for seed in range(clients)))


def hostile_patients() -> tuple[SandboxPatient, SandboxPatient]:
    """The looping creator's patient (one ordinary LPU) and the huge-body patient."""
    looper = SandboxPatient("soak-hostile-looper", [demo_lpu(900)])
    huge = demo_lpu(901)
    huge.visits, huge.calls, huge.disps = [{}] * HUGE_RECORDS, [{}] * HUGE_RECORDS, [{}] * HUGE_RECORDS
    return looper, SandboxPatient("soak-hostile-huge", [huge])


async def loop_creates(base: str, token: str, end: float, hostile: Hostile) -> None:
    """Creates with one token as fast as the answers come, never polling; bounded in count and time."""
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        for _ in range(1_000_000):
            if time.monotonic() >= end:
                return
            try:
                async with http.get(
                    f"{base}/api/v2/old/visit/tickets", headers={"Authorization": f"Bearer {token}"}
                ) as r:
                    await r.read()
                    hostile.creates[str(r.status)] += 1
            except (aiohttp.ClientError, TimeoutError) as exc:
                hostile.creates[type(exc).__name__] += 1


async def huge_sessions(base: str, token: str, end: float, hostile: Hostile) -> None:
    """One client creating and polling the huge-body patient's sessions, as its app would."""
    tally = Tally()
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        for _ in range(10_000):
            if time.monotonic() >= end:
                break
            try:
                await one_session(http, base, token, tally)
            except (aiohttp.ClientError, TimeoutError) as exc:
                hostile.huge_sessions[type(exc).__name__] += 1
    hostile.huge_sessions.update(tally.lpu_states)
    hostile.huge_sessions.update({"past_deadline": tally.past_deadline} if tally.past_deadline else {})


async def hold_idle(port: int, kind: str, end: float, hostile: Hostile) -> None:
    """One idle connection of `kind`, re-opened each time the gateway closes it, until `end`."""
    requests = {"kept_alive": b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", "silent": b""}
    while time.monotonic() < end:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            hostile.idle_closed_by_gateway["connect_failed"] += 1
            await asyncio.sleep(1)
            continue
        hostile.idle_opened += 1
        try:
            if kind == "slowloris":
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            else:
                writer.write(requests[kind])
            while time.monotonic() < end:
                if kind == "slowloris":
                    writer.write(b"X")  # one byte of a header that never ends
                try:
                    data = await asyncio.wait_for(reader.read(65536), min(1.0, max(0.01, end - time.monotonic())))
                except TimeoutError:
                    continue
                if not data:
                    hostile.idle_closed_by_gateway[kind] += 1
                    break
        except ConnectionError:
            hostile.idle_closed_by_gateway[kind] += 1
        finally:
            writer.close()


async def hostile_load(
    base: str, port: int, seconds: float, creators: int, idle: int, huge_body: bool, hostile: Hostile
) -> None:
    end = time.monotonic() + seconds
    looper, huge = hostile_patients()
    await asyncio.gather(
        *(loop_creates(base, looper.token, end, hostile) for _ in range(creators)),
        *([huge_sessions(base, huge.token, end, hostile)] if huge_body else []),
        *(hold_idle(port, IDLE_KINDS[n % len(IDLE_KINDS)], end, hostile) for n in range(idle)),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--patients", type=int, default=40)
    parser.add_argument("--lpus", type=int, default=5, help="LPUs per patient")
    parser.add_argument("--faulty", type=float, default=0.10, help="share of faulty LPUs")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--calm", action="store_true", help="no hostile mix")
    parser.add_argument("--creators", type=float, default=0.2, help="hostile share of clients looping creates")
    parser.add_argument("--idle", type=int, default=150, help="hostile idle, kept-alive and slowloris connections")
    parser.add_argument("--no-huge-body", action="store_true", help="the hostile mix without the huge-body LPU")
    args = parser.parse_args(argv)
    if not 0 < args.minutes <= 60:
        parser.error("--minutes must be in (0, 60]")

    configure_logging(LogConfig(level="error", format="json"), stream=open("/dev/null", "w"))
    rng = random.Random(args.seed)
    patients = make_patients(args.patients, args.lpus, args.faulty, rng)
    n_lpus = sum(len(p.lpus) for p in patients)
    n_faulty = round(n_lpus * args.faulty)
    # The sandbox cancels a handler whose client went away, so a hang ends when the gateway's
    # call does instead of piling up for the sandbox's own 600 s limit.
    upstream, served = ThreadedServer(handler_cancellation=True), ThreadedServer()
    try:
        sandbox_app = create_sandbox_app(Sandbox(patients + ([] if args.calm else list(hostile_patients()))))
        upstream_port = upstream.serve(sandbox_app)
        config = Config().replace(
            upstream={"url": f"http://127.0.0.1:{upstream_port}", "call_timeout": 1.0, "max_body_bytes": MAX_BODY},
            session={"deadline": DEADLINE, "ttl": TTL},
            # 40 synthetic patients create about once a second each, far above a person's pace.
            limits={"create_rate_per_token": 20.0, "create_burst_per_token": 40},
        )
        app = create_app(config)
        port = served.serve(app)
        base = f"http://127.0.0.1:{port}"

        async def tasks_now() -> int:
            return len(asyncio.all_tasks())

        async def clear_call_log() -> None:
            sandbox_app[SANDBOX].calls.clear()  # the sandbox's record of calls grows per call

        baseline_tasks = served.run(tasks_now())
        gc.collect()
        rss_start = rss_bytes()
        seconds = args.minutes * 60
        warm_up = max(TTL + DEADLINE + 2, seconds * 0.25)
        tally = Tally()
        hostile = Hostile()
        creators = 0 if args.calm else round(args.clients * args.creators)
        idle = 0 if args.calm else args.idle
        print(
            f"soak: {args.minutes:g} min, {args.clients} clients, {args.patients} patients x {args.lpus} LPUs, "
            f"{n_faulty}/{n_lpus} LPUs faulty, deadline {DEADLINE:g} s, ttl {TTL:g} s, warm-up {warm_up:.0f} s",
            flush=True,
        )
        if not args.calm:
            print(
                f"soak: hostile mix: {creators} clients looping creates with one token, {idle} idle/slow "
                f"connections ({', '.join(IDLE_KINDS)}), "
                + (
                    "no huge-body LPU"
                    if args.no_huge_body
                    else f"one patient whose LPU answers 3 x {HUGE_RECORDS} empty records"
                ),
                flush=True,
            )

        samples: list[int] = []
        began = time.monotonic()
        attack_started: list[float] = []

        async def run_all() -> None:
            loader = asyncio.create_task(load(base, [p.token for p in patients], seconds, args.clients, tally))
            attack = None
            if not args.calm:
                # The first half is calm, the second hostile: the neighbours' figures of both, one run.
                await asyncio.sleep(seconds / 2)
                attack_started.append(time.monotonic())
                print(f"soak: hostile mix starts, {tally.created} sessions so far", flush=True)
                attack = asyncio.create_task(
                    hostile_load(base, port, seconds / 2, creators, idle, not args.no_huge_body, hostile)
                )
            await asyncio.sleep(max(0.0, warm_up - (time.monotonic() - began)))
            print(f"soak: warm-up done, {tally.created} sessions so far", flush=True)
            while not loader.done():
                upstream.run(clear_call_log())
                gc.collect()
                samples.append(rss_bytes())
                print(f"soak: {tally.created} sessions, RSS {samples[-1] / 2**20:.1f} MiB", flush=True)
                await asyncio.wait({loader}, timeout=5)
            await loader
            if attack is not None:
                await attack

        asyncio.run(run_all())
        fanout = app[keys.SESSIONS].fanout
        # At rest: every fan-out has ended and the owned background tasks that wind down after
        # them (the lease keeper, within a third of a lease) are gone; bounded in time.
        rest_deadline = time.monotonic() + DEADLINE + 5
        while (fanout.running or served.run(tasks_now()) > baseline_tasks) and time.monotonic() < rest_deadline:
            time.sleep(0.05)
        upstream.run(clear_call_log())
        gc.collect()
        rss_end = rss_bytes()
        rest_tasks = served.run(tasks_now())
        registry = app[keys.METRICS].registry
        outcomes = counts(registry, "gateway_lpu_outcomes", "reason")
        rejected = counts(registry, "gateway_rejected_requests", "limit")
        circuit_open = int(registry.get_sample_value("gateway_upstream_circuit_open_total") or 0)
    finally:
        served.stop()
        upstream.stop()

    # RSS swings by tens of MiB with the bodies in flight at the instant it is read, so growth
    # compares the mean of the first three samples after warm-up with the mean of the last three.
    window = max(1, min(3, len(samples) // 2))
    rss_warm = sum(samples[:window]) / window if samples else rss_end
    rss_last = sum(samples[-window:]) / window if samples else rss_end
    growth = (rss_last - rss_warm) / rss_warm
    checks = [
        ("sessions created", tally.created, tally.created > 0),
        ("sessions lost", tally.lost, tally.lost == 0),
        ("gateway 5xx (503 refusals excluded)", tally.server_errors, tally.server_errors == 0),
        ("sessions past the deadline", tally.past_deadline, tally.past_deadline == 0),
        (
            "RSS start / after warm-up / end (MiB)",
            f"{rss_start / 2**20:.1f} / {rss_warm / 2**20:.1f} / {rss_end / 2**20:.1f}"
            f" (growth after warm-up {growth:+.1%}, last samples {rss_last / 2**20:.1f})",
            growth < 0.10,
        ),
        ("gateway asyncio tasks baseline / at rest", f"{baseline_tasks} / {rest_tasks}", rest_tasks <= baseline_tasks),
    ]
    print(
        f"soak: sessions completed {tally.completed}; LPU states {dict(tally.lpu_states)}; "
        f"time to final p95 {p95([v for _, v in tally.to_final]):.2f} s; "
        f"request p95 {p95([v for _, v in tally.request_seconds]) * 1000:.0f} ms"
    )
    if attack_started:
        print(f"soak: neighbours before the hostile mix: {phase_figures(tally, began, attack_started[0])}")
        print(f"soak: neighbours during the hostile mix: {phase_figures(tally, attack_started[0], float('inf'))}")
        print(
            f"soak: hostile: creates by answer {dict(hostile.creates)}; huge-body patient's LPU states "
            f"{dict(hostile.huge_sessions)}; idle connections opened {hostile.idle_opened}, closed by the "
            f"gateway {dict(hostile.idle_closed_by_gateway)}"
        )
    print(f"soak: LPU outcomes by reason {outcomes}; circuit-open fast failures {circuit_open}")
    print(f"soak: refused by limits {dict(tally.refused) or 0} (metrics: {rejected or 0})")
    if tally.client_errors:
        print(f"soak: client errors {dict(tally.client_errors)}")
    failed = False
    for name, value, ok in checks:
        failed |= not ok
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {value}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
