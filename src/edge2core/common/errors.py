"""One error vocabulary for both roles: a few families, each with a stable machine code.

Domain code raises these (or subclasses naming a finer `code`) and never knows about HTTP;
each app maps the families to status codes in one place (`edge/api.py`, `core/api/errors.py`)
and answers `{"error": code, "detail": message}`. MQTT refusals use the same codes.

| family        | default code     | HTTP |
| ------------- | ---------------- | ---- |
| NotFound      | not_found        | 404  |
| Conflict      | conflict         | 409  |
| Invalid       | invalid          | 422 (core) / 400 (edge door) |
| TooLarge      | too_large        | 413  |
| Unsupported   | unsupported      | 415  |
| Unauthorised  | unauthorised     | 401 (403 for `forbidden`-like codes, per app) |
| Busy          | busy             | 503 (with Retry-After where known) |
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


class DomainError(Exception):
    """Base of the vocabulary: `code` is stable (clients and metrics key on it), `detail` says
    what happened and what to do."""

    code = "error"

    def __init__(self, detail: str, *, code: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code


class NotFound(DomainError, LookupError):
    code = "not_found"


class Conflict(DomainError):
    code = "conflict"


class Invalid(DomainError, ValueError):
    code = "invalid"


class TooLarge(DomainError):
    code = "too_large"


class Unsupported(DomainError):
    code = "unsupported"


class Unauthorised(DomainError, PermissionError):
    code = "unauthorised"


class Busy(DomainError):
    """Try again later; `retry_after_s` when known."""

    code = "busy"

    def __init__(self, detail: str, *, code: str | None = None,
                 retry_after_s: float | None = None) -> None:
        super().__init__(detail, code=code)
        self.retry_after_s = retry_after_s


FAMILIES: tuple[type[DomainError], ...] = (
    NotFound, Conflict, Invalid, TooLarge, Unsupported, Unauthorised, Busy,
)


def describe_validation(errors: Iterable[Mapping[str, Any]], limit: int = 5) -> str:
    """One line for people from pydantic/FastAPI validation errors: where and what (``query.n:
    Input should be ...``), never the input itself, the server's code or its paths."""
    parts = []
    for error in list(errors)[:limit]:
        loc = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
        message = str(error.get("msg", "invalid"))
        parts.append(f"{loc}: {message}" if loc else message)
    return "; ".join(parts) or "the request is malformed"

