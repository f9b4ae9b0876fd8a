"""A private certificate authority for edge2core (`edge2core certs`), on files in one folder.

Layout of a CA folder (keys are written 0600, certificates 0644)::

    ca.pem, ca.key                  the authority (ECDSA P-384, 10 years)
    core/core.pem, core/core.key    the core's server certificate (ECDSA P-256, 397 days)
    sites/<id>.pem, sites/<id>.key  a site: server for its devices, client towards the core
    devices/<id>.pem, .key          a device's client certificate (365 days)
    crl.pem                         revoked serials, rewritten on every revoke and by `crl`
    index.json                      what was issued: serial -> kind, name, not_after, revoked

Why these choices: ECDSA P-256 leaf keys are what every stock client (paho/OpenSSL, browsers,
nats-server, Go) accepts and are an order of magnitude cheaper to handshake than RSA-3072;
397 days is the most browsers accept for a server certificate; the subject's common name is the
identity (`core`, the site id, the device id) and the SANs carry every host name and address a
peer dials. Sites' certificates carry both serverAuth (their devices dial them) and clientAuth
(they dial the core with it: mutual TLS).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CertAuthority",
    "Issued",
    "Kind",
    "LIFETIME_DAYS",
    "cert_fingerprint",
    "cert_not_after",
    "read_cert",
]

Kind = Literal["core", "site", "device"]
KINDS: tuple[Kind, ...] = ("core", "site", "device")
LIFETIME_DAYS: dict[str, int] = {"ca": 3650, "core": 397, "site": 397, "device": 365}
_FOLDERS: dict[Kind, str] = {"core": "core", "site": "sites", "device": "devices"}
_CRL_DAYS = 30  # a CRL past its next update fails every check: `certs crl` refreshes it
_BACKDATE = dt.timedelta(minutes=5)  # tolerate small clock skew between machines


@dataclass(frozen=True)
class Issued:
    """One certificate the CA issued (a row of `index.json`)."""

    serial: int
    kind: str
    name: str
    not_after: str  # ISO 8601, UTC
    cert: str  # path relative to the CA folder
    key: str
    revoked_at: str | None = None


def read_cert(path: Path) -> x509.Certificate:
    """The first PEM certificate in `path` (raises ValueError if there is none)."""
    return x509.load_pem_x509_certificate(Path(path).read_bytes())


def cert_not_after(path: Path) -> dt.datetime:
    """When the certificate in `path` expires (aware, UTC)."""
    return read_cert(path).not_valid_after_utc


def cert_fingerprint(cert: x509.Certificate) -> str:
    """Hex SHA-256 of the certificate's DER SubjectPublicKeyInfo: nats-server's `pinned_certs`
    form (every certificate gets a fresh key here, so a pin names one certificate)."""
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write atomically (rename), so a watcher never reads half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _general_names(sans: Iterable[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for san in sans:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(san)))
        except ValueError:
            names.append(x509.DNSName(san))
    return names


class CertAuthority:
    """The private CA in `folder`. `create` makes it; the other methods need it to exist.

    Raises FileNotFoundError (no CA there), FileExistsError (`create` over an existing CA),
    KeyError (revoking or renewing something never issued)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    @property
    def ca_path(self) -> Path:
        return self.folder / "ca.pem"

    @property
    def crl_path(self) -> Path:
        return self.folder / "crl.pem"

    @property
    def exists(self) -> bool:
        return self.ca_path.is_file() and (self.folder / "ca.key").is_file()

    def create(self, name: str = "edge2core private CA", days: int = LIFETIME_DAYS["ca"]) -> Path:
        """Make the CA's key and self-signed certificate, an empty CRL; returns ca.pem's path."""
        if self.exists:
            raise FileExistsError(f"a CA already exists in {self.folder}")
        key = ec.generate_private_key(ec.SECP384R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name),
                             x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edge2core")])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA384())
        )
        _write(self.folder / "ca.key", _key_pem(key), 0o600)
        _write(self.ca_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        self._save_index({})
        self.write_crl()
        return self.ca_path

    # ------------------------------------------------------------------ issuing

    def issue(self, kind: Kind, name: str, sans: Iterable[str] = (), *, days: int | None = None,
              not_before: dt.datetime | None = None) -> Issued:
        """Issue `name`'s certificate and a fresh key (replacing any files of that name).

        `sans`: host names and IP addresses peers dial (servers: core and sites; the name itself
        is always added as a DNS name for core and sites). `days` defaults to `LIFETIME_DAYS`.
        `not_before` backdates the certificate (tests make expired ones with it)."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
        ca_key, ca_cert = self._load_ca()
        key = ec.generate_private_key(ec.SECP256R1())
        start = not_before or dt.datetime.now(dt.UTC) - _BACKDATE
        end = start + dt.timedelta(days=days if days is not None else LIFETIME_DAYS[kind])
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name),
                                     x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, kind)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(min(end, ca_cert.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, key_agreement=True, key_cert_sign=False, crl_sign=False,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(self._usages(kind)), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
        )
        names = list(dict.fromkeys([*sans, *([name] if kind != "device" else [])]))
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(_general_names(names)),
                                            critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        cert_path, key_path = self.paths(kind, name)
        _write(key_path, _key_pem(key), 0o600)
        _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        issued = Issued(cert.serial_number, kind, name, cert.not_valid_after_utc.isoformat(),
                        str(cert_path.relative_to(self.folder)), str(key_path.relative_to(self.folder)))
        index = self._index()
        index[str(issued.serial)] = asdict(issued)
        self._save_index(index)
        return issued

    @staticmethod
    def _usages(kind: Kind) -> list[x509.ObjectIdentifier]:
        if kind == "core":
            return [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
        if kind == "site":
            return [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
        return [ExtendedKeyUsageOID.CLIENT_AUTH]

    def paths(self, kind: Kind, name: str) -> tuple[Path, Path]:
        """(certificate, key) paths of `name`'s files."""
        folder = self.folder / _FOLDERS[kind]
        return folder / f"{name}.pem", folder / f"{name}.key"

    def renew(self, kind: Kind, name: str, *, days: int | None = None) -> Issued:
        """A new key and certificate for `name`, with the SANs of its current certificate.
        The old certificate stays valid until it expires or is revoked, so peers holding it
        keep working while the new files are rolled out (reloaded without a restart)."""
        cert_path, _ = self.paths(kind, name)
        if not cert_path.is_file():
            raise KeyError(f"no {kind} certificate named {name!r} in {self.folder}")
        old = read_cert(cert_path)
        try:
            san = old.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            sans = [*san.get_values_for_type(x509.DNSName),
                    *(str(ip) for ip in san.get_values_for_type(x509.IPAddress))]
        except x509.ExtensionNotFound:
            sans = []
        return self.issue(kind, name, sans, days=days)

    # ------------------------------------------------------------------ revoking

    def revoke(self, kind: Kind, name: str, *, serial: int | None = None) -> list[Issued]:
        """Revoke `name`'s certificates (every one issued to it, or only `serial`) and rewrite
        the CRL. Returns what was revoked (empty if they already were)."""
        index = self._index()
        now = dt.datetime.now(dt.UTC).isoformat()
        revoked: list[Issued] = []
        for key, row in index.items():
            if row["kind"] == kind and row["name"] == name and row["revoked_at"] is None \
                    and (serial is None or int(key) == serial):
                row["revoked_at"] = now
                revoked.append(Issued(**row))
        if not revoked and not any(r["kind"] == kind and r["name"] == name for r in index.values()):
            raise KeyError(f"no {kind} certificate named {name!r} was issued by this CA")
        self._save_index(index)
        self.write_crl()
        return revoked

    def issued(self) -> list[Issued]:
        """Everything issued, oldest first by expiry."""
        return sorted((Issued(**row) for row in self._index().values()), key=lambda r: r.not_after)

    def valid_fingerprints(self, kind: Kind) -> list[str]:
        """SHA-256 fingerprints of `kind`'s certificates on disk that are neither revoked nor
        expired (what a server pins: only these may connect)."""
        bad = {r.serial for r in self.issued() if r.revoked_at is not None}
        now = dt.datetime.now(dt.UTC)
        prints = []
        for path in sorted((self.folder / _FOLDERS[kind]).glob("*.pem")):
            cert = read_cert(path)
            if cert.serial_number not in bad and cert.not_valid_after_utc > now:
                prints.append(cert_fingerprint(cert))
        return prints

    def refresh_crl(self, before: dt.timedelta = dt.timedelta(days=7)) -> bool:
        """Rewrite the CRL when its next update is less than `before` away (an expired CRL
        fails every certificate check). Returns whether it was rewritten."""
        try:
            crl = x509.load_pem_x509_crl(self.crl_path.read_bytes())
            due = crl.next_update_utc is None or crl.next_update_utc - dt.datetime.now(dt.UTC) < before
        except (OSError, ValueError):
            due = True
        if due:
            self.write_crl()
        return due

    def write_crl(self, days: int = _CRL_DAYS) -> Path:
        """(Re)write crl.pem listing every revoked serial, valid for `days`."""
        ca_key, ca_cert = self._load_ca()
        now = dt.datetime.now(dt.UTC)
        builder = (x509.CertificateRevocationListBuilder().issuer_name(ca_cert.subject)
                   .last_update(now - _BACKDATE).next_update(now + dt.timedelta(days=days)))
        for row in self.issued():
            if row.revoked_at is not None:
                builder = builder.add_revoked_certificate(
                    x509.RevokedCertificateBuilder().serial_number(row.serial)
                    .revocation_date(dt.datetime.fromisoformat(row.revoked_at)).build())
        crl = builder.sign(ca_key, hashes.SHA384())
        _write(self.crl_path, crl.public_bytes(serialization.Encoding.PEM), 0o644)
        return self.crl_path

    # ------------------------------------------------------------------ internals

    def _load_ca(self) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        if not self.exists:
            raise FileNotFoundError(f"no CA in {self.folder}: run `edge2core certs init` first")
        key = serialization.load_pem_private_key((self.folder / "ca.key").read_bytes(), None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError("the CA key is not an ECDSA key")
        return key, read_cert(self.ca_path)

    def _index(self) -> dict[str, dict]:
        path = self.folder / "index.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def _save_index(self, index: dict[str, dict]) -> None:
        _write(self.folder / "index.json", json.dumps(index, indent=1).encode(), 0o644)
