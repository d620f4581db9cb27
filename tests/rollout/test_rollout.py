"""The rollout end to end: a gateway between an app and a fake legacy service, both real
servers on 127.0.0.1, moved by editing its flags file while it runs."""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.app import create_app
from gateway.config import Config, ConfigError, load_config
from gateway.http import keys
from tests.support.fake_legacy import GOLDEN, start_legacy, write_flags
from tests.support.gateway import LOG, TICKETS, bearer, create, new_token, patient, poll_until_final, sample, wait_until
from tests.support.netutil import free_port, serve_env

ADMIN = {"X-Admin-Token": "admin-token-for-tests-0123456789"}
APP_A = "aaaaaaaa-1b8f-4c5b-8d1e-1c0f3b0e5a11"
APP_B = "bbbbbbbb-1b8f-4c5b-8d1e-1c0f3b0e5a11"
UNKNOWN_GUID = "3f2b8c1e-5a4d-4c1b-9f0e-2d7a6b1c9e84"


def decisions(client: Any, side: str, reason: str) -> float:
    return sample(client, "gateway_rollout_decisions_total", side=side, reason=reason)


async def start(
    gateway: Any,
    url: str,
    legacy_url: str,
    flags: Path,
    text: str,
    clients: dict[str, Any] | None = None,
    **rollout: Any,
) -> Any:
    write_flags(flags, text)
    return await gateway(
        url,
        rollout={
            "legacy_url": legacy_url,
            "flags_file": str(flags),
            "flags_poll_interval": 0.05,
            "admin_token": ADMIN["X-Admin-Token"],
        }
        | rollout,
        **({"clients": clients} if clients else {}),
    )


async def admin_state(client: Any) -> dict[str, Any]:
    resp = await client.get("/admin/rollout", headers=ADMIN)
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def change_flags(client: Any, flags: Path, text: str, within: float = 10.0) -> None:
    """Edits the flags file of a running gateway and waits until its admin endpoint shows the
    new file in force (bounded)."""
    write_flags(flags, text)
    digest = hashlib.sha256(text.encode()).hexdigest()

    async def applied() -> bool:
        return (await admin_state(client))["file"]["sha256"] == digest

    await wait_until(applied, within, "the new flags in force")


async def side_of(client: Any, fake: Any, token: str, **headers: str) -> str:
    guid = await create(client, token, **headers)
    return "legacy" if guid in fake.sessions else "gateway"


async def test_without_a_legacy_url_the_gateway_serves_everything_as_before(upstream: Any, gateway: Any) -> None:
    p = patient(None)
    _, url = await upstream(p)
    client = await gateway(url)
    body, _ = await poll_until_final(client, await create(client, p.token))
    assert [e["state"] for e in body] == ["Complete"]
    resp = await client.get(f"{TICKETS}/{UNKNOWN_GUID}", headers=bearer(p.token))
    assert resp.status == 404 and (await resp.json())["message_code"] == "4404"
    assert decisions(client, "gateway", "no_legacy") == 1
    # No admin token configured: the inspection route does not exist.
    resp = await client.get("/admin/rollout", headers=ADMIN)
    assert resp.status == 404 and (await resp.json())["message_code"] == "4414"


async def test_legacy_mode_end_to_end(aiohttp_server: Any, upstream: Any, gateway: Any, tmp_path: Path) -> None:
    p = patient(None)
    sandbox, url = await upstream(p)
    fake, legacy_url = await start_legacy(aiohttp_server)
    fake.in_progress_polls = 2
    client = await start(gateway, url, legacy_url, tmp_path / "flags.toml", 'mode = "legacy"\nversion = 1\n')
    guid = await create(client, p.token)
    body, seen = await poll_until_final(client, guid, headers=bearer(p.token))
    assert body == GOLDEN
    assert seen[0] == ["InProgress"], "the legacy service's InProgress answers came through too"
    assert sandbox.count() == 0
    assert len(fake.creates()) == 1 and len(fake.polls()) == len(seen)
    assert decisions(client, "legacy", "default") == 1


async def test_gateway_mode_end_to_end(aiohttp_server: Any, upstream: Any, gateway: Any, tmp_path: Path) -> None:
    p = patient(None, None)
    sandbox, url = await upstream(p)
    fake, legacy_url = await start_legacy(aiohttp_server)
    client = await start(gateway, url, legacy_url, tmp_path / "flags.toml", 'mode = "gateway"\nversion = 1\n')
    body, _ = await poll_until_final(client, await create(client, p.token), headers=bearer(p.token))
    assert [e["state"] for e in body] == ["Complete", "Complete"]
    assert sandbox.count() == 1 + 3 * 2
    assert fake.received == []
    assert decisions(client, "gateway", "default") == 1


