"""Device identity: who may send photos to this site, and under which topics.

Each device has a random secret. The registry keeps only hashes: SHA-256 to check HTTP bearer
tokens quickly, bcrypt for the broker (nats-server checks bcrypt passwords itself). A device
may publish only under its own topics; revoking it closes its broker connection at once.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import threading
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path

import bcrypt

from edge2core.common import topics
from edge2core.common.events import ID_PATTERN, utcnow
from edge2core.common.fsutil import write_atomic
from edge2core.common.nats_server import NatsUser


class DeviceRole(StrEnum):
    KIOSK = "kiosk"
    SHOPPER = "shopper"


class DeviceRefused(PermissionError):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason  # "unknown_device" or "revoked_device"


@dataclass(frozen=True)
class Device:
    id: str
    role: DeviceRole
    token_sha256: str
    password_bcrypt: str
    revoked: bool
    created_at: str


def _subject(topic: str) -> str:
    # NATS maps MQTT topic levels to subject tokens: '/' -> '.', '+' -> '*', '#' -> '>'.
    return topic.replace("/", ".").replace("+", "*").replace("#", ">")


def device_permissions(site: str, device: Device) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(publish, subscribe) subjects: its own requests out, its own answers and errors in.

    A device's usual MQTT filter `<prefix>/#` becomes two NATS subscriptions, on `<prefix>.>`
    and on `<prefix>` itself (MQTT's '#' matches the parent level too); both must be allowed or
    nats-server refuses the whole filter (SUBACK 0x80).
    """
    prefix = _subject(f"{topics.ROOT}/{site}/{device.role.value}/{device.id}")
    return (f"{prefix}.>",), (prefix, f"{prefix}.>")


class DeviceRegistry:
    """A JSON file of devices, written atomically; safe to edit while the edge runs."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._devices: dict[str, Device] = {}
        self._mtime: float | None = None
        self.refresh()

    def refresh(self) -> bool:
        """Re-read the file if it changed on disk (e.g. the CLI revoked a device)."""
        with self._lock:
            return self._reload_if_changed()

    def _reload_if_changed(self) -> bool:
        mtime = self.path.stat().st_mtime if self.path.exists() else None
        if mtime == self._mtime:
            return False
        raw = json.loads(self.path.read_text()) if mtime is not None else []
        self._devices = {d["id"]: Device(**{**d, "role": DeviceRole(d["role"])}) for d in raw}
        self._mtime = mtime
        return True

    def _save(self) -> None:
        payload = json.dumps([asdict(d) for d in self._devices.values()], indent=2).encode()
        write_atomic(self.path, [payload])
        self._mtime = self.path.stat().st_mtime

    def add(self, device_id: str, role: DeviceRole) -> str:
        """Register a device; returns its secret (shown once, never stored in clear)."""
        if not re.match(ID_PATTERN, device_id):
            raise ValueError(f"device id {device_id!r} must match {ID_PATTERN}")
        token = secrets.token_urlsafe(24)
        device = Device(
            id=device_id,
            role=role,
            token_sha256=hashlib.sha256(token.encode()).hexdigest(),
            # Cost 10 keeps a broker connect in the millisecond range on a small box.
            password_bcrypt=bcrypt.hashpw(token.encode(), bcrypt.gensalt(rounds=10)).decode(),
            revoked=False,
            created_at=utcnow().isoformat(),
        )
        with self._lock:
            self._reload_if_changed()
            if device_id in self._devices and not self._devices[device_id].revoked:
                raise ValueError(f"device {device_id!r} exists; revoke it first to re-issue")
            self._devices[device_id] = device
            self._save()
        return token

    def revoke(self, device_id: str) -> None:
        with self._lock:
            self._reload_if_changed()
            device = self._devices.get(device_id)
            if device is None:
                raise KeyError(f"no device {device_id!r}")
            self._devices[device_id] = Device(**{**asdict(device), "revoked": True})
            self._save()

    def list(self) -> list[Device]:
        return sorted(self._devices.values(), key=lambda d: d.id)

    def authenticate(self, token: str) -> Device:
        digest = hashlib.sha256(token.encode()).hexdigest()
        for device in self._devices.values():
            if secrets.compare_digest(device.token_sha256, digest):
                if device.revoked:
                    raise DeviceRefused("revoked_device", f"device {device.id!r} is revoked")
                return device
        raise DeviceRefused("unknown_device", "no device has this token; register it first")

    def broker_users(self, site: str) -> tuple[NatsUser, ...]:
        users = []
        for device in self.list():
            if device.revoked:
                continue
            publish, subscribe = device_permissions(site, device)
            users.append(NatsUser(device.id, device.password_bcrypt, publish, subscribe))
        return tuple(users)

