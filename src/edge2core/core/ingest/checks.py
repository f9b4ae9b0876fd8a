"""What the core checks before it keeps a photo (pure: values in, a refusal or nothing out).

A photo record's ids follow the identifiers rule; the bytes hash to the photo's id and have the
size the record says; and the photo is a supported image with no metadata left (the edge strips
it; the core re-checks). Refusals that say something is wrong with the photo itself are
`QUARANTINED` (kept with their reason, without the bytes); transport problems (hash or size
mismatch) are not, since a resend fixes them.
"""

from __future__ import annotations

from edge2core.common.events import PhotoRecord
from edge2core.common.identifiers import IdKind, InvalidIdentifier, check, check_optional
from edge2core.common.images import ImageRejected, RejectReason, metadata_found, sniff_format
from edge2core.core.ingest.errors import InvalidUpload, UnsupportedPhoto

QUARANTINED = frozenset(
    {"metadata_present", "not_an_image", "unsupported_format", "corrupt", "empty"}
)


def check_ids(record: PhotoRecord) -> None:
    """Every id in a photo record follows the identifiers rule (`common.identifiers`) before
    the core keeps it: site, device, request id, the SKU (it becomes a label, a class, a file
    name in exports) and the edge's guesses (a person may confirm one as the label). Refused
    as `Invalid` `invalid_id`; the edge quarantines the photo with the reason."""
    try:
        check(IdKind.SITE, record.site)
        check(IdKind.DEVICE, record.device)
        check_optional(IdKind.SKU, record.sku)
        check_optional(IdKind.REQUEST_ID, record.request_id)
        for guess in record.top_guesses:
            check(IdKind.SKU, guess.sku)
    except InvalidIdentifier as exc:
        raise InvalidUpload(str(exc), code=exc.reason) from exc


def verify(record: PhotoRecord, actual: str, size: int) -> None:
    """The body that arrived (its sha256 and size) is the photo the record names."""
    if actual != record.sha256:
        raise InvalidUpload(f"body hashes to {actual}, not {record.sha256}; resend",
                            code="hash_mismatch")
    if size != record.size:
        raise InvalidUpload(f"body has {size} bytes, not {record.size}", code="size_mismatch")


def check_privacy(data: bytes) -> None:
    """A supported image format, with no metadata (EXIF, XMP, ICC, comments) left in it."""
    try:
        sniff_format(data)
    except ImageRejected as exc:
        raise UnsupportedPhoto(exc.detail, code=exc.reason.value) from exc
    try:
        found = metadata_found(data)
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidUpload(f"cannot read the photo: {exc}", code=RejectReason.CORRUPT.value) from exc
    if found:
        raise InvalidUpload(f"metadata must be stripped at the edge; found {', '.join(found)}",
                            code=RejectReason.METADATA_PRESENT.value)
