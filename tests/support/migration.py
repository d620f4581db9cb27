"""Three client apps and the helpers the migration tests share: a gateway served with a clock
the test moves, old-path calls as each app makes them, the admin report, flags files with
[migration] tables."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.config import Config
from gateway.http import keys
from gateway.migration.clock import DAY, ManualClock
from tests.support.fake_legacy import write_flags
from tests.support.gateway import QUOTA_OFF, TICKETS, GatewayTestServer, bearer

ADMIN_TOKEN = "migration-admin-token-0123456789"
ADMIN = {"X-Admin-Token": ADMIN_TOKEN}
ALPHA_GUID = "a1a1a1a1-1b8f-4c5b-8d1e-1c0f3b0e5a11"
BETA_GUID = "b2b2b2b2-1b8f-4c5b-8d1e-1c0f3b0e5a11"
CLIENTS: dict[str, Any] = {
    "by_guid": {ALPHA_GUID: "alpha", BETA_GUID: "beta"},
    "by_user_agent": {r"^gamma-web/(?P<version>[0-9.]+)": "gamma"},
    "versions": ["4.9", "5.0"],
}
# app → (headers it sends, the cohort key the ledger counts it under)
APPS: dict[str, tuple[dict[str, str], str]] = {
    "alpha": ({"ClientApplication": ALPHA_GUID, "User-Agent": "alpha/5.0.1 (Linux; Android 13)"}, "alpha/android/5.0"),
    "beta": ({"ClientApplication": BETA_GUID, "User-Agent": "beta/4.9.7 CFNetwork/1408 Darwin/22"}, "beta/ios/4.9"),
    "gamma": ({"User-Agent": "gamma-web/3.1 Mozilla/5.0 (X11)"}, "gamma/web/other"),
    "stranger": ({"User-Agent": "curl/8.5.0"}, "unknown/unknown/unknown"),
}
# 2026-11-02T00:00:00Z: a day boundary, so tests can place requests in days exactly.
T0 = 1_793_577_600.0
assert T0 % DAY == 0


def iso(when: float) -> str:
    return datetime.datetime.fromtimestamp(when, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def migration_config(upstream_url: str, tmp_path: Path | None = None, flags: str = "", **sections: Any) -> Config:
    rollout: dict[str, Any] = {"admin_token": ADMIN_TOKEN, "flags_poll_interval": 0.05}
    if tmp_path is not None:
        path = tmp_path / "flags.toml"
        write_flags(path, flags)
        rollout["flags_file"] = str(path)
    rollout |= sections.pop("rollout", {})
    upstream = {"url": upstream_url, "retry_backoff": 0.0} | sections.pop("upstream", {})
    # One token per app replays days of that app's creates.
    limits = QUOTA_OFF | sections.pop("limits", {})
    return Config().replace(upstream=upstream, rollout=rollout, clients=CLIENTS, limits=limits, **sections)


async def serve(aiohttp_client: Any, config: Config, clock: ManualClock) -> TestClient:
    return await aiohttp_client(GatewayTestServer(create_app(config, clock=clock), host="127.0.0.1"))


async def call(client: TestClient, app: str, token: str | None, path: str = TICKETS) -> tuple[int, Any, Any]:
    """(status, JSON body, headers) of one old-path request as `app` sends it."""
    headers = APPS[app][0] | (bearer(token) if token else {})
    resp = await client.get(path, headers=headers)
    return resp.status, await resp.json(), resp.headers


async def report(client: TestClient) -> dict[str, Any]:
    resp = await client.get("/admin/migration", headers=ADMIN)
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def set_flags(client: TestClient, text: str) -> None:
    """Replaces the flags file of a running gateway and makes it read now (as SIGHUP does)."""
    state = client.app[keys.ROLLOUT]
    assert state.file is not None
    write_flags(Path(state.file.path), text)
    assert await state.reload(force=True), state.file.error
