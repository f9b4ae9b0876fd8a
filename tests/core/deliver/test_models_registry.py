"""Training runs, the registry, the promotion gate, signatures, reruns, the models API and
`edge2core eval`, on a small set of real grocery photos in a real core (SQLite + local
object store).  Skipped without the grocery dataset."""

from __future__ import annotations

import csv
import hashlib
import json
import stat

import numpy as np
import pytest

from tests.support.grocery import DATASET, sku, store_kiosk
from tests.support.recorded_sites import RecordedSites

FINE_IDS = (4, 30, 45, 63)  # four products from different coarse classes
PER_CLASS = 12

pytestmark = pytest.mark.skipif(
    not (DATASET / "train.txt").is_file(), reason=f"grocery dataset not found at {DATASET}"
)


def _classes() -> dict[int, tuple[str, str]]:
    with (DATASET / "classes.csv").open(newline="") as f:
        return {int(r["Class ID (int)"]): (r["Class Name (str)"], r["Coarse Class Name (str)"])
                for r in csv.DictReader(f)}


def _lines(split: str, per_class: int | None) -> list[tuple[str, int, int]]:
    out, counts = [], {}
    for line in (DATASET / f"{split}.txt").read_text().splitlines():
        if not line.strip():
            continue
        rel, fine, coarse = (p.strip() for p in line.split(","))
        fine_i = int(fine)
        if fine_i in FINE_IDS and (per_class is None or counts.get(fine_i, 0) < per_class):
            counts[fine_i] = counts.get(fine_i, 0) + 1
            out.append((rel, fine_i, int(coarse)))
    return out


def add_photos(services, lines, split: str) -> None:
    for fine in sorted({fine for _rel, fine, _coarse in lines}):
        photos = [(DATASET / rel).read_bytes() for rel, f, _c in lines if f == fine]
        store_kiosk(services, photos, sku(fine), split, site="s1", devices=1)


@pytest.fixture(scope="module")
def core(tmp_path_factory):
    """A core's services with 4 products' photos and dataset version 1."""
    from edge2core.common.products import Product
    from edge2core.config import CoreSettings
    from edge2core.core.curate.datasets import DatasetQuery
    from edge2core.core.service import build_core_services

    data_dir = tmp_path_factory.mktemp("core")
    announced: list = []
    services = build_core_services(CoreSettings(data_dir=data_dir), RecordedSites(announced))
    services.announced = announced
    services.data_dir = data_dir
    names = _classes()
    services.catalogue.upsert([Product(sku=sku(i), name=names[i][0], coarse=names[i][1], price=1.0)
                               for i in FINE_IDS])
    add_photos(services, _lines("train", PER_CLASS), "train")
    add_photos(services, _lines("val", None), "val")
    services.dataset = services.datasets.build(DatasetQuery(skus=[sku(i) for i in FINE_IDS]))
    return services


def register_worse(core, model, promote: bool):
    """A deliberately worse model: the production head with two products' rows swapped."""
    import onnx
    from onnx import numpy_helper

    from edge2core.core.train.head import HeadModel
    from edge2core.core.train.onnx_export import compose_onnx, head_onnx

    proto = onnx.load_from_string(core.store.get(model.artifacts["head"].key))
    w = {t.name: numpy_helper.to_array(t).copy() for t in proto.graph.initializer}
    weight, bias = w["head.weight"], w["head.bias"]
    weight[[0, 1]] = weight[[1, 0]]
    bias[[0, 1]] = bias[[1, 0]]
    backbone = model.lineage["backbone"]
    head = head_onnx(HeadModel(weight, bias, model.classes), backbone)
    full = compose_onnx(core.trainer.get().backbones.proto(backbone), head)
    return core.registry.register(
        full, dataset_version=model.dataset_version, classes=model.classes, metrics={},
        params={"path": "test-worse"}, promote=promote,
        extra_artifacts={"head": head, "backbone": model.artifacts["backbone"]},
        lineage={"backbone": backbone}, gated=True)


@pytest.fixture(scope="module")
def first(core):
    """The first fast-path model: promoted to production (no production to gate against)."""
    return core.trainer.train(core.dataset.version, seed=0)


