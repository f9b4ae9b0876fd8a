"""Sending photos to the core's receiver in tests: records, chunked bodies, distinct photos."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

from edge2core.common.events import PhotoRecord, Source
from tests.support.jpegs import jpeg_bytes

VAL_PERCENT = 20  # the receiver's validation share in tests/core's `receiver` fixture


async def chunks(data: bytes, size: int = 1000) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def record_for(
    data: bytes,
    *,
    sku: str | None = "SKU-A",
    site: str = "store-1",
    device: str = "kiosk-a",
    source: Source = Source.KIOSK,
    **override: object,
) -> PhotoRecord:
    fields: dict[str, object] = {
        "site": site,
        "device": device,
        "source": source,
        "sku": sku,
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "width": 64,
        "height": 48,
    }
    fields.update(override)
    return PhotoRecord(**fields)


def distinct_jpeg(n: int) -> bytes:
    return jpeg_bytes(size=(32, 24), color=((n * 37) % 256, (n * 91) % 256, (n * 13 + 50) % 256))
