"""What the registry says about a model version (`ModelInfo`, read from a `ModelRow`), the
gate's interface and its refusal.

What ``core.db.schema.ModelRow`` has no column for (artefacts beside the main one, lineage, the
signed manifest, the stage history) lives in its ``params`` JSON under the reserved key
``_registry``; ``ModelInfo.params`` shows only the training parameters.
"""

from __future__ import annotations

from typing import Any, Protocol

from pydantic import BaseModel, Field

from edge2core.common.events import ArtifactPointer, ModelPublished, calibrated_threshold
from edge2core.core.db.schema import ModelRow
from edge2core.core.jsontypes import UtcDateTime

RESERVED = "_registry"
STAGES = ("candidate", "canary", "production", "archived", "retired")
GATED_STAGES = ("canary", "production")


class ArtifactRef(BaseModel):
    key: str
    sha256: str
    size: int


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
    created_at: UtcDateTime
    artifacts: dict[str, ArtifactRef] = Field(default_factory=dict)
    lineage: dict[str, Any] = Field(default_factory=dict)
    signature: dict[str, Any] | None = None
    history: list[dict[str, Any]] = Field(default_factory=list)
    canary_sites: list[str] = Field(default_factory=list)

    def pointer(self, kind: str) -> ArtifactPointer | None:
        ref = self.artifacts.get(kind)
        if ref is None:
            return None
        return ArtifactPointer(sha256=ref.sha256, size=ref.size,
                               url_path=f"/v1/models/{self.version}/artifact?kind={kind}")

    def published(self) -> ModelPublished:
        return ModelPublished(
            version=self.version,
            sha256=self.sha256,
            size=self.size,
            classes=self.classes,
            url_path=f"/v1/models/{self.version}/artifact",
            recognised_threshold=calibrated_threshold(self.metrics),
            head=self.pointer("head"),
            backbone=self.pointer("backbone"),
        )


class GateCheck(Protocol):
    def check(self, candidate: ModelInfo, baseline: ModelInfo) -> Any:
        """A report with ``passed: bool`` and ``model_dump()``."""

    def check_first(self, candidate: ModelInfo) -> Any:
        """The same report for a model with no production model to compare with."""


class GateBlocked(RuntimeError):
    def __init__(self, version: int, report: Any) -> None:
        reasons = "; ".join(getattr(report, "reasons", []) or ["gate failed"])
        super().__init__(f"model {version} did not pass the promotion gate: {reasons}")
        self.version = version
        self.report = report


def _summary(m: ModelInfo) -> dict[str, Any]:
    val = m.metrics.get("val", {}) if isinstance(m.metrics, dict) else {}
    shipped = m.metrics.get("shipped", {}) if isinstance(m.metrics, dict) else {}
    return {
        "version": m.version, "stage": m.stage, "dataset_version": m.dataset_version,
        "classes": len(m.classes), "path": m.params.get("path"),
        "backbone": m.lineage.get("backbone"),
        "val_top1": val.get("top1"), "val_top5": val.get("top5"),
        "val_coarse_top1": val.get("coarse_top1"), "val_ece": val.get("ece"),
        "shipped_fp32_top1": (shipped.get("fp32") or {}).get("top1"),
        "shipped_int8_top1": (shipped.get("int8") or {}).get("top1"),
        "sizes": {k: r.size for k, r in m.artifacts.items()} or {"full": m.size},
    }


def compare_models(ma: ModelInfo, mb: ModelInfo) -> dict[str, Any]:
    """Model ``mb`` against ``ma`` from what is recorded: metrics side by side, sizes, lineage,
    the ten largest recall changes, classes added and removed."""
    out: dict[str, Any] = {"a": _summary(ma), "b": _summary(mb)}
    ra = (ma.metrics.get("val") or {}).get("per_class") or {}
    rb = (mb.metrics.get("val") or {}).get("per_class") or {}
    moves = {
        sku: round((rb[sku]["recall"] or 0.0) - (ra[sku]["recall"] or 0.0), 4)
        for sku in set(ra) & set(rb)
        if ra[sku].get("recall") is not None and rb[sku].get("recall") is not None
    }
    out["recall_change"] = dict(sorted(moves.items(), key=lambda kv: kv[1])[:10])
    out["classes_added"] = sorted(set(mb.classes) - set(ma.classes))
    out["classes_removed"] = sorted(set(ma.classes) - set(mb.classes))
    return out


def dump_report(report: Any) -> Any:
    """A gate report as JSON (reports are pydantic models; other gates may give dicts)."""
    return report.model_dump(mode="json") if hasattr(report, "model_dump") else report


def production_since(m: ModelInfo) -> str:
    for entry in reversed(m.history):
        if entry.get("stage") == "production":
            return str(entry.get("at"))
    return ""


def info_of(row: ModelRow) -> ModelInfo:
    params = dict(row.params or {})
    reserved = params.pop(RESERVED, None) or {}
    return ModelInfo(
        version=row.version,
        dataset_version=row.dataset_version,
        artifact_key=row.artifact_key,
        sha256=row.sha256,
        size=row.size,
        classes=row.classes,
        metrics=row.metrics,
        params=params,
        stage=row.stage,
        created_at=row.created_at,
        artifacts={k: ArtifactRef(**v) for k, v in (reserved.get("artifacts") or {}).items()},
        lineage=reserved.get("lineage") or {},
        signature=reserved.get("signature"),
        history=reserved.get("history") or [],
        canary_sites=_canary_sites(row.stage, reserved.get("history") or []),
    )


def _canary_sites(stage: str, history: list[dict[str, Any]]) -> list[str]:
    if stage != "canary":
        return []
    last: dict[str, Any] = next((h for h in reversed(history) if h.get("stage") == "canary"), {})
    return list(last.get("sites") or [])