# --------------------------------------------------------------------------- training run


def test_fast_run_registers_an_evaluated_signed_model(core, first) -> None:
    from edge2core.common.signing import load_public_key, verify_artifact
    from edge2core.core.train.onnx_export import read_onnx_metadata

    model = first.model
    assert model.stage == "production" and core.announced[-1].version == model.version
    assert model.classes == [sku(i) for i in FINE_IDS]
    val = model.metrics["val"]
    assert val["n"] >= 12 and val["top1"] >= 0.75  # chance is 0.25
    assert val["coarse_top1"] >= val["top1"] and val["top5"] == 1.0
    assert set(val["per_class"]) == set(model.classes)
    assert all(0.0 <= c["recall"] <= 1.0 for c in val["per_class"].values())
    assert np.array(val["confusion"]).sum() == val["n"]
    cal = model.metrics["calibration"]
    assert cal["temperature"] > 0 and "recognised_threshold" in cal
    # the shipped artefacts were scored again with ONNX Runtime
    shipped = model.metrics["shipped"]
    assert shipped["fp32"]["agreement"] == 1.0 and shipped["fp32"]["max_abs_diff"] < 1e-3
    assert shipped["int8"]["agreement"] >= 0.85
    # artefacts: the edge's single file, the head alone (kilobytes), int8, backbones
    assert set(model.artifacts) == {"full", "head", "int8", "backbone", "backbone_int8"}
    assert model.artifacts["head"].size < 30_000 < model.artifacts["int8"].size < model.size
    full = core.store.get(model.artifact_key)
    meta = read_onnx_metadata(full)
    assert meta["classes"] == model.classes and meta["backbone"] == "efficientnet-lite0-imagenet"
    # lineage and the run record
    lineage = model.lineage
    assert lineage["dataset_manifest_sha256"] == core.dataset.manifest_sha256
    assert lineage["code_revision"] and lineage["versions"]["torch"].startswith("2.")
    record = json.loads(core.store.get(lineage["record_key"]))
    assert record["seed"] == 0 and record["params"]["path"] == "fast"
    assert core.store.get(lineage["confusion_key"]).startswith(b"\x89PNG")
    # signature: verifiable with the published public key alone
    public = load_public_key(core.registry.signer.public_key_b64())
    assert verify_artifact(full, model.signature, public)["version"] == model.version
    assert set(core.registry.verify(model.version)) == set(model.artifacts)
    key_file = core.data_dir / "keys" / "signing-ed25519.pem"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


def test_an_int8_twin_that_loses_accuracy_is_not_shipped(core, first) -> None:
    """A tolerance no INT8 model can meet: the version ships fp32 only, and says why."""
    lossy = core.trainer.train(core.dataset.version, seed=0, promote=False,
                               params={"int8_max_drop": -1.0, "int8_min_photo_drop": 0})
    report = lossy.model.metrics["shipped"]["int8"]
    assert "fp32 only" in report["refused"] and "photos_lost" in report
    assert "int8" not in lossy.model.artifacts and "backbone_int8" not in lossy.model.artifacts
    assert lossy.record["params"]["int8_max_drop"] == -1.0
    # The default tolerance kept the first model's twin (checked above), and says how close it was.
    kept = first.model.metrics["shipped"]["int8"]
    assert "refused" not in kept
    assert kept["photos_lost"] < 2 or kept["top1_drop"] <= 0.01


