"""The core killed in the middle of a training run: after the service manager restarts it, the
audit log says the run was interrupted (a start with no end becomes `training.interrupted`),
the run registered nothing, and a new run goes through."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import httpx
import pytest

from edge2core.config import CoreSettings
from edge2core.core.curate.datasets import DatasetQuery
from edge2core.core.service import build_core_services
from edge2core.sim.synthetic import render_photo
from tests.faults.cluster import Cluster
from tests.faults.histories import wait_for
from tests.support.grocery import store_kiosk

pytestmark = pytest.mark.slow

PRODUCTS = ("SYN-A", "SYN-B", "SYN-C")


def training_events(cluster: Cluster) -> list[dict]:
    try:
        answer = httpx.get(f"{cluster.core_url}/v1/audit", params={"kind_prefix": "training.", "limit": 100},
                           timeout=10)
        return answer.json() if answer.status_code == 200 else []
    except httpx.HTTPError:
        return []


def test_core_killed_mid_training_records_the_run_as_interrupted(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, core_env={"E2C_CORE_AUTOMATION": json.dumps({"enabled": False})})
    cluster.core.start()
    try:
        cluster.core.wait_healthy()
        # Labelled photos and a dataset over them, written beside the running core (as its
        # receiver would have), so the run below has something to learn.
        services = build_core_services(CoreSettings(data_dir=cluster.core_dir))
        for k, sku in enumerate(PRODUCTS):
            photos = [render_photo(k, i) for i in range(10)]
            store_kiosk(services, photos[:7], sku, "train")
            store_kiosk(services, photos[7:], sku, "val")
        dataset = services.datasets.build(DatasetQuery(skus=list(PRODUCTS)))

        # A full-path run (minutes): the core is killed as soon as it has started.
        def train() -> None:
            try:
                httpx.post(f"{cluster.core_url}/v1/training-runs", timeout=600,
                           json={"dataset_version": dataset.version, "path": "full"})
            except httpx.HTTPError:
                pass  # the core died under it: what this test is about

        caller = threading.Thread(target=train, daemon=True)
        caller.start()
        assert wait_for(lambda: any(e["kind"] == "training.started" for e in training_events(cluster)), 60)
        (started,) = [e for e in training_events(cluster) if e["kind"] == "training.started"]
        cluster.core.kill()
        caller.join(30)

        cluster.core.start()
        cluster.core.wait_healthy()
        kinds = {e["kind"]: e for e in training_events(cluster) if e["subject"] == started["subject"]}
        assert set(kinds) == {"training.started", "training.interrupted"}, kinds
        assert httpx.get(f"{cluster.core_url}/v1/models", timeout=10).json() == []  # nothing half-made

        # And training goes on: a fast run now finishes, with its own start and end.
        done = httpx.post(f"{cluster.core_url}/v1/training-runs", timeout=600,
                          json={"dataset_version": dataset.version, "path": "fast"})
        assert done.status_code == 201, done.text
        finished = [e for e in training_events(cluster) if e["kind"] == "training.finished"]
        assert len(finished) == 1 and finished[0]["subject"] != started["subject"]
        assert finished[0]["detail"]["model"] == done.json()["model"]["version"]
        # A second restart finds nothing new to mark.
        cluster.core.stop()
        cluster.core.start()
        cluster.core.wait_healthy()
        assert [e["kind"] for e in training_events(cluster)].count("training.interrupted") == 1
    finally:
        cluster.core.stop()
