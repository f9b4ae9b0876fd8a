"""The learning loop: triggers (pure), canary verdicts, and real runs on grocery photos: first
model, a new product learned and activated, a rollout stopped by the gate, a canary stopped by
a site's rollback, a retired product taken out of the model, and the audit trail."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from PIL import Image

from edge2core.common.events import ModelPublished, SiteModelReport, utcnow
from edge2core.common.products import Product, ProductStatus
from edge2core.config import AutomationPolicy, CoreSettings
from edge2core.core.db.schema import ImageRow
from edge2core.core.deliver.site_reports import SiteReports, judge
from edge2core.core.loop.automation import Decision, LoopInputs, ProductData, decide
from tests.support.grocery import DATASET, needs_grocery, photos_of, sku, store_kiosk  # noqa: F401
from tests.support.recorded_sites import RecordedSites

KNOWN = (4, 30, 45)  # products of the first model
NEW = 63  # a product that arrives later
PER_CLASS = 10

POLICY = AutomationPolicy(new_product_min_photos=30, new_product_min_devices=2)


def inputs(**kw: object) -> LoopInputs:
    base: dict[str, object] = dict(pending={}, in_model=frozenset({"A", "B"}), retired=frozenset(),
                                   drifting={}, new_photos=0, since_full_s=0.0, trainable=2)
    return LoopInputs(**{**base, **kw})  # type: ignore[arg-type]


def test_a_new_product_needs_enough_photos_from_enough_devices() -> None:
    assert decide(inputs(pending={"N": ProductData(29, 3)}), POLICY) is None
    assert decide(inputs(pending={"N": ProductData(300, 1)}), POLICY) is None
    found = decide(inputs(pending={"N": ProductData(30, 2), "M": ProductData(3, 1)}), POLICY)
    assert found == Decision("fast", "new_product", found.reason, ("N",))
    assert "30 photos from 2 devices" in found.reason
    assert decide(inputs(pending={"N": ProductData(30, 2)}, blocked=frozenset({"N"})), POLICY) is None


def test_triggers_in_order_bootstrap_new_retired_drift_scheduled() -> None:
    first = decide(inputs(in_model=frozenset(), trainable=3), POLICY)
    assert first is not None and first.trigger == "bootstrap"
    arriving = inputs(in_model=frozenset(), trainable=3, since_last_photo_s=1.0)
    assert decide(arriving, POLICY) is None  # photos still arriving: wait for a pause
    assert decide(inputs(in_model=frozenset(), trainable=1), POLICY) is None
    retired = decide(inputs(retired=frozenset({"B", "Z"})), POLICY)
    assert retired is not None and (retired.trigger, retired.skus) == ("retired", ("B",))
    drift = decide(inputs(drifting={"A": 0.2}), POLICY)
    assert drift is not None and drift.trigger == "drift" and "0.20" in drift.reason
    due = dict(since_full_s=POLICY.full_retrain_every_s, hour_utc=2)
    assert decide(inputs(**due, new_photos=POLICY.full_retrain_min_new_photos - 1), POLICY) is None
    scheduled = decide(inputs(**due, new_photos=POLICY.full_retrain_min_new_photos), POLICY)
    assert scheduled is not None and (scheduled.path, scheduled.trigger) == ("full", "scheduled")
    daytime = dict(due, hour_utc=14, new_photos=10 * POLICY.full_retrain_min_new_photos)
    assert decide(inputs(**daytime), POLICY) is None  # only in the night window
    overnight = POLICY.model_copy(update={"full_retrain_hours_utc": (22, 3)})
    assert decide(inputs(**dict(daytime, hour_utc=23)), overnight).trigger == "scheduled"
    assert decide(inputs(**daytime), overnight) is None
    both = decide(inputs(pending={"N": ProductData(40, 2)}, retired=frozenset({"B"})), POLICY)
    assert both is not None and both.trigger == "new_product"


def report(site: str, version: int, state: str = "live", reason: str = "") -> SiteModelReport:
    return SiteModelReport(site=site, version=version, sha256="0" * 64, state=state, reason=reason)


def test_a_canary_passes_when_every_site_is_live_and_fails_on_any_rollback() -> None:
    reports = {"s1": report("s1", 2), "s2": report("s2", 1)}
    assert judge(reports, ["s1", "s2"], 2) is None  # s2 has not moved yet
    reports["s2"] = report("s2", 2)
    assert judge(reports, ["s1", "s2"], 2).ok
    reports["s2"] = report("s2", 2, "rolled_back", "confidence fell")
    verdict = judge(reports, ["s1", "s2"], 2)
    assert not verdict.ok and "s2 rolled back model 2: confidence fell" in verdict.reason


def test_await_version_waits_for_reports_and_times_out() -> None:
    board = SiteReports()
    threading.Timer(0.1, board.record, [report("s1", 3)]).start()
    assert board.await_version(["s1"], 3, soak_s=0.1, timeout_s=5).ok
    late = board.await_version(["s1", "s9"], 3, soak_s=0, timeout_s=0.2)
    assert not late.ok and "s9" in late.reason
    fell = SiteReports()
    fell.record(report("s1", 3))
    threading.Timer(0.1, fell.record, [report("s1", 3, "rolled_back")]).start()
    assert not fell.await_version(["s1"], 3, soak_s=2, timeout_s=5).ok


# --------------------------------------------------------------------------- real runs

def reencoded(photos: Sequence[bytes]) -> list[bytes]:
    """The same pictures as other bytes (mislabelled captures of another product)."""
    out = []
    for data in photos:
        buffer = io.BytesIO()
        Image.open(io.BytesIO(data)).save(buffer, format="JPEG", quality=71)
        out.append(buffer.getvalue())
    return out


class CanarySites(RecordedSites):
    """Sites whose reports the test decides: each canary site answers `state`."""

    def __init__(self, reports: SiteReports, state: str) -> None:
        super().__init__()
        self.reports, self.state = reports, state

    def canary(self, model: ModelPublished, sites: Sequence[str]) -> None:
        super().canary(model, sites)
        for site in sites:
            threading.Timer(0.05, self.reports.record, [SiteModelReport(
                site=site, version=model.version, sha256=model.sha256, state=self.state,
                reason="" if self.state == "live" else "live watch: confidence fell off")]).start()


@pytest.fixture(scope="module")
def core(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from edge2core.core.service import build_core_services

    policy = AutomationPolicy(new_product_min_photos=2 * PER_CLASS, new_product_min_devices=2,
                              min_photos_per_class=4, bootstrap_quiet_s=0)
    settings = CoreSettings(data_dir=tmp_path_factory.mktemp("core"), automation=policy)
    sites = RecordedSites()
    services = build_core_services(settings, sites)
    services.sites = sites
    for i in KNOWN:
        services.catalogue.add(Product(sku=sku(i), name=f"product {i}", price=1.0))
        store_kiosk(services, photos_of(i, "train", PER_CLASS), sku(i), "train")
        store_kiosk(services, photos_of(i, "val", 4), sku(i), "val")
    services.catalogue.add(Product(sku=sku(NEW), name="new product", price=2.5,
                                   status=ProductStatus.PENDING_DATA))
    return services


@needs_grocery
def test_the_loop_learns_a_new_product_and_stops_bad_rollouts(core) -> None:  # type: ignore[no-untyped-def]
    loop = core.loop
    first = loop.step()  # no model yet: the first one
    assert first is not None and first.stage == "production"
    assert sorted(first.classes) == sorted(sku(i) for i in KNOWN)
    assert loop.step() is None  # nothing new

    # The new product's captures trickle in: below the threshold nothing happens.
    store_kiosk(core, photos_of(NEW, "train", PER_CLASS), sku(NEW), "train")
    assert loop.step() is None
    assert core.catalogue.get(sku(NEW)).status == ProductStatus.PENDING_DATA

    # A canary site rolls the new model back: the rollout stops, the fleet keeps the old one.
    loop.policy.canary_sites = ["store-1"]
    core.registry.sites = CanarySites(loop.reports, "rolled_back")
    store_kiosk(core, photos_of(NEW, "val", 4) + photos_of(NEW, "train", 2 * PER_CLASS)[PER_CLASS:],
                sku(NEW), "train")
    assert loop.step() is None
    assert core.registry.production().version == first.version
    stopped = core.audit.query("rollout.stopped", limit=1)[0]
    assert stopped.detail["stage"] == "canary" and "store-1 rolled back" in stopped.detail["reasons"][0]
    assert core.registry.get(int(stopped.subject.split(":")[1])).stage == "retired"
    assert sku(NEW) in loop.blocked and loop.step() is None  # not retried on its own

    # After a person looked: the canary goes well, then the fleet.
    loop.blocked.clear()
    core.registry.sites = CanarySites(loop.reports, "live")
    loop.policy.canary_soak_s = 0.2
    learned = loop.step()
    assert learned is not None and learned.stage == "production" and sku(NEW) in learned.classes
    assert core.registry.sites.version_at("store-1") == learned.version
    assert core.catalogue.get(sku(NEW)).status == ProductStatus.ACTIVE
    why = loop.explain("store-2")
    kinds = [e["kind"] for e in why["audit"]]
    assert why["model"] == learned.version and why["target"] == "fleet"
    assert kinds == ["model.trained", "model.canary", "model.production"]
    assert "new_product" in why["audit"][0]["detail"]["trigger"]
    loop.policy.canary_sites = []

    # Mislabelled captures of a look-alike: the new model confuses two products; the gate
    # stops it and says why.
    twin = 9999
    core.catalogue.add(Product(sku=sku(twin), name="mislabelled", price=1.0,
                               status=ProductStatus.PENDING_DATA))
    store_kiosk(core, reencoded(photos_of(KNOWN[0], "train", PER_CLASS) + photos_of(KNOWN[0], "val", 4)
                                + photos_of(KNOWN[0], "train", 2 * PER_CLASS)[PER_CLASS:]),
                sku(twin), "train")
    assert loop.step() is None
    assert core.registry.production().version == learned.version
    gate = core.audit.query("rollout.stopped", limit=1)[0]
    assert gate.detail["stage"] == "gate" and any("recall" in r or "top-1" in r for r in gate.detail["reasons"])
    assert core.catalogue.get(sku(twin)).status == ProductStatus.PENDING_DATA
    core.catalogue.retire(sku(twin), "mislabelled captures")

    # Retirement: the next model leaves the product out.
    core.catalogue.retire(sku(KNOWN[2]), "withdrawn by regulation")
    without = loop.step()
    assert without is not None and sku(KNOWN[2]) not in without.classes
    assert sku(NEW) in without.classes
    triggered = core.audit.query("loop.triggered", limit=1)[0]
    assert triggered.detail["trigger"] == "retired"


def test_drift_scores_only_captures_after_the_model(tmp_path: Path) -> None:
    import numpy as np

    from edge2core.core.db import storage
    from edge2core.core.deliver.registry import ModelInfo
    from edge2core.core.loop.drift import DriftWatch, own_class_confidence

    assert own_class_confidence(np.array([[0.9, 0.1], [0.2, 0.8]]), [0, 0]) == pytest.approx(0.55)
    sessions = storage.database(CoreSettings(data_dir=tmp_path))
    model = ModelInfo(version=1, dataset_version=1, artifact_key="k", sha256="0" * 64, size=1,
                      classes=["A", "B"], metrics={}, params={}, stage="production",
                      created_at=utcnow())
    time.sleep(0.01)
    with sessions.begin() as session:
        for i in range(12):
            session.add(ImageRow(
                sha256=f"{i:064x}", key=f"k{i}", size=1, width=1, height=1, site="s",
                device="d", source="kiosk", sku="A" if i < 10 else "B", received_at=utcnow(),
                stored_at=utcnow(), top_guesses=[], split="train", label_origin="scan"))

    def score(_m: ModelInfo, entries: list) -> np.ndarray:  # type: ignore[type-arg]
        return np.tile([0.2, 0.8], (len(entries), 1))  # every photo looks like B now

    watch = DriftWatch(sessions, score, window=5, min_photos=3)
    assert watch(model, ["A", "B"]) == {"A": pytest.approx(0.2)}  # B has only 2 recent photos
    assert len(watch.recent(model, ["A"])["A"]) == 5  # the newest `window` of A
    crowded = DriftWatch(sessions, score, window=2, min_photos=2)
    assert set(crowded.recent(model, ["A", "B"])) == {"A", "B"}  # A's many photos crowd out none


@needs_grocery
def test_the_loop_over_http(core) -> None:  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    from edge2core.core.api.app import create_core_app

    client = TestClient(create_core_app(core))
    core.loop.blocked.add("SKU-TEST")
    dry = client.get("/v1/automation/decision").json()
    assert set(dry["inputs"]) >= {"pending", "in_model", "retired", "blocked"}
    assert "SKU-TEST" in dry["inputs"]["blocked"]
    assert "SKU-TEST" in client.post("/v1/automation/retry").json()["cleared"]
    assert core.loop.blocked == set()
    core.loop.reports.record(report("store-7", core.registry.production().version))
    assert client.get("/v1/sites").json()["sites"]["store-7"]["state"] == "live"
    why = client.get("/v1/sites/store-7/why").json()
    assert why["model"] == core.registry.production().version
    assert why["reported"]["site"] == "store-7" and why["audit"][0]["kind"] == "model.trained"


def test_a_site_speaks_only_for_itself() -> None:
    from edge2core.core.deliver.site_reports import report_trusted

    tokens = {"s1": "t1", "s2": "t2"}
    mine = report("s1", 3).signed("t1")
    assert report_trusted(mine, "e2c.sites.s1.model", tokens)
    assert not report_trusted(mine, "e2c.sites.s2.model", tokens)  # on another's subject
    assert not report_trusted(report("s2", 3).signed("t1"), "e2c.sites.s2.model", tokens)
    assert not report_trusted(report("s1", 3), "e2c.sites.s1.model", tokens)  # unsigned
    forged = mine.model_copy(update={"state": "rolled_back"})
    assert not report_trusted(forged, "e2c.sites.s1.model", tokens)
    assert report_trusted(report("s9", 3), "e2c.sites.s9.model", {})  # no tokens: development


class BrokenSites(RecordedSites):
    def canary(self, model: ModelPublished, sites: Sequence[str]) -> None:
        raise TimeoutError("the broker did not confirm the write")


@needs_grocery
def test_a_rollout_that_cannot_publish_stops_and_says_why(core) -> None:  # type: ignore[no-untyped-def]
    loop = core.loop
    production = core.registry.production().version
    core.catalogue.add(Product(sku=sku(2), name="another", price=1.0,
                               status=ProductStatus.PENDING_DATA))
    store_kiosk(core, photos_of(2, "train", 2 * PER_CLASS), sku(2), "train")
    loop.policy.canary_sites = ["store-1"]
    core.registry.sites, gate, core.registry.gate = BrokenSites(), core.registry.gate, None
    try:
        assert loop.step() is None
    finally:
        loop.policy.canary_sites = []
        core.registry.sites, core.registry.gate = RecordedSites(), gate
    stopped = core.audit.query("rollout.stopped", limit=1)[0]
    assert stopped.detail["stage"] == "publish" and "did not confirm" in stopped.detail["reasons"][0]
    assert core.registry.get(int(stopped.subject.split(":")[1])).stage == "candidate"
    assert core.registry.production().version == production and sku(2) in loop.blocked
