"""Intake: one path from any door (MQTT, HTTP, the recogniser) into the spool."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from edge2core.common.events import CaptureMeta, Guess, PhotoRecord, Source
from edge2core.common.metrics import (
    FACES_REDACTED,
    PHOTOS_DUPLICATE,
    PHOTOS_FLAGGED,
    PHOTOS_RECEIVED,
)
from edge2core.edge.dedup import NearDuplicateWindow
from edge2core.edge.golden import GoldenSet
from edge2core.edge.prepare import PreparedPhoto, PreparePolicy, Redactor, prepare
from edge2core.edge.spool import Spool

# Unrecognised shopper photos teach the next model the most, then the first captures of a
# product the site has few photos of; a kiosk's 500th banana the least.
PRIORITY = {Source.SHOPPER: 10, Source.KIOSK: 5, Source.CAMERA: 3}
NEW_PRODUCT_PRIORITY = 8
NEW_PRODUCT_PHOTOS = 30
# Sizes of the photos the near-duplicate window may name (far more than it holds in its window).
KEPT_SIZES = 4096


class WrongSite(ValueError):
    pass


@dataclass(frozen=True)
class IntakeReceipt:
    sha256: str
    size: int
    duplicate: bool


class Intake:
    def __init__(
        self,
        site: str,
        policy: PreparePolicy,
        spool: Spool,
        on_spooled: Callable[[], None] = lambda: None,
        *,
        redactor: Redactor | None = None,
        near_duplicates: NearDuplicateWindow | None = None,
        golden: GoldenSet | None = None,
    ) -> None:
        self.site = site
        self.policy = policy
        self._spool = spool
        self._on_spooled = on_spooled
        self._redactor = redactor
        self._near = near_duplicates or NearDuplicateWindow(window_s=0)
        # sha256 -> size of each photo remembered in the near-duplicate window, so that a
        # near-duplicate is answered with the kept photo's size, not the new photo's.
        self._kept_sizes: OrderedDict[str, int] = OrderedDict()
        self._kept_lock = threading.Lock()
        self._golden = golden

    def prepare(self, data: bytes) -> PreparedPhoto:
        return prepare(data, self.policy, self._redactor)

    def accept(self, data: bytes, meta: CaptureMeta, *, door: str) -> IntakeReceipt:
        """Prepare and spool a device's photo; returns once it is durable.

        Raises `ImageRejected`, `WrongSite` or `SpoolFull`; the door counts and answers them.
        """
        self._check_site(meta)
        prepared = self.prepare(data)
        earlier = self._near.match(meta.device, prepared.phash, meta.sku)
        if earlier is not None and (kept_size := self._kept_size(earlier)) is not None:
            PHOTOS_DUPLICATE.labels(kind="near").inc()
            return IntakeReceipt(sha256=earlier, size=kept_size, duplicate=True)
        receipt = self._spool_prepared(prepared, meta)
        self._remember_size(receipt.sha256, receipt.size)
        self._near.remember(meta.device, prepared.phash, receipt.sha256, meta.sku)
        if self._golden is not None and meta.source == Source.KIOSK and meta.sku:
            self._golden.offer(meta.sku, receipt.sha256, prepared.data)
        PHOTOS_RECEIVED.labels(door=door, source=meta.source.value).inc()
        return receipt

    def keep_unrecognised(
        self,
        prepared: PreparedPhoto,
        meta: CaptureMeta,
        *,
        model_version: int | None,
        confidence: float,
        guesses: list[Guess],
    ) -> IntakeReceipt:
        """Spool a shopper photo the model was unsure of, with its guesses, for labelling."""
        return self._spool_prepared(
            prepared,
            meta,
            edge_model_version=model_version,
            confidence=confidence,
            top_guesses=guesses,
        )

    def _kept_size(self, sha256: str) -> int | None:
        """The size of a photo the window names; None if forgotten (then the new photo is
        simply kept: an answer never names a photo with another photo's size)."""
        with self._kept_lock:
            return self._kept_sizes.get(sha256)

    def _remember_size(self, sha256: str, size: int) -> None:
        with self._kept_lock:
            self._kept_sizes[sha256] = size
            self._kept_sizes.move_to_end(sha256)
            while len(self._kept_sizes) > KEPT_SIZES:
                self._kept_sizes.popitem(last=False)

    def _check_site(self, meta: CaptureMeta) -> None:
        if meta.site != self.site:
            raise WrongSite(f"this edge serves site {self.site!r}, not {meta.site!r}")

    def _spool_prepared(
        self, prepared: PreparedPhoto, meta: CaptureMeta, **extra: object
    ) -> IntakeReceipt:
        record = PhotoRecord(
            **meta.model_dump(),
            sha256=prepared.sha256,
            size=len(prepared.data),
            width=prepared.width,
            height=prepared.height,
            phash=f"{prepared.phash:016x}",
            quality=prepared.quality.to_dict() if prepared.quality else None,
            redaction=prepared.redaction,
            **extra,
        )
        created = self._spool.put(record, prepared.data, self._priority(meta))
        if created:
            self._count(prepared)
            self._on_spooled()
        else:
            PHOTOS_DUPLICATE.labels(kind="exact").inc()
        return IntakeReceipt(sha256=prepared.sha256, size=len(prepared.data), duplicate=not created)

    def _priority(self, meta: CaptureMeta) -> int:
        if meta.source == Source.KIOSK and meta.sku:
            if self._spool.label_count(meta.sku) < NEW_PRODUCT_PHOTOS:
                return NEW_PRODUCT_PRIORITY
        return PRIORITY[meta.source]

    @staticmethod
    def _count(prepared: PreparedPhoto) -> None:
        if prepared.quality and prepared.quality.flags:
            for flag in prepared.quality.flags:
                PHOTOS_FLAGGED.labels(flag=flag).inc()
        if prepared.redaction:
            FACES_REDACTED.inc(prepared.redaction.get("faces", 0))
