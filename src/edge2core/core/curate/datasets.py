"""Versioned datasets: immutable, content-addressed Parquet manifests of labelled photos.

A version is built from a query over the images table (classes, sites, devices, sources, a
capture-time range, a minimum sharpness). Its manifest lists, sorted by id, every photo's id,
object key, label, split and lineage (site, device, source, capture and arrival times, where
the label came from: `scan` for a kiosk's scanned SKU, `human` for the labelling queue, and the
near-duplicate group). The manifest's bytes are deterministic, so the same query over the same
data gives the same hash; the object key is that hash. Splits are decided when a photo arrives
(by its near-duplicate group, see `core.receiver`), so a photo keeps its split in every version
and near-duplicates stay on one side.

Manifests are never rewritten. Erasing photos (`core.governance`) removes their bytes and rows,
so they are absent from every later version; earlier manifests still name them, and reading
their bytes then fails with `ObjectNotFound` (exports skip and count them).
"""

from __future__ import annotations

import builtins
import hashlib
import io
import threading
from collections import Counter, OrderedDict
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, Field, ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from edge2core.common.events import Source, as_utc, utcnow
from edge2core.common.identifiers import Identifier, Sku
from edge2core.common.objectstore import ObjectStore
from edge2core.core.db.schema import DatasetRow, ImageRow
from edge2core.core.jsontypes import JSON_NUMBER, UtcDateTime, with_zone

MANIFEST_COLUMNS = (
    "sha256", "key", "sku", "split", "site", "device", "source", "label_origin",
    "captured_at", "received_at", "dup_group", "size", "width", "height",
)


class DatasetQuery(BaseModel):
    skus: list[Sku] | None = Field(default=None, description="only these products; all if unset")
    sites: list[Identifier] | None = None
    devices: list[Identifier] | None = None
    sources: list[Source] = Field(
        default_factory=lambda: [Source.KIOSK, Source.SHOPPER, Source.CAMERA],
        description="kiosk captures (scanned SKU), shopper photos and camera frames labelled by a person",
    )
    since: UtcDateTime | None = Field(
        default=None, description="captured at or after (arrival time if capture time unknown)"
    )
    until: UtcDateTime | None = Field(default=None, description="captured before")
    min_sharpness: Annotated[float, Field(allow_inf_nan=False), JSON_NUMBER] | None = Field(
        default=None,
        description="edge's sharpness measure; photos without one are left out"
    )


class DatasetEntry(BaseModel):
    sha256: str
    key: str
    sku: str
    split: str
    site: str
    device: str
    source: Source
    label_origin: str = "scan"
    captured_at: datetime | None = None
    received_at: datetime | None = None
    dup_group: str | None = None
    size: int | None = None
    width: int | None = None
    height: int | None = None


class DatasetInfo(BaseModel):
    version: int
    manifest_key: str
    manifest_sha256: str
    query: DatasetQuery
    stats: dict
    created_at: UtcDateTime


class Relabel(BaseModel):
    sha256: str
    before: str
    after: str


class DatasetDiff(BaseModel):
    base: int
    other: int
    added: list[str]
    removed: list[str]
    relabelled: list[Relabel]
    counts: dict[str, int]


def _schema() -> Any:
    import pyarrow as pa

    ts = pa.timestamp("us", tz="UTC")
    return pa.schema([
        ("sha256", pa.string()), ("key", pa.string()), ("sku", pa.string()),
        ("split", pa.string()), ("site", pa.string()), ("device", pa.string()),
        ("source", pa.string()), ("label_origin", pa.string()), ("captured_at", ts),
        ("received_at", ts), ("dup_group", pa.string()), ("size", pa.int64()),
        ("width", pa.int32()), ("height", pa.int32()),
    ])


