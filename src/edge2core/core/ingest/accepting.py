"""The receiver's contract with the ways photos reach it: its answer (`Receipt`) and what the
resumable uploads need from it (`Accepting`), so that `uploads` never imports `receiver`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

from edge2core.common.events import PhotoRecord


@dataclass(frozen=True)
class Receipt:
    sha256: str
    key: str
    size: int
    created: bool
    erased: bool = False  # the photo was erased at the core: acknowledged, never stored again


class Accepting(Protocol):
    """What `ResumableUploads` needs from the receiver (`ImageReceiver` is one)."""

    @property
    def max_bytes(self) -> int:
        """The largest photo the core takes."""

    def check_ids(self, record: PhotoRecord) -> None:
        """Refuse a record whose ids break the identifiers rule (before any bytes arrive)."""

    def existing(self, sha256: str) -> Receipt | None:
        """The receipt of a photo already stored (or erased), else None."""

    def stored_record(self, sha256: str) -> tuple[PhotoRecord, datetime] | None:
        """A stored photo's record as the core keeps it, and when it was stored."""

    def verify(self, record: PhotoRecord, actual: str, size: int) -> None:
        """Refuse a body whose sha256 or size is not the record's."""

    def accept(self, record: PhotoRecord, staged: Path, *, keep_on_failure: bool = False) -> Receipt:
        """Store and record a verified file (blocking); see `ImageReceiver.accept`."""
