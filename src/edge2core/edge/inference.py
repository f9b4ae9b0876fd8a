"""Recognition at the edge: ONNX Runtime, hot-swappable, joined with the local catalogue.

A swap replaces one reference: a request holds the model it started with until it finishes,
so requests in flight complete on the old model while new ones get the new one.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from pydantic import BaseModel

from edge2core.common.events import Guess
from edge2core.common.images import DecodeLimits, decode_rgb, open_checked
from edge2core.common.logging import get_logger
from edge2core.common.metrics import MODEL_SWAPS, MODEL_VERSION
from edge2core.common.preprocess import IMAGE_SIZE, preprocess_rgb
from edge2core.common.products import Promotion, priced
from edge2core.edge.catalogue_replica import CatalogueReplica
from edge2core.edge.golden import GoldenSet
from edge2core.edge.live_watch import LiveWatch

log = get_logger(__name__)


class NoModel(RuntimeError):
    """No model is loaded yet: the site is waiting for its first version from the core."""

    def __init__(
        self, message: str = "no model loaded yet; the edge is waiting for one from the core"
    ) -> None:
        super().__init__(message)


class ModelLoadError(RuntimeError):
    pass


@dataclass(frozen=True)
class LoadedModel:
    version: int
    sha256: str
    classes: tuple[str, ...]
    session: ort.InferenceSession
    input_name: str
    threshold: float | None = None  # calibrated at training; None: the site's default


class Candidate(BaseModel):
    sku: str
    name: str | None
    confidence: float
    coarse: str | None = None  # the product's category in the site's catalogue, if it has one


@dataclass(frozen=True)
class ClassView:
    """What the catalogue says about a model's classes, rebuilt only when the model or the
    catalogue changes: which may be answered (retired ones may not), and each class's
    category as an index into ``coarse_names`` (-1: no category)."""

    sellable: np.ndarray  # bool (C,)
    coarse_index: np.ndarray  # int64 (C,)
    coarse_names: tuple[str, ...]

    def best_coarse(self, probs: np.ndarray) -> tuple[str | None, float | None]:
        """The category with the most probability (summed over its products) and that sum,
        so an app can say "an apple" when it is unsure which apple; (None, None) when no
        class has a category."""
        known = self.coarse_index >= 0
        if not self.coarse_names or not known.any():
            return None, None
        sums = np.bincount(self.coarse_index[known], weights=probs[known], minlength=len(self.coarse_names))
        best = int(sums.argmax())
        return self.coarse_names[best], float(sums[best])


class Answer(BaseModel):
    recognised: bool
    sku: str | None
    name: str | None
    price: float | None  # the list price
    currency: str | None
    confidence: float
    top_k: list[Candidate]
    model_version: int
    # The most likely category and its probability (the sum over its products), beside the
    # fine answer: coarse accuracy is much higher than fine (see the model's coarse_top1).
    coarse: str | None = None
    coarse_confidence: float | None = None
    latency_ms: float
    request_id: str | None = None
    # The promotion valid now (from the site's catalogue replica) and the price with it.
    promotion: Promotion | None = None
    effective_price: float | None = None


def load_session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def model_classes(session: ort.InferenceSession) -> tuple[str, ...]:
    meta = session.get_modelmeta().custom_metadata_map
    if "classes" not in meta:
        raise ModelLoadError("the ONNX model carries no 'classes' metadata")
    return tuple(json.loads(meta["classes"]))


class Recognizer:
    def __init__(
        self,
        catalogue: CatalogueReplica,
        *,
        threads: int = 1,
        unrecognised_below: float | None = None,
        top_k: int = 3,
        limits: DecodeLimits = DecodeLimits(),
        golden: GoldenSet | None = None,
        min_golden_top1: float = 0.5,
        watch: LiveWatch | None = None,
    ) -> None:
        self._catalogue = catalogue
        self._threads = threads
        # A site setting overrides the model's calibrated threshold; 0.5 when neither is set.
        self._threshold = unrecognised_below
        self._top_k = top_k
        self._limits = limits
        self._golden = golden
        self._min_golden_top1 = min_golden_top1
        self._model: LoadedModel | None = None
        self._previous: LoadedModel | None = None
        self._view: tuple[tuple[str, int, int], ClassView] | None = None
        self._watch = watch or LiveWatch()
        # Versions rolled back after going live: the model agent will not load them again.
        self.rolled_back: set[str] = set()
        self._swap_lock = threading.Lock()

    @property
    def model(self) -> LoadedModel | None:
        return self._model

    def load(
        self, path: Path, *, version: int, sha256: str, threshold: float | None = None
    ) -> LoadedModel:
        """Load, warm up, then swap in atomically; the old model keeps serving on failure."""
        try:
            session = load_session(path, self._threads)
            classes = model_classes(session)
            input_name = session.get_inputs()[0].name
            warm = np.zeros((1, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
            probs = session.run(None, {input_name: warm})[0]
            if probs.shape != (1, len(classes)):
                raise ModelLoadError(f"output shape {probs.shape} does not match {len(classes)} classes")
            self._smoke_test(session, input_name, classes)
        except Exception as exc:
            MODEL_SWAPS.labels(outcome="failed").inc()
            raise ModelLoadError(f"model {version} failed to load: {exc}") from exc
        loaded = LoadedModel(version, sha256, classes, session, input_name, threshold)
        with self._swap_lock:
            self._previous, self._model = self._model, loaded
            self._watch.swapped(version)
        MODEL_SWAPS.labels(outcome="ok").inc()
        MODEL_VERSION.set(version)
        return loaded

    def _smoke_test(
        self, session: ort.InferenceSession, input_name: str, classes: tuple[str, ...]
    ) -> None:
        """The new model must recognise the site's own golden photos before it serves."""
        if self._golden is None:
            return
        known = [p for p in self._golden.photos() if p.sku in classes]
        if not known:
            return
        batch = np.concatenate([self.tensor(p.data) for p in known])
        predicted = session.run(None, {input_name: batch})[0].argmax(axis=1)
        top1 = float(np.mean([classes[i] == p.sku for i, p in zip(predicted, known, strict=True)]))
        if top1 < self._min_golden_top1:
            raise ModelLoadError(
                f"smoke test failed: top-1 {top1:.2f} on {len(known)} golden photos of this site, "
                f"below {self._min_golden_top1:.2f}"
            )

    def tensor(self, data: bytes, out: np.ndarray | None = None) -> np.ndarray:
        """Decode at reduced size where the format allows, then the training preprocessing.

        Returns a (1, 3, H, W) batch; with `out` (a C-contiguous float32 (3, H, W) view, e.g.
        one row of a worker's reusable batch buffer) the pixels are written there instead of
        into a fresh array: the same numbers as `preprocess`.
        """
        image, _fmt = open_checked(data, self._limits)
        with image:
            # decode_rgb has already applied the EXIF orientation: preprocess_rgb, not preprocess.
            rgb = decode_rgb(image, reduce_to=IMAGE_SIZE)
            return preprocess_rgb(rgb, out)[None]

    def recognize(self, data: bytes, request_id: str | None = None) -> Answer:
        start = time.perf_counter()
        model = self._model
        if model is None:
            raise NoModel()
        tensor = self.tensor(data)  # a bad photo is the sender's fault, not the model's
        answer = self.recognize_tensors(model, tensor, [start], [request_id])[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def recognize_tensors(
        self,
        model: LoadedModel,
        batch: np.ndarray,
        starts: list[float],
        request_ids: list[str | None],
    ) -> list[Answer | Exception]:
        """One `session.run` over a batch of preprocessed photos (N, 3, H, W), all on `model`
        (the one the caller read from `model` before preprocessing: a swap in between does not
        mix versions in one batch). Every answer, or failure, is judged on its own, as a single
        request would be. If a batch of several fails, each photo is retried alone so one bad
        input fails only its own request."""
        try:
            probs = model.session.run(None, {model.input_name: batch})[0]
        except Exception as exc:
            if len(batch) > 1:
                return [
                    self.recognize_tensors(model, batch[i : i + 1], [starts[i]], [request_ids[i]])[0]
                    for i in range(len(batch))
                ]
            self._judge(model, None)
            return [exc]
        answers: list[Answer | Exception] = []
        for row, start, request_id in zip(probs, starts, request_ids, strict=True):
            answer = self._answer(model, row, start, request_id)
            self._judge(model, answer.confidence)
            answers.append(answer)
        return answers

    def _judge(self, model: LoadedModel, confidence: float | None) -> None:
        if self._watch.observe(model.version, confidence):
            self._roll_back(model)

    def _roll_back(self, failing: LoadedModel) -> None:
        with self._swap_lock:
            if self._model is not failing or self._previous is None:
                return
            self._model, self._previous = self._previous, None
            self._watch.swapped(self._model.version)
        self.rolled_back.add(failing.sha256)
        MODEL_SWAPS.labels(outcome="rolled_back").inc()
        MODEL_VERSION.set(self._model.version)
        log.error("model rolled back: its live answers fell off", failing=failing.version,
                  serving=self._model.version)

    def _answer(
        self, model: LoadedModel, probs: np.ndarray, start: float, request_id: str | None
    ) -> Answer:
        view = self._class_view(model)
        # Retired products are masked here at once, before any retraining removes them.
        masked = np.where(view.sellable, probs, 0.0)
        order = np.argsort(-masked)[: self._top_k]
        top = [
            Candidate(sku=model.classes[i], name=self._name(model.classes[i]),
                      confidence=float(masked[i]),
                      coarse=view.coarse_names[view.coarse_index[i]] if view.coarse_index[i] >= 0 else None)
            for i in order
        ]
        coarse, coarse_confidence = view.best_coarse(masked)
        best = top[0]
        recognised = best.confidence >= self.threshold(model)
        product = self._catalogue.get(best.sku) if recognised else None
        promotion, price_now = priced(product) if product else (None, None)
        return Answer(
            recognised=recognised,
            sku=best.sku if recognised else None,
            name=best.name if recognised else None,
            price=product.price if product else None,
            currency=product.currency if product else None,
            confidence=best.confidence,
            top_k=top,
            model_version=model.version,
            coarse=coarse,
            coarse_confidence=coarse_confidence,
            latency_ms=(time.perf_counter() - start) * 1000,
            request_id=request_id,
            promotion=promotion,
            effective_price=price_now,
        )

    def _class_view(self, model: LoadedModel) -> ClassView:
        """The catalogue's view of the model's classes; rebuilt only when the model or the
        catalogue changes, not on every request."""
        key = (model.sha256, model.version, self._catalogue.revision)
        cached = self._view
        if cached is None or cached[0] != key:
            cached = self._view = (key, self._build_view(model))
        return cached[1]

    def _build_view(self, model: LoadedModel) -> ClassView:
        names: dict[str, int] = {}
        index = []
        for sku in model.classes:
            product = self._catalogue.get(sku)
            coarse = product.coarse if product is not None else ""
            index.append(names.setdefault(coarse, len(names)) if coarse else -1)
        return ClassView(sellable=np.array([self._catalogue.is_sellable(c) for c in model.classes], dtype=bool),
                         coarse_index=np.array(index, dtype=np.int64), coarse_names=tuple(names))

    def threshold(self, model: LoadedModel) -> float:
        if self._threshold is not None:
            return self._threshold
        return model.threshold if model.threshold is not None else 0.5

    def _name(self, sku: str) -> str | None:
        product = self._catalogue.get(sku)
        return product.name if product else None


def guesses(answer: Answer) -> list[Guess]:
    return [Guess(sku=c.sku, confidence=c.confidence) for c in answer.top_k]
