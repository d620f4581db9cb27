"""The one in-process token bucket: waits are whole seconds until a token is there, a bucket is
forgotten only once it is full again, and the number of keys stays bounded."""

from __future__ import annotations

from gateway.buckets import KeyedBuckets


def test_a_bucket_spends_refills_and_says_how_long_to_wait() -> None:
    now = [0.0]
    buckets = KeyedBuckets(rate=0.5, burst=2, max_keys=10, clock=lambda: now[0])
    assert buckets.take("a") == 0 and buckets.take("a") == 0
    assert buckets.take("a") == 2, "one token refills in 1 / 0.5 s"
    assert buckets.wait("a") == 2, "a refused take spends nothing"
    now[0] = 1.0
    assert buckets.take("a") == 1
    now[0] = 2.0
    assert buckets.take("a") == 0
    assert buckets.take("b") == 0, "each key has its own bucket"


def test_buckets_are_forgotten_when_full_again_and_stay_bounded() -> None:
    now = [0.0]
    buckets = KeyedBuckets(rate=1.0, burst=5, max_keys=100, clock=lambda: now[0])
    for i in range(1000):
        buckets.take(f"flood-{i}")
    assert len(buckets) == 100
    buckets.take("x")
    now[0] = 5.0  # burst / rate: every bucket is full again, so forgetting it changes nothing
    buckets.take("y")
    assert len(buckets) == 1
