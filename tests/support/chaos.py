"""`make chaos`: three gateway replicas behind a real HAProxy, on Redis with Sentinel (a primary, a
replica, three sentinels), the sandbox as the hospitals' API, apps that create and poll every
second through HAProxy, and a fixed, seeded schedule of faults. At the end, a table of what
happened and the targets checked (docs/reliability.md, "Chaos").

Everything listens on 127.0.0.1 (free ports) and lives in one temp directory; the run is bounded
in time (MINUTES plus a bounded wind-down) and every process it started is stopped at the end.

    .venv/bin/python scripts/chaos.py --minutes 5                # what `make chaos` runs
    .venv/bin/python scripts/chaos.py --short                    # the test's two-minute run

The sandbox runs in a process of its own (`python -m tests.support.chaos sandbox ...`), built from
the same seed as the driver's apps, so the two agree on tokens and hospitals.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import redis

from gateway.sandbox.data import LpuKnobs, SandboxLpu, SandboxPatient, demo_lpu
from tests.support.haproxy import Backend, HAProxy
from tests.support.netutil import free_port, serve_env
from tests.support.redis_server import RedisSentinel
from tests.support.replicas import _toml_table

ROOT = Path(__file__).resolve().parents[2]
TICKETS = "/api/v2/old/visit/tickets"

# --- the gateways' configuration: config/production.example.toml, loopback, and what differs ----
DEADLINE = 25.0  # session.deadline as in production
CALL_TIMEOUT = 8.0  # upstream.call_timeout as in production
FLUSH_INTERVAL = 1.0  # migration.flush_interval (the default)
# Lowered from the default 4096 so that the idle flood reaching the cap costs this 2-core machine
# a thousand sockets, not four.
MAX_CONNECTIONS = 1024
SESSION_TTL = 120.0
# Priorities (nice): the parts that stand for other machines (HAProxy, Redis, the sentinels, the
# sandbox, the apps) above the replicas, the replicas above other jobs sharing this machine, a
# replica that is starting below everything until it is ready. As root; without, best effort.
PLATFORM_NICE = -10
REPLICA_NICE = -5
STARTING_NICE = 5


def gateway_config(metrics_port: int) -> dict[str, dict[str, Any]]:
    """config/production.example.toml, on loopback; the differences are commented."""
    return {
        "server": {
            "drain_seconds": 5.0,
            "shutdown_timeout": 20.0,
            "max_connections": MAX_CONNECTIONS,  # 4096 by default (see above)
        },
        "upstream": {"call_timeout": CALL_TIMEOUT, "max_connections": 512},
        "session": {
            "deadline": DEADLINE,
            # 900 s in production: 120 s, so that what lives as long as a session (the finished
            # cache, the per-session poll buckets, the token quotas) reaches its steady state
            # within the run and RSS after warm-up can be judged.
            "ttl": SESSION_TTL,
            "max_sessions": 200000,
            "require_token_on_poll": False,
            "reuse_window": 30.0,
        },
        # Production's 0.5 s: on this shared 2-core machine (load average 7-11 from other jobs in
        # these runs) a round trip stalls past 0.5 s a few times a minute, each marking a
        # replica's store down for a second; 1.0 s keeps the 5xx to the faults the schedule sends.
        "redis": {"timeout": 1.0},
        "limits": {"sessions_in_flight": 10000, "breaker_cooldown": 15.0},
        "log": {"level": "info", "format": "json"},
        "rollout": {"mode": "legacy"},
        # Production listens on 0.0.0.0; here everything is on loopback.
        "metrics": {"host": "127.0.0.1", "port": metrics_port},
    }


# --- the world: hospitals (LPUs) and patients, from the seed ------------------------------------
HOSPITALS = 40
PATIENTS = 150
LOOPER = "chaos-looper"


@dataclass(frozen=True)
class World:
    hospitals: list[SandboxLpu]
    patients: list[SandboxPatient]
    kinds: dict[str, str]  # LPU GUID → "fast", "slow", "failing: ..."

    def guid(self, n: int) -> str:
        return str(self.hospitals[n].info["guid"])


def build_world(seed: int) -> World:
    """40 hospitals shared by 150 patients (1-10 each, mostly few): 30 answer in 20-300 ms, 6 in
    1-4 s, 4 fail (500, 503 on every attempt, a reset, invalid JSON). One more hospital serves the
    looping token alone. A hospital's LPU object is shared by its patients, so a knob changed
    through PUT /sandbox/lpus/<guid> changes it for all of them."""
    rng = random.Random(seed)
    hospitals, kinds = [], {}
    failing = [
        ("failing: 500", LpuKnobs(fault="status", status=500)),
        ("failing: 503", LpuKnobs(fault="status", status=503)),
        ("failing: reset", LpuKnobs(fault="reset")),
        ("failing: invalid JSON", LpuKnobs(fault="invalid_json")),
    ]
    for n in range(HOSPITALS):
        if n < 30:
            kind, knobs = "fast", LpuKnobs(delay=round(rng.uniform(0.02, 0.3), 3))
        elif n < 36:
            kind, knobs = "slow", LpuKnobs(delay=round(rng.uniform(1.0, 4.0), 2))
        else:
            kind, knobs = failing[n - 36]
        lpu = demo_lpu(100 + n, knobs)
        hospitals.append(lpu)
        kinds[lpu.info["guid"]] = kind
    weights = [30, 22, 15, 10, 7, 5, 4, 3, 2, 2]  # 1..10 LPUs
    patients = []
    for p in range(PATIENTS):
        count = rng.choices(range(1, 11), weights)[0]
        patients.append(SandboxPatient(f"chaos-patient-{seed}-{p}", rng.sample(hospitals, count)))
    looper_lpu = demo_lpu(99, LpuKnobs(delay=0.02))
    kinds[looper_lpu.info["guid"]] = "looper's"
    patients.append(SandboxPatient(LOOPER, [looper_lpu]))
    return World([*hospitals, looper_lpu], patients, kinds)


# --- the schedule ---------------------------------------------------------------------------------
# Planned seconds each fault takes (the observed window is what the table uses).
PLANNED = {
    "kill_replica": 10.0,
    "hospital_hang": 23.0,
    "idle_flood": 15.0,
    "token_loop": 15.0,
    "redis_pause": 6.0,
    "lpu_over_caps": 15.0,
    "rolling_restart": 35.0,
    "redis_failover": 15.0,
}
FULL = list(PLANNED)
SHORT = ["kill_replica", "idle_flood", "rolling_restart", "redis_failover"]
MIN_GAP = 8.0
# Faults whose target is every request (the store): judged by the 5xx window, not by the
# neighbours' p95 (there are no neighbours: everyone's polls need Redis).
REDIS_FAULTS = ("redis_pause", "redis_failover")


@dataclass
class Step:
    fault: str
    at: float  # seconds from the run's start
    target: str = ""  # replica name, hospital GUID...


def make_schedule(faults: list[str], seconds: float, warm_up: float, tail: float, seed: int) -> list[Step]:
    rng = random.Random(seed)
    busy = sum(PLANNED[f] for f in faults)
    gap = (seconds - warm_up - tail - busy) / len(faults)
    if gap < MIN_GAP:
        need = warm_up + tail + busy + MIN_GAP * len(faults)
        raise ValueError(f"{len(faults)} faults need at least {math.ceil(need / 60 * 10) / 10} minutes")
    steps, at = [], warm_up
    for fault in faults:
        # Each fault starts somewhere in the first 60 % of its gap: the quiet time before it is
        # seeded, and the whole schedule still ends before the tail.
        lead = gap * rng.uniform(0.3, 0.6)
        steps.append(Step(fault, round(at + lead, 1)))
        at += gap + PLANNED[fault]
    return steps


# --- records ----------------------------------------------------------------------------------------
@dataclass
class Answer:
    t0: float
    t1: float
    kind: str  # create, poll, loop, direct
    status: int  # 0: no HTTP answer
    error: str = ""
    served_by: str = ""
    app: int = -1
    code: str = ""  # message_code of an error answer


@dataclass
class Held:
    """A session an app holds, as the app saw it."""

    guid: str
    token: str
    created: float  # when the create's answer arrived
    final_at: float | None = None
    states: list[str] | None = None
    lost: bool = False
    past_deadline: bool = False
    changed: int = 0  # terminal LPU states seen to change


@dataclass
class FaultRecord:
    fault: str
    target: str
    start: float
    end: float = 0.0
    fired: bool = False
    evidence: dict[str, Any] = field(default_factory=dict)


@dataclass
class Sample:
    t: float
    replica: str
    pid: int
    rss_mib: float
    connections: float


class Recorder:
    def __init__(self) -> None:
        self.answers: list[Answer] = []
        self.sessions: list[Held] = []
        self.faults: list[FaultRecord] = []
        self.samples: list[Sample] = []
        self.haproxy_states: list[tuple[float, dict[str, str]]] = []
        # pid → (replica, metric samples of its last scrape)
        self.scrapes: dict[int, tuple[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]] = {}

    def total(self, name: str, **labels: str) -> float:
        """A counter summed over every replica process that ever ran (its last scrape)."""
        want = set(labels.items())
        return sum(
            v
            for _, metrics in self.scrapes.values()
            for (n, lab), v in metrics.items()
            if n == name and want <= set(lab)
        )


# --- replicas -------------------------------------------------------------------------------------
class Replica:
    """One `gateway serve` process, restartable on its own ports (as an orchestrator restarts a
    pod). A new process starts at STARTING_NICE and is raised to REPLICA_NICE once ready: on this one machine its
    start-up CPU must not stand for the neighbours' latency that a separate node would not see."""

    def __init__(self, name: str, directory: Path, env: dict[str, str]) -> None:
        self.name = name
        self.port = free_port()
        self.metrics_port = free_port()
        self.directory = directory
        self.config = directory / f"gateway-{name}.toml"
        self.config.write_text("".join(_toml_table(k, v) for k, v in gateway_config(self.metrics_port).items()))
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.generation = 0
        self.exits: list[int] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.directory / f"replica-{self.name}-{self.generation}.log"

    def spawn(self) -> None:
        self.generation += 1
        env = self.env | serve_env(self.port, self.metrics_port, GATEWAY_CONFIG=str(self.config))
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.support.serve_dumping"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
        # Set from here, not in a preexec_fn: with one, Popen waits for the child's exec, and a
        # child at low priority on a loaded machine kept the apps' loop (their clocks) waiting.
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, self.proc.pid, STARTING_NICE)

    async def ready(self, http: aiohttp.ClientSession, within: float = 30.0) -> None:
        end = time.monotonic() + within
        assert self.proc is not None
        while True:
            try:
                async with http.get(f"{self.url}/readyz") as resp:
                    if resp.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"replica {self.name} exited: {self.log_path.read_text()[-2000:]}")
            if time.monotonic() > end:
                raise RuntimeError(f"replica {self.name} not ready after {within:.0f} s")
            await asyncio.sleep(0.1)
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, self.proc.pid, REPLICA_NICE)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def exited(self, within: float = 40.0) -> int:
        assert self.proc is not None
        end = time.monotonic() + within
        while self.proc.poll() is None:
            if time.monotonic() > end:
                # What it is waiting for goes to its log (tests/support/serve_dumping.py).
                self.proc.send_signal(signal.SIGUSR1)
                await asyncio.sleep(1.0)
                self.proc.kill()
                self.proc.wait(10)
                raise RuntimeError(
                    f"replica {self.name} did not exit within {within:.0f} s (its tasks: {self.log_path})"
                )
            await asyncio.sleep(0.05)
        self.exits.append(self.proc.returncode)
        return self.proc.returncode

    def stop_now(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def log_events(self, name: str) -> list[dict[str, Any]]:
        found = []
        for gen in range(1, self.generation + 1):
            path = self.directory / f"replica-{self.name}-{gen}.log"
            for line in path.read_text().splitlines():
                with contextlib.suppress(ValueError):
                    record = json.loads(line)
                    if record.get("event") == name:
                        found.append(record)
        return found

    def problem_lines(self) -> list[str]:
        problems = []
        for gen in range(1, self.generation + 1):
            path = self.directory / f"replica-{self.name}-{gen}.log"
            for line in path.read_text().splitlines():
                try:
                    level = json.loads(line).get("level")
                except ValueError:
                    level = "not json"
                if level not in ("debug", "info", "warning"):
                    problems.append(f"{self.name}#{gen}: {line[:300]}")
        return problems


# The series the run reads (a prefix match on the exposition's lines): parsing all of /metrics
# with prometheus_client's parser costs the apps' event loop ~0.1 s per replica, which the apps
# would then measure as the gateways' latency.
SCRAPED = (
    "gateway_client_connections ",
    "gateway_store_up ",
    "gateway_idle_connections_closed_total ",
    "gateway_lpu_outcomes_total{",
    "gateway_store_state_changes_total{",
    "gateway_session_takeovers_total{",
)


def parse_metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The SCRAPED series of a Prometheus text exposition: (name, sorted labels) → value. Label
    values here are plain words (closed sets), so a split on commas and quotes is exact."""
    found = {}
    for line in text.splitlines():
        if not line.startswith(SCRAPED):
            continue
        series, _, value = line.rpartition(" ")
        name, _, rest = series.partition("{")
        labels = []
        for pair in filter(None, rest.rstrip("}").split(",")):
            key, _, quoted = pair.partition("=")
            labels.append((key, quoted.strip('"')))
        found[(name, tuple(sorted(labels)))] = float(value)
    return found


def rss_mib(pid: int) -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


# --- the run ------------------------------------------------------------------------------------
@dataclass
class Plan:
    minutes: float
    seed: int = 22
    faults: list[str] = field(default_factory=lambda: list(FULL))
    apps: int = 30
    warm_up: float = 30.0
    tail: float = 25.0


class Chaos:
    def __init__(self, plan: Plan, directory: Path) -> None:
        self.plan = plan
        self.dir = directory
        self.world = build_world(plan.seed)
        self.rec = Recorder()
        self.rng = random.Random(plan.seed)
        self.t0 = 0.0
        self.stop_load = 0.0
        self.sandbox_port = free_port()
        self.sandbox: subprocess.Popen[bytes] | None = None
        (directory / "redis").mkdir()
        self.redis = RedisSentinel(directory / "redis", sentinels=3, down_after_ms=5000, failover_timeout_ms=10000)
        self.replicas: list[Replica] = []
        self.haproxy: HAProxy | None = None
        self.hostile_tokens = {LOOPER}
        self.kills: list[tuple[float, str]] = []  # (when, replica) of SIGKILLs
        self.failover_at: float | None = None
        self.stalls: list[tuple[float, float]] = []  # (from, to) when the apps' own loop lagged

    def now(self) -> float:
        return time.monotonic() - self.t0

    # -- start and stop --
    def start_processes(self) -> None:
        log = open(self.dir / "sandbox.log", "wb")
        self.sandbox = subprocess.Popen(
            [sys.executable, "-m", "tests.support.chaos", "sandbox", "--seed", str(self.plan.seed),
             "--port", str(self.sandbox_port)],
            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
        )  # fmt: skip
        self.redis.start()
        env = {"GATEWAY_UPSTREAM_URL": f"http://127.0.0.1:{self.sandbox_port}", "GATEWAY_REDIS_URL": self.redis.url}
        self.replicas = [Replica(name, self.dir, env) for name in ("a", "b", "c")]
        for replica in self.replicas:
            replica.spawn()
        self.haproxy = HAProxy(self.dir, [Backend(r.name, r.port) for r in self.replicas])

    def platform_priority(self) -> None:
        """HAProxy, Redis, the sentinels, the sandbox (the hospitals) and the apps stand for other
        machines: at PLATFORM_NICE (as root; best effort otherwise) the gateways' CPU on this one machine
        does not delay them, nor the apps' own clocks that measure the gateways."""
        procs = [self.sandbox, self.haproxy.proc if self.haproxy else None]
        procs += [s.proc for s in (self.redis.primary, self.redis.replica, *self.redis.sentinels)]
        for proc in [*procs, None]:
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, proc.pid if proc is not None else 0, PLATFORM_NICE)

    def stop_processes(self) -> None:
        for replica in self.replicas:
            replica.stop_now()
        if self.haproxy is not None:
            self.haproxy.stop()
        self.redis.stop()
        if self.sandbox is not None and self.sandbox.poll() is None:
            self.sandbox.kill()
            self.sandbox.wait(10)

    async def run(self) -> dict[str, Any]:
        seconds = self.plan.minutes * 60
        schedule = make_schedule(self.plan.faults, seconds, self.plan.warm_up, self.plan.tail, self.plan.seed)
        self.pick_targets(schedule)
        self.start_processes()
        assert self.haproxy is not None
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            await self.wait_sandbox(http)
            await asyncio.gather(*(r.ready(http) for r in self.replicas))
            self.haproxy.start()
            self.platform_priority()
            await self.until(lambda: all(s == "UP" for s in self.haproxy.server_states().values()), 15, "HAProxy UP")
            self.t0 = time.monotonic()
            self.stop_load = seconds - self.plan.tail
            print(
                f"chaos: {self.plan.minutes:g} min, seed {self.plan.seed}, {self.plan.apps} apps, "
                f"{len(self.world.patients) - 1} patients over {HOSPITALS} hospitals, HAProxy {self.haproxy.url}, "
                f"replicas {', '.join(f'{r.name}:{r.port}' for r in self.replicas)}, Redis {self.redis.url}",
                flush=True,
            )
            print("chaos: schedule " + ", ".join(f"{s.fault}@{s.at:.0f}s({s.target})" for s in schedule), flush=True)
            monitor = asyncio.create_task(self.monitor(http))
            lag = asyncio.create_task(self.loop_lag())
            apps = [asyncio.create_task(self.app(n)) for n in range(self.plan.apps)]
            faults = asyncio.create_task(self.inject(http, schedule))
            try:
                await faults
                await asyncio.gather(*apps)
            finally:
                for task in apps:
                    task.cancel()
                faults.cancel()
            calls = await self.sandbox_calls(http)
            # A graceful stop of every replica: each flushes its ledger counts (as on SIGTERM).
            for replica in self.replicas:
                replica.signal(signal.SIGTERM)
            await asyncio.gather(*(r.exited() for r in self.replicas))
            monitor.cancel()
            lag.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await monitor
            ledger = self.read_ledger()
        return self.report(schedule, calls, ledger)

    async def wait_sandbox(self, http: aiohttp.ClientSession) -> None:
        async def up() -> bool:
            try:
                async with http.get(f"http://127.0.0.1:{self.sandbox_port}/sandbox/calls") as resp:
                    return resp.status == 200
            except aiohttp.ClientError:
                return False

        await self.until_async(up, 20, "sandbox up")

    @staticmethod
    async def until(check: Callable[[], bool], within: float, what: str) -> None:
        end = time.monotonic() + within
        while not check():
            if time.monotonic() > end:
                raise RuntimeError(f"{what}: not within {within:.0f} s")
            await asyncio.sleep(0.1)

    @staticmethod
    async def until_async(check: Callable[[], Awaitable[bool]], within: float, what: str) -> bool:
        end = time.monotonic() + within
        while not await check():
            if time.monotonic() > end:
                raise RuntimeError(f"{what}: not within {within:.0f} s")
            await asyncio.sleep(0.1)
        return True

    def pick_targets(self, schedule: list[Step]) -> None:
        fast = [g for g, k in self.world.kinds.items() if k == "fast"]
        picked = self.rng.sample(fast, 2)
        for step in schedule:
            if step.fault in ("kill_replica", "idle_flood"):
                step.target = self.rng.choice("abc")
            elif step.fault == "hospital_hang":
                step.target = picked[0]
            elif step.fault == "lpu_over_caps":
                step.target = picked[1]
            elif step.fault == "rolling_restart":
                step.target = "a,b,c"
            elif step.fault == "token_loop":
                step.target = LOOPER
            else:
                step.target = "primary"

    # -- the apps --
    async def app(self, n: int) -> None:
        """A phone: create, poll every second until no LPU is InProgress, a pause, again. Each
        session is a patient drawn from the seed; bounded by the run's end."""
        assert self.haproxy is not None
        rng = random.Random(self.plan.seed * 1000 + n)
        patients = [p for p in self.world.patients if p.token not in self.hostile_tokens]
        base = self.haproxy.url
        await asyncio.sleep(rng.uniform(0, 3))
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            while self.now() < self.stop_load:
                token = rng.choice(patients).token
                answer, body = await self.request(http, f"{base}{TICKETS}", token, "create", n)
                if answer.status != 200 or not isinstance(body, dict):
                    await asyncio.sleep(1.0)
                    continue
                held = Held(body["session"], token, answer.t1)
                self.rec.sessions.append(held)
                await self.follow(http, base, held, n)
                await asyncio.sleep(rng.uniform(1.0, 4.0))

    async def follow(self, http: aiohttp.ClientSession, base: str, held: Held, n: int) -> None:
        terminal: dict[int, str] = {}
        give_up = held.created + DEADLINE + 15.0  # bounded: an app stops polling at some point
        while self.now() < give_up:
            await asyncio.sleep(1.0)
            answer, body = await self.request(http, f"{base}{TICKETS}/{held.guid}", held.token, "poll", n)
            if answer.status == 404:
                held.lost = True
                return
            if answer.status != 200 or not isinstance(body, list):
                continue
            states = [entry.get("state") for entry in body]
            for i, state in enumerate(states):
                if i in terminal and terminal[i] != state:
                    held.changed += 1
                if state != "InProgress":
                    terminal.setdefault(i, state)
            late = answer.t1 - held.created > DEADLINE + 1.0
            if "InProgress" not in states:
                held.final_at, held.states = answer.t1, states
                return
            if late:
                held.past_deadline = True
        if held.final_at is None and not held.lost:
            held.past_deadline = True

    async def request(
        self, http: aiohttp.ClientSession, url: str, token: str, kind: str, app: int
    ) -> tuple[Answer, Any]:
        t0 = time.monotonic()
        try:
            async with http.get(url, headers={"Authorization": f"Bearer {token}"}) as resp:
                raw = await resp.read()
                answer = Answer(t0 - self.t0, time.monotonic() - self.t0, kind, resp.status,
                                served_by=resp.headers.get("X-Served-By", ""), app=app)  # fmt: skip
                body: Any = None
                with contextlib.suppress(ValueError):
                    body = json.loads(raw)
                if resp.status != 200 and isinstance(body, dict):
                    answer.code = str(body.get("message_code", ""))
        except (aiohttp.ClientError, TimeoutError) as exc:
            answer, body = Answer(t0 - self.t0, time.monotonic() - self.t0, kind, 0, type(exc).__name__, app=app), None
        self.rec.answers.append(answer)
        return answer, body

    # -- watching --
    async def monitor(self, http: aiohttp.ClientSession) -> None:
        """Every second: each replica's metrics and RSS, HAProxy's view of its servers."""
        assert self.haproxy is not None
        tick = 0
        while True:
            t = self.now()
            with contextlib.suppress(OSError):
                self.rec.haproxy_states.append((t, self.haproxy.server_states()))
            if tick % 2 == 0:
                await asyncio.gather(*(self.scrape(http, r, t) for r in self.replicas))
            tick += 1
            await asyncio.sleep(1.0)

    async def loop_lag(self) -> None:
        """The apps' clock is this process's event loop: when it runs late (this machine is
        shared, and the process was not scheduled), every request in flight is timed late too,
        whatever the gateways did. Lags over STALL are recorded, and the polls they overlap are
        left out of the p95 comparison (and counted)."""
        while True:
            before = self.now()
            await asyncio.sleep(0.02)
            after = self.now()
            if after - before > 0.02 + STALL:
                self.stalls.append((before, after))

    async def scrape(self, http: aiohttp.ClientSession, replica: Replica, t: float) -> None:
        proc = replica.proc
        if proc is None or proc.poll() is not None:
            return
        try:
            async with http.get(f"http://127.0.0.1:{replica.metrics_port}/metrics") as resp:
                text = await resp.text()
        except (aiohttp.ClientError, TimeoutError):
            return
        metrics = parse_metrics(text)
        self.rec.scrapes[proc.pid] = (replica.name, metrics)
        connections = metrics.get(("gateway_client_connections", ()), 0.0)
        self.rec.samples.append(Sample(t, replica.name, proc.pid, rss_mib(proc.pid), connections))

    async def scrape_now(self, http: aiohttp.ClientSession) -> None:
        await asyncio.gather(*(self.scrape(http, r, self.now()) for r in self.replicas))

    async def sandbox_calls(self, http: aiohttp.ClientSession) -> dict[tuple[str, str], int]:
        async with http.get(f"http://127.0.0.1:{self.sandbox_port}/sandbox/calls") as resp:
            return {(row["lpu"], row["method"]): row["calls"] for row in await resp.json()}

    async def knobs(self, http: aiohttp.ClientSession, guid: str, changes: dict[str, Any]) -> None:
        url = f"http://127.0.0.1:{self.sandbox_port}/sandbox/lpus/{guid}"
        async with http.put(url, json=changes) as resp:
            assert resp.status == 200, await resp.text()

    def replica(self, name: str) -> Replica:
        return next(r for r in self.replicas if r.name == name)

    def haproxy_saw(self, name: str, state: str, since: float) -> bool:
        return any(t >= since and states.get(name, "").startswith(state) for t, states in self.rec.haproxy_states)

    # -- the faults --
    async def inject(self, http: aiohttp.ClientSession, schedule: list[Step]) -> None:
        handlers = {
            "kill_replica": self.kill_replica,
            "hospital_hang": self.hospital_hang,
            "idle_flood": self.idle_flood,
            "token_loop": self.token_loop,
            "redis_pause": self.redis_pause,
            "lpu_over_caps": self.lpu_over_caps,
            "rolling_restart": self.rolling_restart,
            "redis_failover": self.redis_failover,
        }
        for step in schedule:
            await asyncio.sleep(max(0.0, step.at - self.now()))
            record = FaultRecord(step.fault, step.target, self.now())
            self.rec.faults.append(record)
            print(f"chaos: {record.start:6.1f}s {step.fault} ({step.target})", flush=True)
            try:
                await handlers[step.fault](http, record)
            except Exception as exc:  # the run goes on; the fault is reported as not having fired
                record.evidence["error"] = f"{type(exc).__name__}: {exc}"
                print(f"chaos: {step.fault} failed: {record.evidence['error']}", flush=True)
            if not record.end:
                record.end = self.now()
            # A fault that ran long pushes the end of the load out: the apps go on 20 s past the
            # last fault, so that its recovery is measured with traffic (bounded: each fault is).
            self.stop_load = max(self.stop_load, self.now() + 20.0)
            print(
                f"chaos: {record.end:6.1f}s {step.fault} over ({record.end - record.start:.1f} s), "
                f"fired: {record.fired}, {record.evidence}",
                flush=True,
            )

    async def kill_replica(self, http: aiohttp.ClientSession, record: FaultRecord) -> None:
        replica = self.replica(record.target)
        assert replica.proc is not None
        old_pid = replica.proc.pid
        await self.scrape_now(http)
        self.kills.append((self.now(), replica.name))
        replica.signal(signal.SIGKILL)
        code = await replica.exited(10)
        down = self.now()
        await self.until(lambda: self.haproxy_saw(replica.name, "DOWN", down - 1), 10, "HAProxy marks it DOWN")
        seen_down = self.now()
        await asyncio.sleep(2.0)  # the orchestrator's restart delay
        replica.spawn()
        await replica.ready(http)
        assert replica.proc is not None
        restarted = self.now()
        await self.until(lambda: self.haproxy_saw(replica.name, "UP", restarted), 10, "HAProxy marks it UP")
        record.fired = code == -signal.SIGKILL
        record.evidence = {
            "exit": code,
            "pid": f"{old_pid}->{replica.proc.pid}",
            "haproxy_down_after_s": round(seen_down - record.start, 1),
            "back_up_after_s": round(self.now() - record.start, 1),
        }

    async def hospital_hang(self, http: aiohttp.ClientSession, record: FaultRecord) -> None:
        guid = record.target
        before = self.rec.total("gateway_lpu_outcomes_total", reason="timeout") + self.rec.total(
            "gateway_lpu_outcomes_total", reason="circuit_open"
        )
        calls0 = sum(n for (g, _), n in (await self.sandbox_calls(http)).items() if g == guid)
        original = {"delay": next(lpu.knobs.delay for lpu in self.world.hospitals if lpu.info["guid"] == guid)}
        await self.knobs(http, guid, {"fault": "hang", "delay": 0.0})
        await asyncio.sleep(PLANNED["hospital_hang"] - CALL_TIMEOUT)
        await self.knobs(http, guid, {"fault": "none"} | original)
        await asyncio.sleep(CALL_TIMEOUT)  # calls already hanging end at the call timeout
        await self.scrape_now(http)
        calls = sum(n for (g, _), n in (await self.sandbox_calls(http)).items() if g == guid) - calls0
        failed = (
            self.rec.total("gateway_lpu_outcomes_total", reason="timeout")
            + self.rec.total("gateway_lpu_outcomes_total", reason="circuit_open")
            - before
        )
        record.fired = calls > 0 and failed > 0
        record.evidence = {"calls_to_it": calls, "lpus_failed_timeout_or_circuit_open": int(failed)}

    async def idle_flood(self, http: aiohttp.ClientSession, record: FaultRecord) -> None:
        """Kept-alive idle connections straight to one replica, up to its connection cap, held
        for the window by a process of their own (another machine): HAProxy's health checks (a
        new connection each) and a new patient's create on that replica must still be served."""
        replica = self.replica(record.target)
        await self.scrape_now(http)
        closed0 = self.rec.total("gateway_idle_connections_closed_total")
        hold = PLANNED["idle_flood"]
        flood = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.support.chaos", "flood", "--port", str(replica.port),
            "--count", str(MAX_CONNECTIONS), "--hold", str(hold),
            stdout=asyncio.subprocess.PIPE, cwd=ROOT,
        )  # fmt: skip
        assert flood.stdout is not None
        opened = json.loads(await asyncio.wait_for(flood.stdout.readline(), 60))
        await asyncio.sleep(1.0)
        await self.scrape_now(http)
        peak = max((s.connections for s in self.rec.samples if s.replica == replica.name), default=0)
        # A new patient straight to the full replica.
        patient = self.rng.choice([p for p in self.world.patients if p.token not in self.hostile_tokens])
        direct, _ = await self.request(http, f"{replica.url}{TICKETS}", patient.token, "direct", -1)
        held = json.loads(await asyncio.wait_for(flood.stdout.readline(), hold + 60))
        await flood.wait()
        await self.scrape_now(http)
        reclaimed = self.rec.total("gateway_idle_connections_closed_total") - closed0
        stayed_up = not self.haproxy_saw(replica.name, "DOWN", record.start)
        record.fired = opened["answered"] >= MAX_CONNECTIONS * 0.9 and reclaimed > 0
        record.evidence = {
            "connections_opened": opened["opened"],
            "answered_200": opened["answered"],
            "replica_connections_peak": int(peak),
            "closed_by_gateway": held["closed"],
            "idle_closed_metric": int(reclaimed),
            "direct_create": f"{direct.status} {direct.code}".strip(),
            "direct_create_s": round(direct.t1 - direct.t0, 3),
            "haproxy_kept_it_up": stayed_up,
        }

    async def token_loop(self, http: aiohttp.ClientSession, record: FaultRecord) -> None:
        assert self.haproxy is not None
        statuses: Counter[int] = Counter()
        end = time.monotonic() + PLANNED["token_loop"]
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as own:
            for _ in range(100_000):
                if time.monotonic() >= end:
                    break
                answer, _ = await self.request(own, f"{self.haproxy.url}{TICKETS}", LOOPER, "loop", -1)
                statuses[answer.status] += 1
        record.fired = statuses[429] > 0
        record.evidence = {"creates": sum(statuses.values()), "by_status": {str(k): v for k, v in statuses.items()}}

    async def lpu_over_caps(self, http: aiohttp.ClientSession, record: FaultRecord) -> None:
        guid = record.target
        await self.scrape_now(http)
        before = self.rec.total("gateway_lpu_outcomes_total", reason="too_large")
        calls0 = sum(n for (g, _), n in (await self.sandbox_calls(http)).items() if g == guid)
        original = {"delay": next(lpu.knobs.delay for lpu in self.world.hospitals if lpu.info["guid"] == guid)}
        # 1.5 MB of `[{},{},...]`: 500,000 records, 500 times upstream.max_records, five times
        # upstream.max_json_values, under the body cap so that the count is what refuses it.
        await self.knobs(http, guid, {"fault": "many_records", "oversize_bytes": 1_500_000, "delay": 0.0})
        await asyncio.sleep(PLANNED["lpu_over_caps"])
        await self.knobs(http, guid, {"fault": "none"} | original)
        await asyncio.sleep(1.0)
        await self.scrape_now(http)
        calls = sum(n for (g, _), n in (await self.sandbox_calls(http)).items() if g == guid) - calls0
        refused = self.rec.total("gateway_lpu_outcomes_total", reason="too_large") - before
        record.fired = calls > 0 and refused > 0
        record.evidence = {"calls_to_it": calls, "lpus_failed_too_large": int(refused)}

    async def rolling_restart(self, http: aiohttp.ClientSession, record: FaultRecord) -> None:
        """Each replica in turn: SIGTERM (it drains, 503 on /readyz), HAProxy takes it out, it
        exits; a new process on the same port; HAProxy puts it back; then the next."""
        codes, pids = [], []
        for replica in self.replicas:
            assert replica.proc is not None
            old = replica.proc.pid
            await self.scrape_now(http)
            began = self.now()
            replica.signal(signal.SIGTERM)
            await self.until(lambda r=replica, t=began: self.haproxy_saw(r.name, "DOWN", t), 10, "HAProxy takes it out")
            codes.append(await replica.exited(40))
            replica.spawn()
            await replica.ready(http)
            assert replica.proc is not None
            pids.append(f"{old}->{replica.proc.pid}")
            back = self.now()
            await self.until(lambda r=replica, t=back: self.haproxy_saw(r.name, "UP", t), 10, "HAProxy puts it back")
        logged = await asyncio.gather(*(asyncio.to_thread(r.log_events, "draining") for r in self.replicas))
        drained = sum(1 for events in logged if events)
        record.fired = codes == [0, 0, 0]
        record.evidence = {"exits": codes, "pids": pids, "replicas_logged_draining": drained}

    def primary(self) -> tuple[int, Any]:
        port = self.redis.primary_port()
        return port, self.redis.server_on(port)

    async def redis_pause(self, http: aiohttp.ClientSession, record: FaultRecord) -> None:
        port, server = self.primary()
        await self.scrape_now(http)
        downs = self.rec.total("gateway_store_state_changes_total", state="down")
        server.pause()
        stopped = self.now()
        try:
            await asyncio.sleep(3.0)
        finally:
            server.resume()
        paused = self.now() - stopped
        await self.until_stores_up(http, 15)
        record.end = self.now()
        marks = self.rec.total("gateway_store_state_changes_total", state="down") - downs
        record.fired = marks > 0 and self.redis.primary_port() == port
        record.evidence = {
            "paused_s": round(paused, 2),
            "no_failover": self.redis.primary_port() == port,
            "store_down_marks": int(self.rec.total("gateway_store_state_changes_total", state="down") - downs),
        }

    async def until_stores_up(self, http: aiohttp.ClientSession, within: float) -> None:
        async def up() -> bool:
            await self.scrape_now(http)
            return all(
                self.rec.scrapes.get(r.proc.pid, ("", {}))[1].get(("gateway_store_up", ()), 0) == 1
                for r in self.replicas
                if r.proc is not None
            )

        await self.until_async(up, within, "every replica's store up")
        assert self.haproxy is not None
        back = self.now()
        await self.until(lambda: self.haproxy_saw_all_up(back), 10, "HAProxy puts every replica back")

    def haproxy_saw_all_up(self, since: float) -> bool:
        return any(
            t >= since and states and all(v == "UP" for v in states.values()) for t, states in self.rec.haproxy_states
        )

    async def redis_failover(self, http: aiohttp.ClientSession, record: FaultRecord) -> None:
        port, server = self.primary()
        other = self.redis.replica if server is self.redis.primary else self.redis.primary
        with server.client() as p, other.client() as r:
            primary_offset = int(p.info("replication")["master_repl_offset"])
            replica_offset = int(r.info("replication").get("slave_repl_offset", 0))
        self.failover_at = self.now()
        server.stop()  # SIGKILL
        killed = self.now()
        await self.until(lambda: self.redis.primary_port() != port, 30, "Sentinel promotes the replica")
        promoted = self.now()
        await self.until_stores_up(http, 20)
        record.end = self.now()
        # The old primary comes back (empty) and Sentinel makes it a replica of the new one.
        await asyncio.to_thread(server.start)  # it waits for a PING: not on the apps' loop
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, server.proc.pid, PLATFORM_NICE)
        with contextlib.suppress(RuntimeError):
            await self.until(lambda: self._replicating(server), 20, "the old primary replicates")
        record.fired = self.redis.primary_port() == other.port
        record.evidence = {
            "old_primary": port,
            "new_primary": self.redis.primary_port(),
            "promoted_after_s": round(promoted - killed, 1),
            "stores_up_after_s": round(record.end - killed, 1),
            "replication_lag_bytes_at_kill": max(0, primary_offset - replica_offset),
            "old_primary_replicating": self._replicating(server),
        }

    @staticmethod
    def _replicating(server: Any) -> bool:
        with contextlib.suppress(redis.RedisError), server.client() as client:
            info = client.info("replication")
            return info.get("role") == "slave" and info.get("master_link_status") == "up"
        return False

    def read_ledger(self) -> dict[str, int]:
        port = self.redis.primary_port()
        totals: Counter[str] = Counter()
        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)
        with client:
            for key in client.scan_iter(match="vg:mig:d:*"):
                for name, n in client.hgetall(key).items():
                    totals[name.decode().rpartition("|")[2]] += int(n)
        return dict(totals)

    # -- the report --
    def report(self, schedule: list[Step], calls: dict[tuple[str, str], int], ledger: dict[str, int]) -> dict[str, Any]:
        # Every answer, for a closer look at a run (in the run's directory, kept with --keep).
        with open(self.dir / "answers.jsonl", "w") as out:
            for a in self.rec.answers:
                out.write(json.dumps(asdict(a)) + "\n")
        return build_report(self, schedule, calls, ledger)


