"""Rate limits per device and per site: messages and bytes per second, each with a burst.

One `RateLimiter` keeps two token buckets per key (a device id, a site id). `check(key, nbytes)`
takes one message and `nbytes` bytes from the key's buckets or raises `RateLimited` (code
`rate_limited`, HTTP 429 with `Retry-After`), counted in `e2c_rate_limited_total{door, scope}`.
Nothing is taken from either bucket when the request is refused, so a refused flood does not
push the device's next allowed request further away. Keys idle long enough to have refilled
are forgotten, so memory stays bounded by the keys active in the last few seconds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import Counter
from pydantic import BaseModel, Field

from edge2core.common.errors import Busy

__all__ = ["RATE_LIMITED", "RateLimit", "RateLimited", "RateLimiter"]

RATE_LIMITED = Counter("e2c_rate_limited_total", "Requests refused for going over a rate limit",
                       ["door", "scope"])


class RateLimit(BaseModel):
    """Messages and bytes per second, each with a burst; 0 per second turns that limit off."""

    messages_per_s: float = Field(default=0.0, ge=0)
    burst_messages: int = Field(default=1, ge=1)
    bytes_per_s: float = Field(default=0.0, ge=0)
    burst_bytes: int = Field(default=1, ge=1)

    @property
    def enabled(self) -> bool:
        return self.messages_per_s > 0 or self.bytes_per_s > 0


class RateLimited(Busy):
    """Over a rate limit: try again in `retry_after_s` seconds."""

    code = "rate_limited"


@dataclass
class _Bucket:
    tokens: float
    stamp: float


@dataclass
class _Pair:
    messages: _Bucket
    bytes: _Bucket


@dataclass
class RateLimiter:
    """Thread-safe; `scope` names what is limited ("device", "site") in metrics and answers."""

    limit: RateLimit
    scope: str = "device"
    clock: Callable[[], float] = time.monotonic
    _pairs: dict[str, _Pair] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _last_sweep: float = 0.0

    def check(self, key: str, nbytes: int = 0, door: str = "") -> None:
        """Take one message and `nbytes` from `key`'s allowance, or raise RateLimited."""
        wait = self.take(key, nbytes)
        if wait > 0:
            RATE_LIMITED.labels(door=door or "unknown", scope=self.scope).inc()
            raise RateLimited(f"this {self.scope} is over its rate limit; try again in {wait:.1f} s",
                              retry_after_s=wait)

    def take(self, key: str, nbytes: int = 0) -> float:
        """0.0 when allowed (and taken), else the seconds until it would be allowed."""
        limit = self.limit
        if not limit.enabled:
            return 0.0
        now = self.clock()
        with self._lock:
            self._sweep(now)
            pair = self._pairs.get(key)
            if pair is None:
                pair = _Pair(_Bucket(limit.burst_messages, now), _Bucket(limit.burst_bytes, now))
                self._pairs[key] = pair
            messages = self._refill(pair.messages, now, limit.messages_per_s, limit.burst_messages)
            size = self._refill(pair.bytes, now, limit.bytes_per_s, limit.burst_bytes)
            wait = 0.0
            if limit.messages_per_s > 0 and messages < 1:
                wait = max(wait, (1 - messages) / limit.messages_per_s)
            # A message larger than the whole burst waits for a full bucket, then goes through.
            need = min(nbytes, limit.burst_bytes)
            if limit.bytes_per_s > 0 and size < need:
                wait = max(wait, (need - size) / limit.bytes_per_s)
            if wait > 0:
                return wait
            pair.messages.tokens -= 1 if limit.messages_per_s > 0 else 0
            pair.bytes.tokens -= need if limit.bytes_per_s > 0 else 0
            return 0.0

    @staticmethod
    def _refill(bucket: _Bucket, now: float, rate: float, burst: int) -> float:
        if rate > 0:
            bucket.tokens = min(burst, bucket.tokens + (now - bucket.stamp) * rate)
        bucket.stamp = now
        return bucket.tokens

    def _sweep(self, now: float) -> None:
        """Forget keys whose buckets would be full again anyway (bounded memory)."""
        limit = self.limit
        horizon = max(limit.burst_messages / limit.messages_per_s if limit.messages_per_s else 0,
                      limit.burst_bytes / limit.bytes_per_s if limit.bytes_per_s else 0)
        if now - self._last_sweep < max(1.0, horizon):
            return
        self._last_sweep = now
        for key in [k for k, p in self._pairs.items() if now - p.messages.stamp > horizon]:
            del self._pairs[key]
