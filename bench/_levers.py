"""The full path's levers, one run each with the same seed, on the grocery train/val splits
(never test), and the INT8 calibration study; used by ``bench/training.py --levers`` and
runnable alone (e.g. on a lent GPU machine, where every lever runs at once, one process each).

    python bench/_levers.py run --dataset DIR [--workers N] [--only a,b] > levers.json
    python bench/_levers.py pack --dataset DIR --out DIR2 [--short-side 256] [--quality 80]

Each lever changes one thing from the ``baseline`` recipe (``BASELINE``: the defaults before the
levers) and
reports val top-1 of the fine-tuned classifier, of an L-BFGS head refitted on the tuned
embeddings, of both heads averaged (``combined``: the mean of two linear heads is one linear
head, so it ships as is), and of the classifier with a mirrored second look (``flip``, which
would double the edge's work).  ``catalogue`` adds each product's iconic catalogue image to
its train photos (``--iconic-copies`` times, each copy cropped anew every epoch).

The INT8 study (``int8``) quantises the baseline's backbone with ONNX Runtime's static QDQ
quantiser under several calibration choices and reports the val top-1 drop of each against the
fp32 backbone through the same head, for three calibration draws where the choice is random.

Photos are decoded as the trainer decodes them (``load_model_image``); they skip the edge's
re-encoding (``edge.prepare``), so absolute figures differ slightly from bench/training.py's.
``pack`` shrinks a grocery folder's train/val photos and iconic images (short side
``--short-side``, WebP ``--quality``) so that it can travel to a lent machine.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

# The recipe every lever changes one thing of: FineTuneConfig's defaults before the levers
# (6 epochs at peak lr 1e-3 in batches of 32, no weight average, nothing frozen, one learning
# rate for every layer, 224 px crops from the first epoch), pinned so that the table can be
# run again whatever the defaults are now (catalogue images come only with ``_iconic``).
BASELINE: dict[str, Any] = {"epochs": 6, "lr": 1e-3, "batch_size": 32, "ema_decay": 0.0, "freeze_blocks": 0,
                            "head_lr_mult": 1.0, "start_size": None, "ramp_epochs": 0}
# name -> FineTuneConfig overrides (one change from the baseline each) and extras
LEVERS: dict[str, dict[str, Any]] = {
    "baseline": {},
    "epochs_10": {"epochs": 10},
    "epochs_15": {"epochs": 15},
    "size_192_epochs_9": {"train_size": 192, "epochs": 9},  # about the baseline's compute
    "size_160_epochs_12": {"train_size": 160, "epochs": 12},  # about the baseline's compute
    "aug_strong": {"min_scale": 0.35, "jitter": 0.3},
    "aug_weak": {"min_scale": 0.8, "jitter": 0.1},
    "ema": {"ema_decay": 0.995},
    "balanced": {"balanced": True},
    "catalogue": {"_iconic": True},
    "lp_ft": {"init": "linear_probe"},
    "lr_2e-3": {"lr": 2e-3},
    "freeze_3": {"freeze_blocks": 3},  # the stem and blocks 0-2 keep ImageNet's weights (speed)
    "head_lr_x10": {"head_lr_mult": 10.0},  # the new classifier learns 10x faster than the backbone
    "batch_16": {"batch_size": 16},  # twice the steps; on 2 cores also 20 % less time per photo
    "ramp_160_e7": {"start_size": 160, "ramp_epochs": 3, "epochs": 7},  # progressive resizing: 7 for ~6
}
# the levers that helped, together (chosen after a first pass over LEVERS)
COMBINATIONS: dict[str, dict[str, Any]] = {
    "e10_seed1": {"epochs": 10, "seed": 1},  # the same recipe, another seed: the noise
    "e10_catalogue": {"epochs": 10, "_iconic": True},
    "e10_catalogue_ema": {"epochs": 10, "_iconic": True, "ema_decay": 0.995},
    "e10_ema": {"epochs": 10, "ema_decay": 0.995},
    "e10_balanced": {"epochs": 10, "balanced": True},
    "e10_catalogue_balanced": {"epochs": 10, "_iconic": True, "balanced": True},
    "e8_catalogue": {"epochs": 8, "_iconic": True},
    "e12_catalogue_ema": {"epochs": 12, "_iconic": True, "ema_decay": 0.995},
    "e10_catalogue_ema_balanced": {"epochs": 10, "_iconic": True, "ema_decay": 0.995, "balanced": True},
    "e8_catalogue_ema": {"epochs": 8, "_iconic": True, "ema_decay": 0.995},
    "e10_catalogue_ema_freeze3": {"epochs": 10, "_iconic": True, "ema_decay": 0.995, "freeze_blocks": 3},
}
RECIPES = {**LEVERS, **COMBINATIONS}


def say(msg: str) -> None:
    print(f"[levers {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _listing(root: Path) -> tuple[list[str], dict[str, list[tuple[Path, int]]], dict[int, Path]]:
    with (root / "classes.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    classes = [r["Class Name (str)"] for r in sorted(rows, key=lambda r: int(r["Class ID (int)"]))]
    iconic = {int(r["Class ID (int)"]): root / r["Iconic Image Path (str)"].lstrip("/") for r in rows}
    splits: dict[str, list[tuple[Path, int]]] = {}
    for split in ("train", "val"):
        lines = [ln.split(",") for ln in (root / f"{split}.txt").read_text().splitlines() if ln.strip()]
        splits[split] = [(root / p.strip(), int(fine)) for p, fine, _ in lines]
    return classes, splits, iconic


def pack(src: Path, dst: Path, short_side: int, quality: int) -> None:
    """A smaller copy of a grocery folder (train, val, iconic images and the listings)."""
    from PIL import Image

    classes, splits, iconic = _listing(src)
    paths = [p for items in splits.values() for p, _ in items] + list(iconic.values())
    for path in paths:
        out = dst / path.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(path) as im:
            im = im.convert("RGB")
            scale = short_side / min(im.size)
            if scale < 1:
                im = im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.LANCZOS)
            im.save(out, "WEBP", quality=quality)  # names kept: the listings still apply
    for name in ("classes.csv", "train.txt", "val.txt"):
        (dst / name).write_bytes((src / name).read_bytes())
    say(f"packed {len(paths)} photos of {len(classes)} classes into {dst}")


def _load(paths: list[Path]) -> list[Any]:
    from edge2core.core.train.embeddings import load_model_image

    return [load_model_image(p.read_bytes()) for p in paths]


def run_lever(name: str, dataset: str, threads: int, iconic_copies: int, int8: bool,
              max_epochs: int | None = None) -> dict[str, Any]:
    """One lever's run in its own process; its figures (and the INT8 study for ``baseline``)."""
    import numpy as np
    import torch

    from edge2core.core.train.backbone import load_backbone
    from edge2core.core.train.finetune import FineTuneConfig, finetune, to_uint8_tensor
    from edge2core.core.train.head import embed, predict_proba, train_head

    torch.set_num_threads(threads)
    classes, splits, iconic = _listing(Path(dataset))
    overrides = dict(RECIPES[name])
    with_iconic = bool(overrides.pop("_iconic", False))
    train_paths = [p for p, _ in splits["train"]]
    train_y = [y for _, y in splits["train"]]
    if with_iconic:
        for cid, path in sorted(iconic.items()):
            train_paths += [path] * iconic_copies
            train_y += [cid] * iconic_copies
    train_images = [to_uint8_tensor(im) for im in _load(train_paths)]
    val_images = _load([p for p, _ in splits["val"]])
    ytr, yval = np.asarray(train_y), np.asarray([y for _, y in splits["val"]])
    recipe = {"seed": 0, **BASELINE, **overrides}
    recipe.setdefault("min_epochs", math.ceil(0.6 * recipe["epochs"]))
    cfg = FineTuneConfig.from_dict(recipe)
    if max_epochs:  # smoke runs
        cfg.epochs = min(cfg.epochs, max_epochs)
    base = load_backbone()
    init_head = None
    if cfg.init == "linear_probe":
        init_head = train_head(embed(base, _load([p for p, _ in splits["train"]])), np.asarray(
            [y for _, y in splits["train"]]), classes)
    started = time.perf_counter()
    result = finetune(base, train_images, ytr, val_images, yval, classes, cfg, progress=False, init_head=init_head)
    seconds = time.perf_counter() - started
    tuned = result.backbone.to(result.device)
    train_plain = _load([p for p, _ in splits["train"]])
    xtr, xval = embed(tuned, train_plain), embed(tuned, val_images)
    xval_flip = embed(tuned, [im.transpose(0) for im in val_images])  # 0 = FLIP_LEFT_RIGHT
    refit = train_head(xtr, np.asarray([y for _, y in splits["train"]]), classes)
    finetuned = result.head
    p_ft, p_refit = predict_proba(finetuned, xval), predict_proba(refit, xval)
    logits_ft = xval @ finetuned.weight.T + finetuned.bias
    logits_flip = xval_flip @ finetuned.weight.T + finetuned.bias
    combined_w, combined_b = (finetuned.weight + refit.weight) / 2, (finetuned.bias + refit.bias) / 2
    out = {
        "lever": name, "overrides": RECIPES[name], "seconds": round(seconds, 1), "device": result.device,
        "best_epoch": result.best_epoch, "epochs_run": len(result.log),
        "val_top1": _top1(p_ft, yval),
        "val_top1_refit": _top1(p_refit, yval),
        "val_top1_combined": _top1(xval @ combined_w.T + combined_b, yval),
        "val_top1_flip": _top1(logits_ft + logits_flip, yval),
        "log": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in result.log],
    }
    if int8:
        out["int8"] = int8_study(result.backbone.to("cpu"), finetuned, train_plain, ytr[: len(train_plain)],
                                 val_images, yval, threads)
    return out


