"""The core's tables."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Engine, Float, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from edge2core.core.db.engine import Base


class ImageRow(Base):
    __tablename__ = "images"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(200))
    size: Mapped[int] = mapped_column(BigInteger)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    site: Mapped[str] = mapped_column(String(64), index=True)
    device: Mapped[str] = mapped_column(String(64), index=True)
    source: Mapped[str] = mapped_column(String(16), index=True)
    sku: Mapped[str | None] = mapped_column(String(64), index=True)
    captured_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), index=True)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    stored_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    edge_model_version: Mapped[int | None] = mapped_column(Integer)
    confidence: Mapped[float | None] = mapped_column(Float)
    top_guesses: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    split: Mapped[str] = mapped_column(String(8))
    # Receiver and datasets (issue 4): "scan" (kiosk) or "human" (labelling queue); null = none.
    label_origin: Mapped[str | None] = mapped_column(String(16))
    # 64-bit dHash the core computed from the stored bytes (16 hex digits), and the id of the
    # near-duplicate group's first photo: the group's split is that photo's split.
    phash: Mapped[str | None] = mapped_column(String(16))
    dup_group: Mapped[str | None] = mapped_column(String(64), index=True)
    redaction: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    quality: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    sharpness: Mapped[float | None] = mapped_column(Float)
    # Order of recording across core processes (`core_counters` "images"): a process catches
    # its near-duplicate index up on rows others recorded since it last looked.
    ingest_seq: Mapped[int | None] = mapped_column(BigInteger, index=True)


class DatasetRow(Base):
    __tablename__ = "dataset_versions"

    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    manifest_key: Mapped[str] = mapped_column(String(200))
    manifest_sha256: Mapped[str] = mapped_column(String(64))
    query: Mapped[dict[str, Any]] = mapped_column(JSON)
    stats: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ModelRow(Base):
    __tablename__ = "model_versions"

    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    dataset_version: Mapped[int] = mapped_column(Integer)
    artifact_key: Mapped[str] = mapped_column(String(200))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    classes: Mapped[list[str]] = mapped_column(JSON)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    stage: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ProductRow(Base):
    __tablename__ = "products"

    sku: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    coarse: Mapped[str] = mapped_column(String(200), default="")
    price: Mapped[float] = mapped_column(Float)
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(16), default="active")
    description: Mapped[str] = mapped_column(String(4000), default="")
    # Catalogue (issue 7): promotions as `Promotion` JSON records, the catalogue image's
    # object key, and when the record was made and last changed.
    promotions: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    image_key: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class LabelTaskRow(Base):
    """A shopper photo waiting for (or given) a human label."""

    __tablename__ = "label_tasks"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    site: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(16), index=True)  # pending, confirmed, ...
    reason: Mapped[str] = mapped_column(String(16))  # unrecognised, low_confidence
    top_sku: Mapped[str | None] = mapped_column(String(64))
    top_confidence: Mapped[float | None] = mapped_column(Float)
    sku: Mapped[str | None] = mapped_column(String(64))  # the label a person gave
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    decided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    decided_by: Mapped[str | None] = mapped_column(String(64))


class ErasureRow(Base):
    """One erasure or retention run: what was asked and how much went."""

    __tablename__ = "erasures"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16))  # erasure, retention
    criteria: Mapped[dict[str, Any]] = mapped_column(JSON)
    reason: Mapped[str] = mapped_column(String(200), default="")
    images: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class TombstoneRow(Base):
    """An erased photo's id: a replay from an edge spool is acknowledged, not stored again."""

    __tablename__ = "erased_images"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    erasure_id: Mapped[int] = mapped_column(Integer)
    erased_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class QuarantineRow(Base):
    """A photo the core refused on arrival (privacy re-check), with the reason. No bytes."""

    __tablename__ = "quarantine"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    site: Mapped[str] = mapped_column(String(64), index=True)
    device: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(String(1000))
    record: Mapped[dict[str, Any]] = mapped_column(JSON)
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    first_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AuditRow(Base):
    """One thing the automation or a person did (catalogue change, model promotion, ...)."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    kind: Mapped[str] = mapped_column(String(64), index=True)  # e.g. catalogue.retired
    subject: Mapped[str] = mapped_column(String(200), index=True)  # e.g. a SKU, a model version
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class LeaseRow(Base):
    """Who runs a once-per-deployment job (the learning loop, the scheduler) until when."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(200))
    expires_at: Mapped[float] = mapped_column(Float)  # seconds since the epoch
    acquired_at: Mapped[float] = mapped_column(Float)


class CounterRow(Base):
    """Counters shared by core processes; updating one's row serialises its writers."""

    __tablename__ = "core_counters"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger, default=0)


class LoopMemoryRow(Base):
    """The learning loop's memory (held triggers, stopped rollouts, the last run that went
    live): in the database so that another core process taking the loop over continues."""

    __tablename__ = "loop_memory"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    state: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


def create_schema(engine: Engine) -> None:
    """Every table at once, without migrations (tests and benchmarks; `core up` migrates)."""
    Base.metadata.create_all(engine)
