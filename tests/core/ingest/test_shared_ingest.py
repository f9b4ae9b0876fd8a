"""Ingest shared by several core processes (issue 15), without a server: two receivers, each
with its own engine, stand for two processes on one PostgreSQL database and one S3 bucket
(moto's server).

- Resumable uploads staged in the object store go on at the other process, and a crash's
  leftover part past the durable offset is dropped.
- One request at a time per upload across processes (PostgreSQL advisory locks).
- Near-duplicate twins recorded by two processes share a group, as with one process; a photo
  taken back at one process leaves the other's index too.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from edge2core.common.objectstore import S3ObjectStore, image_key
from edge2core.core.db import migrations
from edge2core.core.db.engine import make_engine, make_sessionmaker
from edge2core.core.db.schema import ImageRow
from edge2core.core.ingest.errors import UploadBusy
from edge2core.core.ingest.receiver import ImageReceiver
from edge2core.core.ingest.staging import AdvisoryLocks, ObjectStaging
from edge2core.core.ingest.uploads import ResumableUploads
from tests.support.core_cluster import photo
from tests.support.objectstores import make_s3_store
from tests.support.postgres import fresh_postgres


@pytest.fixture
def pg_url() -> Iterator[str]:
    with fresh_postgres() as url:
        engine = make_engine(url)
        migrations.upgrade(engine)
        engine.dispose()
        yield url


def _sessions(url: str) -> sessionmaker[Session]:
    return make_sessionmaker(make_engine(url))


@pytest.fixture
def s3(s3_endpoint: str, tmp_path: Path) -> S3ObjectStore:
    return make_s3_store(s3_endpoint, tmp_path / "staging")


def _process(url: str, store: S3ObjectStore, tmp_path: Path, name: str) -> ResumableUploads:
    receiver = ImageReceiver(store, _sessions(url), max_bytes=1 << 20, val_percent=20)
    return ResumableUploads(receiver, ObjectStaging(store, tmp_path / name), expiry_s=60,
                            locks=AdvisoryLocks(url, pool_size=2))


async def _body(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def test_an_upload_staged_in_the_object_store_goes_on_at_another_process(
        pg_url: str, s3: S3ObjectStore, tmp_path: Path) -> None:
    a, b = _process(pg_url, s3, tmp_path, "a"), _process(pg_url, s3, tmp_path, "b")
    record, data = photo(1)
    third = record.size // 3
    a.create(record, record.size)
    state = await a.append(record.sha256, 0, _body(data[:third]))
    held = b.head(record.sha256)
    assert state.offset == third and held is not None and held.offset == third
    # A crash after a part was stored but before the state counted it: dropped on resume.
    s3.put(f"uploads/staging/{record.sha256}/part-{third:015d}", b"\0" * 50)
    state = await b.append(record.sha256, third, _body(data[third:2 * third], data[2 * third:]))
    assert state.done is not None and state.done.created
    assert s3.get(image_key(record.sha256)) == data
    assert list(s3.list("uploads/staging/")) == [] and a.in_progress() == []


async def test_one_request_at_a_time_per_upload_across_processes(
        pg_url: str, s3: S3ObjectStore, tmp_path: Path) -> None:
    a, b = _process(pg_url, s3, tmp_path, "a"), _process(pg_url, s3, tmp_path, "b")
    record, data = photo(2)
    a.create(record, record.size)
    appending, go_on = asyncio.Event(), asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        yield data[:100]
        appending.set()
        await go_on.wait()
        yield data[100:]

    first = asyncio.create_task(a.append(record.sha256, 0, slow()))
    await appending.wait()
    with pytest.raises(UploadBusy):
        await b.append(record.sha256, 0, _body(data))
    go_on.set()
    assert (await first).done is not None
    # Let go: the other process may append again (here: the replay of the final PATCH).
    assert (await b.append(record.sha256, record.size, _body())).done is not None


def test_twins_recorded_by_two_processes_share_a_group(pg_url: str, s3: S3ObjectStore) -> None:
    a = ImageReceiver(s3, _sessions(pg_url), max_bytes=1 << 20, val_percent=20)
    b = ImageReceiver(s3, _sessions(pg_url), max_bytes=1 << 20, val_percent=20)
    a.accept_bytes(*photo(10))  # both indexes loaded before the twins arrive
    b.accept_bytes(*photo(11))
    first, second = photo(12), photo(12, shift=3)
    a.accept_bytes(*first)
    b.accept_bytes(*second)
    with _sessions(pg_url)() as session:
        groups = dict(session.execute(select(ImageRow.sha256, ImageRow.dup_group)).all())
    assert groups[second[0].sha256] == groups[first[0].sha256] == first[0].sha256
    assert len(set(groups.values())) == 3
    # Taken back at a (its object could not be written) after b learnt of it: b no longer
    # groups a twin of it with it.
    alone = photo(13)
    a.accept_bytes(*alone)
    b.accept_bytes(*photo(14))  # b catches up on `alone`
    a.rows.unrecord(alone[0].sha256)
    twin = photo(13, shift=3)
    b.accept_bytes(*twin)
    with _sessions(pg_url)() as session:
        group = session.scalar(select(ImageRow.dup_group).where(ImageRow.sha256 == twin[0].sha256))
    assert group == twin[0].sha256
