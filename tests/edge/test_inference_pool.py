"""The shared inference pool: bounded, batching when asked, every answer judged, no request lost.

A real `Recognizer` and model (the `trained_model` fixture); deterministic: batches are forced
by holding the only worker until the queue has filled.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import pytest

from edge2core.common.images import ImageRejected
from edge2core.common.preprocess import preprocess
from edge2core.edge.catalogue_replica import CatalogueReplica
from edge2core.edge.inference import Answer, NoModel, Recognizer
from edge2core.edge.inference_pool import InferencePool, Overloaded
from edge2core.edge.live_watch import LiveWatch
from tests.support.helpers_model import TrainedModel, sku, trained_model  # noqa: F401 (fixture)


class CountingWatch(LiveWatch):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[int, float | None]] = []

    def observe(self, version: int, confidence: float | None) -> bool:
        self.seen.append((version, confidence))
        return super().observe(version, confidence)


class GatedRecognizer(Recognizer):
    """Holds the worker in its first `tensor` call until `release` is set."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.entered = threading.Event()
        self.release = threading.Event()
        self.batch_sizes: list[int] = []

    def tensor(self, data: bytes, out: np.ndarray | None = None) -> np.ndarray:
        if not self.entered.is_set():
            self.entered.set()
            assert self.release.wait(30)
        return super().tensor(data, out)

    def recognize_tensors(self, model, batch, starts, request_ids):  # type: ignore[no-untyped-def]
        self.batch_sizes.append(len(batch))
        return super().recognize_tensors(model, batch, starts, request_ids)


def _recognizer(tmp_path: Path, model: TrainedModel, cls: type[Recognizer] = Recognizer,
                **kwargs: object) -> Recognizer:
    catalogue = CatalogueReplica(tmp_path / "catalogue.json")
    catalogue.replace(list(model.products))
    recognizer = cls(catalogue, **kwargs)  # type: ignore[arg-type]
    recognizer.load(model.path, version=1, sha256=model.sha256)
    return recognizer


def _photos(model: TrainedModel) -> list[tuple[int, bytes]]:
    return [(product, photo) for product in range(3) for photo in model.held_out(product)]


def _same(a: Answer, b: Answer) -> bool:
    """Equal but for timing, and confidences to float precision (a batched run may sum in
    another order)."""
    def shape(x: Answer) -> dict:
        d = x.model_dump(exclude={"latency_ms", "confidence"})
        d["top_k"] = [c["sku"] for c in d["top_k"]]
        return d

    confidences = [c.confidence for c in a.top_k] + [a.confidence]
    expected = [c.confidence for c in b.top_k] + [b.confidence]
    return shape(a) == shape(b) and confidences == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_the_buffer_path_preprocesses_exactly_as_training_does(
    tmp_path: Path, trained_model: TrainedModel  # noqa: F811
) -> None:
    recognizer = _recognizer(tmp_path, trained_model)
    buffer = np.full((2, 3, 224, 224), np.nan, dtype=np.float32)
    for _product, photo in _photos(trained_model):
        fresh = recognizer.tensor(photo)
        into = recognizer.tensor(photo, out=buffer[1])
        assert np.shares_memory(into, buffer)
        assert into.dtype == fresh.dtype == np.float32 and into.shape == fresh.shape
        assert np.array_equal(into, fresh)
    # ...and `fresh` is the shared preprocessing itself.
    import io

    from PIL import Image

    with Image.open(io.BytesIO(photo)) as image:
        image.draft("RGB", (224, 224))
        assert np.array_equal(fresh[0], preprocess(image))


@pytest.mark.parametrize("max_batch", [1, 8])
def test_pool_answers_equal_direct_answers_and_every_one_is_judged(
    tmp_path: Path, trained_model: TrainedModel, max_batch: int  # noqa: F811
) -> None:
    watch = CountingWatch()
    recognizer = _recognizer(tmp_path, trained_model, GatedRecognizer, watch=watch)
    assert isinstance(recognizer, GatedRecognizer)
    photos = _photos(trained_model)
    pool = InferencePool(recognizer, workers=1, max_batch=max_batch)
    try:
        futures = [pool.submit(photos[0][1], "r0")]
        assert recognizer.entered.wait(30)  # the worker holds the first request...
        futures += [pool.submit(photo, f"r{i}") for i, (_p, photo) in enumerate(photos) if i]
        recognizer.release.set()  # ...while the rest queued up behind it
        answers = [f.result(60) for f in futures]
    finally:
        pool.close()
    direct = [recognizer.recognize(photo, f"r{i}") for i, (_p, photo) in enumerate(photos)]

    assert [a.request_id for a in answers] == [f"r{i}" for i in range(len(photos))]
    assert [a.sku for a in answers] == [sku(p) for p, _photo in photos]
    assert all(_same(a, d) for a, d in zip(answers, direct, strict=True))
    # LiveWatch saw every pooled answer, then every direct one.
    assert len(watch.seen) == 2 * len(photos)
    assert [c for _v, c in watch.seen[: len(photos)]] == [a.confidence for a in answers]
    sizes = recognizer.batch_sizes[: pool.batches]
    assert sum(sizes) == len(photos)
    if max_batch == 1:
        assert set(sizes) == {1}
    else:  # the first request ran alone; the others had queued, and went in batches of 8
        assert sizes == [1, 8, len(photos) - 9]