async def test_an_unknown_guid_goes_to_the_legacy_service(
    aiohttp_server: Any, upstream: Any, gateway: Any, tmp_path: Path
) -> None:
    _, url = await upstream()
    fake, legacy_url = await start_legacy(aiohttp_server)
    client = await start(gateway, url, legacy_url, tmp_path / "flags.toml", 'mode = "gateway"\nversion = 1\n')
    token = new_token()
    made_before = fake.existing(token)  # a session the legacy service made before the gateway
    resp = await client.get(f"{TICKETS}/{made_before}", headers=bearer(token))
    assert resp.status == 200 and await resp.json() == GOLDEN
    resp = await client.get(f"{TICKETS}/{UNKNOWN_GUID}", headers=bearer(token))
    assert resp.status == 404
    assert (await resp.json())["message_code"] == "legacy-404", "the legacy service's own answer"
    assert [r.path for r in fake.polls()] == [f"{TICKETS}/{made_before}", f"{TICKETS}/{UNKNOWN_GUID}"]


async def test_a_poll_follows_the_side_that_created_the_session(
    aiohttp_server: Any, upstream: Any, gateway: Any, tmp_path: Path
) -> None:
    p = patient(None)
    sandbox, url = await upstream(p)
    fake, legacy_url = await start_legacy(aiohttp_server)
    flags = tmp_path / "flags.toml"
    client = await start(gateway, url, legacy_url, flags, 'mode = "legacy"\nversion = 1\n')
    on_legacy = await create(client, p.token)
    await change_flags(client, flags, 'mode = "legacy"\ngateway_percent = 100\nversion = 1\n')
    on_gateway = await create(client, p.token)
    await change_flags(client, flags, "kill_switch = true\ngateway_percent = 100\nversion = 1\n")
    again_legacy = await create(client, p.token)
    assert on_legacy in fake.sessions and again_legacy in fake.sessions and on_gateway not in fake.sessions

    for flags_now in ('mode = "gateway"\nversion = 1\n', "kill_switch = true\nversion = 1\n"):
        await change_flags(client, flags, flags_now)
        legacy_polls, upstream_calls = len(fake.polls()), sandbox.count()
        for guid in (on_legacy, again_legacy):
            body, _ = await poll_until_final(client, guid, headers=bearer(p.token))
            assert body == GOLDEN
        body, _ = await poll_until_final(client, on_gateway, headers=bearer(p.token))
        assert body[0]["lpu"]["guid"] == p.lpus[0].info["guid"] and body[0]["state"] == "Complete"
        assert len(fake.polls()) == legacy_polls + 2, "only the two legacy sessions were read from legacy"
        assert {r.path.rsplit("/", 1)[1] for r in fake.polls()} == {on_legacy, again_legacy}
        assert sandbox.count() == upstream_calls, "a poll of a gateway session is served from its store"
    assert decisions(client, "legacy", "default") == 1
    assert decisions(client, "gateway", "percentage") == 1
    assert decisions(client, "legacy", "kill_switch") == 1


async def test_client_app_lists_and_the_kill_switch(
    aiohttp_server: Any, upstream: Any, gateway: Any, tmp_path: Path
) -> None:
    p = patient(None)
    _, url = await upstream(p)
    fake, legacy_url = await start_legacy(aiohttp_server)
    flags = tmp_path / "flags.toml"
    text = 'mode = "legacy"\nallow_cohorts = ["app-a/*/*", "app-b/*/*"]\ndeny_cohorts = ["app-b/*/*"]\nversion = 1\n'
    # The lists name cohorts; the client table says which ClientApplication is which app (case-insensitively).
    client = await start(
        gateway, url, legacy_url, flags, text, clients={"by_guid": {APP_A.upper(): "app-a", APP_B: "app-b"}}
    )
    assert await side_of(client, fake, p.token, ClientApplication=APP_A) == "gateway"
    assert await side_of(client, fake, p.token, ClientApplication=APP_B) == "legacy", "deny wins over allow"
    assert await side_of(client, fake, p.token) == "legacy"
    await change_flags(client, flags, "kill_switch = true\n" + text)
    assert await side_of(client, fake, p.token, ClientApplication=APP_A) == "legacy"
    assert decisions(client, "gateway", "allow_list") == 1
    assert decisions(client, "legacy", "deny_list") == 1
    assert decisions(client, "legacy", "kill_switch") == 1


