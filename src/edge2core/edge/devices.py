"""Device identity: who may send photos to this site, and under which topics.

Each device has a random secret. The registry keeps only hashes: SHA-256 to check HTTP bearer
tokens quickly, bcrypt for the broker (checked by the edge's broker auth service, see
`broker_auth`). A device may publish only under its own topics and connect over MQTT only with
client ids of its own; revoking it closes its broker connection within seconds.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import re
import secrets
import threading
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path

import bcrypt

from edge2core.common import topics
from edge2core.common.events import ID_PATTERN, utcnow
from edge2core.common.fsutil import write_atomic

# Anonymous shoppers' ids (`guests.GuestPasses`): never a registered device's.
GUEST_PREFIX = "guest-"


class DeviceRole(StrEnum):
    KIOSK = "kiosk"
    SHOPPER = "shopper"


#: MQTT client ids starting with this (and device ids, so that no device owns them) are the
#: edge's own (`e2c-<site>-capture-<random>`...): no device may connect with one.
EDGE_CLIENT_ID_PREFIX = "e2c-"


class DeviceRefused(PermissionError):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        # "unknown_device", "revoked_device", "wrong_secret" or "client_id_not_owned"
        self.reason = reason


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


def is_edge_client_id(client_id: str) -> bool:
    return client_id == EDGE_CLIENT_ID_PREFIX[:-1] or client_id.startswith(EDGE_CLIENT_ID_PREFIX)


def client_id_owner(client_id: str, device_ids: Iterable[str]) -> str | None:
    """The registered device an MQTT client id belongs to: the device whose id it is, or starts
    with followed by '-'; the longest such id wins (`kiosk-7-a` is kiosk-7's, not kiosk's).
    None: nobody's, or the edge's own (`EDGE_CLIENT_ID_PREFIX`)."""
    if is_edge_client_id(client_id):
        return None
    owners = [d for d in device_ids if client_id == d or client_id.startswith(f"{d}-")]
    return max(owners, key=len, default=None)


def owns_client_id(device_id: str, client_id: str, device_ids: Iterable[str]) -> bool:
    """Brokers key MQTT sessions by client id alone, so a client id is an identity: a device may
    use its own id, or its id followed by '-' and anything, unless that is another registered
    (or revoked) device's, or the edge's own."""
    return client_id_owner(client_id, [device_id, *device_ids]) == device_id


class DeviceRegistry:
    """A JSON file of devices, written atomically; safe to edit while the edge runs."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._devices: dict[str, Device] = {}
        self._mtime: float | None = None
        # (device id, bcrypt hash) -> SHA-256 of the secret bcrypt accepted: a device's next
        # connects (a reconnect storm after a restart) skip bcrypt. Memory only; a re-issued
        # secret has another hash, so it never matches an old entry.
        self._verified: dict[tuple[str, str], bytes] = {}
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
        if is_edge_client_id(device_id):
            raise ValueError(f"device ids starting with {EDGE_CLIENT_ID_PREFIX!r} are the edge's own")
        if device_id.startswith(GUEST_PREFIX):
            raise ValueError(f"device ids starting with {GUEST_PREFIX!r} are shoppers' guest passes")
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

    def get(self, device_id: str) -> Device | None:
        return self._devices.get(device_id)

    def ids(self) -> builtins.list[str]:
        """Every registered id, revoked ones too (their client ids stay theirs)."""
        with self._lock:
            return list(self._devices)

    def authenticate_broker(self, device_id: str, password: str, client_id: str | None) -> Device:
        """The broker's check: username = device id, password = its secret (bcrypt, tens of ms
        the first time in this process: call it off any event loop), and an MQTT client id of
        its own (`owns_client_id`); `client_id` None: not MQTT, no client id to check."""
        with self._lock:
            device, registered = self._devices.get(device_id), list(self._devices)
        if device is None:
            raise DeviceRefused("unknown_device", f"no device {device_id!r}; register it first")
        if device.revoked:
            raise DeviceRefused("revoked_device", f"device {device_id!r} is revoked")
        digest = hashlib.sha256(password.encode()).digest()
        known = self._verified.get((device.id, device.password_bcrypt))
        if known is None or not secrets.compare_digest(known, digest):
            if not bcrypt.checkpw(password.encode(), device.password_bcrypt.encode()):
                raise DeviceRefused("wrong_secret", f"wrong secret for device {device_id!r}")
            self._verified[(device.id, device.password_bcrypt)] = digest
        if client_id is not None and not owns_client_id(device_id, client_id, registered):
            raise DeviceRefused(
                "client_id_not_owned",
                f"device {device_id!r} may not use MQTT client id {client_id!r}: use its id or "
                f"'{device_id}-<anything>'",
            )
        return device

    def authenticate(self, token: str) -> Device:
        digest = hashlib.sha256(token.encode()).hexdigest()
        for device in self._devices.values():
            if secrets.compare_digest(device.token_sha256, digest):
                if device.revoked:
                    raise DeviceRefused("revoked_device", f"device {device.id!r} is revoked")
                return device
        raise DeviceRefused("unknown_device", "no device has this token; register it first")
