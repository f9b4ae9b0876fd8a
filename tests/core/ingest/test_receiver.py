"""The core's stores: receiver, datasets, model registry, catalogue, local object store.

Everything that touches the database runs on SQLite and on PostgreSQL (the `sessions` fixture).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import func, select, text

from edge2core.common.events import ModelPublished, PhotoRecord, Source
from edge2core.common.objectstore import LocalObjectStore, image_key
from edge2core.common.products import Product, ProductStatus
from edge2core.core.catalogue.catalogue import Catalogue
from edge2core.core.curate.datasets import DatasetQuery, DatasetStore
from edge2core.core.ingest.receiver import ImageReceiver, UploadError, stable_split
from edge2core.core.deliver.registry import ModelRegistry
from edge2core.core.db.schema import ImageRow
from tests.conftest import jpeg_bytes
from tests.recorded_sites import RecordedSites

VAL_PERCENT = 20


async def chunks(data: bytes, size: int = 1000) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def record_for(
    data: bytes,
    *,
    sku: str | None = "SKU-A",
    site: str = "store-1",
    device: str = "kiosk-a",
    source: Source = Source.KIOSK,
    **override: object,
) -> PhotoRecord:
    fields: dict[str, object] = {
        "site": site,
        "device": device,
        "source": source,
        "sku": sku,
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "width": 64,
        "height": 48,
    }
    fields.update(override)
    return PhotoRecord(**fields)


def distinct_jpeg(n: int) -> bytes:
    return jpeg_bytes(size=(32, 24), color=((n * 37) % 256, (n * 91) % 256, (n * 13 + 50) % 256))


def stored_keys(store: LocalObjectStore) -> list[str]:
    return sorted(store.list())


def staged_files(store: LocalObjectStore) -> list[Path]:
    return [p for p in store.staging_dir().rglob("*") if p.is_file()]


def image_rows(sessions) -> int:
    with sessions() as session:
        return session.scalar(select(func.count()).select_from(ImageRow))


@pytest.fixture
def store(tmp_path: Path) -> LocalObjectStore:
    return LocalObjectStore(tmp_path / "objects")


@pytest.fixture
def receiver(store: LocalObjectStore, sessions) -> ImageReceiver:
    return ImageReceiver(store, sessions, max_bytes=64 * 1024, val_percent=VAL_PERCENT)


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
    with pytest.raises(UploadError) as info:
        await receiver.receive(claimed, chunks(jpeg))
    assert (info.value.status, info.value.code) == (422, "hash_mismatch")
    assert hashlib.sha256(jpeg).hexdigest() in info.value.detail
    assert stored_keys(store) == []
    assert staged_files(store) == []
    assert image_rows(sessions) == 0


async def test_size_mismatch_is_refused(receiver, store, sessions, jpeg) -> None:
    with pytest.raises(UploadError) as info:
        await receiver.receive(record_for(jpeg, size=len(jpeg) + 1), chunks(jpeg))
    assert (info.value.status, info.value.code) == (422, "size_mismatch")
    assert stored_keys(store) == [] and staged_files(store) == []
    assert image_rows(sessions) == 0


async def test_oversize_upload_is_413(store, sessions) -> None:
    receiver = ImageReceiver(store, sessions, max_bytes=1000, val_percent=VAL_PERCENT)
    data = jpeg_bytes(size=(200, 150))
    assert len(data) > 1000
    with pytest.raises(UploadError) as info:
        await receiver.receive(record_for(data), chunks(data, 256))
    assert (info.value.status, info.value.code) == (413, "too_large")
    assert stored_keys(store) == [] and staged_files(store) == []
    assert image_rows(sessions) == 0


async def test_photo_with_exif_is_refused_as_metadata_present(receiver, store, sessions) -> None:
    exif = Image.Exif()
    exif[0x0110] = "Phone 9"
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2] = "N", (52.0, 22.0, 1.5)
    data = jpeg_bytes(exif=exif)
    with pytest.raises(UploadError) as info:
        await receiver.receive(record_for(data), chunks(data))
    assert (info.value.status, info.value.code) == (422, "metadata_present")
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
    with pytest.raises(UploadError) as info:
        await receiver.receive(record_for(data), chunks(data))
    assert (info.value.status, info.value.code) == (415, code)
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


# --- datasets ------------------------------------------------------------------------------


SKUS = ("SKU-A", "SKU-B", "SKU-C")


@pytest.fixture
async def kiosk_photos(receiver) -> dict[str, tuple[str, str]]:
    """12 labelled photos (4 per SKU over two sites) and one unlabelled shopper photo."""
    photos: dict[str, tuple[str, str]] = {}
    for n in range(12):
        data = distinct_jpeg(n)
        sku, site = SKUS[n % 3], ("store-1", "store-2")[n % 2]
        receipt = await receiver.receive(record_for(data, sku=sku, site=site), chunks(data))
        assert receipt.created
        photos[receipt.sha256] = (sku, site)
    shopper = distinct_jpeg(99)
    await receiver.receive(
        record_for(shopper, sku=None, source=Source.SHOPPER, device="cart-1"), chunks(shopper)
    )
    assert len(photos) == 12
    return photos


async def test_dataset_build_from_kiosk_photos(kiosk_photos, store, sessions) -> None:
    datasets = DatasetStore(store, sessions)
    info = datasets.build(DatasetQuery())
    assert info.version == 1
    assert info.manifest_key == f"datasets/manifests/{info.manifest_sha256}.parquet"
    manifest = store.get(info.manifest_key)
    assert hashlib.sha256(manifest).hexdigest() == info.manifest_sha256
    assert info.stats["images"] == 12
    assert info.stats["classes"] == 3
    assert info.stats["per_class"] == {"SKU-A": 4, "SKU-B": 4, "SKU-C": 4}
    assert info.stats["per_site"] == {"store-1": 6, "store-2": 6}
    assert sum(info.stats["per_split"].values()) == 12

    entries = datasets.entries(info.version)
    assert [e.sha256 for e in entries] == sorted(kiosk_photos)  # shopper photo left out
    for e in entries:
        assert (e.sku, e.site) == kiosk_photos[e.sha256]
        assert e.key == image_key(e.sha256)
        assert e.split == stable_split(e.sha256, VAL_PERCENT)
        assert e.source is Source.KIOSK
        assert store.exists(e.key)
    assert datasets.get(info.version).manifest_sha256 == info.manifest_sha256


async def test_dataset_manifest_is_deterministic(kiosk_photos, store, sessions) -> None:
    datasets = DatasetStore(store, sessions)
    first = datasets.build(DatasetQuery())
    second = datasets.build(DatasetQuery())
    assert second.version == first.version + 1
    assert (second.manifest_sha256, second.manifest_key) == (
        first.manifest_sha256, first.manifest_key,
    )
    assert datasets.entries(first.version) == datasets.entries(second.version)
    manifests = list(store.list("datasets/"))
    assert manifests == [first.manifest_key]


async def test_dataset_query_filters(kiosk_photos, store, sessions) -> None:
    datasets = DatasetStore(store, sessions)
    only_a = datasets.build(DatasetQuery(skus=["SKU-A"]))
    assert {e.sku for e in datasets.entries(only_a.version)} == {"SKU-A"}
    assert only_a.stats["images"] == 4
    assert only_a.query.skus == ["SKU-A"]

    site_2 = datasets.build(DatasetQuery(sites=["store-2"]))
    assert {e.site for e in datasets.entries(site_2.version)} == {"store-2"}
    assert site_2.stats["images"] == 6

    both = datasets.build(DatasetQuery(skus=["SKU-A", "SKU-B"], sites=["store-1"]))
    expected = sorted(
        sha for sha, (sku, site) in kiosk_photos.items()
        if sku in ("SKU-A", "SKU-B") and site == "store-1"
    )
    assert [e.sha256 for e in datasets.entries(both.version)] == expected
    assert datasets.get(both.version).query == both.query

    assert len({only_a.manifest_sha256, site_2.manifest_sha256, both.manifest_sha256}) == 3


async def test_dataset_with_no_matching_photos_is_a_lookup_error(kiosk_photos, store, sessions) -> None:
    datasets = DatasetStore(store, sessions)
    with pytest.raises(LookupError, match="no labelled photos match the query"):
        datasets.build(DatasetQuery(skus=["SKU-NOPE"]))
    with pytest.raises(LookupError, match="no labelled photos"):
        datasets.build(DatasetQuery(sources=[Source.SHOPPER]))  # shopper photos have no label
    with pytest.raises(LookupError, match="does not exist"):
        datasets.get(1)  # the failed builds made no versions


def test_dataset_on_an_empty_core_is_a_lookup_error(store, sessions) -> None:
    with pytest.raises(LookupError, match="send kiosk captures first"):
        DatasetStore(store, sessions).build(DatasetQuery())


async def test_tampered_manifest_is_detected(kiosk_photos, store, sessions) -> None:
    datasets = DatasetStore(store, sessions)
    info = datasets.build(DatasetQuery())
    manifest = store.get(info.manifest_key)
    store.put(info.manifest_key, manifest[:100] + bytes([manifest[100] ^ 1]) + manifest[101:])
    with pytest.raises(RuntimeError, match="does not match its hash"):
        datasets.entries(info.version)


# --- registry ------------------------------------------------------------------------------


def register(registry: ModelRegistry, artifact: bytes, **kw: object):
    return registry.register(
        artifact,
        dataset_version=1,
        classes=["SKU-A", "SKU-B"],
        metrics={"val_top1": 0.9},
        params={"epochs": 3},
        **kw,
    )


def test_registry_versions_and_stages(store, sessions) -> None:
    published: list[ModelPublished] = []
    registry = ModelRegistry(store, sessions, RecordedSites(published))
    assert registry.production() is None

    v1 = register(registry, b"onnx model one")
    assert (v1.version, v1.stage) == (1, "production")
    assert v1.sha256 == hashlib.sha256(b"onnx model one").hexdigest()
    assert v1.size == len(b"onnx model one")
    assert store.get(v1.artifact_key) == b"onnx model one"
    assert (v1.classes, v1.metrics, v1.params) == (["SKU-A", "SKU-B"], {"val_top1": 0.9}, {"epochs": 3})

    v2 = register(registry, b"onnx model two")
    assert (v2.version, v2.stage) == (2, "production")
    assert registry.get(1).stage == "archived"
    assert registry.production().version == 2
    assert [(m.version, m.stage) for m in registry.list()] == [(1, "archived"), (2, "production")]

    assert [m.version for m in published] == [1, 2]
    assert published[1].sha256 == hashlib.sha256(b"onnx model two").hexdigest()
    assert published[1].size == len(b"onnx model two")
    assert published[1].classes == ["SKU-A", "SKU-B"]
    assert published[1].url_path == "/v1/models/2/artifact"


def test_registry_candidate_and_promotion(store, sessions) -> None:
    published: list[ModelPublished] = []
    registry = ModelRegistry(store, sessions, RecordedSites(published))
    register(registry, b"model one")
    candidate = register(registry, b"model two", promote=False)
    assert candidate.stage == "candidate"
    assert registry.production().version == 1
    assert [m.version for m in published] == [1]

    promoted = registry.promote(candidate.version)
    assert promoted.stage == "production"
    assert registry.get(1).stage == "archived"
    assert [m.version for m in published] == [1, 2]

    back = registry.promote(1)  # a rollback is a promotion of an older version
    assert back.stage == "production"
    assert registry.get(2).stage == "archived"
    assert published[-1].version == 1
    assert published[-1].sha256 == hashlib.sha256(b"model one").hexdigest()


def test_registry_unknown_versions(store, sessions) -> None:
    published: list[ModelPublished] = []
    registry = ModelRegistry(store, sessions, RecordedSites(published))
    register(registry, b"model one")
    with pytest.raises(LookupError, match="model version 7 does not exist"):
        registry.get(7)
    with pytest.raises(LookupError, match="does not exist"):
        registry.promote(7)
    # The failed promotion changed nothing.
    assert registry.production().version == 1
    assert [m.version for m in published] == [1]


# --- catalogue -----------------------------------------------------------------------------


def test_catalogue_upsert_update_list_get(sessions) -> None:
    catalogue = Catalogue(sessions)
    assert catalogue.list() == []
    assert catalogue.get("SKU-B") is None
    milk = Product(sku="SKU-B", name="Milk", coarse="dairy", price=1.29)
    apple = Product(sku="SKU-A", name="Apple", price=0.5, currency="USD", description="Red")
    assert catalogue.upsert([milk, apple]) == 2
    assert catalogue.list() == [apple, milk]  # ordered by SKU, not by insertion
    assert catalogue.get("SKU-B") == milk

    cheaper = milk.model_copy(update={"price": 0.99, "status": ProductStatus.RETIRED})
    new = Product(sku="SKU-0", name="Bread", price=2.0, status=ProductStatus.PENDING_DATA)
    assert catalogue.upsert([cheaper, new]) == 2
    assert catalogue.get("SKU-B") == cheaper
    assert catalogue.get("SKU-A") == apple  # untouched
    assert [p.sku for p in catalogue.list()] == ["SKU-0", "SKU-A", "SKU-B"]
    assert catalogue.get("SKU-0").status is ProductStatus.PENDING_DATA
    assert catalogue.get("sku-b") is None


# --- local object store --------------------------------------------------------------------


def test_object_store_list_hides_staging_and_temp_files(store: LocalObjectStore) -> None:
    store.put("images/x.jpg", b"x")
    (store.staging_dir() / ".up-123").write_bytes(b"in progress")
    (store.root / "images" / ".tmp-abc").write_bytes(b"half written")
    assert list(store.list()) == ["images/x.jpg"]


@pytest.mark.parametrize(
    "key",
    [
        "",
        "/etc/passwd",
        "../outside.bin",
        "a/../../outside.bin",
        "a/..",
        "..",
        ".",
        "a/./b.bin",
        "a//b.bin",
    ],
)
def test_object_store_refuses_keys_that_escape_or_alias(store: LocalObjectStore, key: str) -> None:
    for call in (
        lambda: store.put(key, b"x"),
        lambda: store.get(key),
        lambda: store.exists(key),
        lambda: store.delete(key),
    ):
        with pytest.raises(ValueError, match="invalid object key"):
            call()
    assert not (store.root.parent / "outside.bin").exists()
    assert [p.name for p in store.root.parent.iterdir()] == [store.root.name]


def test_object_store_put_file_moves_the_file(store: LocalObjectStore, tmp_path: Path) -> None:
    staged = store.staging_dir() / "upload.part"
    staged.write_bytes(b"photo bytes")
    store.put_file("images/ab/photo.jpg", staged)
    assert not staged.exists()
    assert store.get("images/ab/photo.jpg") == b"photo bytes"

    elsewhere = tmp_path / "elsewhere.bin"
    elsewhere.write_bytes(b"more bytes")
    store.put_file("other/thing.bin", elsewhere)
    assert not elsewhere.exists()
    assert store.get("other/thing.bin") == b"more bytes"
    assert sorted(store.list()) == ["images/ab/photo.jpg", "other/thing.bin"]


def test_image_key_is_content_addressed() -> None:
    sha = hashlib.sha256(b"x").hexdigest()
    assert image_key(sha) == f"images/{sha[:2]}/{sha}.jpg"


def test_real_jpeg_round_trips_through_the_store(store: LocalObjectStore) -> None:
    data = jpeg_bytes(size=(120, 80))
    store.put(image_key(hashlib.sha256(data).hexdigest()), data)
    [key] = store.list("images/")
    with Image.open(io.BytesIO(store.get(key))) as image:
        assert image.size == (120, 80)


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
    from edge2core.core.ingest.receiver import WalCommits

    engine = make_engine(f"sqlite:///{tmp_path / 'core.db'}")
    wal = WalCommits.for_engine(engine)
    assert wal is not None and wal.wal == (tmp_path / "core.db-wal").resolve()
    with wal.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL elsewhere
    assert wal.latest() == 0
    with wal.committing() as commit:
        with wal.sessions.begin() as session:
            session.execute(text("CREATE TABLE t (x INTEGER)"))
    assert commit.seq == 1 == wal.latest()
    wal.sync(commit.seq)
    wal.sync(commit.seq)  # already covered: no second fsync needed
    assert WalCommits.for_engine(make_engine("sqlite://")) is None
    wal.engine.dispose()
    engine.dispose()
