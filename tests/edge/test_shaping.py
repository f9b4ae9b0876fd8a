from __future__ import annotations

from datetime import datetime

import pytest

from edge2core.edge.shaping import (
    TokenBucket,
    is_open,
    parse_windows,
    seconds_until_open,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_bucket_spaces_uploads_at_the_cap() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1000, clock=clock)
    assert bucket.delay_for(1000) == 0.0  # a full bucket lets one second's worth through
    assert bucket.delay_for(500) == pytest.approx(0.5)
    clock.now = 0.5
    assert bucket.delay_for(500) == pytest.approx(0.5)  # still 0.5 s behind after paying
    clock.now = 10.0
    assert bucket.delay_for(200) == 0.0  # refilled, capped at capacity


def test_bucket_without_cap_never_waits() -> None:
    assert TokenBucket(0).delay_for(10**9) == 0.0


def test_windows_wrap_past_midnight() -> None:
    windows = parse_windows(["22:00-06:00"])
    assert is_open(windows, datetime(2026, 1, 1, 23, 30))
    assert is_open(windows, datetime(2026, 1, 1, 5, 59))
    assert not is_open(windows, datetime(2026, 1, 1, 12, 0))
    assert seconds_until_open(windows, datetime(2026, 1, 1, 21, 0)) == 3600
    assert seconds_until_open(windows, datetime(2026, 1, 1, 23, 0)) == 0


def test_no_windows_means_always_open_and_bad_specs_are_explained() -> None:
    assert is_open([], datetime(2026, 1, 1, 12, 0))
    with pytest.raises(ValueError, match="22:00-06:00"):
        parse_windows(["nights"])