async def test_a_percentage_sends_that_share_of_patients_and_keeps_each_on_its_side(
    aiohttp_server: Any, upstream: Any, gateway: Any, tmp_path: Path
) -> None:
    patients = [patient(None) for _ in range(40)]
    _, url = await upstream(*patients)
    fake, legacy_url = await start_legacy(aiohttp_server)
    client = await start(gateway, url, legacy_url, tmp_path / "flags.toml", "gateway_percent = 50\nversion = 1\n")
    first = [await side_of(client, fake, p.token) for p in patients]
    again = [await side_of(client, fake, p.token) for p in patients]
    assert first == again, "each patient's sessions land on the same side"
    assert set(first) == {"gateway", "legacy"}


async def test_reload_applies_a_valid_file_and_keeps_the_last_good_flags_for_a_broken_one(
    aiohttp_server: Any, upstream: Any, gateway: Any, tmp_path: Path
) -> None:
    p = patient(None)
    _, url = await upstream(p)
    fake, legacy_url = await start_legacy(aiohttp_server)
    flags = tmp_path / "flags.toml"
    client = await start(gateway, url, legacy_url, flags, 'mode = "legacy"\nversion = "v1"\n')
    assert await side_of(client, fake, p.token) == "legacy"
    await change_flags(client, flags, 'mode = "gateway"\nversion = "v2"\n')
    on_gateway = await create(client, p.token)
    assert on_gateway not in fake.sessions
    state = await admin_state(client)
    assert state["flags"]["version"] == "v2" and state["file"]["valid"] is True
    assert sample(client, "gateway_rollout_flags_valid") == 1

    rollout = client.app[keys.ROLLOUT]
    logged = LOG.getvalue().count('"rollout_flags_invalid"')
    write_flags(flags, 'mode = "legacy"\ngateway_percent = 250\nversion = "v3"\n')
    await wait_until(lambda: sample(client, "gateway_rollout_flags_valid") == 0, what="the broken file refused")
    for _ in range(3):  # further checks of the same broken file: no new error
        await rollout.reload()
    assert LOG.getvalue().count('"rollout_flags_invalid"') == logged + 1
    last = LOG.getvalue().splitlines()
    error = next(json.loads(line) for line in reversed(last) if '"rollout_flags_invalid"' in line)
    assert error["level"] == "error" and error["kept_version"] == "v2"
    assert "gateway_percent must be a number from 0 to 100" in error["error"]
    state = await admin_state(client)
    assert state["flags"]["version"] == "v2" and state["flags"]["mode"] == "gateway"
    assert state["file"]["valid"] is False and "gateway_percent" in state["file"]["error"]
    assert await side_of(client, fake, p.token) == "gateway", "the last good flags are still in force"
    assert sample(client, "gateway_rollout_flags_reloads_total", result="invalid") == 1

    flags.unlink()  # a missing file is refused the same way
    await rollout.reload(force=True)
    assert (await admin_state(client))["flags"]["version"] == "v2"

    await change_flags(client, flags, 'mode = "legacy"\nversion = "v4"\n')
    assert sample(client, "gateway_rollout_flags_valid") == 1
    assert await side_of(client, fake, p.token) == "legacy"
    body, _ = await poll_until_final(client, on_gateway, headers=bearer(p.token))
    assert body[0]["state"] == "Complete", "sessions survive every reload"


async def test_a_broken_file_at_start_leaves_the_configured_mode(
    aiohttp_server: Any, upstream: Any, gateway: Any, tmp_path: Path
) -> None:
    p = patient(None)
    _, url = await upstream(p)
    fake, legacy_url = await start_legacy(aiohttp_server)
    client = await start(
        gateway, url, legacy_url, tmp_path / "flags.toml", "gateway_percent = \nversion = 1\n", mode="legacy"
    )
    assert sample(client, "gateway_rollout_flags_valid") == 0
    assert (await admin_state(client))["flags"]["mode_source"] == "config"
    assert await side_of(client, fake, p.token) == "legacy"


