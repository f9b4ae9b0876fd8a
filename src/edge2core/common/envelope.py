"""The MQTT payload format devices use (MQTT 3.1.1 has no message headers).

A payload is either a bare image, or one line of JSON metadata, a newline, then the image:

    {"sku": "SKU-0007", "captured_at": "2026-11-24T10:00:00Z"}\\n<JPEG bytes>

See docs/protocol.md for topics and fields.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

MAX_HEADER_BYTES = 4096


class MalformedMessage(ValueError):
    pass


@dataclass(frozen=True)
class Envelope:
    header: dict[str, Any]
    image: bytes


def encode(image: bytes, header: dict[str, Any] | None = None) -> bytes:
    """The payload for `image` with `header`; bare when there is no header, unless the image
    itself starts with '{' (it would read as a header: found by fuzzing)."""
    if not header and not image.startswith(b"{"):
        return image
    return json.dumps(header or {}, separators=(",", ":")).encode() + b"\n" + image


def decode(payload: bytes) -> Envelope:
    if not payload.startswith(b"{"):
        return Envelope(header={}, image=payload)
    end = payload.find(b"\n", 0, MAX_HEADER_BYTES)
    if end < 0:
        raise MalformedMessage(
            f"a payload starting with '{{' needs its JSON header ended by a newline "
            f"within {MAX_HEADER_BYTES} bytes"
        )
    try:
        header = json.loads(payload[:end])
    except (ValueError, RecursionError) as exc:
        # RecursionError: JSON nested thousands of levels deep fits in the 4 KiB header.
        raise MalformedMessage(f"the JSON header is invalid: {type(exc).__name__}") from exc
    if not isinstance(header, dict):
        raise MalformedMessage("the JSON header must be an object")
    return Envelope(header=header, image=payload[end + 1 :])
