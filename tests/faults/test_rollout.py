"""The core killed in the middle of a rollout: a canary started, and a canary taken back, each
followed at once by kill -9 of the core. After the service manager restarts it, the site runs
what the registry says it should (the canary's version, then the production one again), and
that version exists; photos under load meanwhile are kept as always."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from edge2core.config import CoreSettings
from edge2core.core.service import build_core_services
from edge2core.edge.faces import FaceRedactor
from tests.faults.cluster import SITE, Cluster
from tests.faults.histories import Fault, run, wait_for
from tests.support.helpers_model import TrainedModel, trained_model, tweaked_copy  # noqa: F401

pytestmark = pytest.mark.slow


def edge_model(cluster: Cluster) -> int | None:
    try:
        return httpx.get(f"{cluster.edge_ports.url}/v1/status", timeout=5).json()["model_version"]
    except (httpx.HTTPError, ValueError, KeyError):
        return None


def promote(cluster: Cluster, version: int, stage: str, sites: list[str] | None = None) -> None:
    answer = httpx.post(f"{cluster.core_url}/v1/models/{version}/promote", timeout=60, json={
        "stage": stage, "force": True, "reason": "fault suite", "sites": sites or []})
    assert answer.status_code == 200, answer.text


def killed_after(cluster: Cluster, name: str, step: object) -> Fault:
    def inject() -> None:
        step()  # type: ignore[operator]
        cluster.core.kill()  # at once: the KV update may or may not have left

    def heal() -> None:
        cluster.core.start()
        cluster.core.wait_healthy()
    return Fault(name, inject, heal, fault_s=2.0)


def test_core_killed_mid_canary_and_mid_take_back(
    tmp_path: Path, redactor: FaceRedactor, trained_model: TrainedModel  # noqa: F811
) -> None:
    cluster = Cluster(tmp_path).start()
    try:
        # Photos, a dataset over them, two models said to come from it (registered beside
        # the running core, on its database and store, as a training run would).
        run(cluster, Fault("baseline", lambda: None, lambda: None, fault_s=0.0), redactor)
        dataset = httpx.post(f"{cluster.core_url}/v1/datasets", json={}, timeout=60).json()
        registry = build_core_services(CoreSettings(data_dir=cluster.core_dir)).registry
        v1, v2 = (registry.register(data, dataset_version=dataset["version"], metrics={},
                                    classes=list(trained_model.classes), params={}).version
                  for data in (trained_model.data, tweaked_copy(trained_model.data, "v2")))
        promote(cluster, v1, "production")
        assert wait_for(lambda: edge_model(cluster) == v1, 120) is not None, "v1 never arrived"

        canary = run(cluster, killed_after(cluster, "kill -9 core mid-canary",
                                           lambda: promote(cluster, v2, "canary", [SITE])), redactor)
        assert canary.lost == 0 and canary.duplicated == 0 and canary.settle_s is not None, canary
        assert wait_for(lambda: edge_model(cluster) == v2, 120) is not None, edge_model(cluster)

        back = run(cluster, killed_after(cluster, "kill -9 core mid-take-back",
                                         lambda: promote(cluster, v2, "candidate")), redactor)
        assert back.lost == 0 and back.duplicated == 0 and back.settle_s is not None, back
        assert wait_for(lambda: edge_model(cluster) == v1, 120) is not None, edge_model(cluster)
        versions = {m["version"] for m in httpx.get(f"{cluster.core_url}/v1/models").json()}
        assert edge_model(cluster) in versions  # the site runs a version that exists
        print(canary.line())
        print(back.line())
    finally:
        cluster.close()
