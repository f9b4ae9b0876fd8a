"""Devices that prove themselves with an X.509 certificate, and revoked device certificates.

With `device_certs = true` the site's broker asks every MQTT and WebSocket client for a
certificate from the private CA at the TLS handshake (verified against `ca.pem`: a foreign or
expired certificate never gets further). Revocation is decided here, by the auth callout, not by
the broker: nats-server reads no CRL, and pinning the unrevoked certificates in its config would
mean a reload for every certificate issued or revoked, and a reload closes every device the
callout admitted (nats-server 2.15.1). So:

* over MQTT (TCP) the callout request carries the verified chain: a certificate whose SHA-256
  fingerprint is not among the CA's valid device certificates (revoked, superseded by a
  renewal, unknown to the index, or not a device's) is refused (`revoked_certificate`);
* on any door (WebSockets too, where nats-server 2.15.1 passes no certificate to the callout,
  and password logins) a device that has a revoked certificate and no valid one left is
  refused (`revoked_certificate`) until it is issued a new one;
* a device whose certificate says `OU=device, CN=<id>` may connect without a password, as
  `<id>` (a username, if sent, must be the same id), with the permissions a password gives.

`DeviceCertIndex` reads the CA's view (`index.json` and `devices/*.pem` in the TLS folder,
through `CertAuthority`) and keeps it until `index.json` or the `devices/` folder changes.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from edge2core.common.certs import CertAuthority, cert_fingerprint, read_cert
from edge2core.common.logging import get_logger
from edge2core.edge.devices import Device, DeviceRefused, DeviceRegistry, owns_client_id

__all__ = ["ClientCertificate", "DeviceCertIndex", "authenticate_certificate", "client_certificate"]

log = get_logger(__name__)

REVOKED = "revoked_certificate"


@dataclass(frozen=True)
class ClientCertificate:
    """The verified client certificate of an authorization request."""

    fingerprint: str  # hex SHA-256 of its SubjectPublicKeyInfo (`cert_fingerprint`)
    device: str | None  # its CN when it is a device's (`OU=device`), else None


def _attr(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> str:
    values = cert.subject.get_attributes_for_oid(oid)
    return str(values[0].value) if values else ""


def client_certificate(claims: dict[str, Any]) -> ClientCertificate | None:
    """The leaf of the verified chain in an authorization request's claims (nats-server puts it
    there for MQTT over TLS with `verify`; never for WebSockets), or None."""
    tls = (claims.get("nats") or {}).get("client_tls") or {}
    chains = tls.get("verified_chains") or []
    if not chains or not chains[0]:
        return None
    try:
        leaf = x509.load_pem_x509_certificate(str(chains[0][0]).encode())
    except ValueError:
        return None
    is_device = _attr(leaf, NameOID.ORGANIZATIONAL_UNIT_NAME) == "device"
    return ClientCertificate(cert_fingerprint(leaf),
                             (_attr(leaf, NameOID.COMMON_NAME) or None) if is_device else None)


def authenticate_certificate(registry: DeviceRegistry, device_id: str, username: str,
                             client_id: str | None) -> Device:
    """The registered, unrevoked device `device_id` (its certificate was verified by the
    broker); raises DeviceRefused as the password check does."""
    if username and username != device_id:
        raise DeviceRefused("wrong_device", f"certificate of {device_id!r} used as {username!r}")
    device = registry.get(device_id)
    if device is None:
        raise DeviceRefused("unknown_device", f"no device {device_id!r}; register it first")
    if device.revoked:
        raise DeviceRefused("revoked_device", f"device {device_id!r} is revoked")
    if client_id is not None and not owns_client_id(device_id, client_id, registry.ids()):
        raise DeviceRefused("client_id_not_owned",
                            f"device {device_id!r} may not use MQTT client id {client_id!r}")
    return device


@dataclass(frozen=True)
class _Snapshot:
    valid: frozenset[str]  # fingerprints of unrevoked, unexpired device certificates on disk
    locked_out: frozenset[str]  # devices with a revoked certificate and no valid one


class DeviceCertIndex:
    """Which device certificates the CA in `folder` (a site's TLS folder) still vouches for.

    Read with `CertAuthority` (`index.json` for revocations, `devices/<id>.pem` for what each
    device holds now) and cached: read again when `index.json`'s mtime or size or the `devices/`
    folder's mtime changes, and at least every `max_age_s` (certificates expire without any
    file changing). Without a `devices/` folder nothing is decided here (any certificate from
    the CA passes, as the handshake let it). Thread-safe.

    `check` raises DeviceRefused("revoked_certificate"); `stale` says why, or None.
    Both raise OSError or ValueError when the files cannot be read (callers fail closed at
    connect and skip the round in `enforce`).
    """

    def __init__(self, folder: Path, *, max_age_s: float = 60.0) -> None:
        self.ca = CertAuthority(Path(folder))
        self.max_age_s = max_age_s
        self._lock = threading.Lock()
        self._key: tuple[int, int, int] | None = None
        self._read_at = 0.0
        self._snapshot: _Snapshot | None = None

    def _stamp(self) -> tuple[int, int, int] | None:
        devices = self.ca.folder / "devices"
        if not devices.is_dir():
            return None
        index = self.ca.folder / "index.json"
        stat = index.stat() if index.is_file() else None
        return (stat.st_mtime_ns if stat else 0, stat.st_size if stat else 0, devices.stat().st_mtime_ns)

    def _read(self) -> _Snapshot:
        valid = frozenset(self.ca.valid_fingerprints("device"))
        revoked = {row.name for row in self.ca.issued() if row.kind == "device" and row.revoked_at}
        locked = set()
        for name in revoked:
            path, _ = self.ca.paths("device", name)
            if not path.is_file() or cert_fingerprint(read_cert(path)) not in valid:
                locked.add(name)
        return _Snapshot(valid, frozenset(locked))

    def snapshot(self) -> _Snapshot | None:
        """The CA's current view, re-read only when its files changed (None: no `devices/`)."""
        with self._lock:
            key = self._stamp()
            if key is None:
                self._key, self._snapshot = None, None
                return None
            fresh = time.monotonic() - self._read_at < self.max_age_s
            if key != self._key or self._snapshot is None or not fresh:
                self._snapshot = self._read()
                self._key, self._read_at = key, time.monotonic()
                log.info("device certificates read", valid=len(self._snapshot.valid),
                         locked_out=sorted(self._snapshot.locked_out))
            return self._snapshot

    def stale(self, device: str | None, fingerprint: str | None) -> str | None:
        """Why the CA no longer vouches for this client, or None: its certificate's
        `fingerprint` (if known) is not a valid device certificate's (revoked, superseded or
        unknown), or `device` (if given) holds only revoked certificates."""
        snap = self.snapshot()
        if snap is None:
            return None
        if fingerprint is not None and fingerprint not in snap.valid:
            return "the client certificate is revoked, superseded or unknown"
        if device is not None and device in snap.locked_out:
            return f"device {device!r} holds only revoked certificates; issue it a new one"
        return None

    def check(self, device: str | None, fingerprint: str | None) -> None:
        """Raise DeviceRefused(`revoked_certificate`) where `stale` names a reason."""
        why = self.stale(device, fingerprint)
        if why is not None:
            raise DeviceRefused(REVOKED, why)