def _top1(scores: Any, y: Any) -> float:
    import numpy as np

    return round(float((np.asarray(scores).argmax(1) == y).mean()), 4)


def int8_study(backbone: Any, head: Any, train_images: list[Any], train_y: Any, val_images: list[Any],
               val_y: Any, threads: int) -> dict[str, Any]:
    """Val top-1 drop (fp32 backbone -> INT8 backbone, same head) per calibration choice."""
    import tempfile

    import numpy as np
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from edge2core.common.preprocess import preprocess_batch
    from edge2core.core.train.calibrate import calibration_indices
    from edge2core.core.train.onnx_export import export_backbone_onnx, ort_session

    fp32 = export_backbone_onnx(backbone)
    xval = preprocess_batch(val_images)
    ref = _embed_onnx(ort_session(fp32, threads), xval)
    top1_fp32 = _top1(ref @ head.weight.T + head.bias, val_y)
    rng_choices: list[tuple[str, Any, int, int]] = [("linspace_64", CalibrationMethod.MinMax, 64, -1)]
    for seed in (0, 1, 2):
        rng_choices += [(f"random_64_s{seed}", CalibrationMethod.MinMax, 64, seed),
                        (f"stratified_1pc_s{seed}", CalibrationMethod.MinMax, -1, seed),
                        (f"stratified_2pc_s{seed}", CalibrationMethod.MinMax, -2, seed)]
    report: dict[str, Any] = {"val_top1_fp32": top1_fp32, "choices": {}}
    with tempfile.TemporaryDirectory() as tmp:
        src, pre = Path(tmp) / "fp32.onnx", Path(tmp) / "pre.onnx"
        src.write_bytes(fp32)
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        for name, method, n, seed in rng_choices:
            if n > 0 and seed < 0:
                idx = np.linspace(0, len(train_images) - 1, n).round().astype(int)
            elif n > 0:
                idx = np.random.default_rng(seed).choice(len(train_images), n, replace=False)
            else:
                idx = calibration_indices(np.asarray(train_y), -n, seed)
            calib = preprocess_batch([train_images[i] for i in idx])
            dst = Path(tmp) / f"{name}.onnx"
            started = time.perf_counter()
            try:
                quantize_static(str(pre), str(dst), _reader(calib), quant_format=QuantFormat.QDQ, per_channel=True,
                                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                calibrate_method=method)
                q = _embed_onnx(ort_session(onnx.load(str(dst)).SerializeToString(), threads), xval)
            except Exception as exc:  # one choice failing still reports the others
                report["choices"][name] = {"error": f"{type(exc).__name__}: {exc}"}
                continue
            top1 = _top1(q @ head.weight.T + head.bias, val_y)
            report["choices"][name] = {"photos": len(idx), "top1": top1, "drop": round(top1_fp32 - top1, 4),
                                       "seconds": round(time.perf_counter() - started, 1)}
            say(f"int8 {name}: top-1 {top1:.4f} (fp32 {top1_fp32:.4f})")
    return report


