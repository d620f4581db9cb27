"""Loading the configuration: the defaults file, environment names, and one clear line for a bad value."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.config import (
    ENV_NAMES,
    Config,
    ConfigError,
    as_dict,
    config_keys,
    env_name,
    env_names,
    load_config,
)
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


# --- Every key by environment ------------------------------------------------------------------

_STRING_CANDIDATES = (
    "127.0.0.2",
    "http://127.0.0.1:1",
    "/other",
    "redis://127.0.0.1:1/0",
    "vgx",
    "Jz8kQ2mV5xR7pL0wN3cT6yB9dF4hG1sK",
)


def _valid_other_value(section: str, fdef: Any) -> tuple[str, Any]:
    """A value for the key other than its default, as an environment string and as the value the
    file would give; chosen from the key's type and check so that new keys are covered too."""
    default = getattr(getattr(Config(), section), fdef.name)
    choices = getattr(fdef.metadata.get("check"), "choices", None)
    candidates: list[tuple[str, Any]]
    if choices:
        # Upper case: enums are case-normalised.
        candidates = [(c.upper(), c) for c in choices if c != default]
    elif isinstance(default, bool):
        candidates = [("yes" if not default else "no", not default)]
    elif isinstance(default, int):
        candidates = [(str(default + 1), default + 1), (str(default - 1), default - 1)]
    elif isinstance(default, float):
        candidates = [(str(default + 0.5), default + 0.5), (str(default / 2), default / 2)]
    elif isinstance(default, tuple):
        candidates = [("4.11, 4.12", ("4.11", "4.12")), ('["a,b", "c"]', ("a,b", "c"))]
    elif isinstance(default, dict):
        guid = "8b0a7ab4-1b8f-4c5b-8d1e-1c0f3b0e5a11"
        candidates = [(json.dumps({guid: "android"}), {guid: "android"}), ('{"^ios/": "ios"}', {"^ios/": "ios"})]
    else:
        candidates = [(c, c) for c in _STRING_CANDIDATES]
    for text, value in candidates:
        try:
            Config().replace(**{section: {fdef.name: value}})
        except ConfigError:
            continue
        return text, value
    raise AssertionError(f"no valid test value for {section}.{fdef.name}: add a candidate")


@pytest.mark.parametrize(("section", "fdef"), config_keys(), ids=lambda v: getattr(v, "name", v))
def test_every_key_is_set_by_its_derived_environment_name(section: str, fdef: Any) -> None:
    name = env_name(section, fdef.name)
    assert name == f"GATEWAY_{section}_{fdef.name}".upper()
    text, value = _valid_other_value(section, fdef)
    config = load_config(env={name: text})
    assert getattr(getattr(config, section), fdef.name) == value
    assert getattr(getattr(config, section), fdef.name) != getattr(getattr(Config(), section), fdef.name)


def test_the_older_names_stay_aliases() -> None:
    for alias, (section, key) in ENV_NAMES.items():
        fdef = next(f for s, f in config_keys() if (s, f.name) == (section, key))
        text, value = _valid_other_value(section, fdef)
        assert getattr(getattr(load_config(env={alias: text}), section), key) == value, alias
    # An alias and the derived name may both be set only to the same value.
    assert load_config(env={"GATEWAY_PORT": "9000", "GATEWAY_SERVER_PORT": "9000"}).server.port == 9000
    with pytest.raises(ConfigError, match=r"GATEWAY_PORT and GATEWAY_SERVER_PORT both set server\.port"):
        load_config(env={"GATEWAY_PORT": "9000", "GATEWAY_SERVER_PORT": "9001"})


def test_environment_names_are_unique_and_cover_every_key() -> None:
    names = env_names()
    assert set(names.values()) == {(s, f.name) for s, f in config_keys()}
    assert len({env_name(s, f.name) for s, f in config_keys()}) == len(config_keys())


@pytest.mark.parametrize("name", ["GATEWAY_UPSTREAM_CALL_TIMEOUTS", "GATEWAY_PROT", "GATEWAY_", "GATEWAY_SERVER"])
def test_an_unknown_gateway_variable_stops_the_start(name: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env={name: "1"})
    assert str(info.value) == f"config error: unknown environment variable {name} (docs/configuration.md)"


