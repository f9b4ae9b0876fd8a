"""Versioned datasets: immutable, content-addressed manifests of labelled photos."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from datetime import datetime

from pydantic import BaseModel, Field
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from edge2core.common.events import Source, utcnow
from edge2core.common.objectstore import ObjectStore
from edge2core.core.schema import DatasetRow, ImageRow


class DatasetQuery(BaseModel):
    skus: list[str] | None = Field(default=None, description="only these products; all if unset")
    sites: list[str] | None = None
    sources: list[Source] = Field(default_factory=lambda: [Source.KIOSK])


class DatasetEntry(BaseModel):
    sha256: str
    key: str
    sku: str
    split: str
    site: str
    device: str
    source: Source


class DatasetInfo(BaseModel):
    version: int
    manifest_key: str
    manifest_sha256: str
    query: DatasetQuery
    stats: dict
    created_at: datetime


def render_manifest(entries: list[DatasetEntry]) -> bytes:
    """JSON lines sorted by id: the same photos always give the same bytes and hash."""
    ordered = sorted(entries, key=lambda e: e.sha256)
    return b"".join(
        json.dumps(e.model_dump(mode="json"), sort_keys=True).encode() + b"\n" for e in ordered
    )


def manifest_stats(entries: list[DatasetEntry]) -> dict:
    return {
        "images": len(entries),
        "classes": len({e.sku for e in entries}),
        "per_class": dict(sorted(Counter(e.sku for e in entries).items())),
        "per_split": dict(sorted(Counter(e.split for e in entries).items())),
        "per_site": dict(sorted(Counter(e.site for e in entries).items())),
    }


class DatasetStore:
    def __init__(self, store: ObjectStore, sessions: sessionmaker[Session]) -> None:
        self._store = store
        self._sessions = sessions

    def build(self, query: DatasetQuery) -> DatasetInfo:
        entries = self._select(query)
        if not entries:
            raise LookupError("no labelled photos match the query; send kiosk captures first")
        manifest = render_manifest(entries)
        digest = hashlib.sha256(manifest).hexdigest()
        key = f"datasets/manifests/{digest}.jsonl"
        if not self._store.exists(key):
            self._store.put(key, manifest)
        with self._sessions.begin() as session:
            version = (session.scalar(select(func.max(DatasetRow.version))) or 0) + 1
            row = DatasetRow(
                version=version,
                manifest_key=key,
                manifest_sha256=digest,
                query=query.model_dump(mode="json"),
                stats=manifest_stats(entries),
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

    def entries(self, version: int) -> list[DatasetEntry]:
        info = self.get(version)
        data = self._store.get(info.manifest_key)
        if hashlib.sha256(data).hexdigest() != info.manifest_sha256:
            raise RuntimeError(f"manifest of dataset {version} does not match its hash")
        return [DatasetEntry.model_validate_json(line) for line in data.splitlines() if line]

    def _select(self, query: DatasetQuery) -> list[DatasetEntry]:
        stmt = select(ImageRow).where(
            ImageRow.sku.is_not(None), ImageRow.source.in_([s.value for s in query.sources])
        )
        if query.skus is not None:
            stmt = stmt.where(ImageRow.sku.in_(query.skus))
        if query.sites is not None:
            stmt = stmt.where(ImageRow.site.in_(query.sites))
        with self._sessions() as session:
            rows = session.scalars(stmt).all()
        return [
            DatasetEntry(
                sha256=r.sha256,
                key=r.key,
                sku=r.sku or "",
                split=r.split,
                site=r.site,
                device=r.device,
                source=Source(r.source),
            )
            for r in rows
        ]


def _info(row: DatasetRow) -> DatasetInfo:
    return DatasetInfo(
        version=row.version,
        manifest_key=row.manifest_key,
        manifest_sha256=row.manifest_sha256,
        query=DatasetQuery.model_validate(row.query),
        stats=row.stats,
        created_at=row.created_at,
    )
