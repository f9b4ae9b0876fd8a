"""Resumable uploads in the shape of the tus 1.0 core protocol, keyed by the photo's sha256.

An upload lives in staging (`ingest.staging`: a local folder by default, the object store
itself with S3) as its bytes received so far and its state (the photo record, the declared
length, the durable offset and the expiry). The offset in the state is written only after the
bytes up to it are durable, so after a crash the upload resumes from a point that is really
stored (anything past it is dropped). Because the id is the content hash, a retry after any failure finds the same
upload, and an upload of a photo the core already holds completes at once.

"All bytes received" is not "stored": the upload is forgotten only once the photo is in the
object store and recorded. If finishing fails (the object store refuses the write), the upload
stays, complete, and a PATCH with an empty body at `Upload-Offset` = `Upload-Length` finishes it
again; until then nothing answers with the stored key, which is the client's only proof.

One request at a time appends to an upload (`ingest.staging`'s locks: per process by default,
PostgreSQL advisory locks across core processes), so with S3 staging and PostgreSQL any core
process behind a load balancer can take any request of any upload.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from starlette.requests import ClientDisconnect

from edge2core.common.errors import DomainError
from edge2core.common.events import PhotoRecord, utcnow
from edge2core.common.logging import get_logger
from edge2core.core.ingest.accepting import Accepting, Receipt
from edge2core.core.ingest.errors import (
    InvalidUpload,
    NoUpload,
    OffsetMismatch,
    StoreUnavailable,
    UploadTooLarge,
)
from edge2core.core.ingest.staging import (
    Appender,
    FolderStaging,
    LocalLocks,
    ObjectStaging,
    Staging,
    UploadLocks,
)

log = get_logger(__name__)

TUS_VERSION = "1.0.0"
TUS_EXTENSIONS = "creation,expiration,termination"
_PURGE_EVERY_S = 60.0
_RETRY_AFTER_S = 5.0


class ClientGone(Exception):
    """The client went away mid-body; what arrived before is kept."""


@dataclass
class UploadState:
    record: PhotoRecord
    length: int
    offset: int
    created_at: datetime
    expires_at: datetime
    done: Receipt | None = field(default=None)

    @property
    def sha256(self) -> str:
        return self.record.sha256

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "record": self.record.model_dump(mode="json"),
                "length": self.length,
                "offset": self.offset,
                "created_at": self.created_at.isoformat(),
                "expires_at": self.expires_at.isoformat(),
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def from_json(cls, data: bytes) -> UploadState:
        raw = json.loads(data)
        return cls(
            record=PhotoRecord.model_validate(raw["record"]),
            length=int(raw["length"]),
            offset=int(raw["offset"]),
            created_at=datetime.fromisoformat(raw["created_at"]),
            expires_at=datetime.fromisoformat(raw["expires_at"]),
        )


class ResumableUploads:
    """Uploads in progress in `staging` (a local folder, given as a path, or
    `ingest.staging.ObjectStaging`), verified, stored and recorded by `receiver` once complete;
    `locks` keeps to one request per upload at a time (this process's own by default)."""

    def __init__(self, receiver: Accepting, staging: Staging | Path, *, expiry_s: float,
                 locks: UploadLocks | None = None) -> None:
        self._receiver = receiver
        self.expiry_s = expiry_s
        self.staging = FolderStaging(staging) if isinstance(staging, Path) else staging
        self.dir = self.staging.dir
        self._locks = locks or LocalLocks()
        # sha256 -> (offset, running hash of bytes [0, offset)): saves re-reading the bytes
        # (another process's request, or one from before a restart, rehashes them).
        self._hashers: dict[str, tuple[int, hashlib._Hash]] = {}
        self._last_purge = 0.0

    # --- state -------------------------------------------------------------------------------

    def state(self, sha256: str) -> UploadState | None:
        """The upload in progress, or None (never created, finished, expired or deleted)."""
        if (raw := self.staging.read_state(sha256)) is None:
            return None
        try:
            state = UploadState.from_json(raw)
        except (ValueError, KeyError, TypeError):
            # Not written by `_save` (which is atomic): nothing can be finished from it.
            self.discard(sha256)
            return None
        if state.expires_at <= utcnow():
            self.discard(sha256)
            return None
        state.offset = self.staging.durable(sha256, state.offset)
        return state

    def _save(self, state: UploadState) -> None:
        self.staging.write_state(state.sha256, state.to_json())

    def discard(self, sha256: str) -> bool:
        """Forget an upload and its bytes (tus termination; expiry; erasure)."""
        self._hashers.pop(sha256, None)
        return self.staging.discard(sha256)

    def in_progress(self) -> list[UploadState]:
        states = []
        for sha256 in self.staging.ids():
            if (state := self.state(sha256)) is not None:
                states.append(state)
        return states

    def purge_expired(self, now: datetime | None = None) -> int:
        now = now or utcnow()
        purged = 0
        for sha256 in self.staging.ids():
            try:
                raw = self.staging.read_state(sha256)
                state = UploadState.from_json(raw) if raw is not None else None
            except (OSError, ValueError, KeyError, TypeError):
                state = None
            if state is None or state.expires_at <= now:
                self.discard(sha256)
                purged += 1
        self.staging.purge_orphans(3600)  # bytes whose state never made it
        self._last_purge = time.monotonic()
        return purged

    # --- tus operations ----------------------------------------------------------------------

    def create(self, record: PhotoRecord, length: int) -> tuple[UploadState, bool]:
        """POST by id: start an upload, or find the one already there. True if it is new."""
        self._check_new(record, length)
        self._purge_now_and_then()
        now = utcnow()
        if (done := self._receiver.existing(record.sha256)) is not None:
            return UploadState(record, length, length, now, now, done=done), False
        if (state := self.state(record.sha256)) is not None:
            return state, False
        return self._start(record, length), True

    async def restart(self, record: PhotoRecord, length: int) -> UploadState:
        """POST to the collection (a stock tus client): a new upload at offset 0, always.

        A stock client PATCHes from 0 after its POST whatever the answer says (tuspy ignores
        `Upload-Offset` there), so the only answer it can use is a fresh upload: an earlier
        partial upload of the same photo is dropped, and a photo already stored is received
        again and acknowledged as a replay when it completes (stored once, under one key).
        Clients that keep the upload's URL resume with HEAD instead.
        """
        self._check_new(record, length)
        async with self._locks.hold(record.sha256):
            await asyncio.to_thread(self._purge_now_and_then)
            return await asyncio.to_thread(self._start, record, length)

    def _check_new(self, record: PhotoRecord, length: int) -> None:
        """What can be refused before any bytes arrive: the record's ids, its length."""
        self._receiver.check_ids(record)
        if length != record.size:
            raise InvalidUpload(f"Upload-Length {length} but the record says {record.size}",
                                code="size_mismatch")
        if length > self._receiver.max_bytes:
            raise UploadTooLarge(f"over {self._receiver.max_bytes} bytes")

    def _purge_now_and_then(self) -> None:
        if time.monotonic() - self._last_purge > _PURGE_EVERY_S:
            self.purge_expired()

    def _start(self, record: PhotoRecord, length: int) -> UploadState:
        """A new, empty upload; whatever partial upload had this id is dropped."""
        self.discard(record.sha256)
        now = utcnow()
        state = UploadState(record, length, 0, now, now + timedelta(seconds=self.expiry_s))
        self.staging.start(record.sha256)
        self._save(state)
        return state

    def head(self, sha256: str) -> UploadState | None:
        """HEAD: the durable offset; a stored photo reads as a finished upload."""
        if (state := self.state(sha256)) is not None:
            return state
        done = self._receiver.existing(sha256)
        if done is None or done.erased:
            return None
        if (stored := self._receiver.stored_record(sha256)) is None:
            return None
        record, stored_at = stored
        return UploadState(record, record.size, record.size, stored_at, stored_at, done=done)

    async def append(
        self, sha256: str, offset: int, body: AsyncIterable[bytes]
    ) -> UploadState:
        """PATCH: append the body at `offset`; when the upload is complete, verify and store it.

        Returns the state after the request; `state.done` is the receipt once the photo is
        durable in the object store and recorded. Raises `ClientGone` (after keeping what
        arrived) when the client went away mid-body.
        """
        async with self._locks.hold(sha256):
            state = await asyncio.to_thread(self.state, sha256)
            if state is None:
                if (done := await asyncio.to_thread(self.head, sha256)) is not None:
                    if offset == done.length:
                        return done  # a replay of the final PATCH: already stored
                    raise OffsetMismatch(f"the upload is complete at {done.length}",
                                         offset=done.length)
                raise NoUpload("no such upload (expired?); create it again")
            if offset != state.offset:
                raise OffsetMismatch(f"the upload is at offset {state.offset}, not {offset}",
                                     offset=state.offset)
            hasher = await asyncio.to_thread(self._hasher_at, sha256, offset)
            gone = await self._write(state, hasher, body)
            if gone:
                raise ClientGone(sha256)
            if state.offset == state.length:
                state.done = await asyncio.to_thread(self._finish, state, hasher.hexdigest())
            return state

    async def _write(self, state: UploadState, hasher: hashlib._Hash, body: AsyncIterable[bytes]) -> bool:
        """Append, then make durable and record the new offset even if the client vanished
        mid-way. True if the client went away. A failing staging store (a full or read-only
        disk, the object store down) is the core's fault, not the client's: what was written
        is kept and the request is refused as `Busy`.
        """
        gone = False
        too_long = False
        store_error: OSError | None = None
        try:
            out = await asyncio.to_thread(self.staging.appender, state.sha256, state.offset)
        except OSError as exc:
            raise _staging_failed(state, exc) from exc
        try:
            written = 0
            try:
                async for chunk in body:
                    room = state.length - state.offset - written
                    if len(chunk) > room:
                        chunk, too_long = chunk[:room], True
                    try:
                        out.write(chunk)
                    except OSError as exc:
                        store_error = exc
                        break
                    hasher.update(chunk)
                    written += len(chunk)
                    if too_long:
                        break
            except (ClientDisconnect, OSError, asyncio.CancelledError) as exc:
                gone = True
                if isinstance(exc, asyncio.CancelledError):
                    await asyncio.shield(self._checkpoint(out, state, written, hasher))
                    raise
            await self._checkpoint(out, state, written, hasher)
        except OSError as exc:  # making the bytes durable, or recording the offset
            raise _staging_failed(state, exc) from exc
        finally:
            out.close()
        if store_error is not None:
            raise _staging_failed(state, store_error)
        if too_long:
            raise UploadTooLarge(f"the body goes past Upload-Length {state.length}",
                                 code="exceeds_length", offset=state.offset)
        return gone

    async def _checkpoint(
        self, out: Appender, state: UploadState, written: int, hasher: hashlib._Hash
    ) -> None:
        if written == 0:
            return
        await asyncio.to_thread(out.flush)
        state.offset += written
        await asyncio.to_thread(self._save, state)
        self._hashers[state.sha256] = (state.offset, hasher)

    def _hasher_at(self, sha256: str, offset: int) -> hashlib._Hash:
        cached = self._hashers.get(sha256)
        if cached is not None and cached[0] == offset:
            return cached[1]
        hasher = hashlib.sha256()  # another process's bytes, or from before a restart: rehash
        if offset == 0:
            return hasher
        for block in self.staging.read(sha256, offset):
            hasher.update(block)
        return hasher

    def _finish(self, state: UploadState, digest: str) -> Receipt:
        """All bytes are here: verify, privacy re-check, store, record; then forget the upload.

        A refusal (wrong hash, metadata left, not an image) ends the upload for good. Any other
        failure (the object store refuses the write, the database is down) keeps it, complete
        and unfinished, and is refused as `Busy` (`store_unavailable`) without a key: the
        client must not take the bytes' arrival for storage. A PATCH with an empty body at
        offset == length tries again.
        """
        try:
            self._receiver.verify(state.record, digest, state.offset)
            # Already stored (sent again by a client that lost its answer) or erased: the
            # receipt stands and nothing is written twice.
            receipt = self._receiver.existing(state.sha256)
            if receipt is None:
                receipt = self._receiver.accept(
                    state.record, self.staging.finished_file(state.sha256, state.offset),
                    keep_on_failure=not isinstance(self.staging, ObjectStaging),
                )
        except DomainError:  # a refusal
            self.discard(state.sha256)
            raise
        except Exception as exc:
            log.exception("finishing an upload failed; it is kept for another try",
                          sha256=state.sha256, size=state.length)
            raise StoreUnavailable(
                "all bytes arrived but the photo could not be stored yet; finish the upload "
                "again later (PATCH with an empty body at Upload-Offset = Upload-Length)",
                offset=state.offset, retry_after_s=_RETRY_AFTER_S,
            ) from exc
        self.discard(state.sha256)
        return receipt


def _staging_failed(state: UploadState, exc: OSError) -> StoreUnavailable:
    """The core could not write an upload's bytes (its own disk): `Busy`, naming no path."""
    log.error("writing an upload's bytes failed", sha256=state.sha256,
              errno=exc.errno, error=exc.strerror)
    return StoreUnavailable(
        "the core could not keep the bytes; HEAD says how many it holds, resume from there",
        code="staging_unavailable", offset=state.offset, retry_after_s=_RETRY_AFTER_S,
    )

