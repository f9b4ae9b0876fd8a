"""Training benchmark on the grocery photos (train/val only, never test), or on synthetic
products where there are none (see _common.py: $E2C_DATASET, ../shared, synthetic; --dataset
names a grocery-layout folder outright).

Measures, in one run:
  * full path: fine-tune EfficientNet-Lite0 on the train split (the best epoch on val kept),
    val top-1 of the registered model (``val_top1_full``), of the shipped fp32 ONNX
    (``val_top1_onnx``) and of the INT8 ONNX (``val_top1_int8``), wall time
    (``full_train_s``, everything from dataset version to registered model; ``finetune_s``,
    the epochs alone);
  * baseline for accuracy: the frozen ImageNet backbone + L-BFGS head (the fast path before
    any fine-tuning), ``val_top1_frozen``;
  * fast update: one product is held back from the full run; then its 30 train photos (and
    its val photos) "arrive": ``fast_update_s`` times dataset build -> embeddings (only the
    new photos are computed) -> head -> calibration -> head-only ONNX + composed fp32/INT8 ->
    shipped-model check -> signed registration (through the promotion gate);
  * baseline for update time: re-exporting the same model through torch
    (``torch_export_s``) instead of composing (``compose_s``).
  * memory: peak RSS of one fine-tuning epoch over N and 4N photos streamed from the object
    store (``peak_rss_mb``, ``peak_rss_mb_4x``, ``peak_rss_ratio_4x``; target within 1.2x),
    against 4N photos decoded up front (``in_memory_peak_rss_mb_4x``, the old full path).

Photos go through the edge's preparation (``edge.prepare``) before they are stored, as in
the running system.  ``--quick`` (about a minute): 6 classes, 30 photos each, 2 short epochs at 160 px from a
linear probe: a smoke run of every stage, not an accuracy measurement.  Synthetic products:
6 (quick) or 24 classes, 30 (quick) or 40 train and 10 val photos each, all distinct.
Progress goes to stderr; the last stdout line is one JSON object, with photo_source.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import PHOTOS, assert_distinct, emit  # noqa: E402

# Synthetic products (no grocery folder): classes by default, and photos per class.
SYNTHETIC_CLASSES = 24
SYNTHETIC_TRAIN, SYNTHETIC_VAL = 40, 10
# Grocery class id -> its iconic catalogue image (the catalogue's product image)
ICONIC: dict[int, Path] = {}


def say(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def read_split(root: Path, split: str) -> list[tuple[str, int, int]]:
    out = []
    for line in (root / f"{split}.txt").read_text().splitlines():
        if line.strip():
            path, fine, coarse = (p.strip() for p in line.split(","))
            out.append((path, int(fine), int(coarse)))
    return out


Listing = dict[str, list[tuple[int, Callable[[], bytes]]]]  # split -> (fine id, read) in order


def grocery_listing(root: Path) -> tuple[dict[int, str], dict[int, str], Listing]:
    """Class names, coarse names and the train/val photos of a grocery-layout folder."""
    with (root / "classes.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    names = {int(r["Class ID (int)"]): r["Class Name (str)"] for r in rows}
    ICONIC.update({int(r["Class ID (int)"]): root / r["Iconic Image Path (str)"].lstrip("/") for r in rows})
    coarse_names = {int(r["Class ID (int)"]): r["Coarse Class Name (str)"] for r in rows}
    listing: Listing = {
        split: [(fine, (root / rel).read_bytes) for rel, fine, _coarse in read_split(root, split)]
        for split in ("train", "val")
    }
    return names, coarse_names, listing


def synthetic_listing(classes: int, train: int, val: int) -> tuple[dict[int, str], dict[int, str], Listing]:
    """The same for `classes` synthetic products (edge2core.sim): `train` and `val` photos each."""
    from edge2core.sim.photos import SyntheticCatalogue

    catalogue = SyntheticCatalogue(classes)
    products = catalogue.products()
    listing: Listing = {"train": [], "val": []}
    for product in products:
        for split, n in (("train", train), ("val", val)):
            listing[split] += [(product.class_id, lambda data=photo.data: data)
                               for photo in catalogue.photos(split, product, n)]
    return ({p.class_id: p.name for p in products}, {p.class_id: p.coarse_name for p in products},
            listing)


def extra_params(pairs: list[str]) -> dict[str, Any]:
    """``["k=v", ...]`` -> ``{k: json(v)}``; a value that is not JSON is kept as a string."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--dataset", type=Path, default=None,
                    help="a grocery-layout folder (default: the benchmarks' photo source, see _common.py)")
    ap.add_argument("--classes", type=int, default=None, help="number of fine classes (default: all; quick: 6)")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--train-size", type=int, default=None, help="training crop size (val is always 224)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the recipe's)")
    ap.add_argument("--init", default=None, help="random (default) or linear_probe (LP-FT; quick's default)")
    ap.add_argument("--min-scale", type=float, default=None, help="random resized crop's smallest area "
                    "(default: the recipe's)")
    ap.add_argument("--no-channels-last", action="store_true")
    ap.add_argument("--new-product-photos", type=int, default=30)
    ap.add_argument("--work-dir", type=Path, default=None)
    ap.add_argument("--param", action="append", default=[], metavar="KEY=JSON",
                    help="another training parameter of the full path, e.g. catalogue_copies=10 or "
                         "full_head=averaged (repeatable; JSON values, other words are strings)")
    ap.add_argument("--levers", action="store_true",
                    help="also run every lever of bench/_levers.py (hours on 2 cores; minutes on a GPU); "
                         "otherwise the last recorded table (bench/levers.json) is reported with its source")
    args = ap.parse_args()

    import torch

    from edge2core.common.events import utcnow
    from edge2core.common.objectstore import LocalObjectStore, image_key
    from edge2core.common.products import Product
    from edge2core.common.signing import Signer
    from edge2core.config import PromotionGate
    from edge2core.core.catalogue.catalogue import Catalogue, store_image
    from edge2core.core.curate.datasets import DatasetQuery, DatasetStore
    from edge2core.core.db.engine import make_engine, make_sessionmaker
    from edge2core.core.db.schema import ImageRow, create_schema
    from edge2core.core.deliver.gate import ModelGate
    from edge2core.core.deliver.registry import ModelRegistry
    from edge2core.core.train.embedding_cache import EmbeddingCache
    from edge2core.core.train.finetune import FineTuneConfig
    from edge2core.core.train.run import IMAGENET_BACKBONE, Trainer
    from edge2core.edge.prepare import PreparePolicy, prepare

    if args.threads:
        torch.set_num_threads(args.threads)
    quick = args.quick
    n_classes = args.classes or (6 if quick else None)
    recipe = FineTuneConfig()  # the defaults the trainer would use
    epochs = args.epochs or (2 if quick else recipe.epochs)
    train_size = args.train_size or (160 if quick else 224)
    lr = args.lr or recipe.lr
    init = args.init or ("linear_probe" if quick else "random")  # quick: a 10-step smoke run
    per_class_cap = 30 if quick else None

    dataset = args.dataset or PHOTOS.grocery
    if dataset is not None:
        photo_source = str(args.dataset) if args.dataset else PHOTOS.source
        names, coarse_names, listing = grocery_listing(dataset)
    else:
        photo_source = PHOTOS.source
        names, coarse_names, listing = synthetic_listing(
            n_classes or SYNTHETIC_CLASSES, max(per_class_cap or SYNTHETIC_TRAIN, args.new_product_photos),
            10 if quick else SYNTHETIC_VAL)
    say(f"photos: {photo_source if args.dataset else PHOTOS.describe()}")
    all_ids = sorted(names)
    if n_classes:
        all_ids = [all_ids[i * len(all_ids) // n_classes] for i in range(n_classes)]
    new_id = all_ids[len(all_ids) // 2]  # the product that arrives later
    sku = lambda i: f"SKU-{i:04d}"

    tmp = tempfile.TemporaryDirectory(prefix="e2c-bench-training-") if args.work_dir is None else None
    work = args.work_dir or Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    store = LocalObjectStore(work / "objects")
    engine = make_engine(f"sqlite:///{work / 'core.db'}")
    create_schema(engine)
    sessions = make_sessionmaker(engine)
    datasets = DatasetStore(store, sessions)
    catalogue = Catalogue(sessions)
    images = {i: store_image(store, ICONIC[i].read_bytes())[0] for i in all_ids if i in ICONIC}
    catalogue.upsert([Product(sku=sku(i), name=names[i], coarse=coarse_names[i], price=1.0, image_key=images.get(i))
                      for i in all_ids])
    # As core/service.py wires them: the gate's scorer looks the trainer up when it runs.
    gate = ModelGate(PromotionGate(), datasets, lambda model, entries: trainer.score_model(model, entries))
    registry = ModelRegistry(store, sessions, signer=Signer.load_or_create(work / "keys"), gate=gate)
    trainer = Trainer(datasets, store, registry, threads=args.threads, catalogue=catalogue,
                      cache=EmbeddingCache(work / "cache" / "embeddings"))

    # ---- photos: prepared as the edge would, stored, recorded with the dataset's own split
    policy = PreparePolicy()
    t0 = time.perf_counter()
    pending: dict[int, list] = {}
    counts: dict[tuple[int, str], int] = {}
    n_stored = 0
    digests: list[bytes] = []
    for split in ("train", "val"):
        for fine, read in listing[split]:
            if fine not in all_ids:
                continue
            cap = per_class_cap if split == "train" else (10 if quick else None)
            if fine == new_id and split == "train":
                cap = args.new_product_photos
            if cap is not None and counts.get((fine, split), 0) >= cap:
                continue
            counts[(fine, split)] = counts.get((fine, split), 0) + 1
            data = read()
            digests.append(hashlib.sha256(data).digest())
            photo = prepare(data, policy)
            store.put(image_key(photo.sha256), photo.data)
            row = ImageRow(sha256=photo.sha256, key=image_key(photo.sha256), size=len(photo.data),
                           width=photo.width, height=photo.height, site="bench", device="kiosk-1",
                           source="kiosk", sku=sku(fine), captured_at=None, received_at=utcnow(),
                           stored_at=utcnow(), top_guesses=[], split=split,
                           label_origin="scan")
            pending.setdefault(fine == new_id, []).append(row)
            n_stored += 1
    def insert(rows: list) -> None:
        with sessions.begin() as s:
            for r in rows:
                if s.get(ImageRow, r.sha256) is None:
                    s.add(r)
    assert_distinct(digests, "training and validation photos")
    insert(pending.get(False, []))
    say(f"{n_stored} photos prepared and stored in {time.perf_counter() - t0:.0f} s; "
        f"{len(all_ids)} classes, product {sku(new_id)} ({names[new_id]}) held back")
    old_skus = [sku(i) for i in all_ids if i != new_id]
    v1 = datasets.build(DatasetQuery(skus=old_skus))
    say(f"dataset v{v1.version}: {v1.stats['per_split']}")

    # ---- baseline: frozen ImageNet embeddings + L-BFGS head (registered, not promoted)
    t0 = time.perf_counter()
    frozen = trainer.train(v1.version, path="fast", params={"backbone": IMAGENET_BACKBONE, "int8": False},
                           progress=say, promote=False)
    frozen_s = time.perf_counter() - t0
    val_top1_frozen = frozen.metrics["val"]["top1"]
    say(f"baseline frozen-backbone head: val top-1 {val_top1_frozen:.3f} ({frozen_s:.0f} s, incl. embedding)")

    # ---- full path
    t0 = time.perf_counter()
    full = trainer.train(v1.version, path="full", progress=say, show_progress=sys.stderr.isatty(),
                         params={"epochs": epochs, "train_size": train_size, "patience": 3,
                                 "lr": lr, "batch_size": recipe.batch_size, "init": init,
                                 "min_scale": args.min_scale or recipe.min_scale,
                                 "channels_last": not args.no_channels_last, **extra_params(args.param)})
    full_train_s = time.perf_counter() - t0
    fm = full.metrics
    say(f"full path: val top-1 {fm['val']['top1']:.3f}, onnx {fm['shipped']['fp32']['top1']:.3f}, "
        f"int8 {fm['shipped']['int8']['top1']:.3f} in {full_train_s:.0f} s; "
        f"model v{full.model.version} {full.model.stage}")
    registry.promote(full.model.version, force=True, reason="bench: the full model is the production model")

    # ---- fast update: 30 photos of a new product arrive; everything else is cached
    insert(pending.get(True, []))
    t0 = time.perf_counter()
    v2 = datasets.build(DatasetQuery(skus=old_skus + [sku(new_id)]))
    fast = trainer.train(v2.version, path="fast", progress=say)
    fast_update_s = time.perf_counter() - t0
    say(f"fast update: v{fast.model.version} ({fast.model.stage}) in {fast_update_s:.1f} s "
        f"({fast.record['embeddings_computed']} embeddings computed), timings "
        + json.dumps({k: round(v, 2) for k, v in fast.timings_s.items()}))
    new_recall = fast.metrics["val"]["per_class"][sku(new_id)]["recall"]

    # ---- baseline for update time: the same model exported through torch
    import onnx

    from edge2core.core.train.head import HeadModel
    from edge2core.core.train.onnx_export import export_onnx

    head_proto = onnx.load_from_string(store.get(fast.model.artifacts["head"].key))
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in head_proto.graph.initializer}
    head = HeadModel(weights["head.weight"].copy(), weights["head.bias"].copy(), fast.model.classes)
    t0 = time.perf_counter()
    export_onnx(trainer.backbones.torch(fast.model.lineage["backbone"]), head, work / "torch-export.onnx")
    torch_export_s = time.perf_counter() - t0
    sizes = {k: a.size for k, a in fast.model.artifacts.items()}

    verified = registry.verify(fast.model.version)
    int8_seeds = int8_drop_over_seeds(datasets, trainer, store, full, 1 if quick else 3)
    result = {
        "val_top1_full": round(fm["val"]["top1"], 4),
        "val_top1_int8": round(fm["shipped"]["int8"]["top1"], 4),
        "full_train_s": round(full_train_s, 1),
        "finetune_s": round(full.timings_s.get("finetune", float("nan")), 1),  # the epochs alone
        "fast_update_s": round(fast_update_s, 2),
        "val_top1_onnx": round(fm["shipped"]["fp32"]["top1"], 4),
        "int8_drop": round(fm["shipped"]["int8"]["top1_drop"], 4),
        "val_top5_full": round(fm["val"]["top5"], 4),
        "val_coarse_top1_full": round(fm["val"].get("coarse_top1", float("nan")), 4),
        "val_ece_full": round(fm["val"]["ece"], 4),
        "temperature": round(fm["calibration"]["temperature"], 3),
        "threshold_p95": fm["calibration"]["recognised_threshold"],
        "full_head_alternatives": fm.get("head_alternatives"),
        "baseline_val_top1_frozen": round(val_top1_frozen, 4),
        "baseline_frozen_s": round(frozen_s, 1),
        "best_epoch": full.record.get("best_epoch"),
        "fast_update_val_top1": round(fast.metrics["val"]["top1"], 4),
        "fast_update_new_product_recall": new_recall,
        "fast_update_stage": fast.model.stage,
        "fast_update_timings_s": {k: round(v, 2) for k, v in fast.timings_s.items()},
        "fast_update_embeddings_computed": fast.record["embeddings_computed"],
        "compose_s": round(fast.timings_s.get("export", float("nan")), 3),
        "torch_export_s": round(torch_export_s, 2),
        "artifact_bytes": sizes,
        "signature_verified": sorted(verified),
        "classes": len(all_ids),
        "train_photos": v1.stats["per_split"].get("train"),
        "val_photos": v1.stats["per_split"].get("val"),
        "epochs": epochs,
        "train_size": train_size,
        "lr": lr,
        "batch_size": recipe.batch_size,
        "min_scale": args.min_scale or recipe.min_scale,
        "init": init,
        "params": extra_params(args.param),
        "val_top1_per_epoch": [round(json.loads(x)["val_top1"], 4)
                               for x in store.get(full.model.lineage["log_key"]).splitlines()],
        "threads": torch.get_num_threads(),
        "quick": quick,
        "photo_source": photo_source,
    }
    result.update(int8_seeds)
    result["levers"] = levers(args.levers, dataset, quick)
    log_key = full.model.lineage["log_key"]
    result["epochs_run"] = len(store.get(log_key).splitlines())
    if tmp is not None:
        tmp.cleanup()
    result.update(memory_scaling(quick))
    emit(result)


def int8_drop_over_seeds(datasets: Any, trainer: Any, store: Any, full: Any, seeds: int) -> dict[str, Any]:
    """The full model's INT8 backbone made again with ``seeds`` calibration draws (the
    trainer's own choice, ``calibration_indices``, seeded 0..seeds-1), each composed with the
    shipped head and scored on the val photos against the shipped fp32 model."""
    import numpy as np

    from edge2core.core.train.calibrate import calibration_picks
    from edge2core.core.train.embeddings import preprocess_bytes
    from edge2core.core.train.onnx_export import compose_onnx, ort_session, quantize_backbone_int8
    from edge2core.core.train.state import FAST_DEFAULTS

    model = full.model
    entries = datasets.entries(model.dataset_version)
    classes = model.classes
    train = [e for e in entries if e.split == "train"]
    val = [e for e in entries if e.split == "val"]
    y_train = np.asarray([classes.index(e.sku) for e in train])
    y_val = np.asarray([classes.index(e.sku) for e in val])
    x_val = preprocess_bytes([store.get(e.key) for e in val])
    head = store.get(model.artifacts["head"].key)
    fp32 = trainer.backbones.onnx(model.lineage["backbone"])

    def top1(model_bytes: bytes) -> float:
        session = ort_session(model_bytes)
        probs = np.concatenate([session.run(None, {"image": x_val[i : i + 32]})[0] for i in range(0, len(x_val), 32)])
        return float((probs.argmax(1) == y_val).mean())

    reference = top1(compose_onnx(fp32, head))
    drops = []
    for seed in range(seeds):
        picks = calibration_picks(y_train, int(FAST_DEFAULTS["int8_calibration"]), seed)
        int8 = quantize_backbone_int8(fp32, preprocess_bytes([store.get(train[i].key) for i in picks]))
        drops.append(round(reference - top1(compose_onnx(int8, head)), 4))
        say(f"int8 calibration seed {seed}: drop {drops[-1]:.4f} (fp32 {reference:.4f})")
    return {"val_top1_int8_drops": drops, "val_top1_int8_drop_max": max(drops)}


def levers(run: bool, dataset: Path | None, quick: bool) -> dict[str, Any]:
    """The levers table: run now (``--levers``, grocery photos only) or the last recorded run."""
    recorded = Path(__file__).with_name("levers.json")
    if run and dataset is not None and not quick:
        from _levers import LEVERS, run_all

        return {"source": "this run", "results": run_all(dataset, list(LEVERS), len(LEVERS), 5)}
    if recorded.exists():
        return {"source": f"recorded: {recorded.name}", **json.loads(recorded.read_text())}
    return {"source": "none: run with --levers"}


def memory_scaling(quick: bool) -> dict:
    """Peak RSS of one fine-tuning epoch over N and 4N photos streamed from the store, and over
    4N photos decoded up front (the old full path, the baseline), each in a fresh process that
    does nothing else (bench/_train_memory.py; the photos are written beforehand)."""
    import subprocess

    from _train_memory import write_photos

    n = 128 if quick else 256  # enough for several steps at N too: a first step's peak is not an epoch's
    script = str(Path(__file__).with_name("_train_memory.py"))
    runs = {}
    with tempfile.TemporaryDirectory(prefix="e2c-bench-memory-") as store:
        write_photos(Path(store), 4 * n)
        for name, count, extra in (("1x", n, []), ("4x", 4 * n, []), ("4x_in_memory", 4 * n, ["--in-memory"])):
            say(f"memory: one epoch over {count} photos{' decoded up front' if extra else ''}")
            out = subprocess.run([sys.executable, script, "--photos", str(count), "--store", store, *extra],
                                 check=True, capture_output=True, text=True).stdout
            runs[name] = json.loads(out.strip().splitlines()[-1])
    peak, peak_4x = runs["1x"]["peak_rss_mb"], runs["4x"]["peak_rss_mb"]
    return {"peak_rss_mb": peak, "peak_rss_mb_4x": peak_4x, "peak_rss_ratio_4x": round(peak_4x / peak, 3),
            "in_memory_peak_rss_mb_4x": runs["4x_in_memory"]["peak_rss_mb"], "memory_photos_1x": n}


if __name__ == "__main__":
    main()
