"""The labelling queue and data governance (erasure, retention) on both backends, through the
Python API, the HTTP API and the `datasets` command line."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from typer.testing import CliRunner

from edge2core.common.events import utcnow
from edge2core.common.objectstore import image_key
from edge2core.common.products import Product, ProductStatus
from edge2core.core.api.app import create_core_app
from edge2core.core.catalogue.catalogue import Catalogue
from edge2core.core.cli.datasets import datasets_app
from edge2core.core.curate.datasets import DatasetQuery, DatasetStore
from edge2core.core.curate.governance import EraseRequest, Governance
from edge2core.core.curate.labelling import (
    LabelConflict,
    LabellingQueue,
    LabelStatus,
    NewProduct,
    UnknownSku,
)
from edge2core.core.db.schema import ErasureRow, ImageRow, LabelTaskRow, TombstoneRow
from edge2core.core.ingest.receiver import ImageReceiver
from edge2core.core.ingest.uploads import ResumableUploads
from edge2core.core.service import build_core_services
from edge2core.core.train.embedding_cache import EmbeddingCache
from tests.core.curate.test_datasets import T0, chunks, ingest, make_receiver, record_for
from tests.support.backends import Backend, noisy_jpeg


@pytest.fixture
async def core(backend: Backend, tmp_path: Path):  # type: ignore[no-untyped-def]
    receiver = make_receiver(backend.store, backend.sessions)
    ids = await ingest(receiver)
    catalogue = Catalogue(backend.sessions)
    catalogue.upsert([Product(sku=s, name=s, price=1.0) for s in ("SKU-A", "SKU-B", "SKU-C")])
    queue = LabellingQueue(backend.sessions, catalogue)
    cache = EmbeddingCache(tmp_path / "embeddings")
    uploads = ResumableUploads(receiver, backend.store.staging_dir() / "uploads", expiry_s=3600)
    governance = Governance(backend.store, backend.sessions, uploads=uploads,
                            on_erased=lambda erased: (receiver.near_dups.invalidate(),
                                                      cache.purge(erased)),
                            retention_days={"shopper": 30})
    governance.cache = cache
    return backend, receiver, ids, queue, governance, catalogue


def shopper_photos_past_30_days() -> int:
    """The test photos arrived around T0; whether they are past retention depends on today."""
    return 2 if utcnow() - (T0 + timedelta(hours=7)) > timedelta(days=30) else 0


def count(sessions, table) -> int:  # type: ignore[no-untyped-def]
    with sessions() as session:
        return int(session.scalar(select(func.count()).select_from(table)))


# --- labelling -----------------------------------------------------------------------------


async def test_shopper_photos_queue_with_the_edge_guesses(core) -> None:  # type: ignore[no-untyped-def]
    _backend, _receiver, ids, queue, _gov, _cat = core
    page = queue.list()
    assert page.total == 2
    assert [t.sha256 for t in page.items] == [ids[6], ids[7]]  # oldest first
    task = page.items[0]
    assert (task.status, task.reason, task.site, task.device) == (
        LabelStatus.PENDING, "low_confidence", "store-1", "phone-1")
    assert [(g.sku, g.confidence) for g in task.top_guesses] == [("SKU-B", 0.31), ("SKU-A", 0.2)]
    assert (task.confidence, task.edge_model_version) == (0.31, 3)
    assert task.image_url == f"/v1/images/{ids[6]}"
    assert [t.sha256 for t in queue.list(site="store-2").items] == [ids[7]]
    assert [t.sha256 for t in queue.list(limit=1, offset=1).items] == [ids[7]]
    assert queue.list(limit=1).total == 2
    assert queue.list(guess="SKU-C").total == 0
    assert queue.list(max_confidence=0.1).total == 0


async def test_decisions_and_their_labels(core) -> None:  # type: ignore[no-untyped-def]
    backend, _receiver, ids, queue, _gov, catalogue = core
    confirmed = queue.confirm(ids[6], by="ana")
    assert (confirmed.status, confirmed.sku, confirmed.decided_by) == (
        LabelStatus.CONFIRMED, "SKU-B", "ana")
    assert queue.confirm(ids[6]).sku == "SKU-B"  # the same decision again is fine
    with pytest.raises(LabelConflict):
        queue.discard(ids[6])  # but a decided photo cannot be discarded silently
    with pytest.raises(UnknownSku):
        queue.correct(ids[6], "SKU-NOPE")
    assert queue.correct(ids[6], "SKU-C").status is LabelStatus.CORRECTED

    new = queue.new_product(ids[7], NewProduct(sku="SKU-NEW", name="Oat drink", price=2.5))
    assert (new.status, new.sku) == (LabelStatus.NEW_PRODUCT, "SKU-NEW")
    product = catalogue.get("SKU-NEW")
    assert product is not None and product.status is ProductStatus.PENDING_DATA
    with backend.sessions() as session:
        rows = {s: session.get(ImageRow, ids[s]) for s in (6, 7)}
    assert (rows[6].sku, rows[6].label_origin) == ("SKU-C", "human")
    assert (rows[7].sku, rows[7].label_origin) == ("SKU-NEW", "human")
    assert queue.list().total == 0
    assert queue.list(status=None).total == 2

    # Confirmed labels enter the next dataset version, marked as human labels.
    info = DatasetStore(backend.store, backend.sessions).build(DatasetQuery())
    assert info.stats["per_label_origin"] == {"human": 2, "scan": 5}
    assert info.stats["per_class"]["SKU-NEW"] == 1


async def test_new_product_attaches_to_a_pending_sku_and_discard(core) -> None:  # type: ignore[no-untyped-def]
    _backend, _receiver, ids, queue, _gov, catalogue = core
    catalogue.upsert([Product(sku="SKU-P", name="Pending", price=1, status=ProductStatus.PENDING_DATA)])
    assert queue.new_product(ids[6], NewProduct(sku="SKU-P")).sku == "SKU-P"
    with pytest.raises(LabelConflict, match="already a active product"):
        queue.new_product(ids[7], NewProduct(sku="SKU-A"))
    with pytest.raises(UnknownSku, match="give it a name"):
        queue.new_product(ids[7], NewProduct(sku="SKU-Q"))
    discarded = queue.discard(ids[7], by="bo")
    assert (discarded.status, discarded.sku) == (LabelStatus.DISCARDED, None)
    with pytest.raises(LookupError):
        queue.confirm(ids[1])  # kiosk captures are never in the queue


# --- governance ----------------------------------------------------------------------------


async def test_erasure_by_device_really_removes(core) -> None:  # type: ignore[no-untyped-def]
    backend, receiver, ids, queue, governance, _cat = core
    datasets = DatasetStore(backend.store, backend.sessions)
    before = datasets.build(DatasetQuery())
    queue.confirm(ids[6])
    gone = [ids[1], ids[3]]  # kiosk-a
    for backbone in ("bb-1", "bb-2"):  # derived data: embeddings under two backbones
        governance.cache.add(backbone, [ids[2], ids[1]], np.ones((2, 4), dtype=np.float32))
        governance.cache.add(backbone, [ids[3]], np.ones((1, 4), dtype=np.float32))
    report = governance.erase(EraseRequest(site="store-1", device="kiosk-a", reason="request 7"))
    assert report.images == 2 and report.finished_at is not None
    for sha in gone:
        assert not backend.store.exists(image_key(sha))
        assert receiver.existing(sha).erased
    with backend.sessions() as session:
        assert session.scalars(select(ImageRow.sha256).where(ImageRow.device == "kiosk-a")).all() == []
        assert {t.sha256 for t in session.scalars(select(TombstoneRow))} == set(gone)
        log = session.get(ErasureRow, report.id)
        assert (log.kind, log.reason, log.images) == ("erasure", "request 7", 2)
        assert log.criteria == {"site": "store-1", "device": "kiosk-a"}
    everything = {image_key(ids[s]) for s in ids} - {image_key(s) for s in gone}
    assert set(backend.store.list("images/")) == everything
    for cache in (governance.cache, EmbeddingCache(governance.cache.root)):  # memory and disk
        for backbone in ("bb-1", "bb-2"):
            found, missing = cache.lookup(backbone, [ids[2], *gone])
            assert list(found) == [ids[2]] and missing == gone

    # A copy still waiting in an edge spool is acknowledged but not stored again.
    data = noisy_jpeg(1)
    replay = await receiver.receive(record_for(data, 0, device="kiosk-a"), chunks(data))
    assert replay.erased and not replay.created
    assert not backend.store.exists(image_key(ids[1]))

    after = datasets.build(DatasetQuery())
    assert not set(gone) & {e.sha256 for e in datasets.entries(after.version)}
    assert set(gone) <= {e.sha256 for e in datasets.entries(before.version)}  # immutable past
    assert governance.erase(EraseRequest(device="kiosk-a")).images == 0  # idempotent


async def test_erasure_by_time_range_and_of_labelled_shopper_photos(core) -> None:  # type: ignore[no-untyped-def]
    backend, _receiver, ids, queue, governance, _cat = core
    queue.confirm(ids[6])
    report = governance.erase(EraseRequest(since=T0 + timedelta(hours=4),
                                           until=T0 + timedelta(hours=6)))
    assert report.images == 2  # photos 5 and 6 (captured at +4h, +5h)
    with backend.sessions() as session:
        left = set(session.scalars(select(ImageRow.sha256)))
        assert session.get(LabelTaskRow, ids[6]) is None
    assert left == {ids[s] for s in (1, 2, 3, 4, 7)}
    with pytest.raises(ValueError, match="name what to erase"):
        EraseRequest(reason="everything?")


async def test_erasure_drops_unfinished_uploads_from_the_device(core) -> None:  # type: ignore[no-untyped-def]
    backend, receiver, _ids, _queue, governance, _cat = core
    uploads = ResumableUploads(receiver, backend.store.staging_dir() / "uploads", expiry_s=3600)
    data = noisy_jpeg(77)
    uploads.create(record_for(data, 1, device="kiosk-z"), len(data))
    other = noisy_jpeg(78)
    uploads.create(record_for(other, 1, device="kiosk-y"), len(other))
    report = governance.erase(EraseRequest(device="kiosk-z"))
    assert report.uploads_discarded == 1
    assert [s.record.device for s in uploads.in_progress()] == ["kiosk-y"]


async def test_retention_deletes_old_shopper_photos_only(core) -> None:  # type: ignore[no-untyped-def]
    backend, _receiver, ids, _queue, governance, _cat = core
    # Photos arrived around T0; 40 days later the 30-day shopper rule removes 6 and 7.
    reports = governance.apply_retention(now=T0 + timedelta(days=40))
    assert [(r.kind, r.images) for r in reports] == [("retention", 2)]
    with backend.sessions() as session:
        left = set(session.scalars(select(ImageRow.sha256)))
        assert session.scalars(select(TombstoneRow)).all() == []
    assert left == {ids[s] for s in (1, 2, 3, 4, 5)}
    assert count(backend.sessions, LabelTaskRow) == 0
    # Ten days after arrival nothing is old enough.
    assert [r.images for r in governance.apply_retention(now=T0 + timedelta(days=10))] == [0]


# --- HTTP API and command line -------------------------------------------------------------


@pytest.fixture
def client(backend: Backend, tmp_path: Path) -> Iterator[tuple[TestClient, object]]:
    services = build_core_services(backend.core_settings(tmp_path / "core",
                                                         retention_days={"shopper": 30}))
    with TestClient(create_core_app(services)) as http:
        yield http, services


async def test_http_api(client, backend: Backend) -> None:  # type: ignore[no-untyped-def]
    http, services = client
    receiver: ImageReceiver = services.receiver
    ids = await ingest(receiver)
    http.put("/v1/catalogue/products", json=[
        {"sku": s, "name": s, "price": 1} for s in ("SKU-A", "SKU-B", "SKU-C")]).raise_for_status()

    page = http.get("/v1/labelling/tasks", params={"limit": 1}).json()
    assert page["total"] == 2 and page["items"][0]["sha256"] == ids[6]
    image = http.get(page["items"][0]["image_url"])
    assert image.status_code == 200 and hashlib.sha256(image.content).hexdigest() == ids[6]
    assert http.post(f"/v1/labelling/tasks/{ids[6]}/confirm", json={"by": "ana"}).json()["sku"] == "SKU-B"
    assert http.post(f"/v1/labelling/tasks/{ids[7]}/correct", json={"sku": "NOPE"}).status_code == 422
    assert http.post(f"/v1/labelling/tasks/{ids[6]}/discard").status_code == 409
    made = http.post(f"/v1/labelling/tasks/{ids[7]}/new-product",
                     json={"name": "Kombucha", "price": 3.1}).json()
    assert made["status"] == "new_product" and made["sku"] == f"NEW-{ids[7][:8].upper()}"
    assert http.get(f"/v1/catalogue/products/{made['sku']}").json()["status"] == "pending-data"
    assert http.get("/v1/labelling/tasks/" + "0" * 64).status_code == 404

    v1 = http.post("/v1/datasets", json={}).json()
    assert v1["stats"]["per_label_origin"] == {"human": 2, "scan": 5}
    erased = http.post("/v1/governance/erasures", json={"device": "kiosk-b"})
    assert erased.status_code == 201 and erased.json()["images"] == 2
    assert http.post("/v1/governance/erasures", json={}).status_code == 422
    v2 = http.post("/v1/datasets", json={"sources": ["kiosk", "shopper"]}).json()
    diff = http.get(f"/v1/datasets/{v1['version']}/diff/{v2['version']}").json()
    assert sorted(diff["removed"]) == sorted([ids[2], ids[4]]) and diff["counts"]["added"] == 0
    assert [d["version"] for d in http.get("/v1/datasets").json()] == [1, 2]
    manifest = http.get(f"/v1/datasets/{v2['version']}/manifest")
    assert hashlib.sha256(manifest.content).hexdigest() == v2["manifest_sha256"]
    assert http.get(f"/v1/images/{ids[2]}").status_code == 404
    assert [e["kind"] for e in http.get("/v1/governance/erasures").json()] == ["erasure"]
    assert http.post("/v1/governance/retention").json()[0]["images"] == shopper_photos_past_30_days()


def test_cli_build_diff_export_erase_retention(backend: Backend, tmp_path: Path) -> None:
    import asyncio
    import json

    settings = backend.core_settings(tmp_path / "core", retention_days={"shopper": 30})
    services = build_core_services(settings)
    ids = asyncio.run(ingest(services.receiver))
    env = {"E2C_CORE_" + k.upper(): str(v) for k, v in backend.settings.items()}
    env["E2C_CORE_RETENTION_DAYS"] = '{"shopper": 30}'
    base = ["--data-dir", str(tmp_path / "core"), "--database-url", backend.db_url]
    runner = CliRunner(env=env)

    def run(*args: str) -> str:
        result = runner.invoke(datasets_app, [*args, *base])
        assert result.exit_code == 0, result.output + repr(result.exception)
        return result.output

    one = json.loads(run("build", "--sku", "SKU-A", "--sku", "SKU-B", "--json"))
    assert one["stats"]["images"] == 4 and one["query"]["skus"] == ["SKU-A", "SKU-B"]
    assert json.loads(run("build", "--sku", "SKU-A", "--sku", "SKU-B", "--json"))[
        "manifest_sha256"] == one["manifest_sha256"]
    assert "SKU-A" in run("show", "1")
    run("list")
    report = json.loads(run("export", "1", "--out", str(tmp_path / "wds"), "--format", "webdataset"))
    assert report["images"] == 4
    assert runner.invoke(datasets_app, ["erase", "--device", "kiosk-a", *base]).exit_code == 2
    erased = json.loads(run("erase", "--device", "kiosk-a", "--yes"))
    assert erased["images"] == 2
    diff = json.loads(run("diff", "1", str(json.loads(run("build", "--json"))["version"]), "--json"))
    assert sorted(diff["removed"]) == sorted([ids[1], ids[3]])
    [retention] = json.loads(run("retention"))
    assert (retention["kind"], retention["images"]) == ("retention", shopper_photos_past_30_days())
    assert "revision" in run("migrate")
    with services.sessions() as session:
        assert session.get(ImageRow, ids[1]) is None
