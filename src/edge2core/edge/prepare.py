"""The edge's preparation pipeline: validate, orient, strip metadata, resize, re-encode.

Pure functions on bytes: no I/O, so every door and the benchmarks call the same code.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge2core.common.images import (
    DecodeLimits,
    decode_rgb,
    encode_jpeg,
    open_checked,
    resize_long_side,
    sha256_hex,
)


@dataclass(frozen=True)
class PreparePolicy:
    max_bytes: int = 8 * 1024 * 1024
    max_pixels: int = 64_000_000
    long_side: int = 1024
    jpeg_quality: int = 90

    @property
    def limits(self) -> DecodeLimits:
        return DecodeLimits(max_bytes=self.max_bytes, max_pixels=self.max_pixels)


@dataclass(frozen=True)
class PreparedPhoto:
    data: bytes
    sha256: str
    width: int
    height: int
    source_format: str
    source_bytes: int


def prepare(data: bytes, policy: PreparePolicy) -> PreparedPhoto:
    """Raises `ImageRejected` for anything that is not a sound, supported photo within limits."""
    image, fmt = open_checked(data, policy.limits)
    with image:
        rgb = decode_rgb(image, reduce_to=policy.long_side)
        resized = resize_long_side(rgb, policy.long_side)
        encoded = encode_jpeg(resized, policy.jpeg_quality)
    return PreparedPhoto(
        data=encoded,
        sha256=sha256_hex(encoded),
        width=resized.width,
        height=resized.height,
        source_format=fmt,
        source_bytes=len(data),
    )
