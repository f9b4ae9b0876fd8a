"""Schemas that cross process boundaries: photo metadata, upload headers, events.

Events carry references (sha256, size, key, site, device, label), never image bytes.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Self, overload

from pydantic import BaseModel, Field

from edge2core.common.identifiers import ID_PATTERN, SKU_PATTERN

SHA256_PATTERN = r"^[0-9a-f]{64}$"
META_HEADER = "X-E2C-Meta"


def utcnow() -> datetime:
    return datetime.now(UTC)


@overload
def as_utc(value: datetime) -> datetime: ...
@overload
def as_utc(value: None) -> None: ...
@overload
def as_utc(value: datetime | None) -> datetime | None: ...


def as_utc(value: datetime | None) -> datetime | None:
    """Times are kept in UTC; SQLite hands them back naive."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Source(StrEnum):
    KIOSK = "kiosk"  # labelled capture: the cashier scanned the product
    SHOPPER = "shopper"  # unlabelled recognition request
    CAMERA = "camera"  # unlabelled frame a watched camera kept because the scene changed


class Guess(BaseModel):
    sku: str = Field(max_length=64, pattern=SKU_PATTERN)
    confidence: float


class CaptureMeta(BaseModel):
    """What a device tells us about a photo."""

    site: str = Field(pattern=ID_PATTERN)
    device: str = Field(pattern=ID_PATTERN)
    source: Source
    sku: str | None = Field(default=None, max_length=64, pattern=SKU_PATTERN)
    captured_at: datetime | None = None
    request_id: str | None = Field(default=None, pattern=ID_PATTERN)


class PhotoRecord(CaptureMeta):
    """A prepared photo as the edge spools and forwards it, and as the core records it."""

    sha256: str = Field(pattern=SHA256_PATTERN)
    size: int = Field(ge=1)
    width: int = Field(ge=1)
    height: int = Field(ge=1)
    received_at: datetime = Field(default_factory=utcnow)
    edge_model_version: int | None = None
    confidence: float | None = None
    top_guesses: list[Guess] = Field(default_factory=list)
    # What the edge's privacy step removed: detector, version, face count and boxes.
    redaction: dict[str, Any] | None = None
    # Quality measures and any flags raised by the edge's quality gates.
    quality: dict[str, Any] | None = None
    # 64-bit perceptual hash (dHash) of the prepared photo, as 16 hex digits.
    phash: str | None = Field(default=None, pattern=r"^[0-9a-f]{16}$")


class PhotoForwarded(BaseModel):
    """Event: the core confirmed it holds these bytes."""

    sha256: str
    size: int
    site: str
    device: str
    source: Source
    sku: str | None
    key: str
    forwarded_at: datetime = Field(default_factory=utcnow)


class ArtifactPointer(BaseModel):
    """One downloadable part of a model version (resumable with HTTP Range)."""

    sha256: str
    size: int
    url_path: str


class ModelPublished(BaseModel):
    """KV value: a model version the edge sites should run."""

    version: int
    sha256: str
    size: int
    classes: list[str]
    url_path: str
    published_at: datetime = Field(default_factory=utcnow)
    # Confidence below which the edge answers "unrecognised", calibrated on val at training.
    recognised_threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    # Delta delivery: the full file is exactly compose(backbone, head), so a site that holds
    # this backbone fetches the head alone (kilobytes) and checks the composed file's sha256.
    head: ArtifactPointer | None = None
    backbone: ArtifactPointer | None = None


def calibrated_threshold(metrics: dict[str, Any]) -> float | None:
    """The threshold a training run calibrated for its target precision, if it found one."""
    found = (metrics.get("calibration") or {}).get("recognised_threshold") or {}
    value = found.get("threshold")
    return float(value) if value is not None else None


def events_subject(site: str, kind: str) -> str:
    return f"e2c.events.{site}.{kind}"


# Desired state the core keeps for its sites in JetStream KV buckets (domain of the core), which
# every edge watches over its leaf link: the model each site should run, and the catalogue.
DEPLOY_BUCKET = "e2c-deploy"
FLEET_KEY = "fleet"
CATALOGUE_BUCKET = "e2c-catalogue"


class SignedReport(BaseModel):
    """A site's message to the core with an HMAC-SHA256 of the rest under the site's token
    (where sites have tokens): a site can speak only for itself, even on the shared leaf link."""

    mac: str = ""

    def signed(self, token: str) -> Self:
        return self.model_copy(update={"mac": self._mac(token)}) if token else self

    def verify(self, token: str) -> bool:
        # As bytes: compare_digest refuses str with non-ASCII characters (a TypeError that a
        # forged report could raise in the core's handler; found by fuzzing).
        return hmac.compare_digest(self.mac.encode(), self._mac(token).encode())

    def _mac(self, token: str) -> str:
        body = self.model_dump_json(exclude={"mac"}).encode()
        return hmac.new(token.encode(), body, hashlib.sha256).hexdigest()


class SiteModelReport(SignedReport):
    """Edge -> core: what a site did with a model version (canary health, audit)."""

    site: str
    version: int
    sha256: str
    state: str  # live | refused | rolled_back
    reason: str = ""
    at: datetime = Field(default_factory=utcnow)


def site_report_subject(site: str) -> str:
    return f"e2c.sites.{site}.model"


SITE_REPORTS = "e2c.sites.*.model"


def site_key(site: str) -> str:
    """A site's own desired model (a canary); absent, the site follows FLEET_KEY."""
    return f"site.{site}"


def product_key(sku: str) -> str:
    """KV keys allow [-/_=.a-zA-Z0-9]; other SKUs are hex-encoded so every SKU fits."""
    if all(c.isascii() and (c.isalnum() or c in "-_=") for c in sku):
        return f"sku.{sku}"
    return f"skux.{sku.encode().hex()}"