def test_other_variables_and_gateway_config_are_not_keys(tmp_path: Path) -> None:
    path = tmp_path / "g.toml"
    path.write_text("[server]\nport = 9000\n")
    config = load_config(env={"GATEWAY_CONFIG": str(path), "HOME": "/root", "gateway_port": "1", "XGATEWAY_X": "1"})
    assert config.server.port == 9000


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"GATEWAY_UPSTREAM_CALL_TIMEOUT": "abc"}, "upstream.call_timeout must be a number (got 'abc' from GATEWAY_"),
        ({"GATEWAY_LIMITS_POLL_BURST": "2.5"}, "limits.poll_burst must be an integer (got '2.5' from GATEWAY_"),
        ({"GATEWAY_LIMITS_POLL_RATE": "0"}, "limits.poll_rate must be > 0 (got '0' from GATEWAY_LIMITS_POLL_RATE)"),
        ({"GATEWAY_SESSION_REQUIRE_TOKEN_ON_POLL": "maybe"}, "session.require_token_on_poll must be true or false"),
        ({"GATEWAY_LOG_LEVEL": "loud"}, "log.level must be one of debug, info, warning, error (got 'loud'"),
        ({"GATEWAY_CLIENTS_BY_GUID": "android"}, "clients.by_guid must be a JSON object (got 'android'"),
        ({"GATEWAY_CLIENTS_BY_GUID": '{"x": "android"}'}, "clients.by_guid key 'x' is not a GUID"),
        ({"GATEWAY_CLIENTS_VERSIONS": "[1, 2]"}, "clients.versions must be a list of strings"),
        ({"GATEWAY_CLIENTS_VERSIONS": "4.01"}, "clients.versions versions must be major.minor"),
        ({"GATEWAY_REDIS_URL": "http://:pw@x"}, "redis.url must be a redis://"),
        ({"GATEWAY_ROLLOUT_ADMIN_TOKEN": "short-secret"}, "rollout.admin_token must be empty"),
    ],
)
def test_bad_environment_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env=env)
    text = str(info.value)
    assert message in text and "\n" not in text
    assert next(iter(env)) in text
    if "REDIS" in text or "ADMIN" in text:
        assert next(iter(env.values())) not in text, "a secret was echoed"


def test_enum_values_are_case_normalised_in_the_file_and_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "g.toml"
    path.write_text('[rollout]\nmode = "Shadow"\n[log]\nformat = "CONSOLE"\n')
    config = load_config(env={"GATEWAY_CONFIG": str(path), "GATEWAY_LOG_LEVEL": "WARNING"})
    assert (config.rollout.mode, config.log.format, config.log.level) == ("shadow", "console", "warning")


def test_lists_and_tables_by_environment() -> None:
    config = load_config(
        env={
            "GATEWAY_ROLLOUT_SHADOW_IGNORE_FIELDS": " ratings , lpu.ratings.avg,, ",
            "GATEWAY_CLIENTS_VERSIONS": '["4.11", "4.12"]',
            "GATEWAY_CLIENTS_BY_USER_AGENT": '{"^2dr-ios/(?P<version>[0-9.]+)": "ios", "android,x": "android"}',
        }
    )
    assert config.rollout.shadow_ignore_fields == ("ratings", "lpu.ratings.avg")
    assert config.clients.versions == ("4.11", "4.12")
    assert config.clients.by_user_agent == {"^2dr-ios/(?P<version>[0-9.]+)": "ios", "android,x": "android"}
    empty = load_config(env={"GATEWAY_CLIENTS_VERSIONS": "", "GATEWAY_CLIENTS_BY_GUID": ""})
    assert empty.clients.versions == () and empty.clients.by_guid == {}


@pytest.mark.parametrize(
    ("env", "start"),
    [
        ({"GATEWAY_SERVICE_HOST": "10.0.0.1"}, "config error: unknown environment variable GATEWAY_SERVICE_HOST"),
        ({"GATEWAY_PORT_8443_TCP_ADDR": "10.0.0.1"}, "config error: unknown environment variable GATEWAY_PORT_8443"),
        ({"GATEWAY_PORT": "tcp://10.0.0.1:8443"}, "config error: GATEWAY_PORT looks like a service link, not a value"),
    ],
)
def test_kubernetes_service_links_are_named_as_such(env: dict[str, str], start: str) -> None:
    """A Service named "gateway" makes Kubernetes inject GATEWAY_* variables into every pod of the
    namespace: the start stops, and the line says what they are and how to turn them off."""
    with pytest.raises(ConfigError) as info:
        load_config(env=env)
    assert str(info.value).startswith(start)
    assert "enableServiceLinks: false" in str(info.value)
    with pytest.raises(ConfigError) as typo:
        load_config(env={"GATEWAY_PROT": "1"})
    assert "enableServiceLinks" not in str(typo.value), "a typo is only a typo"