async def test_the_inspection_endpoint_needs_the_admin_token_and_is_read_only(
    aiohttp_server: Any, upstream: Any, gateway: Any, tmp_path: Path
) -> None:
    _, url = await upstream()
    _, legacy_url = await start_legacy(aiohttp_server)
    text = 'mode = "shadow"\ngateway_percent = 12.5\nversion = "2024-06-03.1"\n'
    client = await start(gateway, url, legacy_url, tmp_path / "flags.toml", text)
    for headers in ({}, {"X-Admin-Token": "wrong"}, {"X-Admin-Token": ADMIN["X-Admin-Token"] + "x"}):
        for method in ("GET", "POST"):
            resp = await client.request(method, "/admin/rollout", headers=headers)
            assert resp.status == 404 and (await resp.json())["message_code"] == "4414", "looks like no route"
    state = await admin_state(client)
    assert state["enabled"] is True
    assert state["flags"] | {"allow_cohorts": None} == {
        "mode": "shadow",
        "mode_source": "file",
        "kill_switch": False,
        "gateway_percent": 12.5,
        "allow_cohorts": None,
        "deny_cohorts": [],
        "salt": "",
        "version": "2024-06-03.1",
        "guardrails": {"cooldown": 300.0, "rules": [], "step_up": None},
    }
    assert state["file"]["sha256"] == hashlib.sha256(text.encode()).hexdigest()
    assert state["file"]["path"] == str(tmp_path / "flags.toml")
    assert ADMIN["X-Admin-Token"] not in json.dumps(state)
    resp = await client.post("/admin/rollout", headers=ADMIN, json={"flags": {"kill_switch": True}})
    assert resp.status == 405
    assert (await admin_state(client))["flags"]["kill_switch"] is False
    resp = await client.get("/admin/rollout/shadow", headers=ADMIN)
    report = await resp.json()
    assert resp.status == 200 and report["mismatches"] == [] and report["fields"]["compared"] == 0


async def test_served_by_names_the_side_of_each_old_path_request(
    aiohttp_server: Any, aiohttp_client: Any, upstream: Any, tmp_path: Path
) -> None:
    p = patient(None)
    _, url = await upstream(p)
    _, legacy_url = await start_legacy(aiohttp_server)
    flags = tmp_path / "flags.toml"
    write_flags(flags, 'mode = "shadow"\nversion = 1\n')
    config = Config().replace(upstream={"url": url}, rollout={"legacy_url": legacy_url, "flags_file": str(flags)})
    app = create_app(config)
    served: list[tuple[str, str | None]] = []

    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            return await handler(request)
        finally:
            served.append((request.path.count("/"), request[keys.STATE].served_by))

    app.middlewares.append(record)
    client = await aiohttp_client(app, server_kwargs={"host": "127.0.0.1"})
    on_legacy = await create(client, p.token)
    await client.get(f"{TICKETS}/{on_legacy}", headers=bearer(p.token))
    await client.get(f"{TICKETS}/not-a-guid")
    assert served == [(5, "shadow"), (6, "legacy"), (6, "gateway")]


def test_rollout_settings_from_the_environment() -> None:
    config = load_config(
        env={
            "GATEWAY_LEGACY_URL": "http://127.0.0.1:9090",
            "GATEWAY_ROLLOUT_MODE": "shadow",
            "GATEWAY_ROLLOUT_FLAGS_FILE": "/etc/gateway/flags.toml",
            "GATEWAY_ROLLOUT_ADMIN_TOKEN": ADMIN["X-Admin-Token"],
        }
    )
    assert config.rollout.legacy_url == "http://127.0.0.1:9090" and config.rollout.mode == "shadow"
    assert config.rollout.flags_file == "/etc/gateway/flags.toml"
    with pytest.raises(ConfigError, match=r"rollout\.mode must be one of legacy, gateway, shadow"):
        load_config(env={"GATEWAY_ROLLOUT_MODE": "canary"})
    with pytest.raises(ConfigError, match=r"rollout\.admin_token must be empty"):
        load_config(env={"GATEWAY_ROLLOUT_ADMIN_TOKEN": "short"})
    assert Config().replace(rollout={"shadow_ignore_fields": ["ratings"]}).rollout.shadow_ignore_fields == ("ratings",)


