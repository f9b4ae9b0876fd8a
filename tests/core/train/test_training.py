"""Thin loop model code on real grocery photos: preprocess, frozen backbone, linear head,
ONNX export.  Needs the grocery dataset (env ``E2C_DATASET``, else
``<repo>/../shared/datasets/grocery``); skipped with a reason when it is absent."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.support.paths import GROCERY as DATASET

# four visually distinct products: a fruit, a carton, two vegetables
CLASSES = ["Banana", "Oatly-Oat-Milk", "Carrots", "Red-Bell-Pepper"]
N_TRAIN_PER_CLASS = 15

pytestmark = pytest.mark.skipif(
    not (DATASET / "train.txt").is_file() or not (DATASET / "val.txt").is_file(),
    reason=f"grocery dataset not found at {DATASET} (set E2C_DATASET to its folder)",
)


def _split(split: str, per_class: int | None) -> tuple[list[Image.Image], np.ndarray]:
    """Photos of CLASSES from a split (train.txt / val.txt), labels = index in CLASSES."""
    images: list[Image.Image] = []
    labels: list[int] = []
    counts = dict.fromkeys(CLASSES, 0)
    for line in (DATASET / f"{split}.txt").read_text().splitlines():
        if not line.strip():
            continue
        rel = line.split(",")[0].strip()
        name = Path(rel).parent.name
        if name not in counts or (per_class is not None and counts[name] >= per_class):
            continue
        counts[name] += 1
        with Image.open(DATASET / rel) as im:
            im.load()
            images.append(im.copy())
        labels.append(CLASSES.index(name))
    assert all(counts.values()), f"missing classes in {split}: {counts}"
    return images, np.array(labels, dtype=np.int64)


@pytest.fixture(scope="module")
def backbone():
    from edge2core.core.train.backbone import load_backbone

    return load_backbone()


@pytest.fixture(scope="module")
def data():
    train_x, train_y = _split("train", N_TRAIN_PER_CLASS)
    val_x, val_y = _split("val", None)
    return train_x, train_y, val_x, val_y


@pytest.fixture(scope="module")
def embedded(backbone, data):
    from edge2core.core.train.head import embed

    train_x, train_y, val_x, val_y = data
    return embed(backbone, train_x), train_y, embed(backbone, val_x), val_y


@pytest.fixture(scope="module")
def head(embedded):
    from edge2core.core.train.head import train_head

    train_e, train_y, _, _ = embedded
    return train_head(train_e, train_y, CLASSES, seed=0)


@pytest.fixture(scope="module")
def onnx_file(backbone, head, tmp_path_factory):
    from edge2core.core.train.onnx_export import export_onnx

    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export_onnx(backbone, head, path)
    return path


# --------------------------------------------------------------------------- preprocess


def test_preprocess_shape_dtype_deterministic(data):
    from edge2core.common.preprocess import IMAGE_SIZE, preprocess, preprocess_batch

    image = data[0][0]
    a, b = preprocess(image), preprocess(image.copy())
    assert IMAGE_SIZE == 224
    assert a.shape == (3, 224, 224) and a.dtype == np.float32 and a.flags.c_contiguous
    np.testing.assert_array_equal(a, b)
    assert -1.0 <= float(a.min()) and float(a.max()) <= 1.0  # (x - 127) / 128
    assert float(a.std()) > 0.05

    # other modes and aspect ratios give the same shape
    odd = [
        image.convert("L"),
        image.convert("RGBA"),
        image.resize((500, 300)),
        image.resize((120, 400)),
    ]
    batch = preprocess_batch([image, *odd])
    assert batch.shape == (5, 3, 224, 224) and batch.dtype == np.float32
    np.testing.assert_array_equal(batch[0], a)
    np.testing.assert_array_equal(batch[2], a)  # RGBA of an opaque RGB image
    assert preprocess_batch([]).shape == (0, 3, 224, 224)


def test_preprocess_does_not_import_torch():
    code = "import sys, edge2core.common.preprocess; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --------------------------------------------------------------------------- backbone + head


def test_backbone_output_shape(backbone, embedded):
    import torch

    from edge2core.core.train.backbone import EMBEDDING_DIM

    assert not backbone.training
    with torch.inference_mode():
        out = backbone(torch.zeros(2, 3, 224, 224))
    assert out.shape == (2, EMBEDDING_DIM) == (2, 1280)
    train_e, train_y, val_e, val_y = embedded
    assert train_e.shape == (len(train_y), 1280) and train_e.dtype == np.float32
    assert val_e.shape == (len(val_y), 1280)
    assert np.isfinite(train_e).all() and float(train_e.std()) > 0


def test_embed_batches_and_progress(backbone, data, embedded):
    from edge2core.core.train.head import embed

    images = data[0][:5]
    seen: list[int] = []
    e = embed(backbone, images, batch_size=2, progress=seen.append)
    assert seen == [2, 4, 5]
    # same result whatever the batching (up to float noise)
    np.testing.assert_allclose(e, embedded[0][:5], atol=1e-4, rtol=1e-4)
    assert embed(backbone, []).shape == (0, 1280)


def test_head_beats_chance_on_val(head, embedded):
    from edge2core.core.train.head import evaluate, predict_proba

    train_e, train_y, val_e, val_y = embedded
    assert head.weight.shape == (4, 1280) and head.bias.shape == (4,)
    assert head.classes == CLASSES
    metrics = evaluate(head, val_e, val_y)
    assert metrics["n"] == len(val_y) >= 16
    assert "top5" not in metrics  # only 4 classes
    assert metrics["top1"] >= 0.7, metrics  # chance is 0.25
    assert evaluate(head, train_e, train_y)["top1"] >= 0.95
    p = predict_proba(head, val_e)
    assert p.shape == (len(val_y), 4) and p.dtype == np.float32
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)


def test_train_head_deterministic_and_standardisation_folded(embedded, head):
    from edge2core.core.train.head import predict_proba, train_head

    train_e, train_y, val_e, _ = embedded
    again = train_head(train_e, train_y, CLASSES, seed=0)
    np.testing.assert_array_equal(again.weight, head.weight)
    np.testing.assert_array_equal(again.bias, head.bias)
    assert head.info["standardize"] is True
    # the standardisation is folded into weight/bias: the head applies to raw embeddings
    p = predict_proba(head, val_e)
    assert p.max(axis=1).mean() > 0.5


def test_evaluate_top5_and_head_save_load(tmp_path):
    from edge2core.core.train.head import HeadModel, evaluate, train_head

    rng = np.random.default_rng(0)
    centers = rng.normal(size=(6, 1280)).astype(np.float32) * 3
    y = np.repeat(np.arange(6), 10)
    x = centers[y] + rng.normal(size=(60, 1280)).astype(np.float32)
    classes = [f"c{i}" for i in range(6)]
    h = train_head(x, y, classes, epochs=50)
    m = evaluate(h, x, y)
    assert m["n"] == 60 and m["top1"] == 1.0 and m["top5"] == 1.0
    h.save(tmp_path / "head.npz")
    back = HeadModel.load(tmp_path / "head.npz")
    np.testing.assert_array_equal(back.weight, h.weight)
    assert back.classes == classes and back.info["method"] == h.info["method"]
    with pytest.raises(ValueError):
        train_head(x, y + 1, classes)  # label 6 out of range


# --------------------------------------------------------------------------- ONNX


def test_onnx_single_file_matches_torch(onnx_file, backbone, head, data):
    import onnxruntime as ort
    import torch

    from edge2core.common.preprocess import preprocess_batch
    from edge2core.core.train.head import predict_proba

    # one self-contained file, no external-data sidecar
    assert sorted(p.name for p in onnx_file.parent.iterdir()) == ["model.onnx"]
    session = ort.InferenceSession(
        onnx_file.read_bytes(), providers=["CPUExecutionProvider"]
    )
    assert [i.name for i in session.get_inputs()] == ["image"]
    assert [o.name for o in session.get_outputs()] == ["probabilities"]

    val_x = data[2]
    x = preprocess_batch([val_x[0], val_x[5], val_x[-1]])
    with torch.inference_mode():
        expected = predict_proba(head, backbone(torch.from_numpy(x)).numpy())
    for batch in (x, x[:1]):  # dynamic batch
        (got,) = session.run(["probabilities"], {"image": batch})
        assert got.shape == (batch.shape[0], 4) and got.dtype == np.float32
        np.testing.assert_allclose(got, expected[: batch.shape[0]], atol=1e-4, rtol=0)
        assert (got.argmax(axis=1) == expected[: batch.shape[0]].argmax(axis=1)).all()


def test_onnx_metadata_round_trip(onnx_file):
    from edge2core.core.train.backbone import BACKBONE_ID
    from edge2core.core.train.onnx_export import read_onnx_metadata

    for source in (onnx_file, str(onnx_file), onnx_file.read_bytes()):
        meta = read_onnx_metadata(source)
        assert meta["classes"] == CLASSES
        assert meta["backbone"] == BACKBONE_ID == "efficientnet-lite0-imagenet"
        assert meta["image_size"] == "224"


# --------------------------------------------------------------------------- fast-path export


@pytest.fixture(scope="module")
def backbone_onnx(backbone):
    from edge2core.core.train.onnx_export import export_backbone_onnx

    return export_backbone_onnx(backbone)


def test_ort_embeddings_match_torch(backbone_onnx, embedded, data):
    from edge2core.common.preprocess import preprocess_batch
    from edge2core.core.train.embeddings import OrtEmbedder

    embedder = OrtEmbedder(backbone_onnx, batch_size=4)
    x = preprocess_batch(data[0][:6])
    got = embedder.embed_arrays(x)
    assert got.shape == (6, 1280) and got.dtype == np.float32 and embedder.calls == 6
    np.testing.assert_allclose(got, embedded[0][:6], atol=1e-3, rtol=1e-3)


def test_composed_head_only_and_int8_agree_with_torch_export(backbone, backbone_onnx, head, onnx_file, data):
    import onnx

    from edge2core.common.preprocess import preprocess_batch
    from edge2core.core.train.head import predict_proba
    from edge2core.core.train.onnx_export import (
        compose_onnx,
        head_onnx,
        ort_session,
        quantize_backbone_int8,
    )

    val_x = data[2]
    x = preprocess_batch(val_x)
    torch_full = ort_session(onnx_file.read_bytes()).run(None, {"image": x})[0]

    head_bytes = head_onnx(head)
    assert len(head_bytes) < 25_000  # a fast update ships kilobytes
    composed = compose_onnx(onnx.load_from_string(backbone_onnx), head_bytes)
    session = ort_session(composed)
    assert [i.name for i in session.get_inputs()] == ["image"]
    assert [o.name for o in session.get_outputs()] == ["probabilities"]
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["classes"]) == CLASSES and meta["role"] == "full"
    composed_p = session.run(None, {"image": x})[0]
    np.testing.assert_allclose(composed_p, torch_full, atol=1e-4, rtol=0)

    # head only, on embeddings from the backbone file
    emb = ort_session(backbone_onnx).run(None, {"image": x})[0]
    head_p = ort_session(head_bytes).run(None, {"embedding": emb})[0]
    np.testing.assert_allclose(head_p, torch_full, atol=1e-4, rtol=0)
    np.testing.assert_allclose(head_p, predict_proba(head, emb), atol=1e-5, rtol=0)

    # INT8: looser, as agreement on the answer
    int8 = quantize_backbone_int8(backbone_onnx, preprocess_batch(data[0][::3]), method="static")
    assert len(int8) < len(backbone_onnx) / 3
    int8_p = ort_session(compose_onnx(int8, head_bytes)).run(None, {"image": x})[0]
    agreement = float((int8_p.argmax(1) == torch_full.argmax(1)).mean())
    assert agreement >= 0.9, agreement
    assert float(np.abs(int8_p - torch_full).max()) < 0.5

    # a head trained on another backbone does not compose
    with pytest.raises(ValueError, match="backbone"):
        compose_onnx(backbone_onnx, head_onnx(head, "efficientnet-lite0-ft-000000000000"))


def test_embedding_cache_persists_and_skips_recompute(tmp_path):
    from edge2core.core.train.embedding_cache import EmbeddingCache

    calls: list[list[str]] = []

    def compute(ids):
        calls.append(list(ids))
        return np.stack([np.full(1280, float(int(i)), np.float32) for i in ids])

    cache = EmbeddingCache(tmp_path)
    m, n = cache.get_or_compute("bb-1", ["1", "2", "3"], compute)
    assert n == 3 and m.shape == (3, 1280) and m[2, 0] == 3.0
    m, n = cache.get_or_compute("bb-1", ["3", "4", "1"], compute)
    assert n == 1 and calls[-1] == ["4"] and list(m[:, 0]) == [3.0, 4.0, 1.0]
    restarted = EmbeddingCache(tmp_path)  # a restarted core reads the shards back
    m, n = restarted.get_or_compute("bb-1", ["1", "2", "3", "4"], compute)
    assert n == 0 and len(calls) == 2 and restarted.count("bb-1") == 4
    _, n = restarted.get_or_compute("bb-2", ["1"], compute)  # another backbone: another key
    assert n == 1
    (tmp_path / "bb-1" / "torn.npz").write_bytes(b"PK\x03\x04 not really")
    assert EmbeddingCache(tmp_path).count("bb-1") == 4
    with pytest.raises(ValueError):
        cache.get_or_compute("../evil", ["1"], compute)


# --------------------------------------------------------------------------- full path


def test_finetune_beats_chance_and_logs_epochs(backbone, data, head):
    import torch

    from edge2core.core.train.finetune import (
        FineTuneConfig,
        augment_batch,
        finetune,
        to_uint8_tensor,
    )

    train_x, train_y, val_x, val_y = data
    gen = torch.Generator().manual_seed(0)
    batch = augment_batch([to_uint8_tensor(im) for im in train_x[:3]], gen, size=96)
    assert batch.shape == (3, 3, 96, 96) and -1.0 <= float(batch.min()) and float(batch.max()) <= 1.0
    cfg = FineTuneConfig(epochs=2, batch_size=16, lr=3e-4, train_size=128, seed=0)
    seen = []
    before = [p.clone() for p in backbone.parameters()][:3]
    result = finetune(backbone, train_x, train_y, val_x, val_y, CLASSES, cfg, progress=False,
                      on_epoch=seen.append, init_head=head)
    assert [r["epoch"] for r in result.log] == [1, 2] == [r["epoch"] for r in seen]
    assert all(np.isfinite(r["train_loss"]) and 0 <= r["val_top1"] <= 1 for r in result.log)
    assert max(r["val_top1"] for r in result.log) >= 0.7  # chance is 0.25
    assert result.head.classes == CLASSES and result.device == "cpu"
    assert all(torch.equal(a, b) for a, b in zip(before, list(backbone.parameters())[:3], strict=True))  # copy
    assert not any(p.requires_grad for p in result.backbone.parameters())


def test_finetune_reads_photos_from_the_store_as_batches_need_them(backbone, data, tmp_path):
    """The full path streams photos from the object store (nothing decoded up front) and
    learns exactly what it learns from photos held in memory."""
    import io

    import torch

    from edge2core.common.objectstore import LocalObjectStore
    from edge2core.core.train.finetune import FineTuneConfig, finetune, to_uint8_tensor
    from edge2core.core.train.stored_photos import StoredPhotos

    train_x, train_y, val_x, val_y = data
    train_x, train_y = train_x[:24], train_y[:24]
    store = LocalObjectStore(tmp_path / "objects")

    def put(i: int, image) -> str:  # type: ignore[no-untyped-def]
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")  # lossless: the same pixels as the in-memory photos
        store.put(f"photos/{i}.png", buffer.getvalue())
        return f"photos/{i}.png"

    reads: list[str] = []
    real_get = store.get
    store.get = lambda key: reads.append(key) or real_get(key)  # type: ignore[method-assign]
    train_keys = [put(i, im) for i, im in enumerate(train_x)]
    val_keys = [put(1000 + i, im) for i, im in enumerate(val_x)]

    def load(data: bytes):  # type: ignore[no-untyped-def]
        with Image.open(io.BytesIO(data)) as image:
            return image.convert("RGB")

    streamed_train = StoredPhotos(store, train_keys, lambda data: to_uint8_tensor(load(data)))
    streamed_val = StoredPhotos(store, val_keys, load)
    assert reads == []  # nothing read before a batch asks
    cfg = FineTuneConfig(epochs=1, batch_size=8, lr=3e-4, train_size=96, seed=0)
    streamed = finetune(backbone, streamed_train, train_y, streamed_val, val_y, CLASSES, cfg, progress=False)
    in_memory = finetune(backbone, train_x, train_y, val_x, val_y, CLASSES, cfg, progress=False)
    assert len(reads) == len(train_keys) + len(val_keys)  # each photo read once per epoch
    assert torch.equal(torch.as_tensor(streamed.head.weight), torch.as_tensor(in_memory.head.weight))
    assert streamed.log[0]["val_top1"] == in_memory.log[0]["val_top1"]


def test_prefetcher_keeps_batch_order_and_reads_ahead_by_one_batch():
    from edge2core.common.waiting import wait_until
    from edge2core.core.train.stored_photos import Prefetcher

    class Counted(list):  # type: ignore[type-arg]
        reads: list[int] = []

        def __getitem__(self, i):  # type: ignore[no-untyped-def]
            Counted.reads.append(i)
            return super().__getitem__(i)

    items = Counted(range(10))
    with Prefetcher(threads=2) as prefetcher:
        batches = prefetcher.batches(items, [[3, 1], [9], [0, 2, 4]])
        assert next(batches) == [3, 1]
        wait_until(lambda: 9 in Counted.reads, 10, "the next batch to be read ahead")
        assert sorted(Counted.reads) == [1, 3, 9]  # the next batch, and no further
        assert list(batches) == [[9], [0, 2, 4]]


# --------------------------------------------------------------------------- evaluation


def test_the_recognised_threshold_stays_sensible_on_small_val_sets():
    """20 photos per class gave 0.9989 and called correct answers at 0.998 unrecognised."""
    from edge2core.core.train.evaluation import threshold_for_precision

    probs = np.full((40, 2), 0.0)
    probs[:, 0] = np.linspace(0.999, 0.6, 40)
    probs[:, 1] = 1 - probs[:, 0]
    labels = np.zeros(40, dtype=int)
    labels[1] = 1  # one confident mistake near the top
    th = threshold_for_precision(probs, labels, 0.99)
    assert th["raw_threshold"] > 0.99 and th["method"] == "capped"
    assert th["threshold"] == 0.9 and th["coverage"] > 0.2  # confident answers are answered
    assert threshold_for_precision(probs[:10], labels[:10], 0.95)["threshold"] is None
    assert threshold_for_precision(probs[:10], labels[:10], 0.95)["method"] == "too_few_photos"
    low = np.column_stack([np.full(40, 0.25), np.full(40, 0.75)])
    floored = threshold_for_precision(low, np.ones(40, dtype=int), 0.95)
    assert floored["raw_threshold"] == 0.75 and floored["method"] == "precision_target"
    guesses = np.column_stack([np.full(40, 0.2)] + [np.full(40, 0.1)] * 8)  # 9 classes, unsure
    floored = threshold_for_precision(guesses, np.zeros(40, dtype=int), 0.95)
    assert floored["method"] == "floored" and floored["threshold"] == 0.3
    assert floored["coverage"] == 0.0  # near-guesses are not called recognised


def test_evaluation_report_calibration_and_threshold():
    from edge2core.core.train.evaluation import (
        classification_report,
        confusion_png,
        fit_temperature,
        temperature_scale,
        threshold_for_precision,
    )

    rng = np.random.default_rng(0)
    y = rng.integers(0, 6, size=600)
    logits = rng.normal(size=(600, 6))
    logits[np.arange(600), y] += 1.5
    p = np.exp(3 * logits)  # overconfident
    p /= p.sum(1, keepdims=True)
    classes = [f"SKU-{i:04d}" for i in range(6)]
    coarse = {c: ("fruit" if i < 3 else "milk") for i, c in enumerate(classes)}
    r = classification_report(p, y, classes, coarse)
    assert r["n"] == 600 and 0.3 < r["top1"] < 0.9 and r["top5"] > r["top1"]
    assert r["coarse_top1"] >= r["top1"] and r["coarse_classes"] == 2
    assert np.array(r["confusion"]).sum() == 600
    assert abs(np.mean([v["recall"] for v in r["per_class"].values()]) - r["mean_class_top1"]) < 1e-9
    t = fit_temperature(p, y)
    assert 1.5 < t < 2.5  # the Bayes posterior here is softmax(1.5 x logits): T = 3 / 1.5
    calibrated = classification_report(temperature_scale(p, t), y, classes)
    assert calibrated["ece"] < r["ece"] / 2 and calibrated["top1"] == r["top1"]
    # The reliability diagram's bins: every photo in one, and the overconfident model's
    # confidence above its accuracy where most photos are, less so once calibrated.
    bins = r["reliability"]
    assert len(bins) == 10 and sum(b["n"] for b in bins) == 600
    def gap(report: dict) -> float:
        return sum(b["n"] * (b["confidence"] - b["accuracy"]) for b in report["reliability"] if b["n"]) / 600
    assert gap(r) > 0.05 and abs(gap(calibrated)) < gap(r) / 2
    assert np.isclose(bins[-1]["accuracy"], (p.argmax(1) == y)[p.max(1) > 0.9].mean())
    th = threshold_for_precision(temperature_scale(p, t), y, 0.95, cap=1.0)
    answered = temperature_scale(p, t).max(1) >= th["threshold"]
    assert th["precision"] >= 0.95 and abs(answered.mean() - th["coverage"]) < 1e-9
    assert fit_temperature(p[:10], y[:10]) == 1.0  # too few photos to fit on
    assert confusion_png(r["confusion"], classes).startswith(b"\x89PNG")