def _reader(calib: Any) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(range(0, calib.shape[0], 8))

        def get_next(self) -> dict[str, Any] | None:
            start = next(self._it, None)
            return None if start is None else {"image": calib[start : start + 8]}

    return _Reader()


def _embed_onnx(session: Any, x: Any) -> Any:
    import numpy as np

    return np.concatenate([session.run(None, {"image": x[i : i + 32]})[0] for i in range(0, len(x), 32)])


def run_all(dataset: Path, names: list[str], workers: int, iconic_copies: int,
            max_epochs: int | None = None, out: Path | None = None, int8_on: str = "baseline") -> dict[str, Any]:
    """Every lever in ``names`` at once, ``workers`` processes sharing the CPU cores (and GPU);
    ``out`` is rewritten as each lever ends, so a run cut short still leaves what finished."""
    threads = max(1, (os.cpu_count() or 2) // workers)
    results: dict[str, Any] = {}
    with ProcessPoolExecutor(workers) as pool:
        futures = {pool.submit(run_lever, name, str(dataset), threads, iconic_copies, name == int8_on,
                               max_epochs): name for name in names}
        for future in as_completed(futures):
            name = futures[future]
            try:
                results[name] = future.result()
                say(f"{name}: val top-1 {results[name]['val_top1']} ({results[name]['seconds']} s)")
            except Exception as exc:  # one lever failing still reports the others
                results[name] = {"lever": name, "error": f"{type(exc).__name__}: {exc}"}
                say(f"{name} failed: {exc!r}")
            if out is not None:
                out.write_text(json.dumps({"levers": results}))
    return {name: results[name] for name in names}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["run", "pack"])
    ap.add_argument("--dataset", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--short-side", type=int, default=256)
    ap.add_argument("--quality", type=int, default=80)
    ap.add_argument("--workers", type=int, default=len(LEVERS))
    ap.add_argument("--only", default="", help="comma-separated lever names (default: all)")
    ap.add_argument("--iconic-copies", type=int, default=5)
    ap.add_argument("--int8-on", default="baseline", help="the recipe whose backbone the INT8 study quantises")
    ap.add_argument("--max-epochs", type=int, default=None, help="cap every lever's epochs (smoke runs)")
    args = ap.parse_args()
    if args.command == "pack":
        pack(args.dataset, args.out, args.short_side, args.quality)
        return
    import multiprocessing

    multiprocessing.set_start_method("spawn", force=True)  # CUDA cannot be forked
    names = [n for n in args.only.split(",") if n] or list(LEVERS)
    unknown = set(names) - set(RECIPES)
    if unknown:
        ap.error(f"unknown recipes: {sorted(unknown)}")
    results = run_all(args.dataset, names, min(args.workers, len(names)), args.iconic_copies, args.max_epochs,
                      args.out, args.int8_on)
    print(json.dumps({"levers": results}))


if __name__ == "__main__":
    main()
