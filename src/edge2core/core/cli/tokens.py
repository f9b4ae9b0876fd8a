"""`edge2core core tokens ...`: the core's scoped API tokens, on the core's machine (the token
file in its data dir; a running core picks changes up at once). See docs/security.md for
rotation."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edge2core.common.errors import Invalid, NotFound
from edge2core.config import CoreSettings
from edge2core.core.api.access import SCOPES
from edge2core.core.api.token_store import TokenStore

tokens_app = typer.Typer(help="Scoped API tokens (read, label, operate, admin) with expiry.",
                         no_args_is_help=True)

DataDir = Annotated[Path | None, typer.Option("--data-dir", help="the core's data dir")]


def _store(data_dir: Path | None) -> TokenStore:
    folder = data_dir or CoreSettings().data_dir
    return TokenStore(folder / "api-tokens.json", SCOPES)


@tokens_app.command("create")
def create(name: str, scope: Annotated[list[str], typer.Option("--scope", help=f"one of {SCOPES} (repeat)")],
           days: Annotated[float, typer.Option(help="lifetime; 0 = never expires")] = 90,
           data_dir: DataDir = None) -> None:
    """Make a token and print it once (only its hash is kept)."""
    try:
        token, row = _store(data_dir).create(name, scope, days or None)
    except Invalid as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    typer.echo(f"token {row.id} ({', '.join(row.scopes)}) expires {row.expires_at or 'never'}:")
    typer.echo(token)


@tokens_app.command("list")
def list_tokens(data_dir: DataDir = None) -> None:
    """Every token: id, name, scopes, expiry, revoked."""
    for row in _store(data_dir).list():
        state = f"revoked {row.revoked_at}" if row.revoked_at else f"expires {row.expires_at or 'never'}"
        typer.echo(f"{row.id}  {row.name:20} {','.join(row.scopes):24} {state}")


@tokens_app.command("revoke")
def revoke(token_id: str, data_dir: DataDir = None) -> None:
    """Revoke a token by id: refused from the next request on."""
    try:
        _store(data_dir).revoke(token_id)
    except NotFound as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    typer.echo(f"revoked {token_id}")