async def test_sighup_reloads_the_flags_of_a_running_gateway(tmp_path: Path) -> None:
    flags = tmp_path / "flags.toml"
    write_flags(flags, 'version = "before"\n')
    port = free_port()
    env = serve_env(
        port,
        GATEWAY_LEGACY_URL="http://127.0.0.1:9",
        GATEWAY_ROLLOUT_FLAGS_FILE=str(flags),
        GATEWAY_ROLLOUT_ADMIN_TOKEN=ADMIN["X-Admin-Token"],
        GATEWAY_LOG_LEVEL="error",
    )
    # A poll interval of an hour: only the signal can make it re-read the file.
    config = tmp_path / "gateway.toml"
    config.write_text("[rollout]\nflags_poll_interval = 3600.0\n")
    env["GATEWAY_CONFIG"] = str(config)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve", env=env, stdout=subprocess.DEVNULL
    )
    try:
        async with aiohttp.ClientSession() as http:

            async def version() -> str | None:
                assert proc.returncode is None, "the gateway is not running"
                try:
                    async with http.get(f"http://127.0.0.1:{port}/admin/rollout", headers=ADMIN) as resp:
                        return (await resp.json())["flags"]["version"]
                except aiohttp.ClientConnectionError:
                    return None

            await wait_until(version, 20, "the gateway listening")
            assert await version() == "before"
            write_flags(flags, 'version = "after"\n')
            proc.send_signal(signal.SIGHUP)

            async def reloaded() -> bool:
                return await version() == "after"

            await wait_until(reloaded, 10, "the flags re-read after SIGHUP")
    finally:
        if proc.returncode is None:
            proc.terminate()
        try:
            async with asyncio.timeout(15):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def test_without_a_legacy_url_the_routing_flags_are_ignored(upstream: Any, gateway: Any, tmp_path: Path) -> None:
    p = patient(None)
    sandbox, url = await upstream(p)
    flags = tmp_path / "flags.toml"
    write_flags(flags, "kill_switch = true\nversion = 1\n")
    client = await gateway(url, rollout={"flags_file": str(flags), "admin_token": ADMIN["X-Admin-Token"]})
    await create(client, p.token)
    assert sandbox.count("mkab") == 1 and decisions(client, "gateway", "no_legacy") == 1
    state = await admin_state(client)
    # Read for its [migration] table (docs/migration.md), which applies to either side; the
    # routing rules in it are not.
    assert state["enabled"] is False and state["file"]["valid"] is True


async def test_a_flags_file_truncated_and_rewritten_in_place_keeps_the_kill_switch(
    aiohttp_server: Any, upstream: Any, gateway: Any, tmp_path: Path
) -> None:
    """Issue 11, row 9: an editor or a script that rewrites the file in place (truncate, then
    write) leaves an empty and then a partial file for a moment; neither is taken as flags."""
    p = patient(None)
    _, url = await upstream(p)
    fake, legacy_url = await start_legacy(aiohttp_server)
    flags = tmp_path / "flags.toml"
    whole = b'mode = "gateway"\ngateway_percent = 100\nkill_switch = true\nversion = "k1"\n'
    client = await start(gateway, url, legacy_url, flags, whole.decode())
    rollout = client.app[keys.ROLLOUT]
    assert await side_of(client, fake, p.token) == "legacy"
    inode = flags.stat().st_ino

    async def creates_in_the_gap() -> None:
        for _ in range(25):  # the watcher reads the file every 50 ms meanwhile
            assert await side_of(client, fake, p.token) == "legacy"

    # In place: same inode, as `>` in a shell or an editor saving over the file does (a local
    # file, written between the gateway's reads: blocking is the point).
    with open(flags, "r+b") as fh:  # noqa: ASYNC230
        fh.truncate(0)
        fh.flush()
        await rollout.reload()
        assert rollout.file is not None and "empty file" in str(rollout.file.error)
        await creates_in_the_gap()
        fh.write(whole[: whole.index(b"kill_switch")])  # a partial write: everything but the switch
        fh.flush()
        await rollout.reload()
        assert "truncated" in str(rollout.file.error)
        await creates_in_the_gap()
        fh.write(whole[whole.index(b"kill_switch") :])
    assert flags.stat().st_ino == inode
    await wait_until(lambda: rollout.file is not None and rollout.file.valid, what="the rewritten file in force")
    assert await side_of(client, fake, p.token) == "legacy"
    assert decisions(client, "gateway", "percentage") == 0, "no create went to the gateway in the gap"
    assert decisions(client, "legacy", "kill_switch") == 52
    assert sample(client, "gateway_rollout_flags_reloads_total", result="invalid") >= 1
