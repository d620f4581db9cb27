"""The console entry point as an operator runs it: `gateway --version` and `gateway check-config`."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from gateway import __version__
from gateway.config import Config, build_config, load_config
from tests.support.gateway import run_cli as _gateway


def test_version() -> None:
    proc = _gateway("--version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"visit-gateway {__version__}"


def test_check_config_prints_the_effective_configuration() -> None:
    proc = _gateway("check-config", env={"GATEWAY_UPSTREAM_CALL_TIMEOUT": "3.5", "GATEWAY_LOG_LEVEL": "DEBUG"})
    assert proc.returncode == 0, proc.stderr
    effective = build_config(tomllib.loads(proc.stdout))
    assert effective == Config().replace(upstream={"call_timeout": 3.5}, log={"level": "debug"})


def test_check_config_masks_secrets() -> None:
    token, password = "Jz8kQ2mV5xR7pL0wN3cT6yB9dF4hG1sK", "redis-pass-42"
    proc = _gateway(
        "check-config",
        env={"GATEWAY_ROLLOUT_ADMIN_TOKEN": token, "GATEWAY_REDIS_URL": f"redis://app:{password}@127.0.0.1:6379/2"},
    )
    assert proc.returncode == 0, proc.stderr
    assert token not in proc.stdout and password not in proc.stdout
    printed = tomllib.loads(proc.stdout)
    assert printed["rollout"]["admin_token"] == "***"
    assert printed["redis"]["url"] == "redis://app:***@127.0.0.1:6379/2"


@pytest.mark.parametrize("command", ["check-config", "serve"])
@pytest.mark.parametrize(
    ("env", "line"),
    [
        (
            {"GATEWAY_UPSTREAM_CALL_TIMEOUT": "abc"},
            "config error: upstream.call_timeout must be a number (got 'abc' from GATEWAY_UPSTREAM_CALL_TIMEOUT)",
        ),
        (
            {"GATEWAY_UPSTREAM_CALL_TIMEOUTS": "5"},
            "config error: unknown environment variable GATEWAY_UPSTREAM_CALL_TIMEOUTS (docs/configuration.md)",
        ),
    ],
)
def test_a_bad_environment_stops_with_one_line_and_exit_2(command: str, env: dict[str, str], line: str) -> None:
    proc = _gateway(command, env=env)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [line]
    assert proc.stdout == ""


def test_check_config_says_where_each_changed_key_came_from(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    guid = "8b0a7ab4-1b8f-4c5b-8d1e-1c0f3b0e5a11"
    path.write_text(f'[limits]\npoll_rate = 5.0\n[clients.by_guid]\n"{guid}" = "android"\n')
    proc = _gateway("check-config", env={"GATEWAY_CONFIG": str(path), "GATEWAY_PORT": "9000"})
    assert proc.returncode == 0, proc.stderr
    # Only the keys that are not defaults have a comment, in the order of the file.
    assert [line for line in proc.stdout.splitlines() if "# from" in line] == [
        "port = 9000  # from GATEWAY_PORT",
        f"poll_rate = 5.0  # from {path}",
        f"[clients.by_guid]  # from {path}",
    ]
    assert build_config(tomllib.loads(proc.stdout)).clients.by_guid == {guid: "android"}


def test_gateway_serve_runs_uvloop_by_default_where_installed_and_asyncio_when_told() -> None:
    """server.event_loop (GATEWAY_SERVER_EVENT_LOOP): auto picks uvloop when it is installed
    (a dependency on Linux), asyncio picks asyncio's own loop."""
    import asyncio

    import uvloop  # a dependency on Linux (pyproject.toml): the default must not silently be asyncio

    from gateway.cli import loop_factory

    new = loop_factory("auto")
    assert new is uvloop.new_event_loop
    loop = new()
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()
    assert loop_factory("uvloop") is uvloop.new_event_loop
    assert loop_factory("asyncio") is None
    with asyncio.Runner(loop_factory=loop_factory("asyncio")) as runner:
        assert type(runner.get_loop()).__module__.startswith("asyncio")
    assert load_config(env={"GATEWAY_SERVER_EVENT_LOOP": "ASYNCIO"}).server.event_loop == "asyncio"
