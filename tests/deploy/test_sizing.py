"""The memory budget (docs/sizing.md): the defaults fit it, and a gateway whose in-process store
could outgrow it refuses to start, naming the keys, instead of being OOM-killed once it fills."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from gateway.config import SESSION_MEMORY_KIB, Config, ConfigError, load_config, store_memory_mib
from tests.support.netutil import free_port


def test_the_default_store_fits_the_default_budget() -> None:
    session = Config().session
    assert store_memory_mib(session.max_sessions) <= session.memory_budget_mb
    assert load_config(env={}).session == session


def test_a_store_larger_than_the_budget_is_refused_naming_the_keys_and_the_source() -> None:
    too_many = 1024 * 1024 // SESSION_MEMORY_KIB + 1  # one session over 1 GiB
    with pytest.raises(ConfigError) as refused:
        load_config(env={"GATEWAY_MAX_SESSIONS": str(too_many)})
    message = str(refused.value)
    assert "session.max_sessions" in message and "session.memory_budget_mb 1024" in message
    assert "GATEWAY_MAX_SESSIONS" in message
    # One fewer fits exactly.
    assert load_config(env={"GATEWAY_MAX_SESSIONS": str(too_many - 1)}).session.max_sessions == too_many - 1


@pytest.mark.parametrize(
    "sections",
    [
        {"session": {"max_sessions": 1_000_000, "memory_budget_mb": 24 * 1024}},  # the budget raised with the limit
        {"session": {"max_sessions": 1_000_000, "memory_budget_mb": 0}},  # the check turned off
        {"session": {"max_sessions": 1_000_000}, "redis": {"url": "redis://127.0.0.1:6379/0"}},  # sessions in Redis
    ],
    ids=["budget-raised", "check-off", "redis"],
)
def test_a_large_store_is_accepted_when_the_budget_allows_it(sections: dict) -> None:
    assert Config().replace(**sections).session.max_sessions == 1_000_000


def test_gateway_serve_refuses_to_start_with_exit_status_2() -> None:
    env = os.environ | {
        "GATEWAY_MAX_SESSIONS": "1000000",
        # Free ports, should it start after all: the test then fails on the exit status, not on a port.
        "GATEWAY_PORT": str(free_port()),
        "GATEWAY_METRICS_PORT": str(free_port()),
    }
    env.pop("GATEWAY_CONFIG", None)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "gateway", "serve"], env=env, capture_output=True, text=True, timeout=30
        )
    except subprocess.TimeoutExpired:
        pytest.fail("gateway serve started with a store over its memory budget")
    assert result.returncode == 2, result.stderr
    assert "memory_budget_mb" in result.stderr
