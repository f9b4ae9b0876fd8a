"""Dashboard accounts: a name, a role and a bcrypt hash, kept in a JSON file (or in memory).

Roles: `admin` may do everything; `labeller` may read every page and label photos, but may
not change models, the catalogue or the fleet. Passwords are never stored or logged.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path

import bcrypt

from edge2core.common.errors import Conflict, Invalid, NotFound
from edge2core.common.fsutil import write_atomic
from edge2core.common.identifiers import IdKind, check


class Role(StrEnum):
    ADMIN = "admin"
    LABELLER = "labeller"


@dataclass(frozen=True)
class User:
    name: str
    role: Role
    password_bcrypt: str

    def may(self, needed: Role) -> bool:
        """Admins may do what labellers may; nobody else is a role."""
        return self.role == Role.ADMIN or self.role == needed


class UserStore:
    """Accounts in `path` (JSON, written atomically), or in memory when `path` is None.

    Raises `Conflict` for a name already taken, `Invalid` for a bad name or an empty
    password, `NotFound` for an unknown name where one is required."""

    def __init__(self, path: Path | None = None) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._users: dict[str, User] = {}
        self._mtime: float | None = None
        self._reload()

    def _reload(self) -> None:
        if self._path is None or not self._path.exists():
            return
        mtime = self._path.stat().st_mtime
        if mtime == self._mtime:
            return
        raw = json.loads(self._path.read_text())
        self._users = {u["name"]: User(u["name"], Role(u["role"]), u["password_bcrypt"])
                       for u in raw.get("users", [])}
        self._mtime = mtime

    def _save(self) -> None:
        if self._path is None:
            return
        self._path.parent.mkdir(parents=True, exist_ok=True)
        body = {"users": [asdict(u) for u in sorted(self._users.values(), key=lambda u: u.name)]}
        write_atomic(self._path, [json.dumps(body, indent=1).encode()])
        os.chmod(self._path, 0o600)
        self._mtime = self._path.stat().st_mtime

    def add(self, name: str, role: Role, password: str | None = None) -> str:
        """Create an account; returns its password (a new random one when none is given)."""
        check(IdKind.DEVICE, name)  # the same rule as every other id: safe in logs and pages
        password = password or secrets.token_urlsafe(12)
        if not password.strip():
            raise Invalid("a password may not be empty")
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt()).decode()
        with self._lock:
            self._reload()
            if name in self._users:
                raise Conflict(f"there is already a user {name!r}")
            self._users[name] = User(name, Role(role), hashed)
            self._save()
        return password

    def remove(self, name: str) -> None:
        with self._lock:
            self._reload()
            if self._users.pop(name, None) is None:
                raise NotFound(f"no user {name!r}")
            self._save()

    def list(self) -> list[User]:
        with self._lock:
            self._reload()
            return sorted(self._users.values(), key=lambda u: u.name)

    def get(self, name: str) -> User | None:
        with self._lock:
            self._reload()
            return self._users.get(name)

    def authenticate(self, name: str, password: str) -> User | None:
        """The user, if the password is theirs (bcrypt: tens of ms; call it off the loop)."""
        user = self.get(name)
        # An unknown name costs a bcrypt check too, so timing does not tell names apart.
        hashed = user.password_bcrypt if user else _DUMMY_HASH
        ok = bcrypt.checkpw(password.encode()[:72], hashed.encode())
        return user if ok and user is not None else None


_DUMMY_HASH = bcrypt.hashpw(b"not a password", bcrypt.gensalt(rounds=4)).decode()
