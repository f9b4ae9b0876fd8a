"""Deciding when the learning loop retrains (pure): what it sees (`LoopInputs`), the trigger
that fires (`decide`), and how a trigger that failed waits before it goes again (`Hold`).

Triggers, in order:
- no model yet and enough products with enough photos, once arrivals pause -> bootstrap;
- a pending-data product has enough kiosk captures from enough devices -> fast retrain;
- a product in the production model was retired -> fast retrain without it;
- a product's recent kiosk captures drift from its class (changed packaging) -> fast retrain;
- a full retrain is due (`full_retrain_every_s`, in its hours) and enough new photos arrived.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from edge2core.common.events import utcnow
from edge2core.config import AutomationPolicy


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
    seen: str  # `memory.seen_key(fingerprint)` when it was held: a change lets it go at once
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
