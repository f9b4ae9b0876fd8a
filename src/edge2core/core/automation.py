"""The learning loop: decide when to retrain, train, and roll the result out, with every
decision in the audit log.

Triggers (`decide`, pure):
- a pending-data product has enough kiosk captures from enough devices -> fast retrain;
- a product in the production model was retired -> fast retrain without it (the edge masks
  it at once through the catalogue; the retrain takes it out of the model itself);
- a product's recent kiosk captures drift from its class (changed packaging) -> fast retrain;
- a full retrain is due (`full_retrain_every_s`) and enough new photos arrived -> full path.

A run (`LearningLoop.execute`): dataset from every sellable product with photos -> training ->
the promotion gate -> canary sites (if configured) -> soak: every canary site reports the
version live and none rolls it back -> the fleet. A blocked gate or a failed canary stops the
rollout and says why; the candidate stays in the registry for a person to look at.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import distinct, func, select
from sqlalchemy.orm import Session, sessionmaker

from edge2core.common.events import Source, as_utc, utcnow
from edge2core.common.logging import get_logger
from edge2core.common.products import Product, ProductStatus
from edge2core.config import AutomationPolicy
from edge2core.core.audit import AuditLog
from edge2core.core.catalogue import Catalogue
from edge2core.core.datasets import DatasetQuery, DatasetStore
from edge2core.core.registry import GateBlocked, ModelInfo, ModelRegistry, dump_report
from edge2core.core.schema import ImageRow, ModelRow
from edge2core.core.site_reports import SiteReports

log = get_logger(__name__)


# --------------------------------------------------------------------------- deciding (pure)


@dataclass(frozen=True)
class ProductData:
    photos: int
    devices: int


@dataclass(frozen=True)
class LoopInputs:
    pending: dict[str, ProductData]  # pending-data products: kiosk captures so far
    in_model: frozenset[str]  # classes of the production model
    retired: frozenset[str]
    drifting: dict[str, float]  # sku -> mean confidence in its own class, below drift_below
    new_photos: int  # labelled photos stored since the production model's dataset
    since_full_s: float  # since the last full retrain (or the first model, if none was full)
    trainable: int = 0  # active products with enough photos to learn
    hour_utc: int = 0  # now, for the scheduled retrain's window
    since_last_photo_s: float = float("inf")  # since the newest labelled photo arrived
    blocked: frozenset[str] = frozenset()  # SKUs whose last rollout was stopped


@dataclass(frozen=True)
class Decision:
    path: str  # "fast" | "full"
    trigger: str  # new_product | retired | drift | scheduled
    reason: str
    skus: tuple[str, ...] = ()


def decide(inputs: LoopInputs, policy: AutomationPolicy) -> Decision | None:
    if (not inputs.in_model and inputs.trainable >= 2 and "bootstrap" not in inputs.blocked
            and inputs.since_last_photo_s >= policy.bootstrap_quiet_s):
        return Decision("fast", "bootstrap",
                        f"no model yet; {inputs.trainable} products have enough photos")
    ready = sorted(sku for sku, data in inputs.pending.items()
                   if data.photos >= policy.new_product_min_photos
                   and data.devices >= policy.new_product_min_devices
                   and sku not in inputs.blocked)
    if ready:
        counts = ", ".join(f"{s}: {inputs.pending[s].photos} photos from "
                           f"{inputs.pending[s].devices} devices" for s in ready)
        return Decision("fast", "new_product", f"enough kiosk captures ({counts})", tuple(ready))
    gone = sorted((inputs.retired & inputs.in_model) - inputs.blocked)
    if gone:
        return Decision("fast", "retired", f"retired products still in the model: {', '.join(gone)}",
                        tuple(gone))
    drifting = sorted(s for s in inputs.drifting if s not in inputs.blocked)
    if drifting:
        detail = ", ".join(f"{s} (mean confidence {inputs.drifting[s]:.2f})" for s in drifting)
        return Decision("fast", "drift", f"recent captures drift from their class: {detail}",
                        tuple(drifting))
    start, end = policy.full_retrain_hours_utc
    in_window = start <= inputs.hour_utc < end if start <= end else not end <= inputs.hour_utc < start
    if (in_window and inputs.since_full_s >= policy.full_retrain_every_s
            and inputs.new_photos >= policy.full_retrain_min_new_photos):
        return Decision("full", "scheduled",
                        f"{inputs.new_photos} new photos since the production model's dataset")
    return None


# --------------------------------------------------------------------------- reading the state


def kiosk_counts(sessions: sessionmaker[Session], skus: Sequence[str]) -> dict[str, ProductData]:
    if not skus:
        return {}
    stmt = (select(ImageRow.sku, func.count(), func.count(distinct(ImageRow.device)))
            .where(ImageRow.sku.in_(list(skus)), ImageRow.source == Source.KIOSK.value)
            .group_by(ImageRow.sku))
    with sessions() as session:
        found = {sku: ProductData(n, d) for sku, n, d in session.execute(stmt)}
    return {sku: found.get(sku, ProductData(0, 0)) for sku in skus}


def newest_photo_age_s(sessions: sessionmaker[Session]) -> float:
    with sessions() as session:
        newest = session.scalar(select(func.max(ImageRow.stored_at)).where(ImageRow.sku.is_not(None)))
    newest = as_utc(newest)
    return (utcnow() - newest).total_seconds() if newest else float("inf")


def photos_since(sessions: sessionmaker[Session], since: datetime) -> int:
    stmt = select(func.count()).select_from(ImageRow).where(
        ImageRow.stored_at > since, ImageRow.sku.is_not(None))
    with sessions() as session:
        return int(session.scalar(stmt) or 0)


def _trainable(products: Sequence[Product], counts: dict[str, ProductData], ready: Sequence[str],
               min_photos: int) -> list[str]:
    """Active products with enough photos, and the pending ones a run is for."""
    chosen = [p.sku for p in products if p.status == ProductStatus.ACTIVE
              or (p.sku in ready and p.status != ProductStatus.RETIRED)]
    return sorted(s for s in chosen if counts[s].photos >= min_photos)


# --------------------------------------------------------------------------- acting


class RolloutStopped(RuntimeError):
    pass


class Busy(RuntimeError):
    pass


@dataclass
class LearningLoop:
    policy: AutomationPolicy
    sessions: sessionmaker[Session]
    catalogue: Catalogue
    datasets: DatasetStore
    registry: ModelRegistry
    train: Callable[..., Any]  # Trainer.train
    audit: AuditLog
    reports: SiteReports
    drift: Callable[[ModelInfo, list[str]], dict[str, float]] | None = None
    wake: threading.Event = field(default_factory=threading.Event)
    blocked: set[str] = field(default_factory=set)
    _drift_cache: tuple[float, int, dict[str, float]] = (float("-inf"), 0, {})
    running: threading.Lock = field(default_factory=threading.Lock)  # one step at a time

    def inputs(self) -> LoopInputs:
        # Woken by every arrival: one catalogue read and one count query per look.
        products = self.catalogue.list()
        counts = kiosk_counts(self.sessions,
                              [p.sku for p in products if p.status != ProductStatus.RETIRED])
        retired = frozenset(p.sku for p in products if p.status == ProductStatus.RETIRED)
        production = self.registry.production()
        in_model = frozenset(production.classes) if production else frozenset()
        drifting = self._drifting(production, sorted(in_model - retired))
        since = self.datasets.get(production.dataset_version).created_at if production else None
        return LoopInputs(
            pending={p.sku: counts[p.sku] for p in products
                     if p.status == ProductStatus.PENDING_DATA},
            in_model=in_model,
            retired=retired,
            drifting={s: c for s, c in drifting.items() if c < self.policy.drift_below},
            new_photos=photos_since(self.sessions, since) if since else 0,
            since_full_s=self._since_full_s(),
            hour_utc=utcnow().hour,
            trainable=len(_trainable(products, counts, (), self.policy.min_photos_per_class)),
            since_last_photo_s=newest_photo_age_s(self.sessions),
            blocked=frozenset(self.blocked),
        )

    def _since_full_s(self) -> float:
        """Since the newest full-path model, or the first model when none was full (so a
        restart or a young deployment does not start a long run at once)."""
        with self.sessions() as session:  # two columns, not whole models with their metrics
            models = session.execute(select(ModelRow.created_at, ModelRow.params)).all()
        full = [at for at, params in models if (params or {}).get("path") == "full"]
        since = max(full) if full else min((at for at, _p in models), default=None)
        return (utcnow() - as_utc(since)).total_seconds() if since else 0.0

    def _drifting(self, production: ModelInfo | None, skus: list[str]) -> dict[str, float]:
        """Scoring recent captures costs embeddings: at most every `drift_every_s` per model."""
        if production is None or self.drift is None:
            return {}
        at, version, found = self._drift_cache
        if version == production.version and time.monotonic() - at < self.policy.drift_every_s:
            return found
        found = self.drift(production, skus)
        self._drift_cache = (time.monotonic(), production.version, found)
        return found

    def step(self, *, wait: bool = True) -> ModelInfo | None:
        """One look at the state; a run if a trigger fires. Blocking (a worker thread).
        Steps never overlap; with `wait=False` a step already under way raises `Busy`."""
        if not self.running.acquire(blocking=wait):
            raise Busy("the learning loop is already running a step")
        try:
            decision = decide(self.inputs(), self.policy)
            if decision is None:
                return None
            return self.execute(decision)
        finally:
            self.running.release()

    def execute(self, decision: Decision) -> ModelInfo | None:
        subject = ",".join(decision.skus) or decision.trigger
        self.audit.record("loop.triggered", subject[:200], trigger=decision.trigger,
                          path=decision.path, reason=decision.reason)
        log.info("retraining", trigger=decision.trigger, path=decision.path, reason=decision.reason)
        skus = self._training_skus(decision.skus)
        dataset = self.datasets.build(DatasetQuery(skus=skus))
        result = self.train(dataset.version, path=decision.path, register=True, promote=False,
                            params=self.policy.train_params)
        model: ModelInfo = result.model
        self.audit.record("model.trained", f"model:{model.version}", trigger=decision.trigger,
                          reason=decision.reason, dataset_version=dataset.version,
                          dataset_sha256=dataset.manifest_sha256, classes=len(model.classes),
                          val_top1=(model.metrics.get("val") or {}).get("top1"))
        try:
            live = self.roll_out(model, decision)
        except RolloutStopped as exc:
            self.blocked.update(decision.skus or (decision.trigger,))
            log.warning("rollout stopped", version=model.version, reason=str(exc))
            return None
        except Exception as exc:  # publishing failed midway (the broker?): stop, say why
            self._abandon(model, decision, exc)
            return None
        self.blocked.difference_update(decision.skus or (decision.trigger,))
        self._activate(live)
        return live

    def _abandon(self, model: ModelInfo, decision: Decision, exc: Exception) -> None:
        """A rollout that failed for another reason than its verdicts: a canary is taken back
        (the KV re-sync repairs what the sites were told); production stays production."""
        log.exception("rollout failed", version=model.version)
        self.blocked.update(decision.skus or (decision.trigger,))
        self.audit.record("rollout.stopped", f"model:{model.version}", stage="publish",
                          reasons=[f"rollout failed: {exc!r}"])
        try:
            if self.registry.get(model.version).stage == "canary":
                self.registry.promote(model.version, stage="candidate", use_gate=False,
                                      reason=f"rollout failed: {exc!r}")
        except Exception:  # noqa: BLE001 - the re-sync publishes what the database says
            log.exception("could not take the canary back", version=model.version)

    def _training_skus(self, ready: Sequence[str]) -> list[str]:
        products = self.catalogue.list()
        counts = kiosk_counts(self.sessions,
                              [p.sku for p in products if p.status != ProductStatus.RETIRED])
        return _trainable(products, counts, ready, self.policy.min_photos_per_class)

    def roll_out(self, model: ModelInfo, decision: Decision) -> ModelInfo:
        """Gate, canary sites (if any), fleet; the model as it is in production."""
        sites = self.policy.canary_sites
        stage = "canary" if sites else "production"
        try:
            promoted = self.registry.promote(model.version, stage=stage, sites=sites,
                                  reason=f"automation: {decision.trigger}: {decision.reason}")
        except GateBlocked as exc:
            reasons = list(getattr(exc.report, "reasons", []) or [str(exc)])
            self.audit.record("rollout.stopped", f"model:{model.version}", stage="gate",
                              reasons=reasons, gate=dump_report(exc.report))
            raise RolloutStopped(f"gate: {'; '.join(reasons)}") from exc
        gate = next((h.get("gate") for h in reversed(promoted.history) if h.get("gate")), None)
        self.audit.record(f"model.{stage}", f"model:{model.version}", sites=sites, gate=gate)
        if not sites:
            return promoted
        self._canary(model, sites)
        live = self.registry.promote(model.version, reason="automation: canary passed", use_gate=False)
        self.audit.record("model.production", f"model:{model.version}", after_canary=sites)
        return live

    def _canary(self, model: ModelInfo, sites: list[str]) -> None:
        verdict = self.reports.await_version(
            sites, model.version, soak_s=self.policy.canary_soak_s,
            timeout_s=self.policy.canary_timeout_s)
        if verdict.ok:
            return
        self.registry.retire(model.version, f"canary failed: {verdict.reason}")
        self.audit.record("rollout.stopped", f"model:{model.version}", stage="canary",
                          sites=sites, reasons=[verdict.reason])
        raise RolloutStopped(f"canary: {verdict.reason}")

    def _activate(self, model: ModelInfo) -> None:
        """Pending products the live model now knows become active (sellable by recognition)."""
        for sku in model.classes:
            product = self.catalogue.get(sku)
            if product is not None and product.status == ProductStatus.PENDING_DATA:
                self.catalogue.change(sku, status=ProductStatus.ACTIVE,
                                      by=f"automation (model {model.version})")

    def explain(self, site: str) -> dict[str, Any]:
        """Why is this model at this site: the target, its data, trigger, gate and rollout."""
        model = self.registry.desired_for(site)
        if model is None:
            raise LookupError("no model is in production yet")
        events = self.audit.query(subject=f"model:{model.version}", limit=50)
        return {
            "site": site,
            "model": model.version,
            "target": "canary" if site in model.canary_sites else "fleet",
            "reported": self.reports.get(site),
            "dataset_version": model.dataset_version,
            "lineage": model.lineage,
            "history": model.history,
            "audit": [e.model_dump(mode="json") for e in reversed(events)],
        }

    async def run(self) -> None:
        """Look at the state when woken (an arrival, a catalogue change) or every few seconds."""
        while True:
            await asyncio.to_thread(self.wake.wait, self.policy.check_every_s)
            await asyncio.sleep(self.policy.min_step_gap_s)  # a burst of arrivals, one look
            self.wake.clear()
            try:
                await asyncio.to_thread(self.step)
            except LookupError as exc:  # nothing to build a dataset from yet
                log.debug("nothing to learn from yet", error=str(exc))
            except Exception:
                log.exception("learning loop step failed; trying again later")
                await asyncio.sleep(self.policy.check_every_s)

