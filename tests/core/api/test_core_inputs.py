"""Bad input at the core's model, site and loop surfaces: a clear error, nothing changed."""

from __future__ import annotations

import asyncio
from pathlib import Path

import nats
import pytest
from fastapi.testclient import TestClient

from edge2core.common.events import SiteModelReport, site_report_subject
from edge2core.common.nats_server import EmbeddedNats, NatsServerConfig
from edge2core.config import CoreSettings
from edge2core.core.api.app import create_core_app
from edge2core.core.curate.datasets import DatasetQuery
from edge2core.core.deliver.site_reports import SiteReports
from edge2core.core.service import _on_site_report, build_core_services
from tests.support.grocery import store_kiosk
from tests.support.jpegs import jpeg_bytes


@pytest.fixture
def core(tmp_path: Path):  # type: ignore[no-untyped-def]
    services = build_core_services(CoreSettings(data_dir=tmp_path))
    return services, TestClient(create_core_app(services))


def test_training_runs_refuse_bad_requests_with_a_reason(core) -> None:  # type: ignore[no-untyped-def]
    _services, client = core
    unknown_path = client.post("/v1/training-runs", json={"dataset_version": 1, "path": "medium"})
    assert unknown_path.status_code == 422
    missing = client.post("/v1/training-runs", json={"dataset_version": 999})
    assert missing.status_code == 404 and "dataset version 999" in missing.json()["detail"]
    assert client.post("/v1/training-runs", json={"seed": 1}).status_code == 422
    refusals = {"full_head must be one of": [{"full_head": "best"}, {"full_head": 3}],
                "unknown": [{"epochz": 3}, {"schedule": "step"}],
                "head_lr_mult": [{"head_lr_mult": 0}, {"head_lr_mult": -1.5}],
                ">= 32 px": [{"start_size": 8, "ramp_epochs": 2}, {"ramp_epochs": -1}],
                "not supported": [{"start_size": "big", "ramp_epochs": 2}]}
    for reason, cases in refusals.items():  # all before any run starts (the dataset does not exist)
        for params in cases:
            bad = client.post("/v1/training-runs", json={"dataset_version": 1, "path": "full", "params": params})
            assert bad.status_code == 422 and reason in bad.json()["detail"], (params, bad.json())
    store_kiosk(_services, [jpeg_bytes(color=(i, 0, 0)) for i in range(4)], "SKU-A", "train")
    one_class = _services.datasets.build(DatasetQuery()).version
    refused = client.post("/v1/training-runs", json={"dataset_version": one_class})
    assert refused.status_code == 422 and "need >= 2" in refused.json()["detail"]
    assert _services.registry.list() == []  # nothing registered


def test_model_and_site_lookups_say_what_is_missing(core) -> None:  # type: ignore[no-untyped-def]
    services, client = core
    nothing = client.get("/v1/sites/store-1/model")
    assert nothing.status_code == 404 and "no model is in production" in nothing.json()["detail"]
    model = services.registry.register(b"onnx bytes", dataset_version=1, classes=["A", "B"],
                                       metrics={}, params={})
    assert client.get("/v1/sites/store-1/model").json()["version"] == model.version
    bogus = client.get(f"/v1/models/{model.version}/artifact", params={"kind": "bogus"})
    assert bogus.status_code == 404 and "'bogus'" in bogus.json()["detail"]
    assert client.get("/v1/models/99/artifact").status_code == 404
    assert client.get(f"/v1/models/{model.version}/artifact",
                      headers={"Range": "bytes=999999-"}).status_code == 416


def test_a_second_loop_step_while_one_runs_is_refused(core) -> None:  # type: ignore[no-untyped-def]
    services, client = core
    with services.loop.running:  # a step under way
        busy = client.post("/v1/automation/step")
    assert busy.status_code == 409 and "already running" in busy.json()["detail"]
    assert client.post("/v1/automation/step").json() == {"model": None}  # nothing to learn yet
    assert client.get("/v1/sites/nowhere/why").status_code == 404


async def test_site_reports_that_are_malformed_or_not_from_their_site_are_ignored(
    tmp_path: Path,
) -> None:
    server = EmbeddedNats(NatsServerConfig.with_free_ports(
        "core", tmp_path / "js", mqtt=False, websocket=False), work_dir=tmp_path / "nats").start()
    reports = SiteReports()
    client = await nats.connect(server.client_url)
    try:
        await client.subscribe("e2c.sites.*.model",
                               cb=_on_site_report(reports, {"s1": "t1", "s2": "t2"}))
        good = SiteModelReport(site="s1", version=2, sha256="0" * 64, state="live")
        await client.publish(site_report_subject("s1"), b"{not json")
        await client.publish(site_report_subject("s1"), good.model_dump_json().encode())  # unsigned
        await client.publish(site_report_subject("s2"), good.signed("t1").model_dump_json().encode())
        await client.publish(site_report_subject("s1"), good.signed("t1").model_dump_json().encode())
        await client.flush()
        for _ in range(100):  # the callback runs in order: the last good one ends the wait
            if reports.all():
                break
            await asyncio.sleep(0.02)
        assert reports.all() == {"s1": good.signed("t1").model_dump(mode="json")}
    finally:
        await client.close()
        server.stop()

