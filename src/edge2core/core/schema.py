"""The core's tables."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Float, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from edge2core.common.db import Base


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
    captured_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    stored_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    edge_model_version: Mapped[int | None] = mapped_column(Integer)
    confidence: Mapped[float | None] = mapped_column(Float)
    top_guesses: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    split: Mapped[str] = mapped_column(String(8))


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
