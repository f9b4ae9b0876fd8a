"""Values at the core's HTTP boundary, read as JSON Schema reads them.

Pydantic's lax mode takes `"1"` for an integer, `0` for a boolean and a naive `"2026-11-30
09:00"` for a date-time; the API document says `integer`, `boolean`, `date-time`, so the core
refuses those, and accepts what JSON Schema does (`2.0` is an integer):

- `JsonInt`, `JsonFloat`, `JsonBool`: numbers and booleans of their JSON type only;
- `UtcDateTime`, the type of every date-time the core answers or accepts over HTTP:

- from text (a request, a stored JSON query), only RFC 3339 date-times with a time zone
  (`2026-11-30T09:00:00Z`, `...+01:00`): a naive time or a number is refused;
- from Python (database rows: SQLite hands times back naive, in UTC), naive means UTC;
- the value is converted to UTC, so answers serialise with an offset (`Z`);
- a time that falls outside years 1-9999 once in UTC is refused (not an OverflowError).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, Strict

from edge2core.common.events import as_utc

_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")
ZONE_HINT = "a date-time with a time zone (RFC 3339), e.g. 2026-11-30T09:00:00Z"


def _text_needs_zone(value: Any) -> Any:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str) and _RFC3339.fullmatch(value):
        return value
    raise ValueError(f"expected {ZONE_HINT}")


def _in_utc(value: datetime) -> datetime:
    try:
        return as_utc(value)
    except OverflowError as exc:
        raise ValueError(f"{value.isoformat()} is out of range once in UTC") from exc


UtcDateTime = Annotated[datetime, BeforeValidator(_text_needs_zone), AfterValidator(_in_utc)]


def with_zone(text: str | None) -> str | None:
    """A stored naive date-time text (written before times carried zones) read as UTC."""
    if text is None or not isinstance(text, str) or _RFC3339.fullmatch(text):
        return text
    return text + "+00:00"


def _json_number(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("expected a JSON number")
    return value


def _json_integer(value: Any) -> Any:
    value = _json_number(value)
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("expected an integer")
        return int(value)
    return value


# The validators themselves, for `Annotated[int, Field(ge=...), JSON_INTEGER]`: the spelling
# type checkers read (they do not take `json_int(...)` as a type).
JSON_INTEGER = BeforeValidator(_json_integer)
JSON_NUMBER = BeforeValidator(_json_number)

JsonInt = Annotated[int, JSON_INTEGER]
JsonFloat = Annotated[float, JSON_NUMBER]
JsonBool = Annotated[bool, Strict()]


def json_int(**constraints: Any) -> Any:
    """`JsonInt` with `Field` constraints (ge, le, ...), written so that they reach the
    document as `minimum`/`maximum` also inside `... | None`."""
    return Annotated[int, Field(**constraints), BeforeValidator(_json_integer)]


def json_float(**constraints: Any) -> Any:
    """`JsonFloat` with `Field` constraints (see `json_int`)."""
    return Annotated[float, Field(**constraints), BeforeValidator(_json_number)]
