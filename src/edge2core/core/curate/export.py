"""Take a dataset version to any training stack: ImageFolder, WebDataset shards, Parquet.

Every export reads the version's verified manifest and the photos' bytes from the object store,
and writes a `dataset.json` (version, manifest hash, classes, counts) beside the data. Photos
whose bytes were erased after the version was built are skipped and counted as `missing`.
Outputs are deterministic: rows in manifest (id) order, tar members with fixed metadata.

Labels, splits and ids come from the manifest, i.e. from outside: none becomes a path
unchecked. A value that is a valid identifier (`common.identifiers`) is used as it is; any
other (`../../x`, a slash, a name from before ids were checked) becomes `skux.<hex of its
UTF-8>`, as the catalogue's KV keys do (`skuh.<sha256>` when that would be too long; a valid
name that starts so is encoded too, so no two labels share a folder), and `dataset.json` maps
such folders back to their labels (`folders`). Every path is resolved and checked to lie
inside the output folder before anything is written (`inside`).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from edge2core.common.events import SHA256_PATTERN
from edge2core.common.fsutil import write_atomic
from edge2core.common.identifiers import IdKind, is_valid
from edge2core.common.objectstore import ObjectNotFound, ObjectStore
from edge2core.core.curate.datasets import DatasetStore


class ExportFormat(StrEnum):
    IMAGEFOLDER = "imagefolder"
    WEBDATASET = "webdataset"
    PARQUET = "parquet"


class ExportReport(BaseModel):
    version: int
    format: ExportFormat
    out_dir: str
    images: int
    missing: int
    files: list[str]


ENCODED = ("skux.", "skuh.")


class UnsafeExportPath(ValueError):
    """A path an export would write falls outside its output folder (never written)."""


def path_component(value: object, kind: IdKind = IdKind.SKU) -> str:
    """`value` as one safe file or folder name: itself if it is a valid identifier of `kind`
    (never `.`, `..`, empty or with a slash), else an encoding that is."""
    text = "" if value is None else str(value)
    if is_valid(kind, text) and not text.startswith(ENCODED):  # encoded names stay apart
        return text
    encoded = text.encode("utf-8", "surrogatepass").hex()
    if len(encoded) <= 200:
        return f"skux.{encoded}"
    return f"skuh.{hashlib.sha256(text.encode('utf-8', 'surrogatepass')).hexdigest()}"


def photo_name(sha256: object, ext: str) -> str:
    """`<sha256>.<ext>` for a manifest id (64 hex digits); anything else is encoded."""
    text = str(sha256)
    stem = text if re.fullmatch(SHA256_PATTERN, text) else path_component(text)
    return f"{stem}.{ext}"


def inside(root: Path, rel: str) -> Path:
    """`root / rel`, resolved, if it lies inside `root`; else `UnsafeExportPath`."""
    base = root.resolve()
    target = (base / rel).resolve()
    if target == base or not target.is_relative_to(base):
        raise UnsafeExportPath(f"refusing to write {rel!r}: it is not inside {root}")
    return target


def _rows(table: Any) -> list[dict]:
    return table.to_pylist()


def _photos(store: ObjectStore, rows: list[dict], missing: list[str]) -> Iterator[tuple[dict, bytes]]:
    for row in rows:
        try:
            yield row, store.get(row["key"])
        except ObjectNotFound:
            missing.append(row["sha256"])


def _json_row(row: dict) -> dict:
    return {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.items()}


def export_dataset(
    datasets: DatasetStore,
    version: int,
    out_dir: Path,
    fmt: ExportFormat,
    *,
    shard_size: int = 1000,
    row_group_size: int = 256,
) -> ExportReport:
    info = datasets.get(version)
    table = datasets.table(version)
    rows = _rows(table)
    classes = sorted({r["sku"] for r in rows})
    index = {sku: i for i, sku in enumerate(classes)}
    out_dir.mkdir(parents=True, exist_ok=True)
    missing: list[str] = []
    files: list[str] = []
    store = datasets.store

    folders = {sku: path_component(sku) for sku in classes}
    if fmt is ExportFormat.IMAGEFOLDER:
        # <out>/<split>/<sku>/<sha256>.jpg: torchvision ImageFolder(root=<out>/train) etc.
        for row, data in _photos(store, rows, missing):
            rel = (f"{path_component(row['split'], IdKind.SITE)}/{folders[row['sku']]}/"
                   f"{photo_name(row['sha256'], 'jpg')}")
            write_atomic(inside(out_dir, rel), [data])
            files.append(rel)
    elif fmt is ExportFormat.WEBDATASET:
        # <out>/<split>-NNNNNN.tar; members <sha256>.jpg, .cls (class index), .json (lineage).
        for split in sorted({r["split"] for r in rows}):
            part = [r for r in rows if r["split"] == split]
            for n, start in enumerate(range(0, len(part), shard_size)):
                name = f"{path_component(split, IdKind.SITE)}-{n:06d}.tar"
                buf = io.BytesIO()
                with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
                    for row, data in _photos(store, part[start : start + shard_size], missing):
                        meta = json.dumps(_json_row(row), sort_keys=True).encode()
                        for ext, payload in (("jpg", data), ("cls", str(index[row["sku"]]).encode()),
                                             ("json", meta)):
                            member = tarfile.TarInfo(photo_name(row["sha256"], ext))
                            member.size, member.mtime, member.mode = len(payload), 0, 0o644
                            tar.addfile(member, io.BytesIO(payload))
                write_atomic(inside(out_dir, name), [buf.getvalue()])
                files.append(name)
    elif fmt is ExportFormat.PARQUET:
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = table.schema.append(pa.field("image", pa.binary()))
        path = out_dir / "dataset.parquet"
        tmp = out_dir / ".dataset.parquet.tmp"
        with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            batch: list[dict] = []
            for row, data in _photos(store, rows, missing):
                batch.append({**row, "image": data})
                if len(batch) >= row_group_size:
                    writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                    batch = []
            if batch:
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
        tmp.replace(path)
        files.append(path.name)
    else:  # pragma: no cover
        raise ValueError(f"unknown export format {fmt}")

    summary = {
        "version": version,
        "manifest_sha256": info.manifest_sha256,
        "format": fmt.value,
        "classes": classes,
        "images": len(rows) - len(missing),
        "missing": sorted(missing),
        "stats": info.stats,
    }
    if renamed := {folder: sku for sku, folder in folders.items() if folder != sku}:
        summary["folders"] = renamed  # ImageFolder: folder -> the label it stands for
    write_atomic(out_dir / "dataset.json", [json.dumps(summary, indent=2, sort_keys=True).encode()])
    return ExportReport(version=version, format=fmt, out_dir=str(out_dir),
                        images=len(rows) - len(missing), missing=len(missing), files=files)
