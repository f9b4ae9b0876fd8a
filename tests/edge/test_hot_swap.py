"""Hot swap: a new model goes live under a steady request load with no failed request, and a
model that fails its warm-up is refused while the old one keeps serving."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from edge2core.edge.api import create_edge_app
from edge2core.edge.catalogue_replica import CatalogueReplica
from edge2core.edge.gateway import Gateway
from edge2core.edge.inference import ModelLoadError, Recognizer
from edge2core.edge.intake import Intake
from edge2core.edge.prepare import PreparePolicy
from edge2core.edge.spool import Spool
from tests.support.helpers_model import TrainedModel, sku, trained_model  # noqa: F401 (fixture)


def _recognizer(tmp_path: Path, model: TrainedModel) -> Recognizer:
    catalogue = CatalogueReplica(tmp_path / "catalogue.json")
    catalogue.replace(list(model.products))
    recognizer = Recognizer(catalogue)
    recognizer.load(model.path, version=1, sha256=model.sha256)
    return recognizer


def test_swap_under_load_fails_no_request(tmp_path: Path, trained_model: TrainedModel) -> None:  # noqa: F811
    recognizer = _recognizer(tmp_path, trained_model)
    spool = Spool(tmp_path / "spool", 10**8)
    gateway = Gateway(Intake("s1", PreparePolicy(), spool), recognizer)
    client = TestClient(create_edge_app(gateway, "s1", dict, 8_000_000))
    photo = trained_model.held_out(1)[0]
    v2 = tmp_path / "v2.onnx"
    shutil.copy(trained_model.path, v2)

    stop = threading.Event()
    results: list[tuple[int, int | None, str | None]] = []

    def load() -> None:
        while not stop.is_set():
            response = client.post("/v1/recognize", content=photo)
            body = response.json()
            results.append((response.status_code, body.get("model_version"), body.get("sku")))

    workers = [threading.Thread(target=load) for _ in range(4)]
    for worker in workers:
        worker.start()
    while len(results) < 20:
        stop.wait(0.01)
    recognizer.load(v2, version=2, sha256="0" * 64)
    seen = len(results)
    while len(results) < seen + 20:
        stop.wait(0.01)
    stop.set()
    for worker in workers:
        worker.join()
    gateway.close()
    spool.close()

    assert all(status == 200 for status, _v, _s in results), {r[0] for r in results}
    assert all(answer == sku(1) for _st, _v, answer in results)
    versions = [version for _st, version, _s in results]
    assert versions[0] == 1 and versions[-1] == 2
    # Once version 2 answered, nothing is answered by version 1 any more... bar the requests
    # that were already in flight at the swap (at most one per worker).
    first_v2 = versions.index(2)
    assert versions[first_v2:].count(1) <= len(workers)


def test_a_broken_model_is_refused_and_the_old_one_keeps_serving(
    tmp_path: Path, trained_model: TrainedModel  # noqa: F811
) -> None:
    recognizer = _recognizer(tmp_path, trained_model)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(trained_model.path.read_bytes()[: 5000])
    with pytest.raises(ModelLoadError, match="model 2 failed to load"):
        recognizer.load(broken, version=2, sha256="1" * 64)
    answer = recognizer.recognize(trained_model.held_out(0)[0])
    assert answer.model_version == 1 and answer.sku == sku(0)


def test_the_models_calibrated_threshold_applies_unless_the_site_overrides(
    tmp_path: Path, trained_model: TrainedModel  # noqa: F811
) -> None:
    catalogue = CatalogueReplica(tmp_path / "catalogue.json")
    catalogue.replace(list(trained_model.products))
    photo = trained_model.held_out(2)[0]

    strict_model = Recognizer(catalogue)
    strict_model.load(trained_model.path, version=1, sha256=trained_model.sha256, threshold=0.999999)
    assert strict_model.recognize(photo).recognised is False

    lenient_site = Recognizer(catalogue, unrecognised_below=0.0)
    lenient_site.load(trained_model.path, version=1, sha256=trained_model.sha256, threshold=0.999999)
    assert lenient_site.recognize(photo).recognised is True

    default = Recognizer(catalogue)
    default.load(trained_model.path, version=1, sha256=trained_model.sha256)
    assert default.threshold(default.model) == 0.5


def test_a_model_that_fails_the_sites_golden_set_is_refused(
    tmp_path: Path, trained_model: TrainedModel  # noqa: F811
) -> None:
    from edge2core.edge.golden import GoldenSet

    golden = GoldenSet(tmp_path / "golden", per_sku=2)
    for product in range(3):
        for i, photo in enumerate(trained_model.held_out(product)):
            golden.offer(sku(product), f"{product}{i}".ljust(64, "0"), photo)
    assert len(golden.photos()) == 6  # two per product, the rest declined

    catalogue = CatalogueReplica(tmp_path / "catalogue.json")
    catalogue.replace(list(trained_model.products))
    good = Recognizer(catalogue, golden=golden)
    good.load(trained_model.path, version=1, sha256=trained_model.sha256)  # passes

    # The same network with its class names shuffled answers every golden photo wrongly.
    import json

    import onnx

    proto = onnx.load(str(trained_model.path))
    for prop in proto.metadata_props:
        if prop.key == "classes":
            names = json.loads(prop.value)
            prop.value = json.dumps(names[1:] + names[:1])
    scrambled = tmp_path / "scrambled.onnx"
    onnx.save(proto, str(scrambled))
    with pytest.raises(ModelLoadError, match="smoke test failed"):
        good.load(scrambled, version=2, sha256="2" * 64)
    assert good.model is not None and good.model.version == 1  # the old one keeps serving


def test_live_watch_flags_a_confidence_fall_and_failing_runs() -> None:
    from edge2core.edge.live_watch import LiveWatch, WatchPolicy

    watch = LiveWatch(WatchPolicy(window=10, max_confidence_drop=0.2, max_error_rate=0.3))
    watch.swapped(1)
    for _ in range(10):
        assert not watch.observe(1, 0.9)
    watch.swapped(2)  # version 1's mean (0.9) is the baseline now
    assert not any(watch.observe(2, 0.8) for _ in range(10))  # a small drop is fine
    watch.swapped(3)
    verdicts = [watch.observe(3, 0.5) for _ in range(10)]
    assert verdicts[-1] and not any(verdicts[:-1])  # judged only once the window is full
    watch.swapped(4)
    assert [watch.observe(4, None if i % 2 else 0.9) for i in range(10)][-1]  # half failing
    assert not watch.observe(99, 0.0)  # answers of another version do not count


def _unsure_copy(model_path: Path, dest: Path) -> Path:
    """The same model with its output flattened to uniform: a version that has lost its way."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    proto = onnx.load(str(model_path))
    out = proto.graph.output[0]
    classes = out.type.tensor_type.shape.dim[1].dim_value
    for node in proto.graph.node:
        node.output[:] = ["raw_probs" if o == out.name else o for o in node.output]
    proto.graph.initializer.extend([
        numpy_helper.from_array(np.zeros(1, np.float32), "zero"),
        numpy_helper.from_array(np.full(1, 1 / classes, np.float32), "uniform"),
    ])
    proto.graph.node.extend([
        helper.make_node("Mul", ["raw_probs", "zero"], ["flat"]),
        helper.make_node("Add", ["flat", "uniform"], [out.name]),
    ])
    onnx.save(proto, str(dest))
    return dest


