"""Configuration: the defaults file, environment names, and one clear line for a bad value."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import Config, ConfigError, as_dict, load_config
from tests.support import ROOT


def test_defaults_file_matches_the_built_in_defaults() -> None:
    assert load_config(env={}, path=ROOT / "config" / "defaults.toml") == Config()


def test_production_example_is_valid() -> None:
    config = load_config(env={}, path=ROOT / "config" / "production.example.toml")
    assert config.server.host == "0.0.0.0"


def test_environment_names_override_the_file(tmp_path: Path) -> None:
    path = tmp_path / "g.toml"
    path.write_text("[server]\nport = 9000\n[session]\ndeadline = 30.0\n")
    config = load_config(
        env={
            "GATEWAY_CONFIG": str(path),
            "GATEWAY_HOST": "127.0.0.2",
            "GATEWAY_PORT": "9100",
            "GATEWAY_UPSTREAM_URL": "http://127.0.0.1:7000",
            "GATEWAY_SESSION_DEADLINE": "12.5",
        }
    )
    assert config.server.host == "127.0.0.2" and config.server.port == 9100
    assert config.upstream.url == "http://127.0.0.1:7000"
    assert config.session.deadline == 12.5


@pytest.mark.parametrize(
    ("env", "text", "message"),
    [
        ({"GATEWAY_PORT": "eighty"}, None, "server.port must be an integer (got 'eighty' from GATEWAY_PORT)"),
        (
            {"GATEWAY_SESSION_DEADLINE": "-1"},
            None,
            "session.deadline must be > 0 (got '-1' from GATEWAY_SESSION_DEADLINE)",
        ),
        ({"GATEWAY_UPSTREAM_URL": "ftp://x"}, None, "upstream.url must be an http(s) URL with a host"),
        ({}, '[session]\nttl = "long"\n', "session.ttl must be a number (got 'long' from"),
        ({}, "[session]\nttl_seconds = 5\n", "unknown key session.ttl_seconds"),
        ({}, "[sesion]\n", "unknown section [sesion]"),
        ({}, '[upstream]\nvisit_path = "api/visit"\n', "upstream.visit_path must start with '/'"),
        ({}, "not = [toml", "is not valid TOML"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, env: dict[str, str], text: str | None, message: str) -> None:
    if text is not None:
        (tmp_path / "c.toml").write_text(text)
        env = env | {"GATEWAY_CONFIG": str(tmp_path / "c.toml")}
    with pytest.raises(ConfigError) as info:
        load_config(env=env)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_replace_validates_like_a_file() -> None:
    assert Config().replace(session={"ttl": 5}).session.ttl == 5.0
    with pytest.raises(ConfigError):
        Config().replace(session={"ttl": 0})
    assert as_dict(Config())["upstream"]["url"] == "http://127.0.0.1:8081"


def test_bad_config_stops_the_start_with_one_line() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "serve"],
        env={"GATEWAY_PORT": "-5", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "config error: server.port must be a port number 0..65535 (got '-5' from GATEWAY_PORT)"
    ]
