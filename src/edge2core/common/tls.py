"""TLS for edge2core's servers and clients: which files, the `ssl` contexts made from them,
reloading them without a restart, and their expiry as a metric and a warning.

A role's TLS lives in one folder laid out as `edge2core certs` writes it (`common/certs.py`):
`ca.pem` (whom to trust), `crl.pem` (whom no longer to trust) and the role's own certificate and
key. Contexts are changed in place when the files change (`CertWatcher`): Python's `ssl` copies a
context's certificate, key and trust store into each new connection, so new handshakes use the
new files and connections already open are left alone.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import Gauge

from edge2core.common.certs import CertAuthority, cert_not_after
from edge2core.common.logging import get_logger

__all__ = [
    "CERT_EXPIRY",
    "CertWatcher",
    "TlsFiles",
    "client_context",
    "core_tls_files",
    "server_context",
    "site_tls_files",
]

log = get_logger(__name__)

CERT_EXPIRY = Gauge("e2c_tls_cert_expiry_seconds",
                    "Seconds until a certificate this process serves or presents expires", ["cert"])
#: Warn this long before a certificate expires (renew with `edge2core certs renew`).
WARN_BEFORE = dt.timedelta(days=30)


@dataclass(frozen=True)
class TlsFiles:
    """The files of one TLS identity. `crl` is optional (no revocation checks without it)."""

    cert: Path
    key: Path
    ca: Path
    crl: Path | None = None

    def missing(self) -> list[Path]:
        return [p for p in (self.cert, self.key, self.ca, self.crl) if p is not None and not p.is_file()]

    def require(self) -> TlsFiles:
        """Self, or FileNotFoundError naming every missing file."""
        missing = self.missing()
        if missing:
            raise FileNotFoundError(
                "TLS is on but these files are missing: " + ", ".join(map(str, missing))
                + " (make them with `edge2core certs`, or set plaintext = true for development)")
        return self


def core_tls_files(folder: Path) -> TlsFiles:
    """The core's files in a CA folder."""
    ca = CertAuthority(folder)
    cert, key = ca.paths("core", "core")
    return TlsFiles(cert, key, ca.ca_path, ca.crl_path)


def site_tls_files(folder: Path, site: str) -> TlsFiles:
    """Site `site`'s files in a CA folder (or a copy of its `ca.pem`, `crl.pem` and `sites/`)."""
    ca = CertAuthority(folder)
    cert, key = ca.paths("site", site)
    crl = ca.crl_path if ca.crl_path.is_file() else None
    return TlsFiles(cert, key, ca.ca_path, crl)


def _load_crl(ctx: ssl.SSLContext, crl: Path | None) -> None:
    if crl is not None:
        ctx.load_verify_locations(cafile=str(crl))
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF


