"""Rate limits (`common/rate_limit`): bursts, refill, bytes, and one key never slowing another."""

from __future__ import annotations

import pytest

from edge2core.common.rate_limit import RATE_LIMITED, RateLimit, RateLimited, RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_then_the_rate_and_others_are_unaffected() -> None:
    clock = Clock()
    limiter = RateLimiter(RateLimit(messages_per_s=2, burst_messages=3), "device", clock)
    assert [limiter.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = limiter.take("a")
    assert wait == pytest.approx(0.5)  # one message every 0.5 s
    assert limiter.take("b") == 0.0  # another device has its own allowance
    clock.now += 0.5
    assert limiter.take("a") == 0.0
    assert limiter.take("a") > 0


def test_bytes_are_limited_and_refusals_cost_nothing() -> None:
    clock = Clock()
    limiter = RateLimiter(RateLimit(bytes_per_s=1000, burst_bytes=2000), "site", clock)
    assert limiter.take("s", 1500) == 0.0
    assert limiter.take("s", 1000) == pytest.approx(0.5)
    assert limiter.take("s", 1000) == pytest.approx(0.5)  # the refusal took nothing
    clock.now += 0.5
    assert limiter.take("s", 1000) == 0.0
    # Larger than the whole burst: waits for a full bucket, then passes.
    clock.now += 10
    assert limiter.take("s", 10_000) == 0.0


def test_over_the_rate_raises_rate_limited_with_retry_after_and_counts_it() -> None:
    limiter = RateLimiter(RateLimit(messages_per_s=1, burst_messages=1), "device", Clock())
    before = RATE_LIMITED.labels(door="test", scope="device")._value.get()
    limiter.check("k", door="test")
    with pytest.raises(RateLimited) as refused:
        limiter.check("k", door="test")
    assert refused.value.code == "rate_limited" and refused.value.retry_after_s == pytest.approx(1.0)
    assert RATE_LIMITED.labels(door="test", scope="device")._value.get() == before + 1


def test_off_by_default_and_idle_keys_are_forgotten() -> None:
    clock = Clock()
    assert RateLimiter(RateLimit(), "device", clock).take("x", 10**9) == 0.0
    limiter = RateLimiter(RateLimit(messages_per_s=10, burst_messages=10), "device", clock)
    for i in range(1000):
        limiter.take(f"device-{i}")
    clock.now += 60
    limiter.take("again")
    assert len(limiter._pairs) == 1
