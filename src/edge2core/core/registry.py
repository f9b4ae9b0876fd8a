"""The model registry: versioned ONNX artefacts with their lineage and metrics."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from pydantic import BaseModel
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from edge2core.common.events import ModelPublished, utcnow
from edge2core.common.images import sha256_hex
from edge2core.common.objectstore import ObjectStore
from edge2core.core.schema import ModelRow


class ModelInfo(BaseModel):
    version: int
    dataset_version: int
    artifact_key: str
    sha256: str
    size: int
    classes: list[str]
    metrics: dict[str, Any]
    params: dict[str, Any]
    stage: str
    created_at: datetime

    def published(self) -> ModelPublished:
        return ModelPublished(
            version=self.version,
            sha256=self.sha256,
            size=self.size,
            classes=self.classes,
            url_path=f"/v1/models/{self.version}/artifact",
        )


class ModelRegistry:
    def __init__(
        self,
        store: ObjectStore,
        sessions: sessionmaker[Session],
        on_production: Callable[[ModelPublished], None] = lambda _m: None,
    ) -> None:
        self._store = store
        self._sessions = sessions
        self._on_production = on_production

    def register(
        self,
        artifact: bytes,
        *,
        dataset_version: int,
        classes: list[str],
        metrics: dict[str, Any],
        params: dict[str, Any],
        promote: bool = True,
    ) -> ModelInfo:
        digest = sha256_hex(artifact)
        key = f"models/{digest}.onnx"
        self._store.put(key, artifact)
        with self._sessions.begin() as session:
            version = (session.scalar(select(func.max(ModelRow.version))) or 0) + 1
            row = ModelRow(
                version=version,
                dataset_version=dataset_version,
                artifact_key=key,
                sha256=digest,
                size=len(artifact),
                classes=classes,
                metrics=metrics,
                params=params,
                stage="candidate",
                created_at=utcnow(),
            )
            session.add(row)
        info = _info(row)
        return self.promote(version) if promote else info

    def promote(self, version: int) -> ModelInfo:
        with self._sessions.begin() as session:
            for row in session.scalars(select(ModelRow).where(ModelRow.stage == "production")):
                row.stage = "archived"
            row = session.get(ModelRow, version)
            if row is None:
                raise LookupError(f"model version {version} does not exist")
            row.stage = "production"
        info = _info(row)
        self._on_production(info.published())
        return info

    def get(self, version: int) -> ModelInfo:
        with self._sessions() as session:
            row = session.get(ModelRow, version)
        if row is None:
            raise LookupError(f"model version {version} does not exist")
        return _info(row)

    def production(self) -> ModelInfo | None:
        with self._sessions() as session:
            row = session.scalars(select(ModelRow).where(ModelRow.stage == "production")).first()
        return _info(row) if row else None

    def list(self) -> list[ModelInfo]:
        with self._sessions() as session:
            rows = session.scalars(select(ModelRow).order_by(ModelRow.version)).all()
        return [_info(r) for r in rows]


def _info(row: ModelRow) -> ModelInfo:
    return ModelInfo(
        version=row.version,
        dataset_version=row.dataset_version,
        artifact_key=row.artifact_key,
        sha256=row.sha256,
        size=row.size,
        classes=row.classes,
        metrics=row.metrics,
        params=row.params,
        stage=row.stage,
        created_at=row.created_at,
    )
