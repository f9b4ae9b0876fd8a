"""Reloading TLS files in place and warning before they expire (`common/tls.CertWatcher`)."""

from __future__ import annotations

import datetime as dt
import ssl
from pathlib import Path

import structlog

from edge2core.common.certs import read_cert
from edge2core.common.tls import CERT_EXPIRY, CertWatcher, TlsFiles, server_context
from tests.support.tls import make_pki


def test_changed_files_are_reloaded_and_a_soon_expiry_is_a_metric_and_a_warning(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "ca", sites=("store-1",), devices=())
    cert, key = pki.ca.paths("site", "store-1")
    files = TlsFiles(cert, key, pki.ca.ca_path, pki.ca.crl_path)
    ctx = server_context(files, client_certs=ssl.CERT_OPTIONAL)
    called: list[int] = []
    watcher = CertWatcher(every_s=1)
    watcher.watch(ctx, files, "store-1-test", on_change=lambda: called.append(1))
    left = CERT_EXPIRY.labels(cert="store-1-test")._value.get()
    assert 396 * 86400 < left < 398 * 86400
    assert watcher.check() == 0  # nothing changed
    # Renewed on disk to a certificate that expires in ten days: reloaded, warned about.
    pki.ca.issue("site", "store-1", ["127.0.0.1"], days=10)
    with structlog.testing.capture_logs() as logs:
        assert watcher.check() == 1
    assert called == [1]
    assert any(e["event"].startswith("TLS certificate expires soon") and e["cert"] == "store-1-test"
               for e in logs), logs
    assert CERT_EXPIRY.labels(cert="store-1-test")._value.get() < 10 * 86400
    assert read_cert(cert).not_valid_after_utc - dt.datetime.now(dt.UTC) < dt.timedelta(days=10)
    # A half-written file is not loaded: the old material stays, the next check tries again.
    key.write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n")
    with structlog.testing.capture_logs() as logs:
        assert watcher.check() == 0
    assert any("could not be loaded" in e["event"] for e in logs)
