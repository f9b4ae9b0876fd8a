"""Why the core refuses an upload, in the one error vocabulary (`common.errors`).

Ingest raises the classes below, each of a family with a stable `code`; nothing here decides an
HTTP status (core/api/errors.py maps families, and the few codes tus and the edges key on, to
statuses in one place). Besides `code` and `detail`, a refusal of a resumable upload may carry
`offset`: how many bytes the core holds durably (tus `Upload-Offset`), for the client to resume;
a `Busy` one carries `retry_after_s`.

| code                                              | class            | family      |
| ------------------------------------------------- | ---------------- | ----------- |
| hash_mismatch, size_mismatch, invalid_id,         | InvalidUpload    | Invalid     |
| metadata_present, corrupt                         |                  |             |
| not_an_image, unsupported_format, empty           | UnsupportedPhoto | Unsupported |
| too_large, exceeds_length (offset)                | UploadTooLarge   | TooLarge    |
| offset_mismatch (offset)                          | OffsetMismatch   | Conflict    |
| upload_busy (answered 423, not 409)               | UploadBusy       | Conflict    |
| no_upload                                         | NoUpload         | NotFound    |
| store_unavailable, staging_unavailable (offset)   | StoreUnavailable | Busy        |
"""

from __future__ import annotations

from edge2core.common.errors import Busy, Conflict, Invalid, NotFound, TooLarge, Unsupported


class InvalidUpload(Invalid):
    """The bytes or the record are not what they claim (hash, size, ids, metadata, decoding)."""


class UnsupportedPhoto(Unsupported):
    """Not a photo in a format the core takes."""


class UploadTooLarge(TooLarge):
    """Over the core's size limit (`too_large`), or past the upload's length (`exceeds_length`,
    with the `offset` the upload stays at)."""

    code = "too_large"

    def __init__(self, detail: str, *, code: str | None = None, offset: int | None = None) -> None:
        super().__init__(detail, code=code)
        self.offset = offset


class OffsetMismatch(Conflict):
    """A resumable upload is not at the offset the request appends at; `offset` is where it is."""

    code = "offset_mismatch"

    def __init__(self, detail: str, *, offset: int) -> None:
        super().__init__(detail)
        self.offset = offset


class UploadBusy(Conflict):
    """Another request is appending to this upload right now; try again shortly."""

    code = "upload_busy"


class NoUpload(NotFound):
    """No such resumable upload (never created, expired, finished elsewhere, erased)."""

    code = "no_upload"


class StoreUnavailable(Busy):
    """The core could not keep the bytes (`staging_unavailable`) or store the photo yet
    (`store_unavailable`); what arrived is kept, up to `offset`."""

    code = "store_unavailable"

    def __init__(self, detail: str, *, code: str | None = None, offset: int,
                 retry_after_s: float) -> None:
        super().__init__(detail, code=code, retry_after_s=retry_after_s)
        self.offset = offset
