"""`edge2core datasets import`: photos people already have, sent through a site's real HTTP
door as kiosk captures (same preparation and privacy step), resumable and idempotent."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from edge2core.edge.api import create_edge_app
from edge2core.edge.bulk_import import (
    BulkImporter,
    ImportState,
    LabelledPhoto,
    Outcome,
    photos_in,
)
from edge2core.edge.catalogue_replica import CatalogueReplica
from edge2core.edge.gateway import Gateway
from edge2core.edge.inference import Recognizer
from edge2core.edge.intake import Intake
from edge2core.edge.prepare import PreparePolicy
from edge2core.edge.spool import Spool
from edge2core.sim.synthetic import render_photo

SITE = "site-import"


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[TestClient, Spool]]:
    spool = Spool(tmp_path / "spool", 100_000_000)
    gateway = Gateway(Intake(SITE, PreparePolicy(), spool),
                      Recognizer(CatalogueReplica(tmp_path / "catalogue.json")))
    app = create_edge_app(gateway, SITE, lambda: {}, 8 * 1024 * 1024)
    with TestClient(app) as client:
        client.params = {"device": "importer"}  # type: ignore[assignment]
        yield client, spool
    gateway.close()
    spool.close()


def _imagefolder(root: Path, per_label: int = 3) -> Path:
    for label_no, label in enumerate(["SKU-0001", "milk-1.5l"]):
        (root / label).mkdir(parents=True)
        for i in range(per_label):
            (root / label / f"{i}.jpg").write_bytes(render_photo(label_no, i))
    (root / "SKU-0001" / "notes.txt").write_text("not a photo: skipped")
    return root


def test_imagefolder_photos_reach_the_spool_once_labelled_by_folder(
    tmp_path: Path, site: tuple[TestClient, Spool]
) -> None:
    client, spool = site
    root = _imagefolder(tmp_path / "photos")
    photos = photos_in(root)
    assert sorted({p.sku for p in photos}) == ["SKU-0001", "milk-1.5l"] and len(photos) == 6
    counts = BulkImporter(client, root, ImportState(tmp_path / "state.json")).run(photos)
    assert counts == {"stored": 6}
    items = spool.pending(100)
    assert sorted(i.record.sku for i in items) == ["SKU-0001"] * 3 + ["milk-1.5l"] * 3
    assert {i.record.source.value for i in items} == {"kiosk"}


def test_an_interrupted_import_resumes_and_a_repeat_stores_nothing_twice(
    tmp_path: Path, site: tuple[TestClient, Spool]
) -> None:
    client, spool = site
    root = _imagefolder(tmp_path / "photos")
    photos = photos_in(root)
    state_file = tmp_path / "state.json"
    seen: list[Outcome | None] = []
    first = BulkImporter(client, root, ImportState(state_file)).run(photos[:2])  # "interrupted"
    assert first == {"stored": 2}
    resumed = BulkImporter(client, root, ImportState(state_file)).run(
        photos, lambda _p, outcome: seen.append(outcome))
    assert resumed == {"stored": 4}
    assert seen[:2] == [None, None]  # already done: skipped, not sent again
    state_file.unlink()  # a fresh run over the same photos: the site knows them all
    again = BulkImporter(client, root, ImportState(state_file)).run(photos)
    assert again == {"duplicate": 6}
    assert spool.stats().items == 6


def test_refusals_are_recorded_with_the_sites_reason(
    tmp_path: Path, site: tuple[TestClient, Spool]
) -> None:
    client, _spool = site
    root = tmp_path / "photos"
    (root / "SKU-0002").mkdir(parents=True)
    (root / "SKU-0002" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    state = ImportState(tmp_path / "state.json")
    assert BulkImporter(client, root, state).run(photos_in(root)) == {"refused": 1}
    assert state.done["SKU-0002/broken.jpg"]["reason"] == "corrupt"


def test_labels_that_are_not_skus_stop_the_import_before_anything_is_sent(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    (root / "Käse 01").mkdir(parents=True)
    (root / "Käse 01" / "a.jpg").write_bytes(render_photo(0, 0))
    with pytest.raises(ValueError, match="not valid SKUs"):
        photos_in(root)


def test_grocery_layout_is_read_with_catalogue_skus(tmp_path: Path) -> None:
    root = tmp_path / "grocery"
    (root / "train" / "Fruit" / "Apple").mkdir(parents=True)
    (root / "classes.csv").write_text("Class Name (str),Class ID (int)\nApple,0\n")
    (root / "train.txt").write_text("train/Fruit/Apple/a.jpg, 0, 0\ntrain/Fruit/Apple/b.jpg, 7, 0\n")
    assert photos_in(root) == [LabelledPhoto("train/Fruit/Apple/a.jpg", "SKU-0000"),
                               LabelledPhoto("train/Fruit/Apple/b.jpg", "SKU-0007")]
