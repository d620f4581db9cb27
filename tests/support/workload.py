"""A scripted old-path workload for the metrics tests: five client apps, healthy and failing LPUs,
retries, a session that hits the deadline, and error answers; optionally a second gateway in
front of a legacy service, with sessions served by each side and shadow compares. It runs
against gateways served for real (AppRunner on 127.0.0.1, with their admin listeners) in front
of the sandbox, and returns exactly what it did, so tests can compare the metrics with it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from gateway.app import create_app, create_metrics_app
from gateway.config import Config
from gateway.sandbox.data import LpuKnobs, SandboxPatient
from tests.support.gateway import QUOTA_OFF, TICKETS, bearer, golden_patient, new_token, patient

DEADLINE = 3.0
ANDROID_GUID = "8b0a7ab4-1b8f-4c5b-8d1e-1c0f3b0e5a11"
WEB_GUID = "0e6f3c53-55a4-4b7e-9d51-31d2b1e1a0c7"
CLIENTS: dict[str, Any] = {
    "by_guid": {ANDROID_GUID: "android", WEB_GUID: "web"},
    "by_user_agent": {r"^2dr-ios/(?P<version>[0-9.]+)": "ios"},
    "versions": ["4.11", "4.12"],
}
# app → (headers it sends, the cohort they are counted under: every client the tables do not
# name is the one unknown cohort)
APPS: dict[str, tuple[dict[str, str], str]] = {
    "android": (
        {"ClientApplication": ANDROID_GUID, "User-Agent": "2dr-android/4.12.3 (Linux; Android 13)"},
        "android/android/4.12",
    ),
    "ios": ({"User-Agent": "2dr-ios/4.11.2 CFNetwork/1408.0.4 Darwin/22.5.0"}, "ios/ios/4.11"),
    "web": ({"ClientApplication": WEB_GUID.upper()}, "web/unknown/unknown"),
    "other": ({"User-Agent": "curl/8.5.0"}, "unknown/unknown/unknown"),
    "unknown": ({}, "unknown/unknown/unknown"),
}


# The rollout flags of the gateway in front of the legacy service: android is allowed onto the
# gateway, web is denied (legacy), every other app is shadowed (legacy answers, the gateway
# compares its own answer in the background).
ROLLOUT_FLAGS = """
mode = "shadow"
allow_cohorts = ["android/*/*"]
deny_cohorts = ["web/*/*"]
version = "metrics-workload"
"""


def rollout_section(legacy_url: str, directory: Path) -> dict[str, Any]:
    """[rollout] for a gateway in front of `legacy_url` running ROLLOUT_FLAGS."""
    flags = directory / "rollout-flags.toml"
    flags.write_text(ROLLOUT_FLAGS)
    return {"legacy_url": legacy_url, "flags_file": str(flags), "shadow_poll_interval": 0.05}


def workload_config(upstream_url: str, deadline: float = DEADLINE, **sections: dict[str, Any]) -> Config:
    """call_timeout above the deadline, so the hanging LPU ends at the deadline; a retry budget
    of one retry, so the 503 LPU both retries and runs out of budget."""
    upstream = {
        "url": upstream_url,
        "call_timeout": deadline + 5,
        "retries": 2,
        "retry_backoff": 0.0,
        "retry_budget_ratio": 0.0,
        "retry_budget_floor": 1,
    }
    limits = QUOTA_OFF | sections.pop("limits", {})  # a workload replays many creates per token
    return Config().replace(
        upstream=upstream, session={"deadline": deadline}, clients=CLIENTS, limits=limits, **sections
    )


@dataclass
class Patients:
    healthy: SandboxPatient = field(default_factory=lambda: patient(None, None))
    # LPU 2 answers 500, LPU 3 answers a body that is not JSON
    failing: SandboxPatient = field(
        default_factory=lambda: patient(None, LpuKnobs(fault="status", status=500), LpuKnobs(fault="invalid_json"))
    )
    retrying: SandboxPatient = field(default_factory=lambda: patient(LpuKnobs(fault="status", status=503)))
    hanging: SandboxPatient = field(default_factory=lambda: patient(None, LpuKnobs(fault="hang")))
    broken_mkab: SandboxPatient = field(default_factory=lambda: patient(None))
    golden: SandboxPatient = field(default_factory=golden_patient)

    def __post_init__(self) -> None:
        self.broken_mkab.mkab_status = 500

    def all(self) -> list[SandboxPatient]:
        return [self.healthy, self.failing, self.retrying, self.hanging, self.broken_mkab, self.golden]

    def tokens(self) -> list[str]:
        return [p.token for p in self.all()]


@dataclass
class Done:
    """What the workload did: old-path requests by (route, side, cohort, status_class)."""

    requests: Counter[tuple[str, str, str, str]] = field(default_factory=Counter)
    shadow_compares: Counter[str] = field(default_factory=Counter)  # result → sessions
    sessions_created: int = 0  # by the gateway side, for a client (shadow compares make more)
    request_ids: dict[str, str] = field(default_factory=dict)  # session GUID → X-Request-Id of its create

    def by(self, label: str) -> Counter[str]:
        index = ("route", "side", "cohort", "status_class").index(label)
        counts: Counter[str] = Counter()
        for key, n in self.requests.items():
            counts[key[index]] += n
        return counts


@dataclass
class RunningGateway:
    app: web.Application
    url: str
    metrics_url: str


@asynccontextmanager
async def serve_gateway(config: Config) -> AsyncIterator[RunningGateway]:
    """The gateway and its admin listener as `gateway serve` runs them, on free loopback ports."""
    app = create_app(config)
    runners = [web.AppRunner(app, access_log=None), web.AppRunner(create_metrics_app(app), access_log=None)]
    try:
        urls = []
        for runner in runners:
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            urls.append(f"http://127.0.0.1:{runner.addresses[0][1]}")
        yield RunningGateway(app, urls[0], urls[1])
    finally:
        for runner in runners:
            await runner.cleanup()


class OldPathClient:
    def __init__(self, http: aiohttp.ClientSession, base: str, done: Done) -> None:
        self.http = http
        self.base = base
        self.done = done

    async def get(
        self, route: str, path: str, app: str, token: str | None = None, side: str = "gateway"
    ) -> tuple[int, Any]:
        headers, cohort = APPS[app]
        request_id = uuid.uuid4().hex
        headers = headers | {"X-Request-Id": request_id} | (bearer(token) if token else {})
        async with self.http.get(self.base + path, headers=headers) as resp:
            body = await resp.json()
            status = resp.status
        self.done.requests[(route, side, cohort, f"{status // 100}xx")] += 1
        if route == "create" and status == 200 and side == "gateway":
            self.done.sessions_created += 1
            self.done.request_ids[body["session"]] = request_id
        return status, body

    async def create(self, app: str, token: str, expect: int = 200, side: str = "gateway") -> str | None:
        status, body = await self.get("create", TICKETS, app, token, side)
        assert status == expect, body
        return body["session"] if status == 200 else None

    async def poll_until_final(
        self, app: str, guid: str, token: str, side: str = "gateway", limit: float = 30.0
    ) -> list[str]:
        end = time.monotonic() + limit
        while True:
            status, body = await self.get("poll", f"{TICKETS}/{guid}", app, token, side)
            assert status == 200, body
            states = [entry["state"] for entry in body]
            if "InProgress" not in states:
                return states
            assert time.monotonic() < end, f"still in progress after {limit}s: {states}"
            await asyncio.sleep(0.05)


ROUNDS = 2


def expected_lpu_outcomes(rounds: int = ROUNDS) -> dict[tuple[str, str], int]:
    """(outcome, reason) → LPUs, for the script below. Each round, per app: healthy 2 complete,
    failing 1 complete + 1 status + 1 invalid_body; then the 503 LPU (status). Once: the
    hanging session, 1 complete + 1 deadline."""
    apps = len(APPS)
    return {
        ("complete", "ok"): rounds * apps * 3 + 1,
        ("failed", "status"): rounds * (apps + 1),
        ("failed", "invalid_body"): rounds * apps,
        ("failed", "deadline"): 1,
    }


async def run_workload(
    base_url: str,
    patients: Patients,
    between_rounds: Callable[[Done], Awaitable[None]] | None = None,
    rounds: int = ROUNDS,
    rollout_url: str | None = None,
) -> Done:
    """Android's first session hangs until the deadline. Meanwhile, for `rounds` rounds: every
    app creates and polls a healthy and a failing patient's session; ios retries into an
    exhausted budget; other meets a broken MKAB list (502); web sends a token the upstream
    rejects (401); unknown polls a GUID nobody created (404); and, given `rollout_url` (a gateway
    running ROLLOUT_FLAGS in front of a legacy service), one session per app on each side.
    `between_rounds` runs after each round while the first session still hangs: a scraper can
    see every series appear, then grow, as a rate() needs."""
    done = Done()
    # aiohttp would send its own User-Agent: the apps' headers are exactly the ones in APPS.
    async with aiohttp.ClientSession(skip_auto_headers=("User-Agent",)) as http:
        client = OldPathClient(http, base_url, done)
        hanging = await client.create("android", patients.hanging.token)
        assert hanging is not None
        for _ in range(rounds):
            await one_round(client, patients)
            if rollout_url is not None:
                await rollout_round(OldPathClient(http, rollout_url, done), patients)
            if between_rounds is not None:
                await between_rounds(done)
        assert await client.poll_until_final("android", hanging, patients.hanging.token) == ["Complete", "Failed"]
    return done


async def rollout_round(client: OldPathClient, patients: Patients) -> None:
    """Sessions on each side of a gateway running ROLLOUT_FLAGS. A shadowed session's polls go to
    the legacy service, which made it; the fake legacy service answers the golden answer."""
    golden = patients.golden
    guid = await client.create("android", golden.token, side="gateway")
    assert guid is not None
    assert await client.poll_until_final("android", guid, golden.token) == ["Complete"]
    for app, side, p, compare in (
        ("web", "legacy", golden, None),
        ("ios", "shadow", golden, "match"),
        ("unknown", "shadow", golden, "match"),
        ("other", "shadow", patients.healthy, "mismatch"),  # two LPUs here, one in the legacy answer
    ):
        guid = await client.create(app, p.token, side=side)
        assert guid is not None
        assert await client.poll_until_final(app, guid, p.token, side="legacy") == ["Complete"]
        if compare is not None:
            client.done.shadow_compares[compare] += 1


async def one_round(client: OldPathClient, patients: Patients) -> None:
    for app in APPS:
        for p in (patients.healthy, patients.failing):
            guid = await client.create(app, p.token)
            assert guid is not None
            states = await client.poll_until_final(app, guid, p.token)
            assert states == (["Complete"] * 2 if p is patients.healthy else ["Complete", "Failed", "Failed"])
    retried = await client.create("ios", patients.retrying.token)
    assert retried is not None
    assert await client.poll_until_final("ios", retried, patients.retrying.token) == ["Failed"]
    await client.create("other", patients.broken_mkab.token, expect=502)
    await client.create("web", new_token(), expect=401)
    status, _ = await client.get("poll", f"{TICKETS}/{uuid.uuid4()}", "unknown")
    assert status == 404