def test_a_bad_photo_fails_alone_and_is_not_judged(
    tmp_path: Path, trained_model: TrainedModel  # noqa: F811
) -> None:
    watch = CountingWatch()
    recognizer = _recognizer(tmp_path, trained_model, GatedRecognizer, watch=watch)
    assert isinstance(recognizer, GatedRecognizer)
    good = trained_model.held_out(0)[0]
    pool = InferencePool(recognizer, workers=1, max_batch=4)
    try:
        first = pool.submit(good)
        assert recognizer.entered.wait(30)
        batch = [pool.submit(good), pool.submit(b"not a photo"), pool.submit(good)]
        recognizer.release.set()
        assert first.result(60).sku == sku(0)
        assert batch[0].result(60).sku == sku(0) and batch[2].result(60).sku == sku(0)
        with pytest.raises(ImageRejected):
            batch[1].result(60)
    finally:
        pool.close()
    assert recognizer.batch_sizes == [1, 2]
    assert len(watch.seen) == 3 and all(c is not None for _v, c in watch.seen)


def test_a_failing_run_is_judged_once_per_request(
    tmp_path: Path, trained_model: TrainedModel  # noqa: F811
) -> None:
    watch = CountingWatch()
    recognizer = _recognizer(tmp_path, trained_model, watch=watch)
    model = recognizer.model
    assert model is not None

    class Broken:
        def run(self, *_a: object) -> None:
            raise RuntimeError("the runtime failed")

    broken = type(model)(model.version, model.sha256, model.classes, Broken(), model.input_name)  # type: ignore[arg-type]
    batch = np.concatenate([recognizer.tensor(p) for _s, p in _photos(trained_model)[:3]])
    results = recognizer.recognize_tensors(broken, batch, [0.0] * 3, ["a", "b", "c"])
    assert all(isinstance(r, RuntimeError) for r in results)
    assert watch.seen == [(1, None)] * 3


def test_no_model_is_refused_and_the_queue_is_bounded(tmp_path: Path) -> None:
    recognizer = GatedRecognizer(CatalogueReplica(tmp_path / "c.json"))
    pool = InferencePool(recognizer, workers=1, max_queue=2)
    try:
        with pytest.raises(NoModel):
            pool.submit(b"x").result(30)
        # Fill the queue while nothing is taken from it.
        hold = threading.Event()
        blocker = threading.Event()
        original = pool._run

        def slow_run(jobs, buffer):  # type: ignore[no-untyped-def]
            blocker.set()
            hold.wait(30)
            original(jobs, buffer)

        pool._run = slow_run  # type: ignore[method-assign]
        taken = pool.submit(b"x")
        assert blocker.wait(30)  # the worker holds `taken`; the queue is empty again
        waiting = [pool.submit(b"x"), pool.submit(b"x")]
        with pytest.raises(Overloaded):
            pool.submit(b"x")
        hold.set()
        for f in [taken, *waiting]:
            with pytest.raises(NoModel):
                f.result(30)
    finally:
        pool.close()
    with pytest.raises(RuntimeError, match="closed"):
        pool.submit(b"x")


def test_async_submit_and_a_swap_between_requests(
    tmp_path: Path, trained_model: TrainedModel  # noqa: F811
) -> None:
    recognizer = _recognizer(tmp_path, trained_model)
    pool = InferencePool(recognizer, workers=2, max_batch=4)
    photo = trained_model.held_out(1)[0]

    async def ask(n: int) -> list[Answer]:
        return list(await asyncio.gather(*(pool.recognize(photo, str(i)) for i in range(n))))

    try:
        before = asyncio.run(ask(6))
        recognizer.load(trained_model.path, version=2, sha256="2" * 64)
        after = asyncio.run(ask(6))
    finally:
        pool.close()
    assert {a.model_version for a in before} == {1} and {a.model_version for a in after} == {2}
    assert {a.sku for a in before + after} == {sku(1)}
    assert [a.request_id for a in after] == [str(i) for i in range(6)]


def test_close_answers_what_is_queued(tmp_path: Path, trained_model: TrainedModel) -> None:  # noqa: F811
    recognizer = _recognizer(tmp_path, trained_model)
    pool = InferencePool(recognizer, workers=1)
    futures = [pool.submit(trained_model.held_out(2)[0]) for _ in range(4)]
    pool.close()
    assert [f.result(0).sku for f in futures] == [sku(2)] * 4