def _render_rows(rows: Sequence[tuple]) -> bytes:
    """Parquet bytes of manifest rows (tuples in MANIFEST_COLUMNS order), sorted by id."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    ordered = sorted(rows, key=lambda r: r[0])
    columns = list(zip(*ordered, strict=True)) if ordered else [()] * len(MANIFEST_COLUMNS)
    schema = _schema()
    arrays = []
    values: Sequence[Any]
    for name, values in zip(MANIFEST_COLUMNS, columns, strict=True):
        if name in ("captured_at", "received_at"):
            values = [as_utc(v) for v in values]
        arrays.append(pa.array(values, type=schema.field(name).type))
    table = pa.Table.from_arrays(arrays, schema=schema)
    out = io.BytesIO()
    # Fixed writer options: the same rows always give the same bytes (for a given pyarrow).
    pq.write_table(table, out, compression="zstd", compression_level=3, use_dictionary=True,
                   row_group_size=1 << 20, write_statistics=True)
    return out.getvalue()


def _entry_row(e: DatasetEntry) -> tuple:
    return (e.sha256, e.key, e.sku, e.split, e.site, e.device, e.source.value, e.label_origin,
            e.captured_at, e.received_at, e.dup_group, e.size, e.width, e.height)


def render_manifest(entries: Iterable[DatasetEntry]) -> bytes:
    """Parquet sorted by id: the same photos always give the same bytes and hash."""
    return _render_rows([_entry_row(e) for e in entries])


def read_manifest(data: bytes) -> Any:
    """A manifest's rows as a pyarrow Table (legacy JSON-lines manifests too)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if data[:4] == b"PAR1":
        return pq.read_table(io.BytesIO(data))
    entries = [DatasetEntry.model_validate_json(line) for line in data.splitlines() if line]
    return pa.Table.from_pylist([dict(zip(MANIFEST_COLUMNS, _entry_row(e), strict=True))
                                 for e in entries], schema=_schema())


def _counts(values: Iterable[Any]) -> dict[str, int]:
    return dict(sorted(Counter(str(v) for v in values).items()))


def stats_of(columns: dict[str, Sequence[Any]]) -> dict:
    return {
        "images": len(columns["sha256"]),
        "classes": len(set(columns["sku"])),
        "near_dup_groups": len(set(columns["dup_group"])),
        "per_class": _counts(columns["sku"]),
        "per_split": _counts(columns["split"]),
        "per_site": _counts(columns["site"]),
        "per_source": _counts(columns["source"]),
        "per_label_origin": _counts(columns["label_origin"]),
        "per_class_split": {
            f"{sku}/{split}": n
            for (sku, split), n in sorted(Counter(zip(columns["sku"], columns["split"],
                                                      strict=True)).items())
        },
    }



ENTRIES_CACHED = 4  # dataset versions whose entries stay in memory


