"""Resumable uploads without a server: what is refused before any bytes arrive.

The HTTP side (tus headers, answers, resuming across connections) is in
tests/integration/test_uploads.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from edge2core.common.errors import Invalid, TooLarge
from edge2core.core.ingest.receiver import ImageReceiver
from edge2core.core.ingest.uploads import ResumableUploads
from tests.support.receiving import record_for


@pytest.fixture
def uploads(receiver: ImageReceiver, tmp_path: Path) -> ResumableUploads:
    return ResumableUploads(receiver, tmp_path / "uploads", expiry_s=60)


@pytest.mark.parametrize("field", ["site", "device", "sku", "request_id"])
async def test_creating_an_upload_checks_the_records_ids_first(
    uploads: ResumableUploads, jpeg: bytes, field: str
) -> None:
    """An id the core would refuse at the end is refused at the tus POST, before any bytes
    are sent or anything is written (both ways to create an upload)."""
    record = record_for(jpeg).model_copy(update={field: "../escape"})  # model_copy: unchecked
    with pytest.raises(Invalid) as info:
        uploads.create(record, record.size)
    assert info.value.code == "invalid_id"
    with pytest.raises(Invalid) as info:
        await uploads.restart(record, record.size)
    assert info.value.code == "invalid_id"
    assert list(uploads.dir.iterdir()) == []


def test_creating_an_upload_checks_its_length(uploads: ResumableUploads, jpeg: bytes) -> None:
    record = record_for(jpeg)
    with pytest.raises(Invalid) as mismatch:
        uploads.create(record, record.size + 1)
    assert mismatch.value.code == "size_mismatch"
    big = record_for(jpeg, size=64 * 1024 + 1)  # the receiver fixture's max_bytes + 1
    with pytest.raises(TooLarge):
        uploads.create(big, big.size)
    assert list(uploads.dir.iterdir()) == []
    state, new = uploads.create(record, record.size)
    assert new and (state.offset, state.length) == (0, len(jpeg))
