"""Datasets on the embedded and the scale-out backends: Parquet manifests with lineage,
determinism, query filters, leak-free stable splits, diffs and exports."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from edge2core.common.events import Guess, PhotoRecord, Source
from edge2core.common.objectstore import LocalObjectStore, ObjectNotFound, image_key
from edge2core.common.products import Product
from edge2core.core.catalogue.catalogue import Catalogue
from edge2core.core.curate.datasets import DatasetQuery, DatasetStore, render_manifest
from edge2core.core.curate.export import ExportFormat, export_dataset
from edge2core.core.curate.governance import EraseRequest, Governance
from edge2core.core.curate.labelling import LabellingQueue
from edge2core.core.db import migrations
from edge2core.core.db.engine import make_engine, make_sessionmaker
from edge2core.core.db.schema import ImageRow
from edge2core.core.ingest.near_dups import stable_split
from edge2core.core.ingest.receiver import ImageReceiver
from tests.support.backends import Backend, noisy_jpeg
from tests.support.jpegs import jpeg_bytes

T0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
VAL = 30


async def chunks(data: bytes) -> AsyncIterator[bytes]:
    for i in range(0, len(data), 4096):
        yield data[i : i + 4096]


def record_for(data: bytes, n: int = 0, **kw: object) -> PhotoRecord:
    fields: dict[str, object] = {
        "site": "store-1", "device": "kiosk-a", "source": Source.KIOSK, "sku": "SKU-A",
        "sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "width": 320,
        "height": 240, "captured_at": T0 + timedelta(hours=n),
        "received_at": T0 + timedelta(hours=n, minutes=1),
    }
    fields.update(kw)
    return PhotoRecord(**fields)


def make_receiver(store, sessions) -> ImageReceiver:  # type: ignore[no-untyped-def]
    return ImageReceiver(store, sessions, max_bytes=1 << 22, val_percent=VAL)


PLAN = [  # (seed, sku, site, device, source)
    (1, "SKU-A", "store-1", "kiosk-a", Source.KIOSK),
    (2, "SKU-A", "store-2", "kiosk-b", Source.KIOSK),
    (3, "SKU-B", "store-1", "kiosk-a", Source.KIOSK),
    (4, "SKU-B", "store-2", "kiosk-b", Source.KIOSK),
    (5, "SKU-C", "store-1", "kiosk-c", Source.KIOSK),
    (6, None, "store-1", "phone-1", Source.SHOPPER),
    (7, None, "store-2", "phone-2", Source.SHOPPER),
]


async def ingest(receiver: ImageReceiver, plan=PLAN) -> dict[int, str]:  # type: ignore[no-untyped-def]
    ids = {}
    for n, (seed, sku, site, device, source) in enumerate(plan):
        data = noisy_jpeg(seed)
        extra: dict[str, object] = {"quality": {"sharpness": 100.0 * seed, "flags": []}}
        if source is Source.SHOPPER:
            extra.update(confidence=0.31, edge_model_version=3,
                         top_guesses=[Guess(sku="SKU-B", confidence=0.31),
                                      Guess(sku="SKU-A", confidence=0.2)])
        record = record_for(data, n, sku=sku, site=site, device=device, source=source, **extra)
        receipt = await receiver.receive(record, chunks(data))
        assert receipt.created
        ids[seed] = receipt.sha256
    return ids


@pytest.fixture
async def loaded(backend: Backend):  # type: ignore[no-untyped-def]
    receiver = make_receiver(backend.store, backend.sessions)
    ids = await ingest(receiver)
    catalogue = Catalogue(backend.sessions)
    catalogue.upsert([Product(sku=s, name=s, price=1.0) for s in ("SKU-A", "SKU-B", "SKU-C")])
    return backend, receiver, ids, DatasetStore(backend.store, backend.sessions), catalogue


async def test_manifest_is_parquet_with_labels_splits_and_lineage(loaded) -> None:  # type: ignore[no-untyped-def]
    backend, _receiver, ids, datasets, catalogue = loaded
    LabellingQueue(backend.sessions, catalogue).correct(ids[6], "SKU-C", by="ana")
    info = datasets.build(DatasetQuery())
    assert info.manifest_key == f"datasets/manifests/{info.manifest_sha256}.parquet"
    data = backend.store.get(info.manifest_key)
    assert data[:4] == b"PAR1" and hashlib.sha256(data).hexdigest() == info.manifest_sha256
    table = pq.read_table(io.BytesIO(data))
    assert table.column_names == [
        "sha256", "key", "sku", "split", "site", "device", "source", "label_origin",
        "captured_at", "received_at", "dup_group", "size", "width", "height"]
    rows = table.to_pylist()
    assert [r["sha256"] for r in rows] == sorted(ids[s] for s in (1, 2, 3, 4, 5, 6))
    by_id = {r["sha256"]: r for r in rows}
    kiosk = by_id[ids[3]]
    assert (kiosk["sku"], kiosk["site"], kiosk["device"], kiosk["source"], kiosk["label_origin"]) \
        == ("SKU-B", "store-1", "kiosk-a", "kiosk", "scan")
    assert kiosk["captured_at"] == T0 + timedelta(hours=2)
    assert kiosk["received_at"] == T0 + timedelta(hours=2, minutes=1)
    assert kiosk["key"] == image_key(ids[3])
    shopper = by_id[ids[6]]
    assert (shopper["sku"], shopper["source"], shopper["label_origin"]) == (
        "SKU-C", "shopper", "human")
    assert ids[7] not in by_id  # still waiting in the labelling queue
    with backend.sessions() as session:
        for r in rows:
            assert r["split"] == session.get(ImageRow, r["sha256"]).split
    assert info.stats["images"] == 6
    assert info.stats["per_class"] == {"SKU-A": 2, "SKU-B": 2, "SKU-C": 2}
    assert info.stats["per_site"] == {"store-1": 4, "store-2": 2}
    assert info.stats["per_source"] == {"kiosk": 5, "shopper": 1}
    assert info.stats["per_label_origin"] == {"human": 1, "scan": 5}
    assert sum(info.stats["per_split"].values()) == 6
    assert datasets.entries(info.version)[0].sha256 == rows[0]["sha256"]


async def test_same_query_same_data_same_manifest_on_any_database(loaded, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    backend, _receiver, _ids, datasets, _catalogue = loaded
    first = datasets.build(DatasetQuery(skus=["SKU-A", "SKU-B"]))
    second = datasets.build(DatasetQuery(skus=["SKU-A", "SKU-B"]))
    assert second.version == first.version + 1
    assert second.manifest_sha256 == first.manifest_sha256
    # The same photos sent, in the same order, to a different core (another database and
    # object store) give byte-identical manifests.
    engine = make_engine(f"sqlite:///{tmp_path / 'other.db'}")
    migrations.upgrade(engine)
    sessions = make_sessionmaker(engine)
    store = LocalObjectStore(tmp_path / "other-objects")
    await ingest(make_receiver(store, sessions))
    elsewhere = DatasetStore(store, sessions).build(DatasetQuery(skus=["SKU-A", "SKU-B"]))
    assert elsewhere.manifest_sha256 == first.manifest_sha256
    assert render_manifest(datasets.entries(first.version)) == backend.store.get(first.manifest_key)
    engine.dispose()


async def test_query_filters(loaded) -> None:  # type: ignore[no-untyped-def]
    _backend, _receiver, ids, datasets, _catalogue = loaded

    def photos(**query: object) -> set[str]:
        return {e.sha256 for e in datasets.entries(datasets.build(DatasetQuery(**query)).version)}

    assert photos(devices=["kiosk-a"]) == {ids[1], ids[3]}
    assert photos(sites=["store-2"], skus=["SKU-B"]) == {ids[4]}
    # Capture-time range: [T0+1h, T0+3h) holds photos 2 and 3 (captured at n hours).
    assert photos(since=T0 + timedelta(hours=1), until=T0 + timedelta(hours=3)) == {ids[2], ids[3]}
    # Times in another zone mean the same instants.
    cet = T0.astimezone(__import__("zoneinfo").ZoneInfo("Europe/Paris"))
    assert photos(since=cet + timedelta(hours=4)) == {ids[5]}
    assert photos(min_sharpness=300.0) == {ids[3], ids[4], ids[5]}
    with pytest.raises(LookupError):
        datasets.build(DatasetQuery(sources=[Source.SHOPPER]))  # none labelled yet


async def test_near_duplicates_share_the_split_of_their_group(backend: Backend) -> None:
    """A near-duplicate (same scene re-encoded) joins the first photo's group and its split,
    even where its own id would have put it on the other side; splits never move later."""
    receiver = ImageReceiver(backend.store, backend.sessions, max_bytes=1 << 22, val_percent=50)
    pairs = []
    for seed in range(20, 60):
        original = noisy_jpeg(seed, quality=92)
        twin = noisy_jpeg(seed, quality=75)
        a, b = (hashlib.sha256(x).hexdigest() for x in (original, twin))
        if stable_split(a, 50) != stable_split(b, 50):
            pairs.append((original, twin))
        if len(pairs) == 2:
            break
    assert len(pairs) == 2
    for n, (original, twin) in enumerate(pairs):
        first = await receiver.receive(record_for(original, n), chunks(original))
        second = await receiver.receive(record_for(twin, n, device="kiosk-b"), chunks(twin))
        with backend.sessions() as session:
            a, b = session.get(ImageRow, first.sha256), session.get(ImageRow, second.sha256)
        assert b.dup_group == a.dup_group == first.sha256
        assert a.split == b.split == stable_split(first.sha256, 50)
        assert b.split != stable_split(second.sha256, 50)
    # Different scenes are not grouped; featureless (flat) photos are never grouped.
    other = noisy_jpeg(99)
    flat_1, flat_2 = jpeg_bytes(color=(10, 10, 10)), jpeg_bytes(color=(200, 10, 10))
    for n, data in enumerate((other, flat_1, flat_2)):
        receipt = await receiver.receive(record_for(data, 10 + n), chunks(data))
        with backend.sessions() as session:
            assert session.get(ImageRow, receipt.sha256).dup_group == receipt.sha256
    # A fresh receiver (a restarted core) rebuilds the index and still groups.
    restarted = ImageReceiver(backend.store, backend.sessions, max_bytes=1 << 22, val_percent=50)
    original, _twin = pairs[0]
    img = Image.open(io.BytesIO(original)).convert("RGB")
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=80)
    receipt = await restarted.receive(record_for(out.getvalue(), 20), chunks(out.getvalue()))
    with backend.sessions() as session:
        assert session.get(ImageRow, receipt.sha256).dup_group == hashlib.sha256(original).hexdigest()


async def test_diff_added_removed_relabelled(loaded) -> None:  # type: ignore[no-untyped-def]
    backend, receiver, ids, datasets, catalogue = loaded
    queue = LabellingQueue(backend.sessions, catalogue)
    queue.confirm(ids[6])  # SKU-B
    v1 = datasets.build(DatasetQuery())
    queue.correct(ids[6], "SKU-A")  # a second look: relabelled
    Governance(backend.store, backend.sessions).erase(EraseRequest(sha256s=[ids[5]]))
    more = noisy_jpeg(42)
    added = await receiver.receive(record_for(more, 9, sku="SKU-C"), chunks(more))
    v2 = datasets.build(DatasetQuery())
    diff = datasets.diff(v1.version, v2.version)
    assert diff.added == [added.sha256]
    assert diff.removed == [ids[5]]
    assert [(r.sha256, r.before, r.after) for r in diff.relabelled] == [(ids[6], "SKU-B", "SKU-A")]
    assert diff.counts == {"added": 1, "removed": 1, "relabelled": 1, "unchanged": 4}
    assert datasets.diff(v1.version, v1.version).counts["unchanged"] == 6


async def test_exports_imagefolder_webdataset_parquet(loaded, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    backend, _receiver, ids, datasets, _catalogue = loaded
    info = datasets.build(DatasetQuery())
    entries = datasets.entries(info.version)
    originals = {e.sha256: backend.store.get(e.key) for e in entries}

    folder = export_dataset(datasets, info.version, tmp_path / "if", ExportFormat.IMAGEFOLDER)
    assert (folder.images, folder.missing) == (5, 0)
    for e in entries:
        assert (tmp_path / "if" / e.split / e.sku / f"{e.sha256}.jpg").read_bytes() == originals[e.sha256]
    summary = json.loads((tmp_path / "if" / "dataset.json").read_text())
    assert summary["manifest_sha256"] == info.manifest_sha256
    assert summary["classes"] == ["SKU-A", "SKU-B", "SKU-C"]

    wds = export_dataset(datasets, info.version, tmp_path / "wds", ExportFormat.WEBDATASET,
                         shard_size=2)
    members: dict[str, bytes] = {}
    for name in wds.files:
        with tarfile.open(tmp_path / "wds" / name) as tar:
            for m in tar.getmembers():
                assert m.mtime == 0
                members[m.name] = tar.extractfile(m).read()
    for e in entries:
        assert members[f"{e.sha256}.jpg"] == originals[e.sha256]
        assert members[f"{e.sha256}.cls"] == str(summary["classes"].index(e.sku)).encode()
        assert json.loads(members[f"{e.sha256}.json"])["sku"] == e.sku
    again = export_dataset(datasets, info.version, tmp_path / "wds2", ExportFormat.WEBDATASET,
                           shard_size=2)
    for name in wds.files:  # deterministic shards
        assert (tmp_path / "wds" / name).read_bytes() == (tmp_path / "wds2" / name).read_bytes()
    assert again.files == wds.files

    export_dataset(datasets, info.version, tmp_path / "pq", ExportFormat.PARQUET, row_group_size=2)
    table = pq.read_table(tmp_path / "pq" / "dataset.parquet")
    assert table.num_rows == 5
    assert {r["sha256"]: r["image"] for r in table.to_pylist()} == originals

    # After an erasure the old version's manifest is unchanged but the bytes are gone.
    Governance(backend.store, backend.sessions).erase(EraseRequest(device="kiosk-a"))
    assert datasets.table(info.version).num_rows == 5
    later = export_dataset(datasets, info.version, tmp_path / "if2", ExportFormat.IMAGEFOLDER)
    assert (later.images, later.missing) == (3, 2)
    with pytest.raises(ObjectNotFound):
        backend.store.get(image_key(ids[1]))
