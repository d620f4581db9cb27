"""The admin routes (issue 11, row 12): a weak admin token is refused at start with one line
naming the key; wrong tokens are counted and limited per client address and in total; the
routes can live on the admin listener instead of the public port."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from gateway.app import create_app, create_metrics_app
from gateway.config import Config, ConfigError, load_config
from tests.support import ROOT
from tests.support.gateway import sample
from tests.support.netutil import free_port, get_from

STRONG = secrets.token_hex(32)
ROLLOUT = "/admin/rollout"


@pytest.mark.parametrize(
    "weak",
    ["aaaaaaaaaaaaaaaa", "a" * 64, "0123456789abcdef" * 2, "passwordpasswordpasswordpassword", "short", "x" * 31],
)
def test_a_weak_admin_token_is_refused_at_start_in_one_line_naming_the_key(weak: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env={"GATEWAY_ROLLOUT_ADMIN_TOKEN": weak})
    message = str(info.value)
    assert "rollout.admin_token" in message and "\n" not in message
    assert weak not in message, "the token is never echoed"


def test_random_admin_tokens_are_accepted() -> None:
    for _ in range(200):
        for token in (secrets.token_hex(16), secrets.token_hex(32), secrets.token_urlsafe(32)):
            assert load_config(env={"GATEWAY_ROLLOUT_ADMIN_TOKEN": token}).rollout.admin_token == token


def test_gateway_serve_refuses_to_start_with_a_weak_admin_token() -> None:
    env = os.environ | {"GATEWAY_ROLLOUT_ADMIN_TOKEN": "aaaaaaaaaaaaaaaa", "GATEWAY_PORT": str(free_port())}
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "serve"], env=env, cwd=ROOT, capture_output=True, timeout=30, text=True
    )
    assert proc.returncode == 2
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("config error: rollout.admin_token must be empty")


async def admin_status(base: str, token: str, local: str = "127.0.0.1") -> tuple[int, dict[str, Any], str | None]:
    """GET /admin/rollout from the loopback address `local`."""
    return await get_from(local, base + ROLLOUT, {"X-Admin-Token": token})


async def test_wrong_admin_tokens_are_counted_and_limited_per_client(aiohttp_client: Any) -> None:
    config = Config().replace(rollout={"admin_token": STRONG, "admin_failures_per_client": 5})
    client = await aiohttp_client(create_app(config), server_kwargs={"host": "127.0.0.1"})
    base = str(client.make_url("")).rstrip("/")
    for _ in range(5):
        status, body, _ = await admin_status(base, secrets.token_hex(32))
        assert status == 404 and body["message_code"] == "4414", "a wrong token: as if no such route"
    status, body, retry_after = await admin_status(base, secrets.token_hex(32))
    assert status == 429 and body["message_code"] == "4429" and retry_after is not None and int(retry_after) >= 1
    status, _, _ = await admin_status(base, STRONG)
    assert status == 429, "once the allowance is spent, this address waits even with the right token"
    status, _, _ = await admin_status(base, STRONG, local="127.0.0.2")
    assert status == 200, "another client address is not affected"
    assert sample(client, "gateway_admin_auth_failures_total") == 5
    assert sample(client, "gateway_rejected_requests_total", limit="admin_failures") == 2


async def test_wrong_admin_tokens_are_limited_in_total(aiohttp_client: Any) -> None:
    config = Config().replace(
        rollout={"admin_token": STRONG, "admin_failures_per_client": 100, "admin_failures_total": 6}
    )
    client = await aiohttp_client(create_app(config), server_kwargs={"host": "127.0.0.1"})
    base = str(client.make_url("")).rstrip("/")
    for i in range(6):  # guesses spread over addresses
        status, _, _ = await admin_status(base, secrets.token_hex(32), local=f"127.0.0.{10 + i}")
        assert status == 404
    status, body, _ = await admin_status(base, secrets.token_hex(32), local="127.0.0.99")
    assert status == 429 and body["message_code"] == "4429"
    assert sample(client, "gateway_admin_auth_failures_total") == 6


async def test_the_admin_routes_can_live_on_the_admin_listener(aiohttp_server: Any) -> None:
    config = Config().replace(rollout={"admin_token": STRONG, "admin_on_metrics_port": True}, metrics={"port": 1})
    gateway = create_app(config)
    public: TestServer = await aiohttp_server(gateway, host="127.0.0.1")
    admin: TestServer = await aiohttp_server(create_metrics_app(gateway), host="127.0.0.1")
    public_base, admin_base = (str(s.make_url("")).rstrip("/") for s in (public, admin))
    status, body, _ = await admin_status(public_base, STRONG)
    assert status == 404 and body["message_code"] == "4414", "not on the public port"
    status, body, _ = await admin_status(admin_base, STRONG)
    assert status == 200 and body["enabled"] is False
    status, body, _ = await admin_status(admin_base, secrets.token_hex(32))
    assert status == 404 and set(body) == {"code", "message", "message_code"}
    async with aiohttp.ClientSession() as http, http.get(admin_base + "/metrics") as resp:
        assert resp.status == 200 and "gateway_admin_auth_failures_total 1.0" in await resp.text()
