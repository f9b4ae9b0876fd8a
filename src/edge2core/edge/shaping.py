"""Link etiquette for the forwarder: a bandwidth cap and upload windows (e.g. nights only)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from datetime import time as dtime


class TokenBucket:
    """Caps the average upload rate; `rate_bytes_s` <= 0 means no cap.

    Tokens are bytes; the bucket holds one second's worth, so short bursts stay short.
    """

    def __init__(
        self, rate_bytes_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate_bytes_s
        self.capacity = max(rate_bytes_s, 1.0)
        self._tokens = self.capacity
        self._clock = clock
        self._stamp = clock()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def delay_for(self, size: int) -> float:
        """Seconds to wait before `size` bytes may go (and take them)."""
        if self.rate <= 0:
            return 0.0
        self._refill()
        self._tokens -= size  # may go negative: a large photo borrows from the future
        return max(0.0, -self._tokens / self.rate)

    async def acquire(self, size: int) -> None:
        async with self._lock:
            delay = self.delay_for(size)
        if delay:
            await asyncio.sleep(delay)


@dataclass(frozen=True)
class Window:
    start: dtime
    end: dtime

    def contains(self, moment: dtime) -> bool:
        if self.start <= self.end:
            return self.start <= moment < self.end
        return moment >= self.start or moment < self.end  # wraps past midnight


def parse_windows(specs: list[str]) -> list[Window]:
    """'22:00-06:00' style local-time windows; an empty list means always open."""
    windows = []
    for spec in specs:
        try:
            start, end = (dtime.fromisoformat(part.strip()) for part in spec.split("-"))
        except ValueError as exc:
            raise ValueError(f"upload window {spec!r} must look like '22:00-06:00'") from exc
        windows.append(Window(start, end))
    return windows


def is_open(windows: list[Window], now: datetime) -> bool:
    return not windows or any(w.contains(now.time()) for w in windows)


def seconds_until_open(windows: list[Window], now: datetime) -> float:
    if is_open(windows, now):
        return 0.0
    starts = []
    for window in windows:
        start = datetime.combine(now.date(), window.start, tzinfo=now.tzinfo)
        starts.append(start if start > now else start + timedelta(days=1))
    return (min(starts) - now).total_seconds()
