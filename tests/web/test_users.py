"""Dashboard accounts: hashed at rest, checked in constant work, managed from the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edge2core.cli import app
from edge2core.common.errors import Conflict, NotFound
from edge2core.common.identifiers import InvalidIdentifier
from edge2core.web.auth.users import Role, UserStore


def test_passwords_are_kept_as_bcrypt_hashes_only(tmp_path: Path) -> None:
    path = tmp_path / "users.json"
    users = UserStore(path)
    password = users.add("ada", Role.ADMIN)
    assert len(password) >= 16
    stored = path.read_text()
    assert password not in stored and json.loads(stored)["users"][0]["password_bcrypt"].startswith("$2")
    assert path.stat().st_mode & 0o777 == 0o600
    assert UserStore(path).authenticate("ada", password).role is Role.ADMIN  # type: ignore[union-attr]
    assert users.authenticate("ada", "wrong") is None
    assert users.authenticate("nobody", password) is None
    with pytest.raises(Conflict):
        users.add("ada", Role.LABELLER)
    with pytest.raises(InvalidIdentifier):
        users.add("../ada", Role.ADMIN)
    users.remove("ada")
    with pytest.raises(NotFound):
        users.remove("ada")


def test_roles_admins_may_what_labellers_may() -> None:
    users = UserStore()
    users.add("ada", Role.ADMIN, "a")
    users.add("lena", Role.LABELLER, "b")
    ada, lena = users.get("ada"), users.get("lena")
    assert ada is not None and lena is not None
    assert ada.may(Role.LABELLER) and ada.may(Role.ADMIN)
    assert lena.may(Role.LABELLER) and not lena.may(Role.ADMIN)


def test_the_cli_adds_lists_and_removes_people(tmp_path: Path) -> None:
    runner = CliRunner()
    added = runner.invoke(app, ["core", "users", "add", "ada", "--role", "admin", "--data-dir", str(tmp_path)])
    assert added.exit_code == 0, added.output
    password = added.output.strip().rsplit(" ", 1)[-1]
    assert UserStore(tmp_path / "users.json").authenticate("ada", password) is not None
    listed = runner.invoke(app, ["core", "users", "list", "--data-dir", str(tmp_path)])
    assert "ada" in listed.output and "admin" in listed.output
    again = runner.invoke(app, ["core", "users", "add", "ada", "--data-dir", str(tmp_path)])
    assert again.exit_code == 2
    removed = runner.invoke(app, ["core", "users", "remove", "ada", "--data-dir", str(tmp_path)])
    assert removed.exit_code == 0 and UserStore(tmp_path / "users.json").list() == []
