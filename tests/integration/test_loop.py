"""The whole loop on real parts: two processes, real NATS, MQTT, HTTP, training, ONNX Runtime."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from rich.console import Console

from edge2core.config import DemoSettings
from edge2core.demo import run_demo
from edge2core.edge.faces import FaceRedactor, load_default_detector
from edge2core.edge.prepare import PreparePolicy, prepare
from edge2core.sim import photos as sim_photos


def _sent_photos(settings: DemoSettings) -> list[sim_photos.LabelledPhoto]:
    source = sim_photos.resolve_source(settings.dataset, classes=settings.classes, seed=settings.seed)
    products = sim_photos.choose_products(source, settings.classes, settings.seed)
    return [p for product in products for p in source.photos("train", product, settings.per_class)]


def _run(settings: DemoSettings) -> dict:
    return run_demo(settings, Console(stderr=True, force_terminal=False, width=120))


def test_real_photos_flow_through_the_whole_loop(grocery_dir: Path, tmp_path: Path) -> None:
    settings = DemoSettings(
        dataset=grocery_dir, classes=4, per_class=12, held_out_per_class=4, work_dir=tmp_path
    )
    summary = _run(settings)

    assert summary["ok"], summary
    assert summary["images_acked"] == summary["images_sent"] == 48
    assert summary["images_stored_at_core"] == 48
    assert summary["model_version"] == 1
    assert summary["errors"] == 0
    # Held-out photos were never sent by a kiosk: this is recognition of unseen photos.
    assert summary["held_out_top1"] >= 0.75, summary

    objects = tmp_path / "core" / "objects" / "images"
    stored = {p.stem: p.read_bytes() for p in objects.glob("*/*.jpg")}
    policy, redactor = PreparePolicy(), FaceRedactor(load_default_detector())
    for photo in _sent_photos(settings):
        expected = prepare(photo.data, policy, redactor)  # exactly what the edge does
        assert expected.sha256 in stored, f"{photo.name} never reached the core"
        assert hashlib.sha256(stored[expected.sha256]).hexdigest() == expected.sha256
        assert stored[expected.sha256] == expected.data
    # Unsure shopper photos are stored too, beside the kiosk captures.
    assert len(stored) == 48 + summary["unrecognised"]


def test_demo_runs_offline_on_synthetic_photos(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("E2C_DATASET", raising=False)
    monkeypatch.chdir(tmp_path)  # no ../shared/datasets/grocery from here
    summary = _run(DemoSettings(classes=3, per_class=8, held_out_per_class=3, work_dir=tmp_path / "w"))
    assert summary["ok"], summary
    assert summary["images_stored_at_core"] == 24
    assert summary["held_out_top1"] >= 0.66, summary


# --------------------------------------------------------------------------- a loop that never spins

SYNTHETIC = ("SYN-A", "SYN-B")


def _core_with_a_first_model(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A core whose loop trained its first model (a real run) on two synthetic products."""
    from edge2core.common.products import Product
    from edge2core.config import AutomationPolicy, CoreSettings
    from edge2core.core.service import build_core_services
    from edge2core.sim.synthetic import render_photo
    from tests.support.grocery import store_kiosk
    from tests.support.recorded_sites import RecordedSites

    policy = AutomationPolicy(min_photos_per_class=4, bootstrap_quiet_s=0)
    services = build_core_services(CoreSettings(data_dir=tmp_path, automation=policy),
                                   RecordedSites())
    for i, sku in enumerate(SYNTHETIC):
        services.catalogue.add(Product(sku=sku, name=f"synthetic {i}", price=1.0))
        store_kiosk(services, [render_photo(i, k) for k in range(6)], sku, "train")
        store_kiosk(services, [render_photo(i, k) for k in range(6, 9)], sku, "val")
    first = services.loop.step()  # bootstrap
    assert first is not None and first.stage == "production"
    assert sorted(first.classes) == list(SYNTHETIC)
    return services


