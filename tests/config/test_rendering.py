"""Rendering the configuration (`gateway check-config`): secrets masked, and the TOML loads back."""

from __future__ import annotations

import tomllib

import pytest

from gateway.config import Config, build_config, masked, render_toml


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("", ""),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://:s3cret@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        ("rediss://app:s3cret@redis.internal:6380", "rediss://app:***@redis.internal:6380"),
        ("redis://s3cret@127.0.0.1", "redis://***@127.0.0.1"),
        ("redis+sentinel://:s3cret@s1:26379,s2:26379/main/1", "redis+sentinel://:***@s1:26379,s2:26379/main/1"),
        ("an-admin-token-of-32-characters!", "***"),
    ],
)
def test_secrets_are_masked(value: str, shown: str) -> None:
    assert masked(value) == shown


def test_rendered_configuration_loads_back_to_the_same_config() -> None:
    guid = "8b0a7ab4-1b8f-4c5b-8d1e-1c0f3b0e5a11"
    config = Config().replace(
        clients={"by_guid": {guid: "android"}, "by_user_agent": {'^a"b\\d': "ios"}, "versions": ["4.11"]},
        rollout={"shadow_ignore_fields": ["ratings"], "mode": "gateway"},
        session={"require_token_on_poll": True},
    )
    assert build_config(tomllib.loads(render_toml(config))) == config
