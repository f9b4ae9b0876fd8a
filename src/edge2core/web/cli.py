"""`edge2core core users ...`: the dashboard's accounts, on the core's machine (the accounts
file in its data dir; a running core reads it on each sign-in)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edge2core.common.errors import Conflict, Invalid, NotFound
from edge2core.common.identifiers import InvalidIdentifier
from edge2core.config import CoreSettings
from edge2core.web.auth.users import Role, UserStore

users_app = typer.Typer(help="People who sign in to the dashboard (admin, labeller).",
                        no_args_is_help=True)

DataDir = Annotated[Path | None, typer.Option("--data-dir", help="the core's data dir")]


def _store(data_dir: Path | None) -> UserStore:
    return UserStore((data_dir or CoreSettings().data_dir) / "users.json")


@users_app.command("add")
def add(name: str, role: Annotated[Role, typer.Option(help="admin or labeller")] = Role.LABELLER,
        data_dir: DataDir = None) -> None:
    """Add a person and print their new password once (only its bcrypt hash is kept)."""
    try:
        password = _store(data_dir).add(name, role)
    except (Conflict, Invalid, InvalidIdentifier) as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    typer.echo(f"{name} ({role.value}): {password}")


@users_app.command("list")
def list_users(data_dir: DataDir = None) -> None:
    for user in _store(data_dir).list():
        typer.echo(f"{user.name:24} {user.role.value}")


@users_app.command("remove")
def remove(name: str, data_dir: DataDir = None) -> None:
    """Remove a person (their open sessions end at the next core restart)."""
    try:
        _store(data_dir).remove(name)
    except NotFound as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    typer.echo(f"removed {name}")