async def test_a_trigger_that_cannot_run_backs_off_stops_and_resumes(tmp_path: Path) -> None:
    import asyncio

    from fastapi.testclient import TestClient

    from edge2core.common.products import ProductStatus
    from edge2core.core.api.app import create_core_app
    from tests.support.waiting import until

    services = await asyncio.to_thread(_core_with_a_first_model, tmp_path)
    loop, audit = services.loop, services.audit
    loop.policy.check_every_s, loop.policy.min_step_gap_s = 0.05, 0.0
    loop.retry_first_s, loop.retry_max_s, loop.retry_limit = 0.2, 0.4, 3

    def events(kind: str) -> list:  # type: ignore[type-arg]
        return audit.query(kind, limit=200)

    def tries() -> list:  # type: ignore[type-arg]
        return [e for e in events("loop.triggered") if e.detail["trigger"] == "retired"]

    # Every product of the production model is retired: "retired" fires, but nothing is left
    # to train. It used to fire every few seconds forever, an audit row each time.
    for sku in SYNTHETIC:
        services.catalogue.retire(sku, "withdrawn")
    task = asyncio.create_task(loop.run())
    try:
        await until(lambda: events("loop.stopped"), "the trigger to stop", timeout=20, task=task)
        await asyncio.sleep(1.0)  # 20 looks at the state: it stays stopped
        assert len(tries()) == 3
        assert len(events("loop.failed")) == 2  # backing off: tries 1 and 2
        stopped = events("loop.stopped")
        assert len(stopped) == 1 and stopped[0].detail["tries"] == 3
        assert "a model needs 2" in stopped[0].detail["reason"]

        # `loop decision` says what is held and why.
        dry = TestClient(create_core_app(services)).get("/v1/automation/decision").json()
        assert dry["decision"] is None
        (held,) = dry["held"]
        assert held["trigger"] == "retired" and held["skus"] == list(SYNTHETIC)
        assert held["stopped"] and held["tries"] == 3 and "a model needs 2" in held["reason"]

        # Its inputs change (a product is sold again): it goes again at once, and, still
        # unable to train (one product), stops again after its tries.
        services.catalogue.change(SYNTHETIC[0], status=ProductStatus.ACTIVE)
        await until(lambda: events("loop.resumed"), "the trigger to resume", task=task)
        await until(lambda: len(events("loop.stopped")) == 2, "the second stop", task=task)
        assert len(tries()) == 6 and tries()[0].subject == SYNTHETIC[1]

        # A person looked: `loop retry` lets it go again.
        assert loop.retry() == [f"retired:{SYNTHETIC[1]}"]
        await until(lambda: len(tries()) == 7, "a try after retry", task=task)
        assert events("loop.retried")[0].detail["cleared"] == [f"retired:{SYNTHETIC[1]}"]
    finally:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass


def test_a_run_that_changes_nothing_is_not_repeated(tmp_path: Path) -> None:
    """A trigger decided again right after its run went live (nothing it looks at changed,
    e.g. drift a new model did not cure) backs off and stops instead of retraining forever."""
    from edge2core.config import AutomationPolicy, CoreSettings
    from edge2core.core.loop.automation import Decision
    from edge2core.core.service import build_core_services

    services = build_core_services(CoreSettings(data_dir=tmp_path, automation=AutomationPolicy()))
    loop = services.loop
    loop.retry_first_s, loop.retry_max_s, loop.retry_limit = 0.0, 0.0, 3
    runs: list[Decision] = []
    drifting = Decision("fast", "drift", "SKU-A drifts", ("SKU-A",))
    loop.look = lambda: (loop.inputs(), None if "drift:SKU-A" in loop.holds and  # type: ignore[method-assign]
                         loop.holds["drift:SKU-A"].stopped else drifting)
    loop.execute = lambda decision: runs.append(decision) or object()  # type: ignore[method-assign,assignment]
    assert loop.step() is not None and len(runs) == 1  # the run itself
    for _ in range(5):
        assert loop.step() is None
    assert len(runs) == 1  # never run again while nothing changed
    (held,) = loop.held()
    assert held["stopped"] and held["tries"] == 3 and "changed nothing" in held["reason"]
    assert [e.kind for e in services.audit.query("loop.", limit=10)] == [
        "loop.stopped", "loop.failed", "loop.failed"]