def server_context(files: TlsFiles, *, client_certs: ssl.VerifyMode = ssl.CERT_OPTIONAL) -> ssl.SSLContext:
    """A server context: our certificate, TLS 1.2+, client certificates checked against the CA
    and the CRL (`CERT_REQUIRED`: mutual TLS, `CERT_OPTIONAL`: checked when sent)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(files.cert), str(files.key))
    ctx.load_verify_locations(cafile=str(files.ca))
    ctx.verify_mode = client_certs
    _load_crl(ctx, files.crl)
    return ctx


def client_context(ca: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    """A client context trusting only `ca`, presenting `cert`/`key` when given (mutual TLS)."""
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None and key is not None:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


def _stamp(paths: list[Path]) -> tuple[tuple[int, int], ...]:
    stamps = []
    for path in paths:
        try:
            st = path.stat()
            stamps.append((st.st_mtime_ns, st.st_size))
        except FileNotFoundError:
            stamps.append((0, 0))
    return tuple(stamps)


@dataclass
class _Watched:
    ctx: ssl.SSLContext | None  # None: `on_change` does the reloading (e.g. nats-server's SIGHUP)
    files: TlsFiles
    name: str
    presents: bool  # does this context present `files.cert` (servers, mTLS clients)?
    on_change: Callable[[], None] | None = None
    extra: tuple[Path, ...] = ()  # more files whose change calls `on_change`
    stamp: tuple[tuple[int, int], ...] = ()


@dataclass
class CertWatcher:
    """Reloads contexts whose files changed and keeps the expiry gauge current.

    `check()` is cheap (a few stats) and idempotent; `run()` calls it every `every_s`. A file
    caught half-written fails to load: the context keeps its old material, the failure is
    logged, and the next check tries again."""

    every_s: float = 5.0
    # Runs before each check (the core refreshes the CRL of a CA it holds with it).
    on_tick: Callable[[], object] | None = None
    _watched: list[_Watched] = field(default_factory=list)

    def watch(self, ctx: ssl.SSLContext | None, files: TlsFiles, name: str, *, presents: bool = True,
              on_change: Callable[[], None] | None = None, extra: tuple[Path, ...] = ()) -> None:
        """Reload `ctx` in place (and/or call `on_change`) when any of `files` (or `extra`)
        changes."""
        item = _Watched(ctx, files, name, presents, on_change, extra)
        item.stamp = _stamp(self._paths(item))
        self._watched.append(item)
        self._report(item)

    @staticmethod
    def _paths(item: _Watched) -> list[Path]:
        files = item.files
        return [files.cert, files.key, files.ca, *([files.crl] if files.crl else []), *item.extra]

    def check(self) -> int:
        """Reload what changed; returns how many contexts were reloaded."""
        if self.on_tick is not None:
            try:
                self.on_tick()
            except (OSError, ValueError) as exc:
                log.warning("TLS housekeeping failed", error=repr(exc))
        reloaded = 0
        for item in self._watched:
            stamp = _stamp(self._paths(item))
            if stamp == item.stamp:
                continue
            try:
                if item.ctx is not None:
                    if item.presents:
                        item.ctx.load_cert_chain(str(item.files.cert), str(item.files.key))
                    # Added to the trust store: a renewed CA or a newer CRL (OpenSSL prefers
                    # the CRL with the latest update).
                    item.ctx.load_verify_locations(cafile=str(item.files.ca))
                    _load_crl(item.ctx, item.files.crl)
                if item.on_change is not None:
                    item.on_change()
            except (OSError, ssl.SSLError, ValueError) as exc:
                log.warning("TLS files changed but could not be loaded; keeping the old ones",
                            cert=item.name, error=type(exc).__name__)
                continue
            item.stamp = stamp
            reloaded += 1
            log.info("TLS certificate reloaded", cert=item.name, path=str(item.files.cert))
            self._report(item)
        return reloaded

    def _report(self, item: _Watched) -> None:
        if not item.presents:
            return
        try:
            not_after = cert_not_after(item.files.cert)
        except (OSError, ValueError):
            return
        left = not_after - dt.datetime.now(dt.UTC)
        CERT_EXPIRY.labels(cert=item.name).set(left.total_seconds())
        if left < WARN_BEFORE:
            log.warning("TLS certificate expires soon: renew it with `edge2core certs renew`",
                        cert=item.name, path=str(item.files.cert), not_after=not_after.isoformat(),
                        days_left=round(left.total_seconds() / 86400, 1))

    async def run(self) -> None:
        """Check forever (cancel to stop); the expiry warning repeats about daily."""
        ticks_per_day = max(1, int(86400 / self.every_s))
        tick = 0
        while True:
            await asyncio.sleep(self.every_s)
            await asyncio.to_thread(self.check)
            tick += 1
            if tick % ticks_per_day == 0:
                for item in self._watched:
                    self._report(item)


def prepare_core_tls(tls_dir: Path | None, data_dir: Path, host: str, *, plaintext: bool) -> TlsFiles | None:
    """The core's TLS files, or None with a warning when `plaintext` says so.

    With no `tls_dir`, the CA lives in `data_dir/tls` and is made on first start, with the
    core's certificate for `host`, localhost and 127.0.0.1 (sites then need `ca.pem` and their
    own certificate from it: `edge2core certs site --dir DATA_DIR/tls SITE`).
    Raises FileNotFoundError when a given `tls_dir` lacks the core's files."""
    if plaintext:
        log.warning("TLS is off (plaintext = true): the core's API and leaf link are plain text")
        return None
    folder = tls_dir or data_dir / "tls"
    ca = CertAuthority(folder)
    if tls_dir is None and not ca.exists:
        ca.create()
        log.warning("made a private CA for this core; give sites its ca.pem and their certificates",
                    ca=str(ca.ca_path))
    files = core_tls_files(folder)
    if tls_dir is None and not files.cert.is_file():
        ca.issue("core", "core", [host, "localhost", "127.0.0.1"])
    return files.require()


def prepare_site_tls(tls_dir: Path | None, data_dir: Path, site: str, *, plaintext: bool) -> TlsFiles | None:
    """Site `site`'s TLS files (FileNotFoundError when missing), or None with a warning when
    `plaintext` says so."""
    if plaintext:
        log.warning("TLS is off (plaintext = true): devices and the core link are plain text",
                    site=site)
        return None
    return site_tls_files(tls_dir or data_dir / "tls", site).require()


def trust(folder: Path) -> ssl.SSLContext | bool:
    """What command-line clients verify a role's HTTPS with: the private CA in `folder` when
    it is there, else the system's CAs (`True`, httpx's `verify`)."""
    ca = folder / "ca.pem"
    return client_context(ca) if ca.is_file() else True