class DatasetStore:
    def __init__(self, store: ObjectStore, sessions: sessionmaker[Session]) -> None:
        self._store = store
        self._sessions = sessions
        # Versions are immutable: a run reads its manifest once (training, then the gate).
        self._entries: OrderedDict[int, list[DatasetEntry]] = OrderedDict()
        self._entries_lock = threading.Lock()

    @property
    def store(self) -> ObjectStore:
        return self._store

    def build(self, query: DatasetQuery) -> DatasetInfo:
        rows = self._select(query)
        if not rows:
            raise LookupError("no labelled photos match the query; send kiosk captures first")
        manifest = _render_rows(rows)
        digest = hashlib.sha256(manifest).hexdigest()
        key = f"datasets/manifests/{digest}.parquet"
        if not self._store.exists(key):
            self._store.put(key, manifest)
        stats = stats_of({name: [r[i] for r in rows] for i, name in enumerate(MANIFEST_COLUMNS)})
        with self._sessions.begin() as session:
            version = (session.scalar(select(func.max(DatasetRow.version))) or 0) + 1
            row = DatasetRow(
                version=version,
                manifest_key=key,
                manifest_sha256=digest,
                query=query.model_dump(mode="json"),
                stats=stats,
                created_at=utcnow(),
            )
            session.add(row)
        return _info(row)

    def get(self, version: int) -> DatasetInfo:
        with self._sessions() as session:
            row = session.get(DatasetRow, version)
        if row is None:
            raise LookupError(f"dataset version {version} does not exist")
        return _info(row)

    def list(self) -> list[DatasetInfo]:
        with self._sessions() as session:
            rows = session.scalars(select(DatasetRow).order_by(DatasetRow.version)).all()
        return [_info(r) for r in rows]

    def manifest_bytes(self, version: int) -> bytes:
        info = self.get(version)
        data = self._store.get(info.manifest_key)
        if hashlib.sha256(data).hexdigest() != info.manifest_sha256:
            raise RuntimeError(f"manifest of dataset {version} does not match its hash")
        return data

    def table(self, version: int) -> Any:
        """The manifest as a pyarrow Table (verified against its hash)."""
        return read_manifest(self.manifest_bytes(version))

    def entries(self, version: int) -> builtins.list[DatasetEntry]:
        with self._entries_lock:
            if (cached := self._entries.get(version)) is not None:
                self._entries.move_to_end(version)
                return list(cached)
        entries = [DatasetEntry.model_validate(r) for r in self.table(version).to_pylist()]
        with self._entries_lock:
            self._entries[version] = entries
            while len(self._entries) > ENTRIES_CACHED:
                self._entries.popitem(last=False)
        return list(entries)

    def diff(self, base: int, other: int) -> DatasetDiff:
        """What changed from version `base` to `other`: photos added, removed, relabelled."""
        a = _labels(self.table(base))
        b = _labels(self.table(other))
        added = sorted(b.keys() - a.keys())
        removed = sorted(a.keys() - b.keys())
        relabelled = [Relabel(sha256=s, before=a[s], after=b[s])
                      for s in sorted(a.keys() & b.keys()) if a[s] != b[s]]
        return DatasetDiff(
            base=base, other=other, added=added, removed=removed, relabelled=relabelled,
            counts={"added": len(added), "removed": len(removed),
                    "relabelled": len(relabelled), "unchanged": len(a.keys() & b.keys())
                    - len(relabelled)},
        )

    def _select(self, query: DatasetQuery) -> builtins.list[tuple]:
        c = ImageRow
        stmt = select(
            c.sha256, c.key, c.sku, c.split, c.site, c.device, c.source, c.label_origin,
            c.captured_at, c.received_at, c.dup_group, c.size, c.width, c.height,
        ).where(
            c.sku.is_not(None),
            c.label_origin.is_not(None),
            c.source.in_([s.value for s in query.sources]),
        )
        if query.skus is not None:
            stmt = stmt.where(c.sku.in_(query.skus))
        if query.sites is not None:
            stmt = stmt.where(c.site.in_(query.sites))
        if query.devices is not None:
            stmt = stmt.where(c.device.in_(query.devices))
        when = func.coalesce(c.captured_at, c.received_at)
        if query.since is not None:
            stmt = stmt.where(when >= as_utc(query.since))
        if query.until is not None:
            stmt = stmt.where(when < as_utc(query.until))
        if query.min_sharpness is not None:
            stmt = stmt.where(c.sharpness >= query.min_sharpness)
        with self._sessions() as session:
            rows = session.execute(stmt).all()
        # Old rows (before near-duplicate groups) are their own group.
        return [tuple(r[:10]) + (r[10] or r[0],) + tuple(r[11:]) for r in rows]


def _labels(table: Any) -> dict[str, str]:
    return dict(zip(table.column("sha256").to_pylist(), table.column("sku").to_pylist(),
                    strict=True))


def _info(row: DatasetRow) -> DatasetInfo:
    return DatasetInfo(
        version=row.version,
        manifest_key=row.manifest_key,
        manifest_sha256=row.manifest_sha256,
        query=_stored_query(row.query or {}),
        stats=row.stats,
        created_at=row.created_at,
    )


def _stored_query(stored: dict[str, Any]) -> DatasetQuery:
    """A version's query as it was stored: times written before they carried a zone are
    UTC; a query that today's rules refuse (a version made before them) is shown as it was."""
    fields: dict[str, Any] = {
        k: with_zone(v) if k in ("since", "until") else v for k, v in stored.items()}
    try:
        return DatasetQuery.model_validate(fields)
    except ValidationError:
        return DatasetQuery.model_construct(**fields)