def p95(values: list[float]) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]


RECOVERY = 5.0  # seconds after a fault's end still kept out of the quiet baseline
STALL = 0.05  # seconds of the apps' own loop running late that make the polls in flight unmeasured


def window_of(t: float, faults: list[FaultRecord]) -> str:
    for f in faults:
        if f.start <= t <= f.end:
            return f.fault
    for f in faults:
        if f.end < t <= f.end + RECOVERY:
            return f"{f.fault} (recovery)"
    return "quiet"


def build_report(
    chaos: Chaos, schedule: list[Step], calls: dict[tuple[str, str], int], ledger: dict[str, int]
) -> dict[str, Any]:
    rec, plan = chaos.rec, chaos.plan
    faults = rec.faults
    answers = rec.answers
    warm = plan.warm_up / 2  # the first seconds (processes just started, caches cold) are no baseline

    # Answers by status, and the window of each that is neither 2xx nor 4xx.
    by_status = Counter(str(a.status) if a.status else a.error for a in answers)
    bad = [a for a in answers if not (200 <= a.status < 500)]
    bad_windows: dict[str, Counter[str]] = defaultdict(Counter)
    for a in bad:
        what = f"{a.status} {a.code}".strip() if a.status else a.error
        bad_windows[window_of(a.t0, faults)][f"{what} via {a.served_by or 'haproxy'}"] += 1

    # Sessions.
    sessions = rec.sessions
    final = [s for s in sessions if s.final_at is not None]
    lost = [s for s in sessions if s.lost]
    lost_by_failover = [
        s
        for s in lost
        if chaos.failover_at is not None and chaos.failover_at - 1.0 <= s.created <= chaos.failover_at + 0.5
    ]
    past = [s for s in sessions if s.past_deadline]
    changed = sum(s.changed for s in sessions)
    states = Counter(state for s in final for state in (s.states or []))

    # Neighbours' polls: the apps' own, not the hostile clients'.
    stalls = chaos.stalls
    measured = [a for a in answers if a.kind == "poll" and a.status]
    polls = [a for a in measured if not any(s0 < a.t1 and a.t0 < s1 for s0, s1 in stalls)]
    quiet = [a.t1 - a.t0 for a in polls if a.t0 >= warm and window_of(a.t0, faults) == "quiet"]
    baseline = p95(quiet)
    p95_rows = []
    for f in faults:
        inside = [a.t1 - a.t0 for a in polls if f.start <= a.t0 <= f.end]
        # The quiet polls next to the fault (40 s before it, 20 s after its recovery): the
        # machine's own load drifts (other jobs share it), so the nearest quiet time is the fair
        # comparison; the whole run's quiet polls when too few are near.
        near = [
            a.t1 - a.t0
            for a in polls
            if a.t0 >= warm
            and (f.start - 40 <= a.t0 < f.start or f.end + RECOVERY < a.t0 <= f.end + RECOVERY + 20)
            and window_of(a.t0, faults) == "quiet"
        ]
        local = p95(near) if len(near) >= 100 else baseline
        value = p95(inside)
        judged = f.fault not in REDIS_FAULTS
        p95_rows.append(
            {
                "fault": f.fault,
                "polls": len(inside),
                "p95_ms": round(value * 1000, 1),
                "baseline_ms": round(local * 1000, 1),
                "baseline_polls": len(near) if len(near) >= 100 else len(quiet),
                "ratio": round(value / local, 2) if local else None,
                "judged": judged,
                "ok": (not judged) or (len(inside) > 0 and value <= 2 * local),
            }
        )

    # 5xx windows of the Redis faults.
    five = [a for a in answers if a.status >= 500]
    redis_windows = []
    for f in faults:
        if f.fault in REDIS_FAULTS:
            inside = [a for a in five if f.start <= a.t0 <= f.end + RECOVERY]
            span = (max(a.t1 for a in inside) - min(a.t0 for a in inside)) if inside else 0.0
            redis_windows.append({"fault": f.fault, "5xx": len(inside), "span_s": round(span, 1)})
    outside = [
        a for a in five if not any(f.fault in REDIS_FAULTS and f.start <= a.t0 <= f.end + RECOVERY for f in faults)
    ]
    failures_rolling = [
        a
        for a in answers
        if not (200 <= a.status < 500)
        and any(f.fault == "rolling_restart" and f.start <= a.t0 <= f.end for f in faults)
    ]
    transport = [a for a in answers if a.status == 0]

    # Memory and connections per replica process.
    per_pid: dict[int, list[Sample]] = defaultdict(list)
    for s in rec.samples:
        per_pid[s.pid].append(s)
    rss_rows = []
    for pid, samples in per_pid.items():
        start = samples[0].t
        warm_until = start + SESSION_TTL + DEADLINE
        after = [s for s in samples if s.t >= warm_until]
        # Growing = rising in quiet time: the RSS increments between consecutive samples after
        # the warm-up (a session TTL and a deadline from the process's start) that are both
        # outside any fault and its recovery, summed, against the RSS at the warm-up's end. A
        # step inside a fault (a flood's socket buffers, big bodies read) is shown apart: it
        # does not come back to the OS, but it is the fault's, not a leak.
        quiet_rise = fault_steps = 0.0
        for before, now in itertools.pairwise(after):
            rise = now.rss_mib - before.rss_mib
            if window_of(before.t, faults) == "quiet" and window_of(now.t, faults) == "quiet":
                quiet_rise += rise
            else:
                fault_steps += rise
        judged = len(after) >= 30 and after[-1].t - after[0].t >= 90
        growth = quiet_rise / after[0].rss_mib if judged else None
        rss_rows.append(
            {
                "replica": samples[0].replica,
                "pid": pid,
                "from_s": round(start, 0),
                "to_s": round(samples[-1].t, 0),
                "rss_mib": [round(s.rss_mib, 1) for s in samples[:: max(1, len(samples) // 8)]],
                "rss_first_last_mib": [round(samples[0].rss_mib, 1), round(samples[-1].rss_mib, 1)],
                "rss_growth_after_warm_up": None if growth is None else round(growth, 3),
                "rss_fault_steps_mib": round(fault_steps, 1) if judged else None,
                "connections_max": int(max(s.connections for s in samples)),
                "connections": [int(s.connections) for s in samples[:: max(1, len(samples) // 8)]],
            }
        )

    # The ledger against the traffic the gateways answered.
    answered = [a for a in answers if a.status and (a.served_by or a.kind == "direct")]
    sent_requests = len(answered)
    sent_sessions = sum(1 for a in answered if a.kind in ("create", "loop", "direct") and a.status == 200)
    window = FLUSH_INTERVAL + 0.5
    crash_bound = sum(
        1 for when, name in chaos.kills for a in answered if a.served_by == name and when - window <= a.t1 <= when
    )
    failover_bound = (
        sum(1 for a in answered if chaos.failover_at - window <= a.t1 <= chaos.failover_at)
        if chaos.failover_at is not None
        else 0
    )
    missing = sent_requests - ledger.get("requests", 0)
    ledger_row = {
        "requests_sent": sent_requests,
        "requests_in_ledger": ledger.get("requests", 0),
        "sessions_sent": sent_sessions,
        "sessions_in_ledger": ledger.get("sessions", 0),
        "missing": missing,
        "bound_crashes": crash_bound,
        "bound_failover": failover_bound,
        "ok": 0 <= missing <= crash_bound + failover_bound,
    }

    upstream = [
        {
            "lpu": guid,
            "kind": chaos.world.kinds.get(guid, "?"),
            **{m: calls.get((guid, m), 0) for m in ("visit", "calldoctor", "disp")},
        }
        for guid in [str(lpu.info["guid"]) for lpu in chaos.world.hospitals]
    ]
    mkab = calls.get(("", "mkab"), 0)

    fault_rows = [asdict(f) | {"start": round(f.start, 1), "end": round(f.end, 1)} for f in faults]
    takeovers = {r: int(rec.total("gateway_session_takeovers_total", result=r)) for r in ("rerun", "failed")}
    problems = [line for r in chaos.replicas for line in r.problem_lines()]

    checks = [
        ("every fault fired", all(f.fired for f in faults) and len(faults) == len(schedule),
         f"{sum(f.fired for f in faults)} of {len(schedule)}"),
        ("requests failed by the rolling restart", not failures_rolling, len(failures_rolling)),
        ("terminal states changed", changed == 0, changed),
        ("sessions past their deadline", not past, len(past)),
        ("sessions lost outside a failover's replication lag", len(lost) == len(lost_by_failover),
         f"{len(lost)} lost, {len(lost_by_failover)} created within 1 s before the failover"),
        ("5xx outside the Redis fault windows", not outside, len(outside)),
        ("requests with no answer (transport errors)", not transport, len(transport)),
        ("each Redis fault's 5xx window <= 10 s", all(w["span_s"] <= 10 for w in redis_windows),
         ", ".join(f"{w['fault']} {w['span_s']} s" for w in redis_windows) or "none"),
        ("neighbours' poll p95 <= 2 x quiet baseline", all(r["ok"] for r in p95_rows),
         ", ".join(f"{r['fault']} {r['ratio']}" for r in p95_rows if r["judged"])),
        ("no replica's RSS growing after warm-up (quiet-time rise < 10 %)",
         all(r["rss_growth_after_warm_up"] is None or r["rss_growth_after_warm_up"] < 0.10 for r in rss_rows),
         ", ".join(f"{r['replica']}:{r['rss_growth_after_warm_up']}" for r in rss_rows
                   if r["rss_growth_after_warm_up"] is not None)),
        ("ledger within one flush interval per crashed replica", ledger_row["ok"],
         f"{missing} missing, bound {crash_bound} + {failover_bound}"),
        ("no error lines in the replicas' logs", not problems, len(problems)),
    ]  # fmt: skip
    return {
        "plan": {"minutes": plan.minutes, "seed": plan.seed, "apps": plan.apps, "faults": plan.faults},
        "schedule": [asdict(s) for s in schedule],
        "faults": fault_rows,
        "sessions": {
            "created": len(sessions),
            "final": len(final),
            "lost": len(lost),
            "lost_by_failover": len(lost_by_failover),
            "past_deadline": len(past),
            "terminal_states_changed": changed,
            "lpu_states": dict(states),
        },
        "answers_by_status": dict(by_status),
        "non_2xx_4xx_by_window": {w: dict(c) for w, c in bad_windows.items()},
        "redis_5xx_windows": redis_windows,
        "takeovers": takeovers,
        "poll_p95": p95_rows,
        "baseline_polls": len(quiet),
        "apps_loop_stalls": {
            "count": len(stalls),
            "seconds": round(sum(s1 - s0 for s0, s1 in stalls), 1),
            "polls_left_out": len(measured) - len(polls),
        },
        "baseline_ms": round(baseline * 1000, 1),
        "replicas": rss_rows,
        "ledger": ledger_row,
        "upstream_calls": {"mkab": mkab, "per_lpu": upstream},
        "problems": problems[:20],
        "checks": [{"check": n, "ok": ok, "value": str(v)} for n, ok, v in checks],
        "ok": all(ok for _, ok, _ in checks),
    }


def render(report: dict[str, Any]) -> str:
    """The table, in Markdown (docs/reliability.md holds one)."""
    out = []
    s = report["sessions"]
    out.append("| what | figure |\n|---|---|")
    out.append(f"| sessions created / final / lost | {s['created']} / {s['final']} / {s['lost']} "
               f"({s['lost_by_failover']} by the failover) |")  # fmt: skip
    out.append(f"| sessions past their deadline | {s['past_deadline']} |")
    out.append(f"| terminal states that changed | {s['terminal_states_changed']} |")
    out.append(f"| LPU states at the end | {', '.join(f'{k} {v}' for k, v in sorted(s['lpu_states'].items()))} |")
    out.append(
        f"| answers by status | {', '.join(f'{k}: {v}' for k, v in sorted(report['answers_by_status'].items()))} |"
    )
    windows = report["non_2xx_4xx_by_window"]
    out.append(
        f"| non-2xx/4xx answers by window | {'; '.join(f'{w}: {dict(c)}' for w, c in windows.items()) or 'none'} |"
    )
    for w in report["redis_5xx_windows"]:
        out.append(f"| 5xx window of {w['fault']} | {w['5xx']} answers over {w['span_s']} s |")
    t = report["takeovers"]
    out.append(f"| takeovers | rerun {t['rerun']}, failed {t['failed']} |")
    led = report["ledger"]
    bound = f"bound {led['bound_crashes']} crash + {led['bound_failover']} failover"
    out.append(
        f"| ledger: requests sent / counted | {led['requests_sent']} / {led['requests_in_ledger']} "
        f"(missing {led['missing']}, {bound}) |"
    )
    out.append(f"| ledger: sessions created / counted | {led['sessions_sent']} / {led['sessions_in_ledger']} |")
    out.append("")
    out.append("| fault | window (s) | fired | evidence |\n|---|---|---|---|")
    for f in report["faults"]:
        ev = ", ".join(f"{k} {v}" for k, v in f["evidence"].items())
        fired = "yes" if f["fired"] else "**NO**"
        out.append(f"| {f['fault']} ({f['target'][:8]}) | {f['start']}–{f['end']} | {fired} | {ev} |")
    out.append("")
    out.append("| neighbours' polls in | polls | p95 | quiet p95 next to it (polls) | ratio |\n|---|---|---|---|---|")
    for r in report["poll_p95"]:
        note = "" if r["judged"] else " (Redis fault: judged by its 5xx window)"
        near = f"{r['baseline_ms']} ms ({r['baseline_polls']})"
        out.append(f"| {r['fault']} | {r['polls']} | {r['p95_ms']} ms | {near} | {r['ratio']}{note} |")
    out.append(f"| (the whole run's quiet polls) | {report['baseline_polls']} | {report['baseline_ms']} ms | | |")
    st = report["apps_loop_stalls"]
    out.append(
        f"| (left out: the apps' own loop {st['count']} times > {STALL * 1000:.0f} ms late, "
        f"{st['seconds']} s in all) | {st['polls_left_out']} | | | |"
    )
    out.append("")
    out.append(
        "| replica (pid) | alive (s) | RSS MiB over time | quiet rise after warm-up | connections over time (max) |\n"
        "|---|---|---|---|---|"
    )
    for r in report["replicas"]:
        growth = "—" if r["rss_growth_after_warm_up"] is None else f"{r['rss_growth_after_warm_up']:+.1%}"
        if r.get("rss_fault_steps_mib") is not None:
            growth += f" (in faults {r['rss_fault_steps_mib']:+.1f} MiB)"
        rss, conns = " ".join(map(str, r["rss_mib"])), " ".join(map(str, r["connections"]))
        alive = f"{r['from_s']:.0f}–{r['to_s']:.0f}"
        out.append(f"| {r['replica']} ({r['pid']}) | {alive} | {rss} | {growth} | {conns} ({r['connections_max']}) |")
    out.append("")
    up = report["upstream_calls"]
    out.append(
        f"| LPU | kind | visit | calldoctor | disp |\n|---|---|---|---|---|\n| (MKAB list) | | {up['mkab']} | | |"
    )
    for row in up["per_lpu"]:
        out.append(f"| {row['lpu'][:8]} | {row['kind']} | {row['visit']} | {row['calldoctor']} | {row['disp']} |")
    out.append("")
    out.append("| target | ok | figure |\n|---|---|---|")
    for c in report["checks"]:
        out.append(f"| {c['check']} | {'ok' if c['ok'] else '**FAIL**'} | {c['value']} |")
    return "\n".join(out)


def run(plan: Plan, json_path: Path | None = None, keep: Path | None = None) -> dict[str, Any]:
    """One run in a temp directory (or `keep`); returns the report, printed and written as JSON."""
    with tempfile.TemporaryDirectory(prefix="chaos-") as tmp:
        directory = keep or Path(tmp)
        directory.mkdir(parents=True, exist_ok=True)
        chaos = Chaos(plan, directory)
        try:
            report = asyncio.run(chaos.run())
        finally:
            chaos.stop_processes()
    table = render(report)
    print(table, flush=True)
    if json_path is not None:
        json_path.write_text(json.dumps(report, indent=1) + "\n")
        print(f"chaos: report written to {json_path}", flush=True)
    return report


# --- the sandbox process ------------------------------------------------------------------------
async def serve_sandbox(seed: int, port: int) -> None:
    from aiohttp import web

    from gateway.http.runner import GatewayRunner
    from gateway.sandbox.app import SANDBOX, Sandbox, create_sandbox_app

    world = build_world(seed)
    app = create_sandbox_app(Sandbox(world.patients))
    # A hanging answer ends when the gateway's call gives up (the handler is cancelled).
    runner = GatewayRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    # Bounded: the run's own limit is far below this.
    end = time.monotonic() + 3600
    while not stop.is_set() and time.monotonic() < end:
        app[SANDBOX].calls.clear()  # the per-call records grow; the counts are kept
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 5)
    await runner.cleanup()


async def flood(port: int, count: int, hold: float) -> None:
    """`count` kept-alive connections to `port`, each answered once, then idle for `hold` s:
    prints {"opened", "answered"} once they are, then {"closed"} (by the server) at the end."""
    request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    conns = []
    # At a low priority and at most 200 new connections a second: the flood's own CPU stands
    # for another machine's, and it builds up as idle keep-alive sockets do, not in one burst.
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, STARTING_NICE)  # absolute: the driver's is PLATFORM_NICE
    try:
        for n in range(count):
            with contextlib.suppress(OSError):
                conns.append(await asyncio.open_connection("127.0.0.1", port))
                conns[-1][1].write(request)
            if n % 20 == 19:
                await asyncio.sleep(0.1)
        answered = 0
        for reader, _ in conns:
            with contextlib.suppress(Exception):
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                answered += head.startswith(b"HTTP/1.1 200")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
                await asyncio.wait_for(reader.readexactly(length), 5)
        print(json.dumps({"opened": len(conns), "answered": answered}), flush=True)
        await asyncio.sleep(hold)
        closed = 0
        for reader, _ in conns:
            with contextlib.suppress(Exception):
                closed += await asyncio.wait_for(reader.read(1), 0.001) == b""
        print(json.dumps({"closed": closed}), flush=True)
    finally:
        for _, writer in conns:
            writer.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    sandbox = sub.add_parser("sandbox")
    sandbox.add_argument("--seed", type=int, required=True)
    sandbox.add_argument("--port", type=int, required=True)
    flooding = sub.add_parser("flood")
    flooding.add_argument("--port", type=int, required=True)
    flooding.add_argument("--count", type=int, required=True)
    flooding.add_argument("--hold", type=float, required=True)
    args = parser.parse_args(argv)
    if args.command == "flood":
        asyncio.run(flood(args.port, args.count, args.hold))
        return 0
    if args.command == "sandbox":
        from gateway.config import LogConfig
        from gateway.observability.logs import configure_logging

        configure_logging(LogConfig(level="warning", format="json"))
        asyncio.run(serve_sandbox(args.seed, args.port))
        return 0
    parser.error("use scripts/chaos.py")
    return 2


if __name__ == "__main__":
    sys.exit(main())
