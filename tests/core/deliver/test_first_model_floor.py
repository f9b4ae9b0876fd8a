"""A first model has nothing to be compared with: the gate holds it to an absolute floor
(its own val top-1, enough val photos to judge, enough train photos per class), through the
registry as training runs use it. Runs on SQLite and on PostgreSQL (the `sessions` fixture)."""

from __future__ import annotations

import pytest

from edge2core.common.events import ModelPublished, Source
from edge2core.config import PromotionGate
from edge2core.core.curate.datasets import DatasetEntry
from edge2core.core.deliver.gate import ModelGate
from edge2core.core.deliver.registry import GateBlocked, ModelRegistry
from tests.support.recorded_sites import RecordedSites

CLASSES = ["SKU-A", "SKU-B"]


class Versions:
    """Dataset versions as the gate reads them: the entries of one version."""

    def __init__(self, train_per_class: dict[str, int]) -> None:
        self._entries = [
            DatasetEntry(sha256=f"{sku}-{i:04d}".ljust(64, "0"), key=f"k/{sku}/{i}", sku=sku, split="train",
                         site="s1", device="kiosk-1", source=Source.KIOSK)
            for sku, n in train_per_class.items() for i in range(n)
        ]

    def entries(self, version: int) -> list[DatasetEntry]:
        return list(self._entries)


def _never_scored(*_args: object) -> None:
    raise AssertionError("a first model is not scored against anything")


def register(registry: ModelRegistry, top1: float, val_n: int):
    return registry.register(b"model %f %d" % (top1, val_n), dataset_version=1, classes=CLASSES,
                             metrics={"val": {"n": val_n, "top1": top1}}, params={}, gated=True)


@pytest.mark.parametrize(
    "top1,val_n,train,reason",
    [
        (0.36, 40, {"SKU-A": 10, "SKU-B": 10}, "under the floor"),
        (1.0, 2, {"SKU-A": 10, "SKU-B": 10}, "judged on 2 val photos"),
        (0.95, 40, {"SKU-A": 10, "SKU-B": 2}, "fewer than 4 train photos"),
    ],
    ids=["low-top1", "too-few-val-photos", "thin-class"],
)
def test_a_first_model_under_the_floor_stays_a_candidate(
    store, sessions, top1: float, val_n: int, train: dict[str, int], reason: str
) -> None:
    published: list[ModelPublished] = []
    gate = ModelGate(PromotionGate(), Versions(train), _never_scored)
    registry = ModelRegistry(store, sessions, RecordedSites(published), gate=gate)
    model = register(registry, top1, val_n)
    assert model.stage == "candidate" and published == []
    failed = model.history[-1]
    assert failed["event"] == "gate_failed"
    assert failed["gate"]["baseline"] is None and failed["gate"]["eval_set"]["first_model"] is True
    assert any(reason in r for r in failed["gate"]["reasons"]), failed["gate"]["reasons"]
    with pytest.raises(GateBlocked, match=reason):
        registry.promote(model.version)
    # An operator may still serve it, on the record.
    forced = registry.promote(model.version, force=True, reason="test: the store accepts it")
    assert forced.stage == "production" and [m.version for m in published] == [model.version]


def test_a_first_model_over_the_floor_is_served_and_the_floor_is_configurable(store, sessions) -> None:
    published: list[ModelPublished] = []
    gate = ModelGate(PromotionGate(), Versions({"SKU-A": 4, "SKU-B": 6}), _never_scored)
    registry = ModelRegistry(store, sessions, RecordedSites(published), gate=gate)
    model = register(registry, 0.85, 20)
    assert model.stage == "production" and [m.version for m in published] == [model.version]
    assert model.history[-1]["gate"]["passed"] is True

    strict = ModelGate(PromotionGate(first_min_top1=0.9), Versions({"SKU-A": 4, "SKU-B": 6}), _never_scored)
    assert strict.check_first(model).passed is False
    off = ModelGate(PromotionGate(enabled=False), Versions({}), _never_scored)
    assert off.check_first(model).passed is True
