"""The watched-folder door on a real folder: labelled and unlabelled photos spooled then moved,
refusals moved with their reason, files still being written left alone, a full spool leaving
files in place, and a site killed in the middle of a batch of thousands losing nothing."""

from __future__ import annotations

import io
import json
import signal
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from prometheus_client import REGISTRY

from edge2core.config import EdgeSettings, WatchedFolder
from edge2core.edge.doors.folder import FolderDoor
from edge2core.sim.synthetic import render_photo
from tests.support import waiting
from tests.support.door_site import DoorSite, open_site, site_process

WAIT = 30.0
SITE = "site-folder"


def settings_for(root: Path, **extra: object) -> EdgeSettings:
    folder = WatchedFolder(path=root / "drop", device="scanner-1", settle_s=0.2, poll_s=0.05)
    return EdgeSettings(site=SITE, data_dir=root / "site", doors=["folder"],
                        watched_folders=[folder], **extra)


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.fixture
def site(tmp_path: Path) -> Iterator[DoorSite]:
    s = open_site(settings_for(tmp_path))
    yield s
    s.close()


def test_photos_are_spooled_then_moved_labelled_by_their_folder(site: DoorSite) -> None:
    drop = site.settings.watched_folders[0].path
    (drop / "SKU-0001").mkdir(parents=True)
    (drop / "SKU-0001" / "a.jpg").write_bytes(render_photo(1, 1))
    (drop / "shelf.jpg").write_bytes(render_photo(2, 1))
    waiting.wait_until(lambda: files_under(drop) == ["done/SKU-0001/a.jpg", "done/shelf.jpg"],
                       WAIT, "both photos done")
    records = {i.record.sku: i.record for i in site.spool.pending(10)}
    assert set(records) == {"SKU-0001", None}
    assert records["SKU-0001"].source.value == "kiosk" and records[None].source.value == "camera"
    assert {r.device for r in records.values()} == {"scanner-1"}


def test_refusals_are_moved_with_their_reason_and_the_rest_still_get_in(site: DoorSite) -> None:
    drop = site.settings.watched_folders[0].path
    (drop / "Käse 01").mkdir(parents=True)
    (drop / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (drop / "Käse 01" / "a.jpg").write_bytes(render_photo(0, 1))
    (drop / "upload.jpg.part").write_bytes(render_photo(0, 2))  # still being uploaded
    (drop / "good.jpg").write_bytes(render_photo(0, 3))
    expected = [
        "done/good.jpg",
        "refused/corrupt/broken.jpg", "refused/corrupt/broken.jpg.reason.json",
        "refused/invalid_id/Käse 01/a.jpg", "refused/invalid_id/Käse 01/a.jpg.reason.json",
        "upload.jpg.part",
    ]
    waiting.wait_until(lambda: files_under(drop) == expected, WAIT, f"the folder to become {expected}")
    assert len(site.spool.pending(10)) == 1
    note = json.loads((drop / "refused/corrupt/broken.jpg.reason.json").read_text())
    assert note["reason"] == "corrupt" and note["path"] == "broken.jpg"


def test_a_file_is_taken_only_once_it_stopped_changing(tmp_path: Path) -> None:
    folder = WatchedFolder(path=tmp_path, device="cam", settle_s=1.0)
    door = FolderDoor(folder, SITE, gateway=None)  # type: ignore[arg-type]  # scan needs none
    photo = tmp_path / "p.jpg"
    photo.write_bytes(b"x" * 10)
    assert door.scan(now=100.0) == []  # first sight
    assert door.scan(now=100.5) == []  # unchanged, but not for settle_s yet
    with photo.open("ab") as fh:
        fh.write(b"more")  # still growing: the clock starts again
    assert door.scan(now=101.2) == []
    assert door.scan(now=102.0) == []
    assert door.scan(now=102.3) == [photo]


def test_a_full_spool_leaves_files_in_place_until_there_is_room(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, spool_budget_bytes=1000)
    drop = settings.watched_folders[0].path
    drop.mkdir(parents=True)
    (drop / "a.jpg").write_bytes(render_photo(3, 1))
    before = full_refusals()
    s = open_site(settings)
    try:
        waiting.wait_until(lambda: full_refusals() > before, WAIT, "a spool_full refusal")
        door = s.doors.status()[0]
        assert door["done"] == 0 and door["refused"] == 0
    finally:
        s.close()
    assert files_under(drop) == ["a.jpg"]
    s = open_site(settings.model_copy(update={"spool_budget_bytes": 100_000_000}))
    try:
        waiting.wait_until(lambda: files_under(drop) == ["done/a.jpg"], WAIT, "taken once there is room")
        assert len(s.spool.pending(10)) == 1
    finally:
        s.close()


def full_refusals() -> float:
    return REGISTRY.get_sample_value("e2c_photos_rejected_total",
                                     {"door": "folder", "reason": "spool_full"}) or 0.0


def noise_jpeg(seed: int) -> bytes:
    """A tiny JPEG of random pixels: distinct after preparation (flat colours can collapse)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=90)
    return out.getvalue()


def spool_count(spool_dir: Path) -> int:
    if not (spool_dir / "index.db").exists():
        return 0
    db = sqlite3.connect(f"file:{spool_dir / 'index.db'}?mode=ro", uri=True)
    try:
        return int(db.execute("SELECT COUNT(*) FROM items").fetchone()[0])
    finally:
        db.close()


@pytest.mark.integration
def test_a_site_killed_in_the_middle_of_a_batch_of_thousands_loses_nothing(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    drop = settings.watched_folders[0].path
    total = 1200
    for i in range(total):
        label = drop / f"SKU-{i % 10:04d}"
        label.mkdir(parents=True, exist_ok=True)
        (label / f"{i}.jpg").write_bytes(noise_jpeg(i))
    done = drop / "done"

    def done_count() -> int:
        return sum(1 for _ in done.rglob("*.jpg")) if done.exists() else 0

    with site_process(settings.model_dump(mode="json")) as proc:
        waiting.wait_until(lambda: done_count() >= 150, 120, "150 photos done")
        proc.send_signal(signal.SIGKILL)
        proc.wait(WAIT)
    assert done_count() < total, "killed after the batch, not in the middle of it"
    # Everything moved to done/ is in the spool; the rest is still where the scanner put it.
    assert spool_count(settings.data_dir / "spool") >= done_count()
    with site_process(settings.model_dump(mode="json")):
        waiting.wait_until(lambda: done_count() == total, 180, "every photo done")
    assert spool_count(settings.data_dir / "spool") == total
    assert [f for f in files_under(drop) if not f.startswith("done/")] == []
