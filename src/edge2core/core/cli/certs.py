"""`edge2core certs ...`: the private CA that secures every link (see docs/security.md).

Typical set-up, on the machine that keeps the CA (the core's, or an offline one)::

    edge2core certs init --dir ca
    edge2core certs core --dir ca --san core.example.com --san 10.0.0.5
    edge2core certs site --dir ca store-17 --san store-17.lan --san 192.168.1.2
    edge2core certs device --dir ca kiosk-3

then copy `ca.pem`, `crl.pem` and `sites/store-17.*` to the site's `tls_dir`. Renewed files are
picked up by running servers within seconds; `revoke` rewrites the CRL (copy it to the sites).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edge2core.common.certs import LIFETIME_DAYS, CertAuthority, Issued, Kind

certs_app = typer.Typer(help="The private CA: core, site and device certificates; renew, revoke.",
                        no_args_is_help=True)

DirOpt = Annotated[Path, typer.Option("--dir", help="the CA folder", envvar="E2C_CERTS_DIR")]
SanOpt = Annotated[list[str] | None, typer.Option("--san", help="a host name or IP peers dial (repeat)")]
DaysOpt = Annotated[int | None, typer.Option("--days", min=1, help="lifetime; default per kind")]


def _ca(folder: Path) -> CertAuthority:
    ca = CertAuthority(folder)
    if not ca.exists:
        typer.echo(f"no CA in {folder}: run `edge2core certs init --dir {folder}`", err=True)
        raise typer.Exit(2)
    return ca


def _said(issued: Issued, ca: CertAuthority) -> None:
    typer.echo(f"{issued.kind} {issued.name}: {ca.folder / issued.cert} (key {ca.folder / issued.key}), "
               f"serial {issued.serial:x}, valid until {issued.not_after}")


@certs_app.command("init")
def init(folder: DirOpt = Path("ca"), name: str = "edge2core private CA",
         days: int = LIFETIME_DAYS["ca"]) -> None:
    """Create the CA (ECDSA P-384) and an empty CRL."""
    ca = CertAuthority(folder)
    if ca.exists:
        typer.echo(f"a CA already exists in {folder}", err=True)
        raise typer.Exit(1)
    typer.echo(f"CA created: {ca.create(name, days)}")


def _issue(kind: Kind, folder: Path, name: str, san: list[str] | None, days: int | None) -> None:
    ca = _ca(folder)
    try:
        _said(ca.issue(kind, name, san or [], days=days), ca)
    except ValueError as exc:
        typer.echo(f"refused: {exc}", err=True)
        raise typer.Exit(2) from None


@certs_app.command("core")
def core(folder: DirOpt = Path("ca"), san: SanOpt = None, days: DaysOpt = None) -> None:
    """The core's server certificate (also its client identity). Add every name sites dial."""
    _issue("core", folder, "core", [*(san or []), "localhost", "127.0.0.1"], days)


@certs_app.command("site")
def site(name: str, folder: DirOpt = Path("ca"), san: SanOpt = None, days: DaysOpt = None) -> None:
    """A site's certificate: its devices' server and its client identity towards the core."""
    _issue("site", folder, name, [*(san or []), "localhost", "127.0.0.1"], days)


@certs_app.command("device")
def device(name: str, folder: DirOpt = Path("ca"), days: DaysOpt = None) -> None:
    """A device's client certificate (its common name is the device id)."""
    _issue("device", folder, name, [], days)


@certs_app.command("renew")
def renew(kind: str, name: str, folder: DirOpt = Path("ca"), days: DaysOpt = None) -> None:
    """New key and certificate with the same names; servers reload them without a restart."""
    ca = _ca(folder)
    try:
        _said(ca.renew(_kind(kind), name, days=days), ca)
    except KeyError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None


@certs_app.command("revoke")
def revoke(kind: str, name: str, folder: DirOpt = Path("ca"),
           serial: Annotated[str | None, typer.Option(help="only this serial (hex)")] = None) -> None:
    """Revoke a certificate (all of the name's, or one serial) and rewrite crl.pem."""
    ca = _ca(folder)
    try:
        done = ca.revoke(_kind(kind), name, serial=int(serial, 16) if serial else None)
    except KeyError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    typer.echo(f"revoked {len(done)} certificate(s); CRL: {ca.crl_path}")


@certs_app.command("crl")
def crl(folder: DirOpt = Path("ca"), days: int = 30) -> None:
    """Rewrite crl.pem (do it before it expires: an expired CRL fails every check)."""
    typer.echo(f"CRL: {_ca(folder).write_crl(days)}")


@certs_app.command("list")
def list_certs(folder: DirOpt = Path("ca")) -> None:
    """Everything issued, soonest expiry first."""
    for row in _ca(folder).issued():
        state = f"revoked {row.revoked_at}" if row.revoked_at else "valid"
        typer.echo(f"{row.kind:7} {row.name:24} {row.serial:x} until {row.not_after} {state}")


def _kind(kind: str) -> Kind:
    if kind not in ("core", "site", "device"):
        typer.echo("kind must be core, site or device", err=True)
        raise typer.Exit(2)
    return kind  # type: ignore[return-value]
