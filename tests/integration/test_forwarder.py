"""Store and forward, and model roll-out, against a real core served over HTTP.

The core is the real app (`create_core_app(build_core_services(...))`, SQLite + local object
store in a temp dir) served by uvicorn in a background thread on a free port; the edge side is
a real on-disk spool, the real `Forwarder`, `CoreClient` and `ModelAgent`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator, Callable, Iterator
from functools import partial
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import func, select

from edge2core.common.events import CaptureMeta, PhotoForwarded, PhotoRecord, Source
from edge2core.common.net import free_port
from edge2core.common.objectstore import image_key
from edge2core.config import CoreSettings
from edge2core.core.api.app import CoreServices, create_core_app
from edge2core.core.db.schema import ImageRow
from edge2core.core.service import build_core_services
from edge2core.edge.catalogue_replica import CatalogueReplica
from edge2core.edge.core_client import ArtifactMismatch, CoreClient
from edge2core.edge.forwarder import Forwarder, PhotoBackoff
from edge2core.edge.inference import Recognizer
from edge2core.edge.intake import Intake
from edge2core.edge.model_agent import ModelAgent
from edge2core.edge.prepare import PreparePolicy, prepare
from edge2core.edge.spool import Spool
from edge2core.sim.synthetic import render_photo
from tests.support import backends
from tests.support.helpers_model import TrainedModel, sku, trained_model, tweaked_copy  # noqa: F401 (fixture)
from tests.support.waiting import until

SITE = "site-fwd"

wait_for = partial(until, every=0.02)


class CoreServer(backends.CoreServer):
    """The real core app (`create_core_app`) on uvicorn, with a look at what it stored."""

    def __init__(self, services: CoreServices, port: int | None = None) -> None:
        super().__init__(create_core_app(services), port)
        self.services = services

    def image_count(self) -> int:
        with self.services.sessions() as session:
            return int(session.scalar(select(func.count()).select_from(ImageRow)))

    def stored(self, sha256: str) -> bytes:
        return self.services.store.get(image_key(sha256))


@pytest.fixture
def core_services(tmp_path: Path) -> CoreServices:
    return build_core_services(CoreSettings(data_dir=tmp_path / "core"))


@pytest.fixture
def start_core(core_services: CoreServices) -> Iterator[Callable[[int | None], CoreServer]]:
    with contextlib.ExitStack() as stack:

        def start(port: int | None = None) -> CoreServer:
            return stack.enter_context(CoreServer(core_services, port))

        yield start


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    s = Spool(tmp_path / "spool", 50_000_000)
    yield s
    s.close()


def fill(spool: Spool, n: int) -> dict[str, bytes]:
    """Spool `n` prepared photos through the real intake; returns sha256 -> bytes."""
    intake = Intake(SITE, PreparePolicy(), spool)
    out: dict[str, bytes] = {}
    for i in range(n):
        source = Source.KIOSK if i % 2 == 0 else Source.SHOPPER
        meta = CaptureMeta(site=SITE, device=f"dev-{i % 3}", source=source,
                           sku=sku(i % 3) if source == Source.KIOSK else None)
        receipt = intake.accept(render_photo(i % 3, 200 + i), meta, door="test")
        out[receipt.sha256] = spool.read(receipt.sha256)
    assert spool.stats().items == n
    return out


def retries() -> float:
    return REGISTRY.get_sample_value("e2c_forward_retries_total") or 0.0


class Events:
    def __init__(self) -> None:
        self.seen: list[PhotoForwarded] = []

    async def __call__(self, event: PhotoForwarded) -> None:
        self.seen.append(event)


@contextlib.asynccontextmanager
async def running(forwarder: Forwarder) -> AsyncIterator[asyncio.Task]:
    """`forwarder.run()` as a background task; a crash of the loop fails the test."""
    task = asyncio.create_task(forwarder.run())
    try:
        yield task
    finally:
        task.cancel()
        try:
            await task  # re-raises if the forwarder loop itself crashed
        except asyncio.CancelledError:
            pass


# --------------------------------------------------------------------------- forwarding


async def test_everything_arrives_byte_identical_and_leaves_the_spool(
    tmp_path: Path, spool: Spool, start_core: Callable[..., CoreServer]
) -> None:
    core = start_core()
    sent = fill(spool, 6)
    records = {item.sha256: item.record for item in spool.pending(100)}
    events = Events()
    client = CoreClient(core.url)
    forwarder = Forwarder(spool, client, quarantine_dir=tmp_path / "quarantine",
                          concurrency=2, on_forwarded=events)
    try:
        async with running(forwarder) as task:
            await wait_for(lambda: spool.stats().items == 0, what="the spool to drain", task=task)
            await wait_for(lambda: len(events.seen) == len(sent), what="all events", task=task)
    finally:
        await client.aclose()

    assert core.image_count() == len(sent)
    for sha, data in sent.items():
        stored = core.stored(sha)
        assert stored == data
        assert hashlib.sha256(stored).hexdigest() == sha
    assert {e.sha256 for e in events.seen} == set(sent)
    for event in events.seen:
        record = records[event.sha256]
        assert event.key == image_key(event.sha256)
        assert (event.site, event.device, event.source, event.sku, event.size) == (
            record.site, record.device, record.source, record.sku, record.size)
    # The core recorded the edge's metadata.
    with core.services.sessions() as session:
        rows = {r.sha256: r for r in session.scalars(select(ImageRow))}
    for sha, record in records.items():
        assert (rows[sha].site, rows[sha].device, rows[sha].source, rows[sha].sku) == (
            record.site, record.device, record.source.value, record.sku)
    assert not (tmp_path / "quarantine").exists()


async def test_core_down_at_first_then_drained_exactly_once(
    tmp_path: Path, spool: Spool, start_core: Callable[..., CoreServer]
) -> None:
    port = free_port()  # nothing listens here yet
    sent = fill(spool, 5)
    events = Events()
    client = CoreClient(f"http://127.0.0.1:{port}")
    forwarder = Forwarder(spool, client, quarantine_dir=tmp_path / "quarantine",
                          on_forwarded=events)
    retries_before = retries()
    try:
        async with running(forwarder) as task:
            await wait_for(lambda: retries() >= retries_before + len(sent),
                           what="failed attempts to be counted", task=task)
            assert spool.stats().items == len(sent)  # nothing lost while the core is down
            assert events.seen == []

            core = start_core(port)
            await wait_for(lambda: spool.stats().items == 0, what="the spool to drain", task=task)
            await wait_for(lambda: len(events.seen) == len(sent), what="all events", task=task)
    finally:
        await client.aclose()

    assert core.image_count() == len(sent)
    assert sorted(e.sha256 for e in events.seen) == sorted(sent)  # each exactly once
    for sha, data in sent.items():
        assert core.stored(sha) == data


async def test_replayed_upload_is_acknowledged_not_stored_twice(
    spool: Spool, start_core: Callable[..., CoreServer]
) -> None:
    """An edge that crashed after the upload but before `remove` resends: still one row."""
    core = start_core()
    sent = fill(spool, 1)
    (item,) = spool.pending(1)
    client = CoreClient(core.url)
    try:
        first = await client.upload(item.record, sent[item.sha256])
        again = await client.upload(item.record, sent[item.sha256])
    finally:
        await client.aclose()
    assert first["created"] is True and again["created"] is False
    assert first["key"] == again["key"] == image_key(item.sha256)
    assert core.image_count() == 1


async def test_refused_item_is_quarantined_and_others_still_forwarded(
    tmp_path: Path, spool: Spool, start_core: Callable[..., CoreServer]
) -> None:
    core = start_core()
    sent = fill(spool, 3)
    # A spool item whose bytes do not hash to its id: the core must refuse it for good.
    good = prepare(render_photo(2, 300), PreparePolicy())
    wrong_sha = hashlib.sha256(b"something else").hexdigest()
    bad_record = PhotoRecord(site=SITE, device="dev-bad", source=Source.KIOSK, sku=sku(2),
                             sha256=wrong_sha, size=len(good.data), width=good.width,
                             height=good.height)
    assert spool.put(bad_record, good.data, priority=5)

    quarantine = tmp_path / "quarantine"
    client = CoreClient(core.url)
    forwarder = Forwarder(spool, client, quarantine_dir=quarantine)
    try:
        async with running(forwarder) as task:
            await wait_for(lambda: spool.stats().items == 0, what="the spool to empty", task=task)
    finally:
        await client.aclose()

    assert core.image_count() == len(sent)
    for sha, data in sent.items():
        assert core.stored(sha) == data
    # Not deleted silently: the bytes and the reason are kept for an operator.
    assert (quarantine / f"{wrong_sha}.jpg").read_bytes() == good.data
    meta_text = (quarantine / f"{wrong_sha}.json").read_text()
    assert "hash_mismatch" in meta_text
    meta = json.loads(meta_text)  # a .json file must be JSON
    assert "hash_mismatch" in meta["reason"]
    assert meta["record"]["sha256"] == wrong_sha
    assert meta["record"]["device"] == "dev-bad"


async def test_a_poison_photo_waits_alone_then_is_quarantined_and_others_flow(
    tmp_path: Path, spool: Spool, start_core: Callable[..., CoreServer]
) -> None:
    """Case 2's kind: five photos that failed for a reason of their own (an exception while
    building the upload) stalled every upload behind one shared backoff."""
    core = start_core()
    poison = fill(spool, 6)
    poisoned = sorted(poison)[:2]
    for sha in poisoned:  # their bytes are gone: reading them raises, every time
        (spool.root / "objects" / sha[:2] / sha).unlink()
    quarantine = tmp_path / "quarantine"
    client = CoreClient(core.url)
    forwarder = Forwarder(spool, client, quarantine_dir=quarantine, concurrency=2,
                          photo_backoff=PhotoBackoff(initial_s=0.05, poison_after=3))
    try:
        async with running(forwarder) as task:
            await wait_for(lambda: core.image_count() == 4, what="the four sound photos",
                           task=task)
            await wait_for(lambda: spool.stats().items == 0, what="the poison to be set aside",
                           task=task)
    finally:
        await client.aclose()
    for sha in poisoned:
        note = json.loads((quarantine / f"{sha}.json").read_text())
        assert "failed 3 times in a row" in note["reason"]
        assert "FileNotFoundError" in note["reason"]


def test_photo_backoff_is_per_photo_and_transient_failures_never_quarantine() -> None:
    now = [0.0]
    backoff = PhotoBackoff(initial_s=1.0, max_s=8.0, poison_after=3, transient_max_s=2.0,
                           clock=lambda: now[0])
    backoff.failed("a")
    assert backoff.waiting() == {"a"}
    for _ in range(10):
        backoff.failed("b", transient=True)
    assert not backoff.is_poison("b")
    now[0] = 2.01  # a transient wait never exceeds transient_max_s
    assert "b" not in backoff.waiting()
    backoff.failed("a")
    backoff.failed("a")
    assert backoff.is_poison("a")
    backoff.forget("a")
    assert not backoff.is_poison("a") and "a" not in backoff.waiting()


async def test_upload_client_classifies_core_answers(start_core: Callable[..., CoreServer]) -> None:
    """Transient (retry) vs rejected (quarantine), as the forwarder relies on."""
    from edge2core.edge.core_client import RejectedUpload, TransientUploadError

    core = start_core()
    good = prepare(render_photo(0, 301), PreparePolicy())
    record = PhotoRecord(site=SITE, device="d1", source=Source.KIOSK, sku=sku(0),
                         sha256=good.sha256, size=len(good.data), width=good.width,
                         height=good.height)
    client = CoreClient(core.url)
    try:
        with pytest.raises(RejectedUpload) as rejected:
            await client.upload(record.model_copy(update={"size": len(good.data) + 1}), good.data)
        assert rejected.value.status == 422
        assert core.image_count() == 0
        receipt = await client.upload(record, good.data)
        assert receipt["sha256"] == good.sha256
    finally:
        await client.aclose()
    down = CoreClient(f"http://127.0.0.1:{free_port()}")
    try:
        with pytest.raises(TransientUploadError):
            await down.upload(record, good.data)
    finally:
        await down.aclose()


# --------------------------------------------------------------------------- model agent


async def test_model_agent_downloads_verifies_and_serves(
    tmp_path: Path, core_services: CoreServices, start_core: Callable[..., CoreServer],
    trained_model: TrainedModel,  # noqa: F811
) -> None:
    core = start_core()
    core_services.catalogue.upsert(list(trained_model.products))
    catalogue = CatalogueReplica(tmp_path / "edge" / "catalogue.json")
    recognizer = Recognizer(catalogue)
    client = CoreClient(core.url)
    agent = ModelAgent(client, recognizer, catalogue, tmp_path / "edge" / "models")
    try:
        assert await agent.reconcile() is False  # nothing in production yet
        assert recognizer.model is None

        v1 = core_services.registry.register(
            trained_model.data, dataset_version=1, classes=list(trained_model.classes),
            metrics={}, params={})
        assert await agent.reconcile() is True
        assert recognizer.model is not None
        assert (recognizer.model.version, recognizer.model.sha256) == (v1.version, v1.sha256)
        assert v1.sha256 == trained_model.sha256
        assert recognizer.model.classes == trained_model.classes
        served = tmp_path / "edge" / "models" / f"{v1.version}-{v1.sha256[:16]}.onnx"
        assert hashlib.sha256(served.read_bytes()).hexdigest() == v1.sha256
        assert len(catalogue) == len(trained_model.products)  # catalogue refreshed too

        answer = recognizer.recognize(trained_model.held_out(2)[0])
        assert answer.sku == sku(2) and answer.model_version == v1.version
        assert answer.name == trained_model.products[2].name

        assert await agent.reconcile() is False  # already converged

        # A tampered artefact: the core's object is corrupted after registration.
        v2 = core_services.registry.register(
            tweaked_copy(trained_model.data, "v2"), dataset_version=1,
            classes=list(trained_model.classes), metrics={}, params={})
        stored = bytearray(core_services.store.get(v2.artifact_key))
        stored[len(stored) // 2] ^= 0xFF  # same length, different bytes
        core_services.store.put(v2.artifact_key, bytes(stored))

        with pytest.raises(ArtifactMismatch):
            await agent.reconcile()
        assert recognizer.model.version == v1.version  # the previous model keeps serving
        assert recognizer.model.sha256 == v1.sha256
        assert recognizer.recognize(trained_model.held_out(0)[0]).sku == sku(0)
        models_dir = tmp_path / "edge" / "models"
        assert not list(models_dir.glob(f"{v2.version}-*"))  # nothing half-written kept
        assert not list(models_dir.glob("*.part"))
        pointer = json.loads((models_dir / "current.json").read_text())
        assert (pointer["version"], pointer["sha256"]) == (v1.version, v1.sha256)

        # A restarted edge serves its last good model before reaching the core.
        fresh = Recognizer(catalogue)
        await ModelAgent(client, fresh, catalogue, models_dir).load_last_good()
        assert fresh.model is not None and fresh.model.sha256 == v1.sha256
    finally:
        await client.aclose()


async def test_core_serves_artifact_byte_identical(
    core_services: CoreServices, start_core: Callable[..., CoreServer],
    trained_model: TrainedModel,  # noqa: F811
) -> None:
    core = start_core()
    info = core_services.registry.register(
        trained_model.data, dataset_version=1, classes=list(trained_model.classes),
        metrics={}, params={})
    async with httpx.AsyncClient(base_url=core.url) as http:
        production = (await http.get("/v1/models/production")).json()
        assert production["version"] == info.version and production["stage"] == "production"
        artefact = await http.get(f"/v1/models/{info.version}/artifact")
    assert artefact.status_code == 200
    assert artefact.headers["X-E2C-Sha256"] == trained_model.sha256
    assert artefact.content == trained_model.data


async def test_model_agent_runs_only_models_signed_by_the_trusted_key(
    tmp_path: Path, core_services: CoreServices, start_core: Callable[..., CoreServer],
    trained_model: TrainedModel,  # noqa: F811
) -> None:
    from edge2core.common.signing import Signer
    from edge2core.edge.model_trust import ModelTrust

    assert core_services.registry.signer is not None, "the core signs its models"
    core = start_core()
    core_services.catalogue.upsert(list(trained_model.products))
    core_services.registry.register(
        trained_model.data, dataset_version=1, classes=list(trained_model.classes),
        metrics={}, params={})
    client = CoreClient(core.url)
    try:
        # A site configured with another key refuses the model and serves nothing.
        stranger = Signer.generate().public_key_b64()
        wary = Recognizer(CatalogueReplica(tmp_path / "a" / "catalogue.json"))
        refusing = ModelAgent(client, wary, CatalogueReplica(tmp_path / "a" / "c.json"),
                              tmp_path / "a" / "models",
                              trust=ModelTrust(tmp_path / "a" / "key.pub", stranger))
        assert await refusing.reconcile() is False
        assert wary.model is None
        assert not list((tmp_path / "a" / "models").glob("*.onnx"))  # not kept either

        # A new site pins the core's key on first contact and runs the signed model.
        pin = tmp_path / "b" / "key.pub"
        trusting = Recognizer(CatalogueReplica(tmp_path / "b" / "catalogue.json"))
        agent = ModelAgent(client, trusting, CatalogueReplica(tmp_path / "b" / "c.json"),
                           tmp_path / "b" / "models", trust=ModelTrust(pin))
        assert await agent.reconcile() is True
        assert trusting.model is not None and pin.read_text() == core_services.registry.signer.public_key_b64()
    finally:
        await client.aclose()


async def test_nothing_leaves_outside_the_upload_windows(
    tmp_path: Path, spool: Spool, start_core: Callable[..., CoreServer]
) -> None:
    from datetime import datetime

    from edge2core.edge.shaping import parse_windows

    core = start_core()
    sent = fill(spool, 3)
    clock = {"now": datetime(2026, 1, 1, 12, 0)}  # noon; the window is nights only
    client = CoreClient(core.url)
    forwarder = Forwarder(spool, client, quarantine_dir=tmp_path / "q", concurrency=2,
                          windows=parse_windows(["22:00-06:00"]), clock=lambda: clock["now"],
                          window_check_s=0.05)
    try:
        async with running(forwarder) as task:
            await asyncio.sleep(0.5)  # give it every chance to (wrongly) upload
            assert spool.stats().items == len(sent) and core.image_count() == 0
            clock["now"] = datetime(2026, 1, 1, 23, 0)
            await wait_for(lambda: spool.stats().items == 0, what="the night upload", task=task)
    finally:
        await client.aclose()
    assert core.image_count() == len(sent)


async def test_model_download_resumes_where_it_stopped(
    tmp_path: Path, core_services: CoreServices, start_core: Callable[..., CoreServer],
    trained_model: TrainedModel,  # noqa: F811
) -> None:
    core = start_core()
    v1 = core_services.registry.register(
        trained_model.data, dataset_version=1, classes=list(trained_model.classes),
        metrics={}, params={})
    client = CoreClient(core.url)
    try:
        desired = await client.desired_model("site1")
        assert desired is not None
        dest = tmp_path / "models" / "1.onnx"
        dest.parent.mkdir()
        half = len(trained_model.data) // 2
        dest.with_suffix(".part").write_bytes(trained_model.data[:half])  # a cut download
        await client.download_model(desired, dest)
        assert dest.read_bytes() == trained_model.data and not dest.with_suffix(".part").exists()

        # A corrupt leftover is caught by the hash and thrown away; the next try starts over.
        other = tmp_path / "models" / "2.onnx"
        other.with_suffix(".part").write_bytes(b"\0" * half)
        with pytest.raises(ArtifactMismatch):
            await client.download_model(desired, other)
        await client.download_model(desired, other)
        assert hashlib.sha256(other.read_bytes()).hexdigest() == v1.sha256

        ranged = httpx.get(f"{core.url}/v1/models/1/artifact", headers={"Range": f"bytes={half}-"})
        assert ranged.status_code == 206 and ranged.content == trained_model.data[half:]
        beyond = httpx.get(f"{core.url}/v1/models/1/artifact",
                           headers={"Range": f"bytes={len(trained_model.data)}-"})
        assert beyond.status_code == 416
    finally:
        await client.aclose()