def test_a_live_model_whose_confidence_falls_off_is_rolled_back(
    tmp_path: Path, trained_model: TrainedModel  # noqa: F811
) -> None:
    from edge2core.edge.live_watch import LiveWatch, WatchPolicy

    catalogue = CatalogueReplica(tmp_path / "catalogue.json")
    catalogue.replace(list(trained_model.products))
    recognizer = Recognizer(catalogue, watch=LiveWatch(WatchPolicy(window=8)))
    recognizer.load(trained_model.path, version=1, sha256=trained_model.sha256)
    photos = [p for product in range(3) for p in trained_model.held_out(product)]
    for photo in photos[:8]:
        assert recognizer.recognize(photo).model_version == 1
    recognizer.load(_unsure_copy(trained_model.path, tmp_path / "v2.onnx"), version=2,
                    sha256="2" * 64)

    versions = [recognizer.recognize(photo).model_version for photo in photos[:8]]
    assert versions == [2] * 8  # it served until the window was full...
    assert recognizer.model is not None and recognizer.model.version == 1  # ...then rolled back
    assert "2" * 64 in recognizer.rolled_back
    assert recognizer.recognize(photos[0]).model_version == 1


async def test_after_a_live_rollback_the_agent_restarts_on_the_survivor_and_reports_it(
    tmp_path: Path, trained_model: TrainedModel  # noqa: F811
) -> None:
    """The restart pointer must not name a rolled-back version, and the core must hear of it."""
    import shutil

    from edge2core.common.events import ModelPublished, SiteModelReport
    from edge2core.edge.core_client import CoreClient
    from edge2core.edge.live_watch import LiveWatch, WatchPolicy
    from edge2core.edge.model_agent import ModelAgent

    models = tmp_path / "models"
    models.mkdir()
    catalogue = CatalogueReplica(tmp_path / "catalogue.json")
    catalogue.replace(list(trained_model.products))
    recognizer = Recognizer(catalogue, watch=LiveWatch(WatchPolicy(window=8)))
    reports: list[SiteModelReport] = []

    async def report(event: SiteModelReport) -> None:
        reports.append(event)

    client = CoreClient("http://127.0.0.1:9")  # never reached: everything is local
    agent = ModelAgent(client, recognizer, catalogue, models, site="store-1", reporter=report)
    v1 = ModelPublished(version=1, sha256=trained_model.sha256, size=len(trained_model.data),
                        classes=list(trained_model.classes), url_path="/v1/models/1/artifact")
    shutil.copy(trained_model.path, models / f"1-{v1.sha256[:16]}.onnx")
    v2_path = _unsure_copy(trained_model.path, tmp_path / "v2.onnx")
    v2 = v1.model_copy(update={"version": 2, "sha256": "2" * 64, "url_path": "/v1/models/2/artifact"})
    shutil.copy(v2_path, models / f"2-{v2.sha256[:16]}.onnx")
    try:
        photos = [p for product in range(3) for p in trained_model.held_out(product)]
        assert await agent.converge(v1)
        for photo in photos[:8]:  # v1's confidence is the yardstick
            recognizer.recognize(photo)
        assert await agent.converge(v2)
        assert [(r.version, r.state) for r in reports] == [(1, "live"), (2, "live")]
        for photo in photos[:8]:
            recognizer.recognize(photo)
        assert recognizer.model.version == 1  # the live watch rolled v2 back

        await agent._follow_rollbacks()
        pointer = ModelPublished.model_validate_json((models / "current.json").read_text())
        assert (pointer.version, pointer.sha256) == (1, v1.sha256)
        assert (reports[-1].version, reports[-1].state) == (2, "rolled_back")
        assert await agent.converge(v2) is False  # never loaded again

        await agent._follow_rollbacks()
        assert len(reports) == 3  # reported once

        # A restarted site serves v1 and still will not take v2, though the core may say so.
        fresh = Recognizer(catalogue)
        restarted = ModelAgent(client, fresh, catalogue, models)
        await restarted.load_last_good()
        assert fresh.model is not None and fresh.model.version == 1
        assert await restarted.converge(v2) is False and fresh.model.version == 1
    finally:
        await client.aclose()
