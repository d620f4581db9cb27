"""The [redis] settings: which URLs select which store, and a bad URL's password never echoed."""

from __future__ import annotations

import pytest

from gateway.config import ConfigError, SentinelTarget, load_config, parse_sentinel_url


def test_sentinel_url_names_the_sentinels_the_primary_and_the_credentials() -> None:
    assert parse_sentinel_url("redis+sentinel://:s%40cret@10.0.0.1:26379,sentinel-2:26380/visits/2") == SentinelTarget(
        sentinels=(("10.0.0.1", 26379), ("sentinel-2", 26380)), primary="visits", db=2, password="s@cret"
    )
    assert load_config(env={"GATEWAY_REDIS_URL": "redis+sentinel://h:26379/m"}).redis.url.startswith("redis+")


@pytest.mark.parametrize(
    "url",
    [
        "http://user:hunter2@redis:6379",
        "redis+sentinel://:hunter2@sentinel/primary",  # no port
        "redis+sentinel://:hunter2@sentinel:26379",  # no primary name
        "redis+sentinel://:hunter2@sentinel:26379/primary/zero",
    ],
)
def test_a_bad_url_is_refused_without_echoing_it(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env={"GATEWAY_REDIS_URL": url})
    message = str(info.value)
    assert message.startswith("config error: redis.url ") and "(got <hidden> from GATEWAY_REDIS_URL)" in message
    assert "hunter2" not in message
