"""The edge's HTTP door on real parts: spool on disk, prepare pipeline, ONNX Runtime recogniser.

The app is driven in-process through Starlette's TestClient (real ASGI requests, real threads
for the blocking work); nothing is mocked.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from edge2core.common.images import metadata_found
from edge2core.common.products import ProductStatus
from edge2core.config import EdgeSettings
from edge2core.edge.api import create_edge_app
from edge2core.edge.catalogue_replica import CatalogueReplica
from edge2core.edge.core_client import CoreClient
from edge2core.edge.forwarder import Forwarder
from edge2core.edge.gateway import Gateway
from edge2core.edge.inference import Recognizer
from edge2core.edge.intake import Intake
from edge2core.edge.model_agent import ModelAgent
from edge2core.edge.prepare import PreparePolicy, prepare
from edge2core.edge.service import EdgeParts, status_report
from edge2core.edge.spool import Spool
from edge2core.sim.synthetic import render_photo
from tests.support.helpers_model import PRODUCTS, TrainedModel, sku, trained_model  # noqa: F401 (fixture)
from tests.support.waiting import wait_until

SITE = "site-http"
MAX_BYTES = 300_000
WAIT = 10.0


def photo(color: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (64, 48),
          exif: Image.Exif | None = None) -> bytes:
    out = io.BytesIO()
    kwargs = {"exif": exif} if exif is not None else {}
    Image.new("RGB", size, color).save(out, format="JPEG", quality=92, **kwargs)
    return out.getvalue()


def exif_with_gps_and_rotation() -> Image.Exif:
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"  # Make
    exif[0x0110] = "Model X"  # Model
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    exif[0x8825] = {1: "N", 2: (52.0, 31.0, 12.0)}  # GPS IFD: latitude
    return exif


@dataclass
class Edge:
    client: TestClient
    spool: Spool
    catalogue: CatalogueReplica
    recognizer: Recognizer
    gateway: Gateway


def build_edge(tmp_path: Path, model: TrainedModel | None, *, budget: int = 50_000_000,
               unrecognised_below: float = 0.5) -> tuple[EdgeParts, EdgeSettings]:
    settings = EdgeSettings(site=SITE, data_dir=tmp_path, spool_budget_bytes=budget,
                            max_bytes=MAX_BYTES, unrecognised_below=min(unrecognised_below, 1.0))
    policy = PreparePolicy(max_bytes=MAX_BYTES)
    spool = Spool(tmp_path / "spool", budget)
    catalogue = CatalogueReplica(tmp_path / "catalogue.json")
    if model is not None:
        catalogue.replace(list(model.products))
    recognizer = Recognizer(catalogue, unrecognised_below=unrecognised_below)
    if model is not None:
        recognizer.load(model.path, version=1, sha256=model.sha256)
    # The core is not needed here; a client object is built (never used) to fill EdgeParts.
    core = CoreClient("http://127.0.0.1:9")
    forwarder = Forwarder(spool, core, quarantine_dir=tmp_path / "quarantine")
    intake = Intake(SITE, policy, spool, on_spooled=forwarder.wake)
    agent = ModelAgent(core, recognizer, catalogue, tmp_path / "models")
    parts = EdgeParts(spool, catalogue, recognizer, Gateway(intake, recognizer), core, forwarder, agent)
    return parts, settings


@pytest.fixture
def make_edge(tmp_path: Path) -> Iterator[Callable[..., Edge]]:
    opened: list[tuple[TestClient, EdgeParts]] = []

    def make(model: TrainedModel | None, **kwargs: object) -> Edge:
        root = tmp_path / f"edge{len(opened)}"
        parts, settings = build_edge(root, model, **kwargs)
        app = create_edge_app(parts.gateway, SITE, lambda: status_report(settings, parts), MAX_BYTES)
        client = TestClient(app)
        client.__enter__()
        opened.append((client, parts))
        return Edge(client, parts.spool, parts.catalogue, parts.recognizer, parts.gateway)

    yield make
    for client, parts in opened:
        client.__exit__(None, None, None)
        parts.gateway.close()
        parts.spool.close()
        asyncio.run(parts.core.aclose())


@pytest.fixture
def edge(make_edge: Callable[..., Edge], trained_model: TrainedModel) -> Edge:  # noqa: F811
    return make_edge(trained_model)


def post_photo(client: TestClient, data: bytes, *, device: str = "kiosk-1",
               sku_: str | None = "SKU-0000", **params: str):
    query = {"device": device, **params}
    if sku_ is not None:
        query["sku"] = sku_
    return client.post("/v1/photos", params=query, content=data,
                       headers={"Content-Type": "image/jpeg"})


def rejected_count(client: TestClient, reason: str) -> float:
    text = client.get("/metrics").text
    for family in text_string_to_metric_families(text):
        if family.name == "e2c_photos_rejected":
            for sample in family.samples:
                if (sample.name == "e2c_photos_rejected_total"
                        and sample.labels == {"door": "http", "reason": reason}):
                    return sample.value
    return 0.0


# --------------------------------------------------------------------------- uploads


def test_upload_raw_then_duplicate(edge: Edge) -> None:
    original = photo(exif=exif_with_gps_and_rotation())
    assert b"PhoneMaker" in original  # the test photo really carries metadata

    first = post_photo(edge.client, original, device="kiosk-7", sku_="SKU-0002",
                       captured_at="2026-11-24T10:00:00Z")
    assert first.status_code == 201, first.text
    body = first.json()
    assert body["duplicate"] is False
    sha = body["sha256"]

    again = post_photo(edge.client, original, device="kiosk-7", sku_="SKU-0002")
    assert again.status_code == 200, again.text
    assert again.json() == {"sha256": sha, "size": body["size"], "duplicate": True}

    (item,) = edge.spool.pending(10)
    assert item.sha256 == sha
    stored = edge.spool.read(sha)
    assert hashlib.sha256(stored).hexdigest() == sha
    assert len(stored) == body["size"] == item.size
    assert metadata_found(stored) == []  # EXIF (GPS, maker) stripped
    assert b"PhoneMaker" not in stored
    with Image.open(io.BytesIO(stored)) as im:
        assert im.format == "JPEG"
        assert im.size == (48, 64)  # EXIF orientation applied before stripping

    record = item.record
    assert (record.site, record.device, record.source.value, record.sku) == (
        SITE, "kiosk-7", "kiosk", "SKU-0002")
    assert record.captured_at is not None and record.captured_at.year == 2026
    assert (record.width, record.height, record.size) == (48, 64, body["size"])


def test_upload_multipart_field_file(edge: Edge) -> None:
    data = photo(color=(10, 120, 240))
    response = edge.client.post("/v1/photos", params={"device": "kiosk-8", "sku": "SKU-0001"},
                                files={"file": ("shot.jpg", data, "image/jpeg")})
    assert response.status_code == 201, response.text
    sha = response.json()["sha256"]
    (item,) = edge.spool.pending(10)
    assert item.sha256 == sha
    assert (item.record.device, item.record.sku) == ("kiosk-8", "SKU-0001")
    assert hashlib.sha256(edge.spool.read(sha)).hexdigest() == sha


BAD_INPUTS = [
    # (name, request kwargs builder, expected status, expected error)
    ("not_an_image", lambda: {"content": b"hello, this is plain text and not a photo"}, 415,
     "not_an_image"),
    ("truncated", lambda: {"content": render_photo(0, 0)[:3000]}, 400, "corrupt"),
    ("empty", lambda: {"content": b""}, 400, "empty"),
    ("oversized_raw", lambda: {"content": b"\xff\xd8\xff" + b"\0" * MAX_BYTES}, 413, "too_large"),
    ("oversized_multipart",
     lambda: {"files": {"file": ("big.jpg", b"\xff\xd8\xff" + b"\0" * MAX_BYTES, "image/jpeg")}},
     413, "too_large"),
    ("multipart_without_file", lambda: {"files": {"photo": ("a.jpg", photo(), "image/jpeg")}}, 400,
     "missing_photo"),
    # RFC 7578: a part named `file` is the photo, filename or not; these bytes are no photo.
    ("multipart_file_is_text",
     lambda: {"data": {"file": "not a file"}, "files": {"other": ("a.txt", b"x", "text/plain")}},
     415, "not_an_image"),
    ("unsupported_gif", lambda: {"content": b"GIF89a" + b"\0" * 64}, 415, "unsupported_format"),
]


@pytest.mark.parametrize("name,request_kwargs,status,error", BAD_INPUTS,
                         ids=[case[0] for case in BAD_INPUTS])
def test_bad_photo_is_refused_and_service_keeps_working(
    edge: Edge, name: str, request_kwargs: Callable[[], dict], status: int, error: str
) -> None:
    before = rejected_count(edge.client, error)
    kwargs = request_kwargs()
    headers = {"Content-Type": "image/jpeg"} if "content" in kwargs else {}
    response = edge.client.post("/v1/photos", params={"device": "kiosk-1", "sku": "SKU-0000"},
                                headers=headers, **kwargs)
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == error
    assert isinstance(body["detail"], str) and body["detail"]
    assert edge.spool.stats().items == 0  # nothing spooled for a refusal
    assert rejected_count(edge.client, error) == before + 1

    good = post_photo(edge.client, photo())
    assert good.status_code == 201, good.text
    assert edge.spool.stats().items == 1


BAD_METADATA = [
    ("kiosk_without_sku", {"device": "kiosk-1"}, "malformed"),
    ("device_with_slash", {"device": "kiosk/1", "sku": "SKU-0000"}, "invalid_id"),
    ("device_with_dot", {"device": "kiosk.1", "sku": "SKU-0000"}, "invalid_id"),
    ("device_too_long", {"device": "k" * 65, "sku": "SKU-0000"}, "invalid_id"),
    ("sku_too_long", {"device": "kiosk-1", "sku": "S" * 65}, "invalid_id"),
]


@pytest.mark.parametrize("name,params,error", BAD_METADATA, ids=[case[0] for case in BAD_METADATA])
def test_bad_metadata_is_refused(edge: Edge, name: str, params: dict, error: str) -> None:
    response = edge.client.post("/v1/photos", params=params, content=photo(),
                                headers={"Content-Type": "image/jpeg"})
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"] == error
    assert body["detail"]
    assert edge.spool.stats().items == 0
    assert post_photo(edge.client, photo()).status_code == 201


@pytest.mark.parametrize("params", [{"sku": "SKU-0000"}, {"device": "kiosk-1", "source": "robot"}],
                         ids=["missing_device", "unknown_source"])
def test_invalid_query_is_refused_with_error_and_detail(edge: Edge, params: dict) -> None:
    """Every refusal carries `error` and `detail`, also when FastAPI validates the query."""
    response = edge.client.post("/v1/photos", params=params, content=photo(),
                                headers={"Content-Type": "image/jpeg"})
    assert 400 <= response.status_code < 500, response.text
    body = response.json()
    assert body.get("error") == "malformed", body
    assert body.get("detail"), body
    assert edge.spool.stats().items == 0


def test_full_spool_refuses_with_507_and_keeps_what_it_has(
    make_edge: Callable[..., Edge], trained_model: TrainedModel  # noqa: F811
) -> None:
    first_photo = photo(color=(0, 200, 0))
    # Room for the first prepared photo only.
    budget = len(prepare(first_photo, PreparePolicy(max_bytes=MAX_BYTES)).data) + 100
    small = make_edge(trained_model, budget=budget)
    first = post_photo(small.client, first_photo)
    assert first.status_code == 201, first.text
    sha = first.json()["sha256"]
    kept = small.spool.read(sha)

    before = rejected_count(small.client, "spool_full")
    full = post_photo(small.client, render_photo(1, 3))
    assert full.status_code == 507, full.text
    assert full.json()["error"] == "spool_full"
    assert full.json()["detail"]
    assert rejected_count(small.client, "spool_full") == before + 1

    stats = small.spool.stats()
    assert stats.items == 1 and stats.bytes == len(kept) <= budget
    assert small.spool.read(sha) == kept
    assert hashlib.sha256(kept).hexdigest() == sha
    # A duplicate of what is already there is still acknowledged: it needs no room.
    assert post_photo(small.client, first_photo).status_code == 200


# --------------------------------------------------------------------------- recognition


def recognize(client: TestClient, data: bytes, **params: str):
    return client.post("/v1/recognize", params=params, content=data,
                       headers={"Content-Type": "image/jpeg"})


def test_recognize_held_out_photos(edge: Edge, trained_model: TrainedModel) -> None:  # noqa: F811
    catalogue = {p.sku: p for p in trained_model.products}
    for product in range(PRODUCTS):
        for data in trained_model.held_out(product):
            response = recognize(edge.client, data, request_id="req-1")
            assert response.status_code == 200, response.text
            answer = response.json()
            expected = catalogue[sku(product)]
            assert answer["recognised"] is True, answer
            assert answer["sku"] == expected.sku
            assert answer["name"] == expected.name
            assert answer["price"] == expected.price
            assert answer["currency"] == "EUR"
            assert answer["model_version"] == 1
            assert answer["request_id"] == "req-1"
            assert answer["top_k"][0]["sku"] == expected.sku
            assert 0.5 <= answer["confidence"] <= 1.0
    # Recognised photos are answered, not kept.
    assert edge.spool.stats().items == 0


def test_recognize_multipart(edge: Edge, trained_model: TrainedModel) -> None:  # noqa: F811
    data = trained_model.held_out(1)[0]
    response = edge.client.post("/v1/recognize", files={"file": ("p.jpg", data, "image/jpeg")})
    assert response.status_code == 200, response.text
    assert response.json()["sku"] == sku(1)


def test_recognize_without_model_is_503(make_edge: Callable[..., Edge]) -> None:
    empty = make_edge(None)
    response = recognize(empty.client, render_photo(0, 100))
    assert response.status_code == 503, response.text
    assert response.json()["error"] == "no_model"
    assert response.json()["detail"]


def test_recognize_bad_photo(edge: Edge) -> None:
    response = recognize(edge.client, b"definitely not a jpeg")
    assert response.status_code == 415
    assert response.json()["error"] == "not_an_image"
    assert edge.spool.stats().items == 0


@pytest.mark.parametrize("threshold", [0.5, 0.0], ids=["default", "always-answer"])
def test_retired_product_is_never_the_answer(
    make_edge: Callable[..., Edge], trained_model: TrainedModel, threshold: float  # noqa: F811
) -> None:
    edge = make_edge(trained_model, unrecognised_below=threshold)
    retired = sku(1)
    edge.catalogue.replace([
        p.model_copy(update={"status": ProductStatus.RETIRED}) if p.sku == retired else p
        for p in trained_model.products
    ])
    for data in trained_model.held_out(1):
        answer = recognize(edge.client, data).json()
        assert answer["sku"] != retired, answer
        for candidate in answer["top_k"]:
            if candidate["sku"] == retired:
                assert candidate["confidence"] == 0.0
        if threshold == 0.0:  # an answer is always given: it must be another product
            assert answer["recognised"] is True and answer["sku"] in {sku(0), sku(2)}
        else:  # the model is sure of a product that is no longer sold: unsure, not wrong
            assert answer["recognised"] is False and answer["sku"] is None
    # The other products are still recognised.
    assert recognize(edge.client, trained_model.held_out(0)[0]).json()["sku"] == sku(0)


def test_answers_carry_the_category_beside_the_product(
    make_edge: Callable[..., Edge], trained_model: TrainedModel  # noqa: F811
) -> None:
    """Coarse beside fine: each guess names its category and the answer gives the category
    with the most probability, summed over its products (retired ones count for nothing)."""
    edge = make_edge(trained_model, unrecognised_below=0.0)
    categories = {sku(0): "Fruit", sku(1): "Fruit", sku(2): "Dairy"}
    edge.catalogue.replace([p.model_copy(update={"coarse": categories[p.sku]})
                            for p in trained_model.products])
    answer = recognize(edge.client, trained_model.held_out(0)[0]).json()
    assert {c["sku"]: c["coarse"] for c in answer["top_k"]} == categories  # 3 classes, top 3
    fruit = sum(c["confidence"] for c in answer["top_k"] if c["coarse"] == "Fruit")
    assert answer["coarse"] == "Fruit"
    assert answer["coarse_confidence"] == pytest.approx(fruit, abs=1e-5)
    assert answer["coarse_confidence"] >= answer["confidence"]

    # Retire both fruits: their probability no longer counts towards "Fruit".
    edge.catalogue.replace([p.model_copy(update={"coarse": categories[p.sku],
                                                 "status": ProductStatus.RETIRED if p.sku != sku(2)
                                                 else p.status})
                            for p in trained_model.products])
    answer = recognize(edge.client, trained_model.held_out(0)[0]).json()
    assert answer["coarse"] == "Dairy"
    assert answer["coarse_confidence"] == pytest.approx(answer["top_k"][0]["confidence"], abs=1e-6)

    # A catalogue without categories: no coarse answer, rather than a made-up one.
    edge.catalogue.replace([p.model_copy(update={"coarse": ""}) for p in trained_model.products])
    answer = recognize(edge.client, trained_model.held_out(0)[0]).json()
    assert answer["coarse"] is None and answer["coarse_confidence"] is None
    assert all(c["coarse"] is None for c in answer["top_k"])


def test_unsure_answer_keeps_the_photo_for_labelling(
    make_edge: Callable[..., Edge], trained_model: TrainedModel  # noqa: F811
) -> None:
    unsure = make_edge(trained_model, unrecognised_below=1.01)
    data = trained_model.held_out(2)[0]
    response = recognize(unsure.client, data, device="phone-9", request_id="r-77")
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["recognised"] is False
    assert answer["sku"] is None and answer["name"] is None and answer["price"] is None
    assert answer["top_k"][0]["sku"] == sku(2)

    wait_until(lambda: unsure.spool.stats().items == 1, what="the unsure photo to be spooled")
    (item,) = unsure.spool.pending(5)
    record = item.record
    assert record.source.value == "shopper"
    assert (record.site, record.device, record.request_id) == (SITE, "phone-9", "r-77")
    assert record.sku is None
    assert record.edge_model_version == 1
    assert record.confidence == pytest.approx(answer["confidence"])
    assert [g.sku for g in record.top_guesses] == [c["sku"] for c in answer["top_k"]]
    stored = unsure.spool.read(item.sha256)
    assert hashlib.sha256(stored).hexdigest() == item.sha256
    assert metadata_found(stored) == []


# --------------------------------------------------------------------------- status, metrics


def test_status_and_metrics(edge: Edge, trained_model: TrainedModel) -> None:  # noqa: F811
    assert edge.client.get("/healthz").json() == {"status": "ok"}
    assert post_photo(edge.client, photo()).status_code == 201
    status = edge.client.get("/v1/status")
    assert status.status_code == 200
    body = status.json()
    assert body["site"] == SITE
    assert body["model_version"] == 1
    assert body["model_classes"] == PRODUCTS
    assert body["catalogue_products"] == len(trained_model.products)
    assert body["spool"]["items"] == 1
    assert body["spool"]["bytes"] == edge.spool.stats().bytes > 0

    before = rejected_count(edge.client, "not_an_image")
    post_photo(edge.client, b"nope")
    metrics = edge.client.get("/metrics")
    assert metrics.status_code == 200
    assert 'e2c_photos_rejected_total{door="http",reason="not_an_image"}' in metrics.text
    assert rejected_count(edge.client, "not_an_image") == before + 1