def test_tampered_artefact_fails_signature_verification(core, first) -> None:
    from edge2core.common.signing import (
        SignatureError,
        Signer,
        load_public_key,
        verify,
        verify_artifact,
    )

    model = first.model
    public = load_public_key(core.registry.signer.public_key_b64())
    head = bytearray(core.store.get(model.artifacts["head"].key))
    head[len(head) // 2] ^= 0x01
    with pytest.raises(SignatureError, match="does not match"):
        verify_artifact(bytes(head), model.signature, public, "head")
    # a manifest edited to point at other bytes breaks the signature itself
    forged = json.loads(json.dumps(model.signature))
    forged["manifest"]["artifacts"]["head"]["sha256"] = hashlib.sha256(head).hexdigest()
    with pytest.raises(SignatureError, match="signature does not match"):
        verify(forged, public)
    # signed by another key
    with pytest.raises(SignatureError):
        verify(Signer.generate().sign(model.signature["manifest"]), public)
    # tampering with the stored object is caught by the registry's check
    original = core.store.get(model.artifacts["head"].key)
    try:
        core.store.put(model.artifacts["head"].key, bytes(head))
        with pytest.raises(SignatureError):
            core.registry.verify(model.version)
    finally:
        core.store.put(model.artifacts["head"].key, original)
    assert core.registry.verify(model.version)


def test_embedding_cache_survives_a_restart(core, first) -> None:
    from edge2core.core.train.embedding_cache import EmbeddingCache
    from edge2core.core.train.run import Trainer

    # the first run computed every photo's embedding once
    assert first.record["embeddings_computed"] == core.dataset.stats["images"]
    restarted = Trainer(core.datasets, core.store, core.registry, catalogue=core.catalogue,
                        cache=EmbeddingCache(core.data_dir / "cache" / "embeddings"))
    result = restarted.train(core.dataset.version, seed=0, register=False)
    assert result.record["embeddings_computed"] == 0
    assert not restarted._embedders  # no backbone session was even created
    assert result.metrics["val"]["top1"] == first.model.metrics["val"]["top1"]


def test_rerun_from_record_gives_the_same_metrics(core, first) -> None:
    record = json.loads(core.store.get(first.model.lineage["record_key"]))
    out = core.trainer.rerun(record)
    assert out["same"], out["differences"]
    assert out["rerun"]["val_top1"] == first.model.metrics["val"]["top1"]
    assert out["model"] is None  # not registered unless asked


def test_gate_blocks_a_worse_model_force_and_rollback(core, first) -> None:
    from edge2core.core.deliver.registry import GateBlocked

    prod = core.registry.production()
    worse = register_worse(core, prod, promote=True)
    assert worse.stage == "candidate"  # auto-promotion was refused by the gate
    assert worse.history[-1]["event"] == "gate_failed"
    with pytest.raises(GateBlocked) as blocked:
        core.registry.promote(worse.version)
    report = blocked.value.report
    assert not report.passed and report.eval_set["n"] >= 12
    assert report.top1_drop > 0.1 and set(report.class_recall_drops) >= {sku(FINE_IDS[0]), sku(FINE_IDS[1])}
    assert core.registry.production().version == prod.version
    with pytest.raises(ValueError, match="reason"):
        core.registry.promote(worse.version, force=True)
    forced = core.registry.promote(worse.version, force=True, reason="test: override")
    assert forced.stage == "production" and forced.history[-1]["forced"] is True
    assert core.announced[-1].version == worse.version
    assert core.registry.get(prod.version).stage == "archived"
    back = core.registry.rollback("test: worse model")
    assert back.version == prod.version and back.stage == "production"
    assert core.registry.get(worse.version).stage == "retired"
    assert core.announced[-1].version == prod.version
    # the same model again passes the gate (no drop)
    again = core.trainer.train(core.dataset.version, seed=0, promote=False)
    canary = core.registry.promote(again.model.version, stage="canary", sites=["store-9"])
    assert canary.stage == "canary" and core.registry.production().version == prod.version
    assert canary.canary_sites == ["store-9"]
    assert core.registry.desired_for("store-9").version == again.model.version


def test_models_api(core, first) -> None:
    from fastapi.testclient import TestClient

    from edge2core.core.api.app import create_core_app

    client = TestClient(create_core_app(core))
    models = client.get("/v1/models").json()
    assert [m["version"] for m in models] == sorted(m["version"] for m in models)
    v = first.model.version
    assert client.get(f"/v1/models/{v}").json()["lineage"]["backbone"]
    key = client.get("/v1/signing-key").json()
    assert key["algorithm"] == "ed25519" and key["key_id"] == core.registry.signer.key_id
    head = client.get(f"/v1/models/{v}/artifacts/head")
    assert head.status_code == 200
    assert hashlib.sha256(head.content).hexdigest() == head.headers["X-E2C-Sha256"]
    assert client.get(f"/v1/models/{v}/signature").json()["manifest"]["version"] == v
    assert client.get(f"/v1/models/{v}/verify").json()["verified"]["full"] is True
    assert client.get(f"/v1/models/{v}/run").json()["run_id"] == first.record["run_id"]
    assert client.get(f"/v1/models/{v}/log").json()[0]["method"] == "lbfgs"
    assert client.get(f"/v1/models/{v}/confusion.png").content.startswith(b"\x89PNG")
    worse = register_worse(core, core.registry.production(), promote=False)
    compared = client.get(f"/v1/models/{worse.version}/compare/{v}").json()
    assert compared["a"]["version"] == v and compared["gate"]["passed"] is False
    blocked = client.post(f"/v1/models/{worse.version}/promote", json={})
    assert blocked.status_code == 409 and blocked.json()["error"] == "gate_failed"
    assert client.post(f"/v1/models/{worse.version}/promote", json={"force": True}).status_code == 400
    assert client.post("/v1/models/rollback", json={}).status_code == 400
    assert client.post(f"/v1/models/{worse.version}/retire", json={"reason": "x"}).json()["stage"] == "retired"
    assert client.get("/v1/models/999").status_code == 404


def test_eval_command_scores_a_list_with_the_shipped_artefact(core, first, tmp_path) -> None:
    import typer
    from typer.testing import CliRunner

    from edge2core.core.cli.models import eval_command

    model_file = tmp_path / "model.onnx"
    model_file.write_bytes(core.store.get(first.model.artifact_key))
    lines = _lines("val", None)
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{rel}, {fine}, {coarse}\n" for rel, fine, coarse in lines))
    app = typer.Typer()
    app.command()(eval_command)
    result = CliRunner().invoke(app, ["--model", str(model_file), "--dataset", str(DATASET),
                                      "--list", str(listing)])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output.strip().splitlines()[-1])
    assert set(out) == {"top1", "top5", "coarse_top1", "n"} and out["n"] == len(lines)
    # the same photos as the registered val metrics (raw files, the edge's decoding)
    assert abs(out["top1"] - first.model.metrics["val"]["top1"]) <= 0.1
    assert out["coarse_top1"] >= out["top1"] and out["top5"] == 1.0


