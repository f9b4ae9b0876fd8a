"""The core's side of the claim check: take a photo's bytes, verify them, store them once.

The hash in the URL is the photo's id; the core recomputes it while streaming and refuses a
mismatch, so a confirmation means "these exact bytes are durable here".
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import AsyncIterable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from edge2core.common.events import PhotoRecord, utcnow
from edge2core.common.images import ImageRejected, RejectReason, metadata_found, sniff_format
from edge2core.common.objectstore import ObjectStore, image_key
from edge2core.core.schema import ImageRow


class UploadError(ValueError):
    """The upload cannot be accepted; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class Receipt:
    sha256: str
    key: str
    size: int
    created: bool


def stable_split(sha256: str, val_percent: int) -> str:
    """A photo's split depends on its id only, so it never moves between dataset versions."""
    return "val" if int(sha256[:8], 16) % 100 < val_percent else "train"


class ImageReceiver:
    def __init__(
        self,
        store: ObjectStore,
        sessions: sessionmaker[Session],
        *,
        max_bytes: int,
        val_percent: int,
    ) -> None:
        self._store = store
        self._sessions = sessions
        self._max_bytes = max_bytes
        self._val_percent = val_percent

    def existing(self, sha256: str) -> Receipt | None:
        with self._sessions() as session:
            row = session.get(ImageRow, sha256)
        if row is None or not self._store.exists(row.key):
            return None
        return Receipt(sha256=sha256, key=row.key, size=row.size, created=False)

    async def receive(self, record: PhotoRecord, body: AsyncIterable[bytes]) -> Receipt:
        if (done := self.existing(record.sha256)) is not None:
            return done  # a replay: acknowledged, not stored twice
        staged = await self._stage(record, body)
        try:
            self._check_privacy(staged)
            key = image_key(record.sha256)
            self._store.put_file(key, staged)
        finally:
            staged.unlink(missing_ok=True)
        self._record(record, key)
        return Receipt(sha256=record.sha256, key=key, size=record.size, created=True)

    async def _stage(self, record: PhotoRecord, body: AsyncIterable[bytes]) -> Path:
        digest = hashlib.sha256()
        size = 0
        fd, name = tempfile.mkstemp(dir=self._store.staging_dir(), prefix=".up-")
        path = Path(name)
        try:
            with os.fdopen(fd, "wb") as fh:
                async for chunk in body:
                    size += len(chunk)
                    if size > self._max_bytes:
                        raise UploadError(413, "too_large", f"over {self._max_bytes} bytes")
                    digest.update(chunk)
                    fh.write(chunk)
                fh.flush()
                os.fsync(fh.fileno())
            self._verify(record, digest.hexdigest(), size)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return path

    @staticmethod
    def _verify(record: PhotoRecord, actual: str, size: int) -> None:
        if actual != record.sha256:
            raise UploadError(
                422, "hash_mismatch", f"body hashes to {actual}, not {record.sha256}; resend"
            )
        if size != record.size:
            raise UploadError(422, "size_mismatch", f"body has {size} bytes, not {record.size}")

    @staticmethod
    def _check_privacy(path: Path) -> None:
        data = path.read_bytes()
        try:
            sniff_format(data)
        except ImageRejected as exc:
            raise UploadError(415, exc.reason.value, exc.detail) from exc
        if found := metadata_found(data):
            raise UploadError(
                422,
                RejectReason.METADATA_PRESENT.value,
                f"metadata must be stripped at the edge; found {', '.join(found)}",
            )

    def _record(self, record: PhotoRecord, key: str) -> None:
        row = ImageRow(
            sha256=record.sha256,
            key=key,
            size=record.size,
            width=record.width,
            height=record.height,
            site=record.site,
            device=record.device,
            source=record.source.value,
            sku=record.sku,
            captured_at=record.captured_at,
            received_at=record.received_at,
            stored_at=utcnow(),
            edge_model_version=record.edge_model_version,
            confidence=record.confidence,
            top_guesses=[g.model_dump() for g in record.top_guesses],
            split=stable_split(record.sha256, self._val_percent),
        )
        with self._sessions.begin() as session:
            if session.get(ImageRow, record.sha256) is None:
                session.add(row)
