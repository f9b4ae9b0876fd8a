"""The edge's preparation pipeline, as small steps on bytes in memory:

validate (bytes, format, pixel count) -> decode at reduced size -> orient -> quality gates ->
resize -> redact faces -> re-encode (no metadata survives) -> content id and perceptual hash.

No I/O: every door, the benchmarks and the tests call the same function.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from PIL import Image

from edge2core.common.images import (
    DecodeLimits,
    ImageRejected,
    RejectReason,
    decode_rgb,
    dhash,
    encode_jpeg,
    open_checked,
    resize_long_side,
    sha256_hex,
)
from edge2core.edge.quality import QualityAction, QualityPolicy, QualityReport, assess


class Redactor(Protocol):
    """Finds and blurs what must not leave the site; returns the record of what it did."""

    def __call__(self, image: Image.Image) -> tuple[Image.Image, dict[str, Any]]: ...


@dataclass(frozen=True)
class PreparePolicy:
    max_bytes: int = 8 * 1024 * 1024
    max_pixels: int = 64_000_000
    long_side: int = 1024
    jpeg_quality: int = 90
    quality: QualityPolicy = field(default_factory=QualityPolicy)

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
    phash: int
    quality: QualityReport | None
    redaction: dict[str, Any] | None


def check_quality(image: Image.Image, policy: QualityPolicy) -> QualityReport | None:
    if policy.action == QualityAction.OFF:
        return None
    report = assess(image, policy)
    if report.flags and policy.action == QualityAction.REJECT:
        raise ImageRejected(
            RejectReason.LOW_QUALITY,
            f"{', '.join(report.flags)} (brightness {report.brightness}, contrast "
            f"{report.contrast}, sharpness {report.sharpness}); retake the photo",
        )
    return report


def prepare(data: bytes, policy: PreparePolicy, redactor: Redactor | None = None) -> PreparedPhoto:
    """Raises `ImageRejected` for anything that is not a sound, supported photo within limits."""
    image, fmt = open_checked(data, policy.limits)
    with image:
        rgb = decode_rgb(image, reduce_to=policy.long_side, shrink_to=policy.long_side)
    resized = resize_long_side(rgb, policy.long_side)
    quality = check_quality(resized, policy.quality)
    redaction = None
    if redactor is not None:
        # On the photo we ship, after the resize: the detector's cost stays bounded.
        resized, redaction = redactor(resized)
    encoded = encode_jpeg(resized, policy.jpeg_quality)
    return PreparedPhoto(
        data=encoded,
        sha256=sha256_hex(encoded),
        width=resized.width,
        height=resized.height,
        source_format=fmt,
        source_bytes=len(data),
        phash=dhash(resized),
        quality=quality,
        redaction=redaction,
    )
