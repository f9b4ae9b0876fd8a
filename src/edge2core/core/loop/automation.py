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
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy import distinct, func, select
from sqlalchemy.orm import Session, sessionmaker

from edge2core.common.events import Source, as_utc, utcnow
from edge2core.common.logging import get_logger
from edge2core.common.products import Product, ProductStatus
from edge2core.config import AutomationPolicy
from edge2core.core.audit import AuditLog
from edge2core.core.catalogue.catalogue import Catalogue
from edge2core.core.curate.datasets import DatasetQuery, DatasetStore
from edge2core.core.deliver.registry import GateBlocked, ModelInfo, ModelRegistry, dump_report
from edge2core.core.db.schema import ImageRow, ModelRow
from edge2core.core.deliver.site_reports import SiteReports

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


def decision_key(decision: Decision) -> str:
    return f"{decision.trigger}:{','.join(decision.skus)}" if decision.skus else decision.trigger


def fingerprint(trigger: str, skus: Sequence[str], inputs: LoopInputs) -> tuple[Any, ...]:
    """What a trigger's outcome depends on, without the clock: when it changes, a held
    trigger may go again (a product active again, new captures of its products, another
    production model, a product that reached enough photos to train)."""
    return (trigger, tuple(skus), tuple(sorted(inputs.in_model)), tuple(sorted(inputs.retired)),
            inputs.trainable, tuple(sorted(inputs.pending)),
            tuple((s, inputs.pending[s]) for s in skus if s in inputs.pending),
            tuple(sorted(s for s in skus if s in inputs.drifting)))


def backoff_s(tries: int, first_s: float, max_s: float) -> float:
    """The wait after `tries` failed tries: first_s, 2x, 4x, ... up to max_s."""
    return min(max_s, first_s * 2 ** max(0, tries - 1))


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
            and inputs.new_photos >= policy.full_retrain_min_new_photos
            and "scheduled" not in inputs.blocked):
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


class NothingToTrain(ValueError):
    """A trigger fired, but too few sellable products have enough photos for a model."""


# A trigger that fails or changes nothing waits RETRY_FIRST_S, then twice as long each time
# (at most RETRY_MAX_S), and stops after RETRY_LIMIT tries (see `Hold`).
RETRY_FIRST_S = 30.0
RETRY_MAX_S = 3600.0
RETRY_LIMIT = 5


@dataclass
class Hold:
    """A trigger held back: it failed, or fired again after a run that changed nothing."""

    trigger: str
    skus: tuple[str, ...]
    tries: int  # failed (or ineffective) tries in a row
    reason: str  # the last one's
    seen: tuple[Any, ...]  # `fingerprint` when it was held: a change lets it go at once
    next_at: float  # time.monotonic() from which it may try again
    stopped: bool = False  # no more tries until its inputs change or `retry`
    since: datetime = field(default_factory=utcnow)

    def blocks(self) -> tuple[str, ...]:
        return self.skus or (self.trigger,)

    def view(self, now: float) -> dict[str, Any]:
        return {"trigger": self.trigger, "skus": list(self.skus), "tries": self.tries,
                "reason": self.reason, "stopped": self.stopped,
                "retry_in_s": None if self.stopped else round(max(0.0, self.next_at - now), 1),
                "since": self.since.isoformat()}


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
    # The last run that went live: (decision_key, fingerprint) when it was decided.
    _done: tuple[str, tuple[Any, ...]] | None = None
    _holds_lock: threading.Lock = field(default_factory=threading.Lock)

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

    def look(self) -> tuple[LoopInputs, Decision | None]:
        """What the loop sees, and the trigger that fires now: held triggers that are not due
        (or stopped) are left out, and holds whose inputs changed are let go first."""
        inputs = self.inputs()
        now = time.monotonic()
        with self._holds_lock:
            released = {key: hold for key, hold in self.holds.items()
                        if fingerprint(hold.trigger, hold.skus, inputs) != hold.seen}
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
        return inputs, decide(held, self.policy)

    def held(self) -> list[dict[str, Any]]:
        """The triggers held back now, and why (for `loop decision`)."""
        now = time.monotonic()
        with self._holds_lock:
            return [hold.view(now) for hold in self.holds.values()]

    def retry(self) -> list[str]:
        """Forget stopped rollouts and held triggers (after a person looked)."""
        with self._holds_lock:
            cleared = sorted(self.blocked | set(self.holds))
            self.blocked, self.holds, self._done = set(), {}, None
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
            seen = fingerprint(decision.trigger, decision.skus, inputs)
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
            self.running.release()

    def _hold(self, decision: Decision, seen: tuple[Any, ...], reason: str) -> Hold:
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
            except NothingToTrain:
                pass  # held back and logged by `step`
            except Exception:  # the trigger is held back (see `step`); the loop goes on
                log.exception("learning loop step failed; trying again later")
                await asyncio.sleep(self.policy.check_every_s)

