"""The core's API tokens for people and tools: named, scoped (`access.SCOPES`), expiring, and
stored hashed in one JSON file (`data_dir/api-tokens.json`, mode 0600).

A token reads `e2c_<id>_<secret>`: the id finds the row, the secret (32 random bytes) is
checked against its SHA-256 in constant time. A fast hash is enough because the secret is
random and long (no dictionary to try); bcrypt would only add milliseconds to every request.
The file is re-read when it changes, so `edge2core core tokens create|revoke` on the core's
machine applies to a running core within a request, without a restart (rotation: create the
new token, move the clients over, revoke the old one; both work in between).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import os
import secrets
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

from edge2core.common.errors import Invalid, NotFound

__all__ = ["ApiToken", "TokenStore"]

_PREFIX = "e2c_"


@dataclass(frozen=True)
class ApiToken:
    """One token's row (never its secret)."""

    id: str
    name: str
    scopes: tuple[str, ...]
    sha256: str
    created_at: str  # ISO 8601 UTC
    expires_at: str | None = None
    revoked_at: str | None = None

    def live(self, now: dt.datetime) -> bool:
        if self.revoked_at is not None:
            return False
        return self.expires_at is None or dt.datetime.fromisoformat(self.expires_at) > now


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class TokenStore:
    """Thread-safe. `create` returns the token text once; only its hash is kept."""

    def __init__(self, path: Path, known_scopes: tuple[str, ...]) -> None:
        self.path = Path(path)
        self.known_scopes = known_scopes
        self._lock = threading.Lock()
        self._rows: dict[str, ApiToken] = {}
        self._stamp: tuple[int, int] | None = None

    def create(self, name: str, scopes: list[str], days: float | None = 90) -> tuple[str, ApiToken]:
        """(the token, its row). Raises Invalid for an unknown scope or an empty name."""
        unknown = [s for s in scopes if s not in self.known_scopes]
        if unknown or not scopes or not name.strip():
            raise Invalid(f"a token needs a name and scopes from {list(self.known_scopes)}; "
                          f"unknown: {unknown}")
        token_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
        now = dt.datetime.now(dt.UTC)
        row = ApiToken(token_id, name.strip(), tuple(dict.fromkeys(scopes)), _digest(secret),
                       now.isoformat(), (now + dt.timedelta(days=days)).isoformat() if days else None)
        with self._lock:
            rows = self._load()
            rows[token_id] = row
            self._save(rows)
        return f"{_PREFIX}{token_id}_{secret}", row

    def revoke(self, token_id: str) -> ApiToken:
        """Raises NotFound for an id never issued."""
        with self._lock:
            rows = self._load()
            if token_id not in rows:
                raise NotFound(f"no API token {token_id!r}")
            row = rows[token_id]
            if row.revoked_at is None:
                row = ApiToken(**{**asdict(row), "revoked_at": dt.datetime.now(dt.UTC).isoformat()})
                rows[token_id] = row
                self._save(rows)
            return row

    def list(self) -> list[ApiToken]:
        with self._lock:
            return sorted(self._load().values(), key=lambda r: r.created_at)

    def scopes_of(self, presented: str) -> tuple[str, ...] | None:
        """The scopes of a live token, or None (not one of ours, wrong, expired or revoked)."""
        if not presented.startswith(_PREFIX):
            return None
        token_id, _, secret = presented.removeprefix(_PREFIX).partition("_")
        with self._lock:
            row = self._load().get(token_id)
        if row is None or not hmac.compare_digest(row.sha256, _digest(secret)):
            return None
        return row.scopes if row.live(dt.datetime.now(dt.UTC)) else None

    # ------------------------------------------------------------------ file

    def _load(self) -> dict[str, ApiToken]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._rows, self._stamp = {}, None
            return dict(self._rows)
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            raw = json.loads(self.path.read_text())
            self._rows = {k: ApiToken(**{**v, "scopes": tuple(v["scopes"])}) for k, v in raw.items()}
            self._stamp = stamp
        return dict(self._rows)

    def _save(self, rows: dict[str, ApiToken]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump({k: asdict(v) for k, v in rows.items()}, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        self._rows, self._stamp = dict(rows), None  # re-stat on the next read
