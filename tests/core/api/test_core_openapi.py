"""The core's OpenAPI document says what the core does: schemathesis, with every check, against
the real core app (served by uvicorn on a free loopback port, with an admin token and site
tokens, authenticated as the admin), in every phase (examples, coverage, fuzzing, stateful),
deterministic (fixed seed, deterministic generation, which keeps no example database) and bounded (a few
examples per operation, about a minute on two cores).

The resumable upload routes under /v1/uploads (tus) are in, with one allowance the protocol
makes (see CONFIG); their behaviour with real clients is tested in tests/integration.

One allowance: the core refuses some well-formed requests with 422 for rules a JSON Schema
cannot state (a promotion's end after its start, an image key that is not in the store, bytes
that are not an image, a canary without sites, an unknown SKU in a label). So
`positive_data_acceptance` also expects 422, and the check below keeps that honest: such a 422
must name a rule of the core (a code of its own, or a validator's `value_error`), never a
constraint the document itself states (a type, a pattern, a range, a missing field).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.paths import REPO

try:
    import schemathesis
except ImportError:  # pragma: no cover - a dev dependency
    schemathesis = None  # type: ignore[assignment]

ADMIN = "admin-token-for-schemathesis-0001"
SITES = {"store-1": "site-token-for-schemathesis-01"}
SEED = 20261130
MAX_EXAMPLES = 40


# 422 for rules beyond the schema (see the module's docstring). A product may have no image:
# then its image answers 404, which the stateful phase would take for a created resource gone.
CONFIG = """
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "422", "429"]

[[operations]]
include-path = "/v1/products/{sku}/image"
include-method = "GET"
checks.ensure_resource_availability.enabled = false

# tus 1.0 (core protocol): a request whose Tus-Resumable is missing or not a version the server
# speaks MUST be answered 412 Precondition Failed (with Tus-Version), which neither check lists
# for a request that breaks the document. Their defaults, plus 412, for the tus routes that
# require the header.
[[operations]]
include-path-regex = "^/v1/uploads"
include-method-regex = "^(POST|PATCH|DELETE)$"
checks.negative_data_rejection.expected-statuses = [
    "400", "401", "403", "404", "405", "406", "409", "412", "415", "422", "428", "429", "5xx"]
checks.missing_required_header.expected-statuses = [
    "400", "401", "403", "406", "412", "415", "422"]
