"""The learning loop: decide when to retrain, train, and roll the result out, with every
decision in the audit log.

Triggers are decided by `decide` (pure, in `decide.py`) on what `state.py` reads:
- a pending-data product has enough kiosk captures from enough devices -> fast retrain;
- a product in the production model was retired -> fast retrain without it (the edge masks
  it at once through the catalogue; the retrain takes it out of the model itself);
- a product's recent kiosk captures drift from its class (changed packaging) -> fast retrain;
- a full retrain is due (`full_retrain_every_s`) and enough new photos arrived -> full path.

A run (`LearningLoop.execute`): dataset from every sellable product with photos -> training ->
the promotion gate -> canary sites (if configured) -> soak: every canary site reports the
version live and none rolls it back -> the fleet. A blocked gate or a failed canary stops the
rollout and says why; the candidate stays in the registry for a person to look at.

The loop never spins. A trigger whose run fails (nothing left to train, a training error), or
that fires again after a run that changed nothing it looks at, is held (`Hold`): it waits
`retry_first_s`, then twice as long each time (up to `retry_max_s`), and after `retry_limit`
tries it stops. Each failure is in the audit log (`loop.failed`, then `loop.stopped`), and
`GET /v1/automation/decision` lists what is held and why. A held trigger goes again as soon as
what it looks at changes (a product's status, its photo counts, the production model's
classes: `fingerprint`) or when a person says so (`POST /v1/automation/retry`).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from edge2core.common.background import supervised
from edge2core.common.errors import Conflict
from edge2core.common.events import as_utc, utcnow
from edge2core.common.logging import get_logger
from edge2core.common.products import ProductStatus
from edge2core.config import AutomationPolicy
from edge2core.core.audit import AuditLog
from edge2core.core.catalogue.catalogue import Catalogue
from edge2core.core.curate.datasets import DatasetQuery, DatasetStore
from edge2core.core.db.schema import ModelRow
from edge2core.core.deliver.registry import GateBlocked, ModelInfo, ModelRegistry, dump_report
from edge2core.core.deliver.site_reports import SiteReports
from edge2core.core.loop.decide import (
    RETRY_FIRST_S,
    RETRY_LIMIT,
    RETRY_MAX_S,
    Decision,
    Hold,
    LoopInputs,
    ProductData,
    backoff_s,
    decide,
    decision_key,
    fingerprint,
)
from edge2core.core.loop.memory import LoopMemory, Remembered, seen_key
from edge2core.core.loop.state import kiosk_counts, newest_photo_age_s, photos_since, trainable

__all__ = ["Busy", "Decision", "LearningLoop", "LoopInputs", "NothingToTrain", "ProductData",
           "RolloutStopped", "decide"]

log = get_logger(__name__)


# --------------------------------------------------------------------------- acting


class RolloutStopped(RuntimeError):
    pass


class Busy(Conflict):
    pass


class NothingToTrain(ValueError):
    """A trigger fired, but too few sellable products have enough photos for a model."""


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
    holds: dict[str, Hold] = field(default_factory=dict)  # by decision_key
    retry_first_s: float = RETRY_FIRST_S
    retry_max_s: float = RETRY_MAX_S
    retry_limit: int = RETRY_LIMIT
    # The last run that went live: (decision_key, seen_key(fingerprint)) when it was decided.
    _done: tuple[str, str] | None = None
    _holds_lock: threading.Lock = field(default_factory=threading.Lock)
    # `blocked`, `holds` and `_done` also live in the database, for the process taking over.
    memory: LoopMemory | None = None

    def __post_init__(self) -> None:
        if self.memory is None:
            self.memory = LoopMemory(self.sessions)

    def _sync(self) -> None:
        """Take up what another core process remembered (it ran the loop, or a person said
        `retry` to it) since this one last wrote or read the memory."""
        assert self.memory is not None
        if self.memory.changed_elsewhere():
            remembered = self.memory.load()
            with self._holds_lock:
                self.blocked, self.holds, self._done = (remembered.blocked, remembered.holds,
                                                        remembered.done)

    def _persist(self) -> None:
        assert self.memory is not None
        with self._holds_lock:
            remembered = Remembered(set(self.blocked), dict(self.holds), self._done)
        try:
            self.memory.save(remembered)
        except SQLAlchemyError:  # kept in memory; written with the next change
            log.exception("the learning loop's memory could not be saved")

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
            trainable=len(trainable(products, counts, (), self.policy.min_photos_per_class)),
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

    def look(self) -> tuple[LoopInputs, Decision | None]:
        """What the loop sees, and the trigger that fires now: held triggers that are not due
        (or stopped) are left out, and holds whose inputs changed are let go first."""
        self._sync()
        inputs = self.inputs()
        now = time.monotonic()
        with self._holds_lock:
            released = {key: hold for key, hold in self.holds.items()
                        if seen_key(fingerprint(hold.trigger, hold.skus, inputs)) != hold.seen}
            for key in released:
                del self.holds[key]
            waiting = {name for hold in self.holds.values()
                       if hold.stopped or now < hold.next_at for name in hold.blocks()}
        for key, hold in released.items():
            log.info("held trigger goes again: its inputs changed", trigger=key)
            if hold.stopped:
                self.audit.record("loop.resumed", key[:200], trigger=hold.trigger,
                                  reason="its inputs changed", tries=hold.tries)
        held = replace(inputs, blocked=inputs.blocked | waiting) if waiting else inputs
        if released:
            self._persist()
        return inputs, decide(held, self.policy)

    def held(self) -> list[dict[str, Any]]:
        """The triggers held back now, and why (for `loop decision`)."""
        self._sync()
        now = time.monotonic()
        with self._holds_lock:
            return [hold.view(now) for hold in self.holds.values()]

    def retry(self) -> list[str]:
        """Forget stopped rollouts and held triggers (after a person looked)."""
        self._sync()
        with self._holds_lock:
            cleared = sorted(self.blocked | set(self.holds))
            self.blocked, self.holds, self._done = set(), {}, None
        self._persist()
        if cleared:
            self.audit.record("loop.retried", ",".join(cleared)[:200], cleared=cleared)
        self.wake.set()
        return cleared

    def step(self, *, wait: bool = True) -> ModelInfo | None:
        """One look at the state; a run if a trigger fires. Blocking (a worker thread).
        Steps never overlap; with `wait=False` a step already under way raises `Busy`.
        A run that fails holds its trigger back (and raises); one that went live and is
        decided again at once, though nothing it looks at changed, holds it back too."""
        if not self.running.acquire(blocking=wait):
            raise Busy("the learning loop is already running a step")
        try:
            inputs, decision = self.look()
            if decision is None:
                self._done = None
                return None
            key = decision_key(decision)
            seen = seen_key(fingerprint(decision.trigger, decision.skus, inputs))
            if self._done == (key, seen):
                self._hold(decision, seen, "the last run went live but changed nothing this "
                                           "trigger looks at: it still fires")
                return None
            try:
                model = self.execute(decision)
            except Exception as exc:
                self._hold(decision, seen, f"{type(exc).__name__}: {exc}")
                raise
            with self._holds_lock:
                self.holds.pop(key, None)
            self._done = (key, seen) if model is not None else None
            return model
        finally:
            try:
                self._persist()
            finally:
                self.running.release()

    def _hold(self, decision: Decision, seen: str, reason: str) -> Hold:
        key = decision_key(decision)
        with self._holds_lock:
            before = self.holds.get(key)
            tries = (before.tries if before is not None else 0) + 1
            stopped = tries >= self.retry_limit
            wait_s = backoff_s(tries, self.retry_first_s, self.retry_max_s)
            hold = Hold(decision.trigger, decision.skus, tries, reason[:500], seen,
                        time.monotonic() + wait_s, stopped,
                        before.since if before is not None else utcnow())
            self.holds[key] = hold
        if stopped:
            log.warning("trigger stopped after repeated tries", trigger=key, tries=tries,
                        reason=reason)
            self.audit.record("loop.stopped", key[:200], trigger=decision.trigger,
                              skus=list(decision.skus), tries=tries, reason=hold.reason,
                              resumes="when its inputs change, or on `edge2core loop retry`")
        else:
            log.warning("trigger failed; trying again later", trigger=key, tries=tries,
                        retry_in_s=wait_s, reason=reason)
            self.audit.record("loop.failed", key[:200], trigger=decision.trigger,
                              skus=list(decision.skus), tries=tries, reason=hold.reason,
                              retry_in_s=wait_s)
        return hold

    def execute(self, decision: Decision) -> ModelInfo | None:
        subject = ",".join(decision.skus) or decision.trigger
        self.audit.record("loop.triggered", subject[:200], trigger=decision.trigger,
                          path=decision.path, reason=decision.reason)
        log.info("retraining", trigger=decision.trigger, path=decision.path, reason=decision.reason)
        skus = self._training_skus(decision.skus)
        if len(skus) < 2:
            raise NothingToTrain(
                f"{len(skus)} sellable product(s) with at least "
                f"{self.policy.min_photos_per_class} photos: a model needs 2")
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
        except Exception:
            log.exception("could not take the canary back", version=model.version)

    def _training_skus(self, ready: Sequence[str]) -> list[str]:
        products = self.catalogue.list()
        counts = kiosk_counts(self.sessions,
                              [p.sku for p in products if p.status != ProductStatus.RETIRED])
        return trainable(products, counts, ready, self.policy.min_photos_per_class)

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
        """Look at the state when woken (an arrival, a catalogue change) or every few seconds;
        a step that fails is held back (see `step`) and the loop goes on."""
        await supervised("learning-loop", self._look_when_woken, delay_s=self.policy.check_every_s)

    async def _look_when_woken(self) -> None:
        await asyncio.to_thread(self.wake.wait, self.policy.check_every_s)
        await asyncio.sleep(self.policy.min_step_gap_s)  # a burst of arrivals, one look
        self.wake.clear()
        with contextlib.suppress(NothingToTrain):  # held back and logged by `step`
            await asyncio.to_thread(self.step)
