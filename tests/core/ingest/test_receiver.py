"""The core's receiver: content-addressed storage, replays, refusals, stable splits, erasure
racing an upload, group commit and the WAL commits.

Everything that touches the database runs on SQLite and on PostgreSQL (the `sessions` fixture).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import func, select, text

from edge2core.common.errors import Invalid, TooLarge, Unsupported
from edge2core.common.objectstore import LocalObjectStore, image_key
from edge2core.core.db.schema import ImageRow
from edge2core.core.ingest.near_dups import stable_split
from edge2core.core.ingest.receiver import ImageReceiver
from tests.support.jpegs import jpeg_bytes
from tests.support.receiving import VAL_PERCENT, chunks, distinct_jpeg, record_for


def stored_keys(store: LocalObjectStore) -> list[str]:
    return sorted(store.list())


def staged_files(store: LocalObjectStore) -> list[Path]:
    return [p for p in store.staging_dir().rglob("*") if p.is_file()]


def image_rows(sessions) -> int:
    with sessions() as session:
        return session.scalar(select(func.count()).select_from(ImageRow))



# --- receiver ------------------------------------------------------------------------------


async def test_upload_is_stored_content_addressed(receiver, store, sessions, jpeg) -> None:
    record = record_for(jpeg, sku="SKU-A")
    receipt = await receiver.receive(record, chunks(jpeg, 100))
    assert receipt.created is True
    assert receipt.sha256 == record.sha256
    assert receipt.size == len(jpeg)
    assert receipt.key == image_key(record.sha256) == f"images/{record.sha256[:2]}/{record.sha256}.jpg"
    assert store.get(receipt.key) == jpeg
    assert stored_keys(store) == [receipt.key]
    assert staged_files(store) == []
    with sessions() as session:
        row = session.get(ImageRow, record.sha256)
    assert (row.key, row.size, row.site, row.device, row.sku) == (
        receipt.key, len(jpeg), "store-1", "kiosk-a", "SKU-A",
    )
    assert row.source == "kiosk"
    assert row.split == stable_split(record.sha256, VAL_PERCENT)


async def test_replay_is_acknowledged_without_storing_again(receiver, store, sessions, jpeg) -> None:
    record = record_for(jpeg)
    first = await receiver.receive(record, chunks(jpeg))
    replay = await receiver.receive(record, chunks(jpeg))
    assert replay.created is False
    assert (replay.sha256, replay.key, replay.size) == (first.sha256, first.key, first.size)
    assert stored_keys(store) == [first.key]
    assert staged_files(store) == []
    assert image_rows(sessions) == 1
    assert receiver.existing(record.sha256) == replay


async def test_lost_object_is_stored_again(receiver, store, sessions, jpeg) -> None:
    record = record_for(jpeg)
    first = await receiver.receive(record, chunks(jpeg))
    store.delete(first.key)
    assert receiver.existing(record.sha256) is None
    again = await receiver.receive(record, chunks(jpeg))
    assert again.created is True
    assert store.get(again.key) == jpeg
    assert image_rows(sessions) == 1


async def test_hash_mismatch_is_refused_and_nothing_kept(receiver, store, sessions, jpeg) -> None:
    claimed = record_for(jpeg_bytes(color=(1, 2, 3)), size=len(jpeg))
    with pytest.raises(Invalid) as info:
        await receiver.receive(claimed, chunks(jpeg))
    assert info.value.code == "hash_mismatch"
    assert hashlib.sha256(jpeg).hexdigest() in info.value.detail
    assert stored_keys(store) == []
    assert staged_files(store) == []
    assert image_rows(sessions) == 0


async def test_size_mismatch_is_refused(receiver, store, sessions, jpeg) -> None:
    with pytest.raises(Invalid) as info:
        await receiver.receive(record_for(jpeg, size=len(jpeg) + 1), chunks(jpeg))
    assert info.value.code == "size_mismatch"
    assert stored_keys(store) == [] and staged_files(store) == []
    assert image_rows(sessions) == 0


async def test_oversize_upload_is_413(store, sessions) -> None:
    receiver = ImageReceiver(store, sessions, max_bytes=1000, val_percent=VAL_PERCENT)
    data = jpeg_bytes(size=(200, 150))
    assert len(data) > 1000
    with pytest.raises(TooLarge) as info:
        await receiver.receive(record_for(data), chunks(data, 256))
    assert info.value.code == "too_large"
    assert stored_keys(store) == [] and staged_files(store) == []
    assert image_rows(sessions) == 0


async def test_photo_with_exif_is_refused_as_metadata_present(receiver, store, sessions) -> None:
    exif = Image.Exif()
    exif[0x0110] = "Phone 9"
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2] = "N", (52.0, 22.0, 1.5)
    data = jpeg_bytes(exif=exif)
    with pytest.raises(Invalid) as info:
        await receiver.receive(record_for(data), chunks(data))
    assert info.value.code == "metadata_present"
    assert "exif" in info.value.detail
    assert stored_keys(store) == [] and staged_files(store) == []
    assert image_rows(sessions) == 0


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"this is not a photo at all\n" * 20, "not_an_image"),
        (b"GIF89a" + b"\x00" * 200, "unsupported_format"),
    ],
    ids=["text", "gif"],
)
async def test_non_image_is_415(receiver, store, sessions, data: bytes, code: str) -> None:
    with pytest.raises(Unsupported) as info:
        await receiver.receive(record_for(data), chunks(data))
    assert info.value.code == code
    assert stored_keys(store) == [] and staged_files(store) == []
    assert image_rows(sessions) == 0


def test_stable_split_is_stable_and_about_val_percent() -> None:
    ids = [hashlib.sha256(f"photo-{i}".encode()).hexdigest() for i in range(4000)]
    splits = [stable_split(i, 10) for i in ids]
    assert splits == [stable_split(i, 10) for i in ids]
    assert set(splits) == {"train", "val"}
    share = splits.count("val") / len(ids)
    assert 0.08 <= share <= 0.12, share
    assert {stable_split(i, 0) for i in ids} == {"train"}
    assert {stable_split(i, 100) for i in ids} == {"val"}
    # Raising the share only moves photos from train to val, never back.
    assert all(stable_split(i, 30) == "val" for i, s in zip(ids, splits, strict=True) if s == "val")


async def test_upload_erased_while_on_its_way_is_not_kept(receiver, store, sessions, jpeg) -> None:
    """A tombstone written between the replay check and the commit still wins."""
    from datetime import UTC, datetime

    from edge2core.core.db.schema import TombstoneRow

    record = record_for(jpeg)
    real_existing = receiver.existing

    def existing_then_erased(sha256: str):  # type: ignore[no-untyped-def]
        found = real_existing(sha256)
        with sessions.begin() as session:
            session.add(TombstoneRow(sha256=sha256, erasure_id=1, erased_at=datetime.now(UTC)))
        return found

    receiver.existing = existing_then_erased
    receipt = await receiver.receive(record, chunks(jpeg))
    assert (receipt.created, receipt.erased) == (False, True)
    assert stored_keys(store) == [] and staged_files(store) == []
    assert image_rows(sessions) == 0


async def test_concurrent_uploads_are_all_durable_and_recorded(receiver, store, sessions) -> None:
    """Group commit: many uploads at once, each answered after its object and its row."""
    import asyncio

    photos = [distinct_jpeg(200 + n) for n in range(24)]
    receipts = await asyncio.gather(*(
        receiver.receive(record_for(data), chunks(data)) for data in photos))
    assert all(r.created for r in receipts)
    assert image_rows(sessions) == len(set(photos))
    for data in photos:
        assert store.get(image_key(hashlib.sha256(data).hexdigest())) == data


def test_wal_commits_only_for_sqlite_files_in_wal_mode(tmp_path: Path) -> None:
    from edge2core.core.db.engine import make_engine
    from edge2core.core.ingest.commits import WalCommits

    engine = make_engine(f"sqlite:///{tmp_path / 'core.db'}")
    wal = WalCommits.for_engine(engine)
    assert wal is not None and wal.wal == (tmp_path / "core.db-wal").resolve()
    with wal.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL elsewhere
    assert wal.latest() == 0
    with wal.committing() as commit, wal.sessions.begin() as session:
        session.execute(text("CREATE TABLE t (x INTEGER)"))
    assert commit.seq == 1 == wal.latest()
    wal.sync(commit.seq)
    wal.sync(commit.seq)  # already covered: no second fsync needed
    assert WalCommits.for_engine(make_engine("sqlite://")) is None
    wal.engine.dispose()
    engine.dispose()
