"""One rule for identifiers: what a site, device, request id or SKU may look like.

Every door and API checks ids with this module before it stores them, puts them in an HTTP
header, a NATS subject, an MQTT topic or a file path, so an id that would break any of those
is refused where it enters (reason `invalid_id`), never half-way through the pipeline.

- site, device, request id: ASCII letters, digits, `_` and `-`, 1-64 characters, starting with
  a letter or digit. No dots or slashes: they are MQTT topic levels and NATS subject tokens.
- SKU: the same, plus `.` inside (e.g. `milk-1.5l`); never `.` or `..` since it must start with
  a letter or digit, so a SKU is always a safe single path component and KV key.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated

from pydantic import StringConstraints

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
SKU_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"

_ID = re.compile(ID_PATTERN)
_SKU = re.compile(SKU_PATTERN)


class IdKind(StrEnum):
    SITE = "site"
    DEVICE = "device"
    REQUEST_ID = "request_id"
    SKU = "sku"


class InvalidIdentifier(ValueError):
    """An id that breaks the rule above; `reason` is the stable code `invalid_id`."""

    reason = "invalid_id"

    def __init__(self, kind: IdKind, value: object) -> None:
        pattern = SKU_PATTERN if kind == IdKind.SKU else ID_PATTERN
        shown = repr(value)[:80]
        super().__init__(
            f"{kind.value} {shown} is not a valid identifier: use 1-64 ASCII letters, digits, "
            f"'_' or '-'{', or a dot inside' if kind == IdKind.SKU else ''}, starting with a "
            f"letter or digit (pattern {pattern})"
        )
        self.kind = kind


def is_valid(kind: IdKind, value: object) -> bool:
    if not isinstance(value, str):
        return False
    regex = _SKU if kind == IdKind.SKU else _ID
    # fullmatch: `$` alone would accept a trailing newline.
    return regex.fullmatch(value) is not None


def check(kind: IdKind, value: str) -> str:
    """`value` unchanged, or raises `InvalidIdentifier`."""
    if not is_valid(kind, value):
        raise InvalidIdentifier(kind, value)
    return value


def check_optional(kind: IdKind, value: str | None) -> str | None:
    return None if value is None else check(kind, value)


# For pydantic models at the boundaries (the same rule, answered as a validation error).
Identifier = Annotated[str, StringConstraints(pattern=ID_PATTERN, max_length=64)]
Sku = Annotated[str, StringConstraints(pattern=SKU_PATTERN, max_length=64)]
