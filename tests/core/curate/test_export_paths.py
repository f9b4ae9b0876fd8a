"""Labels never become paths unchecked: whatever a manifest holds (labels stored before ids were
checked, as in field case 4: `../../e2c-escape`), every export writes inside its folder."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from edge2core.config import CoreSettings
from edge2core.core.curate.datasets import DatasetQuery
from edge2core.core.curate.export import ExportFormat, export_dataset
from edge2core.core.service import build_core_services
from tests.support.grocery import store_kiosk
from tests.support.jpegs import jpeg_bytes

# Labels as they may sit in a database from before the identifiers rule.
HOSTILE = ["../../e2c-escape", "../../../e2c-escape2", "/tmp/e2c-absolute", "a/b", "..", ".",
           "skux.2e2e", "Käse-01", "x" * 64]


def _files_under(root: Path) -> set[Path]:
    return {Path(d, f) for d, _dirs, files in os.walk(root) for f in files}


@pytest.fixture
def dataset(tmp_path: Path):  # type: ignore[no-untyped-def]
    services = build_core_services(CoreSettings(data_dir=tmp_path / "core"))
    for i, label in enumerate(["SKU-OK", *HOSTILE]):
        store_kiosk(services, [jpeg_bytes(color=(i * 10, 7, 7))], label, "train")
    info = services.datasets.build(DatasetQuery())
    return services.datasets, info.version


@pytest.mark.parametrize("fmt", list(ExportFormat))
def test_every_export_stays_inside_its_folder(dataset, tmp_path: Path, fmt: ExportFormat) -> None:  # type: ignore[no-untyped-def]
    datasets, version = dataset
    work = tmp_path / "exp"
    out = work / "a" / "out"
    before = _files_under(tmp_path)
    report = export_dataset(datasets, version, out, fmt)
    written = _files_under(tmp_path) - before
    assert written and all(p.resolve().is_relative_to(out.resolve()) for p in written), written
    assert not list(tmp_path.rglob("e2c-escape*")) and not Path("/tmp/e2c-absolute").exists()
    assert report.images == 1 + len(HOSTILE)
    summary = json.loads((out / "dataset.json").read_text())
    assert set(summary["classes"]) == {"SKU-OK", *HOSTILE}  # labels kept as they are
    if fmt is ExportFormat.IMAGEFOLDER:
        folders = {p.name for p in (out / "train").iterdir()}
        assert len(folders) == 1 + len(HOSTILE)  # one folder per label, none shared
        assert "SKU-OK" in folders and "x" * 64 in folders
        assert set(summary["folders"].values()) == set(HOSTILE) - {"x" * 64}
        assert all(f.startswith(("skux.", "skuh.")) for f in summary["folders"])
    elif fmt is ExportFormat.WEBDATASET:
        with tarfile.open(out / "train-000000.tar") as tar:
            names = tar.getnames()
            labels = [json.loads(tar.extractfile(n).read())["sku"]  # type: ignore[union-attr]
                      for n in names if n.endswith(".json")]
        assert all("/" not in n and ".." not in n for n in names)
        assert set(labels) == {"SKU-OK", *HOSTILE}
    else:
        table = pq.read_table(out / "dataset.parquet")
        assert set(table.column("sku").to_pylist()) == {"SKU-OK", *HOSTILE}


def test_path_components_are_safe_and_distinct() -> None:
    from edge2core.core.curate.export import path_component

    names = [path_component(label) for label in ["SKU-OK", *HOSTILE, ""]]
    assert len(set(names)) == len(names)
    for name in names:
        assert name not in ("", ".", "..") and "/" not in name and "\x00" not in name
        assert len(name.encode()) <= 255
    assert path_component("milk-1.5l") == "milk-1.5l"
    assert path_component("y" * 500).startswith("skuh.")


def test_a_path_that_resolves_outside_is_refused(tmp_path: Path) -> None:
    from edge2core.core.curate.export import UnsafeExportPath, inside

    out = tmp_path / "out"
    (out / "train").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (out / "link").symlink_to(elsewhere)
    assert inside(out, "train/x.jpg") == (out / "train" / "x.jpg").resolve()
    for rel in ("../x.jpg", "link/x.jpg", "/etc/passwd", "", "."):
        with pytest.raises(UnsafeExportPath):
            inside(out, rel)


def test_export_of_a_clean_dataset_is_unchanged(dataset, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    datasets, version = dataset
    report = export_dataset(datasets, version, tmp_path / "o", ExportFormat.IMAGEFOLDER)
    assert any(f.startswith("train/SKU-OK/") and f.endswith(".jpg") for f in report.files)
    data = io.BytesIO((tmp_path / "o" / [f for f in report.files if "SKU-OK" in f][0]).read_bytes())
    assert data.read(2) == b"\xff\xd8"
