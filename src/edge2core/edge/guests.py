"""Anonymous shoppers: short-lived guest identities instead of a device secret in a page.

The shopper page asks its site for a guest pass (`issue`): an id `guest-<random>` and a
password that is an HMAC of the id and its expiry under a key made afresh per edge run and
kept in memory. The broker's auth callout (`broker_auth`) admits a guest as a shopper under
its own topics only, with the broker enforcing the guest payload limit (`max_bytes`), and the
recognition door refuses a guest's requests beyond `per_minute` (`rate_limited`). A pass
expires after `ttl_s`; an edge restart ends every pass (pages simply ask again).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass

from edge2core.edge.devices import GUEST_PREFIX, Device, DeviceRefused, DeviceRole


@dataclass(frozen=True)
class GuestPass:
    device: str
    password: str
    expires_at: float


class GuestPasses:
    """Issue and check guest passes; count each guest's requests (thread-safe)."""

    def __init__(self, ttl_s: float = 3600.0, max_bytes: int = 2_000_000,
                 per_minute: int = 30) -> None:
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes
        self.per_minute = per_minute
        self._key = secrets.token_bytes(32)
        self._recent: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def is_guest(device_id: str) -> bool:
        return device_id.startswith(GUEST_PREFIX)

    def _mac(self, device: str, expires_at: int) -> str:
        return hmac.new(self._key, f"{device}|{expires_at}".encode(), hashlib.sha256).hexdigest()

    def issue(self) -> GuestPass:
        device = GUEST_PREFIX + secrets.token_hex(8)
        expires_at = int(time.time() + self.ttl_s)
        return GuestPass(device, f"{expires_at}.{self._mac(device, expires_at)}", expires_at)

    def check(self, device: str, password: str, client_id: str | None = None) -> Device:
        """The guest as a shopper device; raises `DeviceRefused` (`wrong_secret`,
        `guest_expired`, `client_id_not_owned`) for a pass this run did not issue, one past
        its time, or an MQTT client id that is not the guest's own (its id or `<id>-...`)."""
        expires, _, mac = password.partition(".")
        if not self.is_guest(device) or not expires.isdigit() or not hmac.compare_digest(
                mac, self._mac(device, int(expires))):
            raise DeviceRefused("wrong_secret", "not a guest pass issued by this site")
        if int(expires) < time.time():
            raise DeviceRefused("guest_expired", "this guest pass has expired: ask for a new one")
        if client_id is not None and client_id != device and not client_id.startswith(device + "-"):
            raise DeviceRefused("client_id_not_owned", f"a guest connects as {device!r} or '{device}-...'")
        return Device(id=device, role=DeviceRole.SHOPPER, token_sha256="", password_bcrypt=f"guest:{expires}",
                      revoked=False, created_at="")

    def allow(self, device: str) -> bool:
        """One more request from `device` within its rate (always true for non-guests)."""
        return not self.is_guest(device) or self._within_rate(device, self.per_minute)

    def may_issue(self, address: str) -> bool:
        """One more pass for a page at `address` (an IP) within `per_minute` a minute: new
        passes are no way around a guest's rate."""
        return self._within_rate(f"issue:{address}", self.per_minute)

    def _within_rate(self, key: str, per_minute: int) -> bool:
        now = time.monotonic()
        with self._lock:
            recent = [t for t in self._recent.get(key, []) if now - t < 60.0]
            allowed = len(recent) < per_minute
            if allowed:
                recent.append(now)
            self._recent[key] = recent
            if len(self._recent) > 10_000:  # forget those gone quiet
                self._recent = {k: ts for k, ts in self._recent.items() if ts and now - ts[-1] < 60}
            return allowed
