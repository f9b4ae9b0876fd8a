"""The model registry: versioned, signed ONNX artefacts with lineage, metrics and stages.

Stages: ``candidate`` (registered, not served) -> ``canary`` (one at a time, for a partial
rollout) -> ``production`` (one at a time; announced to every edge through
``on_production``) -> ``archived`` (a former production model, the target of a rollback) or
``retired`` (withdrawn: rolled back or retired by hand; promoting it again needs --force).

A promotion to canary or production goes through the promotion gate when one is set
(``core.gate``: the candidate is scored with the current production model on the same frozen
evaluation set; see ``core.gate``).  ``force=True`` skips a failed gate but needs a reason,
which is logged and kept in the model's history.

What a version's record holds beyond the table's columns is described in `model_info`.  The
signed manifest is also written to the object store
(``models/signatures/<version>-<sha16>.json``).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from edge2core.common.events import utcnow
from edge2core.common.images import sha256_hex
from edge2core.common.logging import get_logger
from edge2core.common.objectstore import ObjectStore
from edge2core.common.signing import SignatureError, Signer, verify, verify_artifact
from edge2core.core.db.schema import ModelRow
from edge2core.core.deliver.deployments import DeploySink, NoSites
from edge2core.core.deliver.model_info import (
    GATED_STAGES,
    RESERVED,
    STAGES,
    ArtifactRef,
    GateBlocked,
    GateCheck,
    ModelInfo,
    compare_models,
    dump_report,
    info_of,
    production_since,
)

__all__ = ["STAGES", "ArtifactRef", "GateBlocked", "GateCheck", "ModelInfo", "ModelRegistry",
           "dump_report"]

log = get_logger(__name__)

# What of a model's lineage its signed manifest covers.
SIGNED_LINEAGE = ("dataset_manifest_sha256", "code_revision", "backbone", "run_id")


class ModelRegistry:
    def __init__(
        self,
        store: ObjectStore,
        sessions: sessionmaker[Session],
        sites: DeploySink | None = None,
        *,
        signer: Signer | None = None,
        gate: GateCheck | None = None,
    ) -> None:
        self._store = store
        self._sessions = sessions
        self.sites: DeploySink = sites or NoSites()
        # Held while a stage changes and is published (and while the sites are re-synced).
        self.lock = threading.RLock()
        self.signer = signer
        self.gate = gate

    # ------------------------------------------------------------------ registration

    def _put(self, data: bytes, suffix: str = ".onnx") -> ArtifactRef:
        digest = sha256_hex(data)
        key = f"models/{digest}{suffix}"
        if not self._store.exists(key) or self._store.size(key) != len(data):
            self._store.put(key, data)
        return ArtifactRef(key=key, sha256=digest, size=len(data))

    def register(
        self,
        artifact: bytes,
        *,
        dataset_version: int,
        classes: list[str],
        metrics: dict[str, Any],
        params: dict[str, Any],
        promote: bool = True,
        extra_artifacts: dict[str, bytes | ArtifactRef] | None = None,
        lineage: dict[str, Any] | None = None,
        gated: bool = False,
    ) -> ModelInfo:
        """Store the artefacts, record a new version (signed when a signer is set), and, if
        ``promote``, make it production.  With ``gated`` (what training runs use) the
        promotion goes through the gate and a blocked candidate stays a candidate, with the
        gate's report in its history; without it (tools and tests publishing a given file)
        it is promoted as before, and the history says the gate was not consulted."""
        main = self._put(artifact)
        artifacts: dict[str, ArtifactRef] = {"full": main}
        for kind, value in (extra_artifacts or {}).items():
            artifacts[kind] = value if isinstance(value, ArtifactRef) else self._put(value)
        created = utcnow()
        with self._sessions.begin() as session:
            version = (session.scalar(select(func.max(ModelRow.version))) or 0) + 1
            reserved: dict[str, Any] = {
                "artifacts": {k: a.model_dump() for k, a in artifacts.items()},
                "lineage": lineage or {},
                "history": [{"at": created.isoformat(), "stage": "candidate", "reason": "registered"}],
            }
            if self.signer is not None:
                reserved.update(self._sign(version, dataset_version, classes, reserved["artifacts"],
                                           lineage or {}, created, main))
            row = ModelRow(
                version=version,
                dataset_version=dataset_version,
                artifact_key=main.key,
                sha256=main.sha256,
                size=main.size,
                classes=list(classes),
                metrics=metrics,
                params={**params, RESERVED: reserved},
                stage="candidate",
                created_at=created,
            )
            session.add(row)
        info = info_of(row)
        if not promote:
            return info
        try:
            return self.promote(version, use_gate=gated,
                                reason="registered with promote=True" + ("" if gated else " (gate not consulted)"))
        except GateBlocked as exc:
            log.warning("candidate kept: promotion gate failed", version=version,
                        reasons=getattr(exc.report, "reasons", None))
            return self.get(version)

    def _sign(self, version: int, dataset_version: int, classes: list[str],
              artifacts: dict[str, Any], lineage: dict[str, Any], created: datetime,
              main: ArtifactRef) -> dict[str, Any]:
        """Sign the version's manifest and store it beside the artefacts; what the record
        keeps of it."""
        assert self.signer is not None
        manifest = {
            "format": "edge2core-model-manifest/1",
            "version": version,
            "dataset_version": dataset_version,
            "classes": list(classes),
            "artifacts": artifacts,
            "lineage": {k: v for k, v in lineage.items() if k in SIGNED_LINEAGE},
            "created_at": created.isoformat(),
        }
        signed = self.signer.sign(manifest)
        sig_key = f"models/signatures/{version}-{main.sha256[:16]}.json"
        self._store.put(sig_key, json.dumps(signed, sort_keys=True, indent=1).encode())
        return {"signature": signed, "signature_key": sig_key}

    # ------------------------------------------------------------------ stages

    def _append_history(self, row: ModelRow, entry: dict[str, Any]) -> None:
        params = dict(row.params or {})
        reserved = dict(params.get(RESERVED) or {})
        reserved["history"] = [*(reserved.get("history") or []), entry]
        params[RESERVED] = reserved
        row.params = params

    def promote(
        self,
        version: int,
        *,
        stage: str = "production",
        force: bool = False,
        reason: str = "",
        use_gate: bool = True,
        sites: Sequence[str] = (),
    ) -> ModelInfo:
        """Move ``version`` to ``stage`` (``production`` by default; ``canary`` on ``sites``;
        or ``candidate`` to take a canary back).  Canary and production go through the gate
        (against the current production model) unless there is none, it is this model, or
        ``force`` (which needs a ``reason``)."""
        if stage not in ("candidate", "canary", "production"):
            raise ValueError(f"cannot promote to {stage!r}; use retire() or rollback()")
        sites = sorted(set(sites))
        if (stage == "canary") != bool(sites):
            raise ValueError("a canary names the sites it runs on (and only a canary does)")
        if force and not reason.strip():
            raise ValueError("--force needs a reason (it is logged and kept in the model's history)")
        target = self.get(version)
        if target.stage == "retired" and not force:
            raise ValueError(f"model {version} is retired; promoting it again needs force and a reason")
        report = None
        current = self.production()
        if stage in GATED_STAGES and self.gate is not None and use_gate and (
                current is None or current.version != version):
            report = self.gate.check(target, current) if current is not None else self.gate.check_first(target)
            if not report.passed:
                if not force:
                    with self._sessions.begin() as session:
                        row = _row(session, version)
                        self._append_history(row, {"at": utcnow().isoformat(), "stage": row.stage,
                                                   "event": "gate_failed", "to": stage,
                                                   "gate": dump_report(report)})
                    raise GateBlocked(version, report)
                log.warning("promotion gate overridden", version=version, stage=stage, reason=reason,
                            reasons=getattr(report, "reasons", None))
        # One change at a time, published in the order it was made.
        with self.lock:
            now = utcnow().isoformat()
            canary = self.canary()
            with self._sessions.begin() as session:
                row = _row(session, version)
                if stage in ("production", "canary"):
                    for other in session.scalars(select(ModelRow).where(ModelRow.stage == stage)):
                        if other.version != version:
                            other.stage = "archived" if stage == "production" else "candidate"
                            self._append_history(other, {"at": now, "stage": other.stage,
                                                         "reason": f"replaced by {version}"})
                previous = row.stage
                row.stage = stage
                self._append_history(row, {"at": now, "stage": stage, "from": previous, "reason": reason,
                                           "forced": bool(force),
                                           **({"sites": sites} if sites else {}),
                                           **({"gate": dump_report(report)} if report is not None else {})})
            info = self.get(version)
            if force:
                log.warning("model promoted with --force", version=version, stage=stage, reason=reason)
            self._tell_sites(info, canary)
        return info

    def _tell_sites(self, info: ModelInfo, canary_before: ModelInfo | None) -> None:
        """Publish a stage change: the fleet target first, then canary targets, then drop the
        canary targets that ended, so a canary site never steps back to the old fleet model
        on its way to the new one."""
        if info.stage == "production":
            self.sites.production(info.published())
        canary_now = self.canary()
        if info.stage == "canary" and canary_now is not None:
            self.sites.canary(info.published(), canary_now.canary_sites)
        kept = set(canary_now.canary_sites) if canary_now is not None else set()
        ended = [s for s in (canary_before.canary_sites if canary_before else []) if s not in kept]
        self.sites.end_canary(ended)

    def desired_for(self, site: str) -> ModelInfo | None:
        """The model a site should run: the canary if it targets the site, else production."""
        canary = self.canary()
        if canary is not None and site in canary.canary_sites:
            return canary
        return self.production()

    def rollback(self, reason: str = "", to: int | None = None) -> ModelInfo:
        """Retire the production model and put back ``to`` (default: the most recent former
        production model).  No gate: a rollback is the emergency exit."""
        with self.lock:
            current = self.production()
            candidates = [m for m in self.list() if m.stage == "archived"]
            if to is not None:
                target = self.get(to)
            else:
                if not candidates:
                    raise LookupError("no former production model to roll back to")
                target = max(candidates, key=lambda m: (production_since(m), m.version))
            canary = self.canary()
            self._rollback_rows(current, target, reason)
            info = self.get(target.version)
            log.warning("model rolled back", to=target.version,
                        retired=current.version if current else None, reason=reason)
            self._tell_sites(info, canary)
        return info

    def _rollback_rows(self, current: ModelInfo | None, target: ModelInfo, reason: str) -> None:
        now = utcnow().isoformat()
        with self._sessions.begin() as session:
            if current is not None and current.version != target.version:
                row = _row(session, current.version)
                row.stage = "retired"
                self._append_history(row, {"at": now, "stage": "retired", "reason": f"rolled back: {reason}"})
            row = _row(session, target.version)
            previous = row.stage
            row.stage = "production"
            self._append_history(row, {"at": now, "stage": "production", "from": previous,
                                       "reason": f"rollback: {reason}"})

    def retire(self, version: int, reason: str = "") -> ModelInfo:
        with self.lock:
            return self._retire(version, reason)

    def _retire(self, version: int, reason: str) -> ModelInfo:
        before = self.get(version)
        with self._sessions.begin() as session:
            row = _row(session, version)
            if row.stage == "production":
                raise ValueError("the production model cannot be retired directly; roll back instead")
            row.stage = "retired"
            self._append_history(row, {"at": utcnow().isoformat(), "stage": "retired", "reason": reason})
        if before.stage == "canary":
            self.sites.end_canary(before.canary_sites)
        return self.get(version)

    # ------------------------------------------------------------------ reading

    def get(self, version: int) -> ModelInfo:
        with self._sessions() as session:
            row = session.get(ModelRow, version)
        if row is None:
            raise LookupError(f"model version {version} does not exist")
        return info_of(row)

    def production(self) -> ModelInfo | None:
        return self._stage("production")

    def canary(self) -> ModelInfo | None:
        return self._stage("canary")

    def _stage(self, stage: str) -> ModelInfo | None:
        with self._sessions() as session:
            row = session.scalars(select(ModelRow).where(ModelRow.stage == stage)).first()
        return info_of(row) if row else None

    def list(self) -> list[ModelInfo]:
        with self._sessions() as session:
            rows = session.scalars(select(ModelRow).order_by(ModelRow.version)).all()
        return [info_of(r) for r in rows]

    def artifact(self, version: int, kind: str = "full") -> tuple[ArtifactRef, bytes]:
        info = self.get(version)
        ref = info.artifacts.get(kind) if info.artifacts else None
        if ref is None and kind == "full":
            ref = ArtifactRef(key=info.artifact_key, sha256=info.sha256, size=info.size)
        if ref is None:
            raise LookupError(f"model {version} has no {kind!r} artefact")
        return ref, self._store.get(ref.key)

    def verify(self, version: int) -> dict[str, bool]:
        """Check the signature and every artefact's bytes in the store against it.  Raises
        SignatureError on the first mismatch; returns kind -> True."""
        if self.signer is None:
            raise SignatureError("this registry has no signing key")
        info = self.get(version)
        if not info.signature:
            raise SignatureError(f"model {version} is not signed")
        manifest = verify(info.signature, self.signer.public_key)
        if manifest.get("version") != version:
            raise SignatureError(f"the signature is for version {manifest.get('version')}, not {version}")
        checked = {}
        for kind in manifest.get("artifacts", {}):
            _ref, data = self.artifact(version, kind)
            verify_artifact(data, info.signature, self.signer.public_key, kind)
            checked[kind] = True
        return checked

    def compare(self, a: int, b: int, *, evaluate: bool = True) -> dict[str, Any]:
        """Model ``b`` against model ``a``: recorded metrics side by side, sizes, lineage,
        and (when a gate is set and ``evaluate``) the gate's verdict for b against a on the
        frozen evaluation set."""
        ma, mb = self.get(a), self.get(b)
        out = compare_models(ma, mb)
        if evaluate and self.gate is not None:
            out["gate"] = dump_report(self.gate.check(mb, ma))
        return out


def _row(session: Session, version: int) -> ModelRow:
    row = session.get(ModelRow, version)
    if row is None:
        raise LookupError(f"model version {version} does not exist")
    return row
