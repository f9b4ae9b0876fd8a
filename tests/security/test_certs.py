"""`edge2core certs`: the CA, what it issues, renewal, revocation and the CRL (checked by OpenSSL)."""

from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from typer.testing import CliRunner

from edge2core.cli import app
from edge2core.common.certs import CertAuthority, cert_fingerprint, read_cert
from tests.support.tls import Pki, make_pki


def _openssl_verify(pki: Pki, cert: str, *, crl: bool = True) -> subprocess.CompletedProcess[str]:
    args = ["openssl", "verify", "-CAfile", pki.ca_file]
    if crl:
        args += ["-crl_check", "-CRLfile", str(pki.ca.crl_path)]
    return subprocess.run([*args, cert], capture_output=True, text=True, check=False)


def test_issued_certificates_have_the_right_keys_lifetimes_usages_and_names(session_pki: Pki) -> None:
    ca = read_cert(session_pki.ca.ca_path)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey) and ca.public_key().curve.name == "secp384r1"
    site = read_cert(Path(session_pki.site("site-a")[0]))
    assert site.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    life = site.not_valid_after_utc - site.not_valid_before_utc
    assert dt.timedelta(days=396) < life <= dt.timedelta(days=398)
    usages = site.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= set(usages)
    sans = site.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "site-a" in sans.get_values_for_type(x509.DNSName)
    assert "127.0.0.1" in [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)]
    device = read_cert(Path(session_pki.device("kiosk-1")[0]))
    assert list(device.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH]  # a stolen device certificate cannot serve as a site
    assert _openssl_verify(session_pki, session_pki.site("site-a")[0]).returncode == 0
    # Keys are for their owner only.
    assert oct(Path(session_pki.site("site-a")[1]).stat().st_mode & 0o777) == "0o600"
    assert oct((session_pki.folder / "ca.key").stat().st_mode & 0o777) == "0o600"


def test_revoked_certificates_are_in_the_crl_and_refused_by_openssl(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "ca")
    revoked = pki.ca.revoke("site", "site-b")
    assert len(revoked) == 1
    crl = x509.load_pem_x509_crl(pki.ca.crl_path.read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(revoked[0].serial) is not None
    refused = _openssl_verify(pki, pki.site("site-b")[0])
    assert refused.returncode != 0 and "revoked" in refused.stdout + refused.stderr
    assert _openssl_verify(pki, pki.site("site-a")[0]).returncode == 0
    # Pins (the leaf link's list) leave the revoked site out.
    site_b = cert_fingerprint(read_cert(Path(pki.site("site-b")[0])))
    assert site_b not in pki.ca.valid_fingerprints("site")
    assert len(pki.ca.valid_fingerprints("site")) == 1
    with pytest.raises(KeyError):
        pki.ca.revoke("site", "never-issued")


def test_renewal_makes_a_new_key_with_the_same_names(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "ca")
    before = read_cert(Path(pki.site("site-a")[0]))
    pki.ca.renew("site", "site-a")
    after = read_cert(Path(pki.site("site-a")[0]))
    assert after.serial_number != before.serial_number
    assert cert_fingerprint(after) != cert_fingerprint(before)  # a fresh key
    names = lambda c: set(c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    assert names(after) == names(before)
    assert len(pki.ca.issued()) == 1 + 2 + 2 + 1  # the old certificate stays listed (not revoked)


def test_the_command_line_makes_a_ca_and_certificates(tmp_path: Path) -> None:
    runner = CliRunner()
    folder = str(tmp_path / "ca")
    for args in (["init"], ["core", "--san", "core.example.com"], ["site", "store-1"],
                 ["device", "kiosk-9"], ["revoke", "device", "kiosk-9"], ["crl"], ["list"]):
        result = runner.invoke(app, ["certs", *args, "--dir", folder])
        assert result.exit_code == 0, (args, result.output)
    assert "revoked" in result.output and "store-1" in result.output
    again = runner.invoke(app, ["certs", "init", "--dir", folder])
    assert again.exit_code == 1  # never overwrites a CA
    core = read_cert(CertAuthority(Path(folder)).paths("core", "core")[0])
    assert "core.example.com" in core.extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    nothing = runner.invoke(app, ["certs", "site", "x", "--dir", str(tmp_path / "none")])
    assert nothing.exit_code == 2


def test_a_crl_close_to_its_next_update_is_rewritten(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "ca", sites=("store-1",), devices=())
    pki.ca.revoke("site", "store-1")
    pki.ca.write_crl(days=3)
    assert pki.ca.refresh_crl() is True
    crl = x509.load_pem_x509_crl(pki.ca.crl_path.read_bytes())
    assert crl.next_update_utc is not None
    assert crl.next_update_utc - dt.datetime.now(dt.UTC) > dt.timedelta(days=29)
    assert len(list(crl)) == 1  # still lists the revoked site
    assert pki.ca.refresh_crl() is False