def test_full_path_makes_a_new_backbone_current_for_fast_updates(core, first) -> None:
    """Runs last in this module: it moves the current backbone."""
    before = core.trainer.get().backbones.current()
    assert before == "efficientnet-lite0-imagenet"
    full = core.trainer.train(core.dataset.version, seed=0, path="full", promote=False,
                              params={"epochs": 1, "train_size": 96, "batch_size": 16, "lr": 1e-4,
                                      "init": "linear_probe"})
    backbone = full.model.lineage["backbone"]
    assert backbone.startswith("efficientnet-lite0-ft-") and full.model.params["path"] == "full"
    assert full.record["base_backbone"] == before and full.record["device"] == "cpu"
    assert core.trainer.get().backbones.current() == backbone
    assert core.store.exists(f"backbones/{backbone}/weights.pt")
    log = [json.loads(line) for line in core.store.get(full.model.lineage["log_key"]).splitlines()]
    assert log[0]["epoch"] == 1 and {"train_loss", "val_loss", "val_top1"} <= set(log[0])
    assert full.model.metrics["val"]["top1"] >= 0.5  # chance is 0.25
    assert full.model.metrics["shipped"]["fp32"]["agreement"] == 1.0
    alternatives = full.model.metrics["head_alternatives"]
    assert alternatives["shipped"] == "finetuned" and 0 <= alternatives["refit_val_top1"] <= 1
    assert 0 <= alternatives["averaged_val_top1"] <= 1
    # every photo was embedded once with the new backbone (a new cache key)
    assert core.trainer.cache.count(backbone) == core.dataset.stats["images"]
    fast = core.trainer.train(core.dataset.version, seed=0, promote=False)
    assert fast.model.lineage["backbone"] == backbone
    assert fast.record["embeddings_computed"] == 0