"""


if schemathesis is not None:

    # tus PATCH bodies (application/offset+octet-stream) are raw bytes, as octet-stream.
    schemathesis.serializer.alias("application/offset+octet-stream", "application/octet-stream")

    @schemathesis.check
    def refused_only_for_rules_beyond_the_schema(ctx: Any, response: Any, case: Any) -> bool | None:
        """A schema-valid request answered 422 must be refused by a rule the schema cannot
        state, not by one of its own constraints (which would mean the document is wrong)."""
        meta = case.meta
        if meta is None or not meta.generation.mode.is_positive or response.status_code != 422:
            return None
        try:
            body = json.loads(response.content or b"{}")
        except ValueError:
            body = {}
        found = body.get("issues") if isinstance(body.get("issues"), list) else []
        schema_rules = [e for e in found if e.get("type") != "value_error"]
        if schema_rules:
            raise AssertionError(
                f"a request the document allows was refused for a rule the document states: "
                f"{schema_rules[:3]}")
        return None


def seed_core(services: Any) -> None:
    """Something behind the ids schemathesis draws first (version 1, SKU "0"): a product with
    an image and a promotion, kiosk photos of one product and a dataset of them (one class: a
    training run is refused at once), a shopper photo in the labelling queue, a production
    model and a candidate (not real ONNX: whatever would run them must fail cleanly)."""
    from datetime import UTC, datetime

    from edge2core.common.events import Guess, PhotoRecord, Source
    from edge2core.common.products import Product, Promotion
    from edge2core.core.catalogue.catalogue import store_image
    from edge2core.core.curate.datasets import DatasetQuery
    from tests.support.grocery import store_kiosk
    from tests.support.jpegs import jpeg_bytes

    image, _new = store_image(services.store, jpeg_bytes(color=(9, 9, 9)))
    week = Promotion(id="0", kind="percent_off", value=10, label="-10%",
                     starts_at=datetime(2026, 11, 23, tzinfo=UTC))
    for sku in ("0", "SKU-A"):
        services.catalogue.add(Product(sku=sku, name=f"product {sku}", price=1.5,
                                       image_key=image, promotions=[week]))
    store_kiosk(services, [jpeg_bytes(color=(i * 20, 40, 60)) for i in range(4)], "SKU-A", "train")
    services.datasets.build(DatasetQuery())
    shopper = jpeg_bytes(color=(1, 2, 3))
    import hashlib

    services.receiver.accept_bytes(PhotoRecord(
        site="store-1", device="phone-1", source=Source.SHOPPER, sha256=hashlib.sha256(
            shopper).hexdigest(), size=len(shopper), width=64, height=48,
        top_guesses=[Guess(sku="SKU-A", confidence=0.4)], confidence=0.4), shopper)
    services.registry.register(b"not an onnx model", dataset_version=1, classes=["0", "SKU-A"],
                               metrics={}, params={"path": "fast"})
    services.registry.register(b"not an onnx model either", dataset_version=1,
                               classes=["0", "SKU-A"], metrics={}, params={"path": "fast"},
                               promote=False)


@pytest.fixture
def core_url(tmp_path: Path):  # type: ignore[no-untyped-def]
    import uvicorn

    from edge2core.common.net import free_port
    from edge2core.config import CoreSettings
    from edge2core.core.api.app import create_core_app
    from edge2core.core.service import build_core_services

    settings = CoreSettings(data_dir=tmp_path / "core", admin_token=ADMIN, site_tokens=SITES)
    services = build_core_services(settings)
    seed_core(services)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_core_app(services),
                                           host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the core did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.mark.skipif(schemathesis is None, reason="schemathesis is not installed (dev extra)")
@pytest.mark.timeout(600)
def test_the_core_does_what_its_openapi_document_says(core_url: str, tmp_path: Path) -> None:
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    command = [
        str(Path(sys.executable).with_name("schemathesis")), "--config-file", str(config),
        "run", f"{core_url}/openapi.json",
        "--header", f"Authorization: Bearer {ADMIN}",
        "--checks", "all",
        "--max-examples", str(MAX_EXAMPLES),
        "--seed", str(SEED), "--generation-deterministic",
        "--workers", "1", "--no-color", "--request-timeout", "60",
    ]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": __name__,
           "PYTHONPATH": os.pathsep.join([str(REPO),
                                          os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=540)
    report = done.stdout[-20000:] + done.stderr[-4000:]
    assert done.returncode == 0, report
    assert "No issues found" in report or " passed" in report, report


def test_the_document_names_the_error_body_the_scheme_and_binary_bodies(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from edge2core.config import CoreSettings
    from edge2core.core.api.app import create_core_app
    from edge2core.core.service import build_core_services

    settings = CoreSettings(data_dir=tmp_path, admin_token=ADMIN, site_tokens=SITES)
    client = TestClient(create_core_app(build_core_services(settings)))
    assert client.get("/openapi.json").status_code == 401
    doc = client.get("/openapi.json", headers={"Authorization": f"Bearer {ADMIN}"}).json()
    assert doc["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer",
        "description": doc["components"]["securitySchemes"]["bearer"]["description"]}
    assert {"error", "detail"} <= set(doc["components"]["schemas"]["Error"]["required"])
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    paths = doc["paths"]
    assert "security" not in paths["/healthz"]["get"]
    for path, item in paths.items():
        for method, op in item.items():
            if path != "/healthz" and (method, path) != ("options", "/v1/uploads"):
                assert op.get("security") == [{"bearer": []}], (method, path)
                assert "401" in op["responses"], (method, path)
            for status, answer in op["responses"].items():
                if int(status) >= 400 and method != "head":
                    assert answer["content"]["application/json"]["schema"] == {
                        "$ref": "#/components/schemas/Error"}, (method, path, status)
    assert set(paths["/v1/products/images"]["post"]["requestBody"]["content"]) == {
        "image/jpeg", "image/png", "image/webp"}
    assert "image/jpeg" in paths["/v1/images/{sha256}"]["put"]["requestBody"]["content"]
    artifact = paths["/v1/models/{version}/artifact"]["get"]["responses"]
    assert set(artifact["200"]["content"]) == {"application/octet-stream"}
    assert {"200", "206", "404", "416", "422"} <= set(artifact)
    version = next(p for p in paths["/v1/models/{version}"]["get"]["parameters"]
                   if p["name"] == "version")
    assert version["schema"]["maximum"] == 2**31 - 1
    created = doc["components"]["schemas"]["ModelInfo"]["properties"]["created_at"]
    assert created["format"] == "date-time"
