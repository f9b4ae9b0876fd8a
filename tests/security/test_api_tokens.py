"""Scoped, expiring API tokens stored hashed (`core/api/token_store`, `access.required_scope`)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edge2core.cli import app
from edge2core.common.errors import Invalid, NotFound
from edge2core.core.api.access import SCOPES, required_scope, scope_allows
from edge2core.core.api.token_store import TokenStore


def test_each_request_needs_its_scope() -> None:
    assert required_scope("GET", "/v1/models") == "read"
    assert required_scope("GET", "/v1/images/" + "a" * 64) == "admin"  # photo bytes
    assert required_scope("POST", "/v1/labelling/tasks/abc/confirm") == "label"
    assert required_scope("POST", "/v1/training") == "operate"
    assert required_scope("POST", "/v1/models/3/promote") == "operate"
    assert required_scope("PUT", "/v1/catalogue/products") == "admin"
    assert required_scope("POST", "/v1/governance/erasures") == "admin"
    assert scope_allows(("admin",), "POST", "/v1/governance/erasures")
    assert not scope_allows(("read", "label"), "POST", "/v1/training")


def test_tokens_are_stored_hashed_expire_and_can_be_revoked(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "api-tokens.json", SCOPES)
    token, row = store.create("ci", ["read", "label"], days=1)
    assert store.scopes_of(token) == ("read", "label")
    text = (tmp_path / "api-tokens.json").read_text()
    assert token.rsplit("_", 1)[-1] not in text and row.sha256 in text
    assert oct((tmp_path / "api-tokens.json").stat().st_mode & 0o777) == "0o600"
    assert store.scopes_of(token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    assert store.scopes_of("e2c_nope_nope") is None and store.scopes_of("plain") is None
    # Expired: edit the file as another process (the CLI) would; the store re-reads it.
    raw = json.loads(text)
    raw[row.id]["expires_at"] = (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)).isoformat()
    (tmp_path / "api-tokens.json").write_text(json.dumps(raw))
    assert store.scopes_of(token) is None
    live, live_row = store.create("ops", ["operate"], days=None)
    store.revoke(live_row.id)
    assert store.scopes_of(live) is None
    with pytest.raises(Invalid):
        store.create("bad", ["root"])
    with pytest.raises(NotFound):
        store.revoke("missing")


def test_the_command_line_creates_lists_and_revokes(tmp_path: Path) -> None:
    runner = CliRunner()
    made = runner.invoke(app, ["core", "tokens", "create", "labeller", "--scope", "label",
                               "--days", "30", "--data-dir", str(tmp_path)])
    assert made.exit_code == 0, made.output
    token = made.output.strip().splitlines()[-1]
    store = TokenStore(tmp_path / "api-tokens.json", SCOPES)
    assert store.scopes_of(token) == ("label",)
    listed = runner.invoke(app, ["core", "tokens", "list", "--data-dir", str(tmp_path)])
    assert "labeller" in listed.output and token not in listed.output
    token_id = store.list()[0].id
    assert runner.invoke(app, ["core", "tokens", "revoke", token_id, "--data-dir", str(tmp_path)]).exit_code == 0
    assert store.scopes_of(token) is None
    bad = runner.invoke(app, ["core", "tokens", "create", "x", "--scope", "root", "--data-dir", str(tmp_path)])
    assert bad.exit_code == 2
