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

pytestmark = pytest.mark.integration


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
