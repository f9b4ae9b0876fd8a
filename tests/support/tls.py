"""Certificates for tests: a private CA per test session, made with `edge2core certs`' own code.

`session_pki` (a session-scoped fixture, registered in tests/security/conftest.py) makes the CA,
the core's certificate, two sites' and two devices'; tests that revoke or renew make their own
with `make_pki`, so the shared one never changes under another test.
"""

from __future__ import annotations

import datetime as dt
import ssl
from dataclasses import dataclass
from pathlib import Path

from edge2core.common.certs import CertAuthority

SITES = ("site-a", "site-b")
DEVICES = ("kiosk-1", "phone-1")


@dataclass(frozen=True)
class Pki:
    """A CA folder and shortcuts to its files."""

    ca: CertAuthority

    @property
    def folder(self) -> Path:
        return self.ca.folder

    @property
    def ca_file(self) -> str:
        return str(self.ca.ca_path)

    def site(self, name: str) -> tuple[str, str]:
        cert, key = self.ca.paths("site", name)
        return str(cert), str(key)

    def device(self, name: str) -> tuple[str, str]:
        cert, key = self.ca.paths("device", name)
        return str(cert), str(key)

    def client_context(self, cert: tuple[str, str] | None = None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.ca_file)
        if cert is not None:
            ctx.load_cert_chain(*cert)
        return ctx


def make_pki(folder: Path, sites: tuple[str, ...] = SITES, devices: tuple[str, ...] = DEVICES) -> Pki:
    ca = CertAuthority(folder)
    ca.create("edge2core test CA")
    ca.issue("core", "core", ["localhost", "127.0.0.1"])
    for site in sites:
        ca.issue("site", site, ["localhost", "127.0.0.1"])
    for device in devices:
        ca.issue("device", device)
    return Pki(ca)


def expired(pki: Pki, kind: str, name: str) -> tuple[str, str]:
    """Issue `name` a certificate that expired yesterday (a separate name in the same CA)."""
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    pki.ca.issue(kind, name, ["localhost", "127.0.0.1"] if kind != "device" else [],  # type: ignore[arg-type]
                 days=29, not_before=long_ago)
    cert, key = pki.ca.paths(kind, name)  # type: ignore[arg-type]
    return str(cert), str(key)


def foreign(folder: Path, kind: str, name: str) -> tuple[str, str]:
    """A certificate named `name` from another CA: unknown to ours."""
    other = make_pki(folder, sites=(), devices=())
    other.ca.issue(kind, name, ["localhost", "127.0.0.1"] if kind != "device" else [])  # type: ignore[arg-type]
    cert, key = other.ca.paths(kind, name)  # type: ignore[arg-type]
    return str(cert), str(key)
