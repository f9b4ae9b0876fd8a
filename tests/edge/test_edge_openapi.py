"""The edge's OpenAPI document says what the HTTP door really does, and schemathesis agrees.

The real edge app (spool on disk, prepare pipeline, ONNX recogniser with a trained model, device
identity on), served by uvicorn on a loopback port, is driven by schemathesis with every check
it has (default settings, but 413 counts as a refusal), a bounded number of examples per
operation and deterministic generation. Image media types get real product photos, since a
schema can only say "binary"; the two rules a list of query parameters cannot state (a named
device is the token's, a kiosk capture names its SKU) are applied to the generated values.
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from PIL import Image
from schemathesis.config import SchemathesisConfig

from edge2core.common.identifiers import IdKind, is_valid
from edge2core.edge.api import create_edge_app
from edge2core.edge.devices import DeviceRegistry, DeviceRole
from edge2core.edge.service import status_report
from edge2core.sim.synthetic import render_photo
from tests.edge.test_edge_http import MAX_BYTES, SITE, build_edge
from tests.support.backends import CoreServer
from tests.support.helpers_model import TrainedModel, trained_model  # noqa: F401 (fixture)

KIOSK = "kiosk-1"
TOKEN_ROUTES = {("post", "/v1/photos"), ("post", "/v1/recognize")}


def edge_app(root: Path, model: TrainedModel | None) -> tuple[FastAPI, str, Any]:
    parts, settings_ = build_edge(root, model)
    registry = DeviceRegistry(root / "devices.json")
    token = registry.add(KIOSK, DeviceRole.KIOSK)
    app = create_edge_app(parts.gateway, SITE, lambda: status_report(settings_, parts), MAX_BYTES,
                          devices=registry)
    return app, token, parts


@pytest.fixture
def edge(tmp_path: Path, trained_model: TrainedModel) -> Iterator[tuple[str, str]]:  # noqa: F811
    """The edge on uvicorn (a free loopback port): its URL and a kiosk's token."""
    app, token, parts = edge_app(tmp_path / "edge", trained_model)
    with CoreServer(app) as server:
        yield server.url, token
    parts.gateway.close()
    parts.spool.close()


# --------------------------------------------------------------------------- the document


def test_document_declares_statuses_errors_security_and_bodies(tmp_path: Path) -> None:
    app, _token, parts = edge_app(tmp_path, None)
    try:
        doc = app.openapi()
    finally:
        parts.gateway.close()
        parts.spool.close()
    components = doc["components"]
    error = components["schemas"]["ErrorBody"]
    assert set(error["required"]) == {"error", "detail"}
    assert {"HTTPValidationError", "ValidationError"}.isdisjoint(components["schemas"])
    (scheme,) = components["securitySchemes"].values()
    assert scheme == {**scheme, "type": "http", "scheme": "bearer"}

    expected = {
        ("post", "/v1/photos"): {"200", "201", "400", "401", "403", "413", "415", "500", "507"},
        ("post", "/v1/recognize"): {"200", "400", "401", "403", "413", "415", "500", "503"},
        ("get", "/healthz"): {"200", "500"},
        ("get", "/v1/status"): {"200", "500"},
    }
    for path, methods in doc["paths"].items():
        for method, operation in methods.items():
            responses = operation["responses"]
            assert set(responses) == expected[(method, path)], (method, path)
            for status, response in responses.items():
                if int(status) >= 400:
                    (media,) = response["content"]
                    assert media == "application/json"
                    assert response["content"][media]["schema"] == {
                        "$ref": "#/components/schemas/ErrorBody"}
            if (method, path) in TOKEN_ROUTES:
                schemes = components["securitySchemes"]
                assert operation["security"] == [{name: []} for name in schemes]
                assert "WWW-Authenticate" in responses["401"]["headers"]
                body = operation["requestBody"]["content"]
                assert set(body) == {"image/jpeg", "image/png", "image/webp", "multipart/form-data"}
                assert body["image/jpeg"]["schema"] == {
                    "type": "string", "format": "binary", "minLength": 1, "maxLength": MAX_BYTES}
                form = body["multipart/form-data"]["schema"]
                assert form["properties"]["file"]["format"] == "binary"
                assert form["required"] == ["file"]
                params = {p["name"]: p for p in operation["parameters"]}
                # Never a header parameter for the token: the security scheme says it.
                assert all(p["in"] == "query" for p in params.values())
                for name in ("device", "sku", "request_id"):
                    if name in params:
                        schema = params[name]["schema"]
                        assert schema["type"] == "string" and schema["pattern"].startswith("^")
                if "captured_at" in params:
                    assert params["captured_at"]["schema"] == {
                        **params["captured_at"]["schema"], "type": "string", "format": "date-time"}
            else:
                assert "security" not in operation


def test_without_device_identity_no_token_is_documented(tmp_path: Path) -> None:
    parts, settings_ = build_edge(tmp_path, None)
    try:
        app = create_edge_app(parts.gateway, SITE, lambda: status_report(settings_, parts),
                              MAX_BYTES)
        doc = app.openapi()
    finally:
        parts.gateway.close()
        parts.spool.close()
    assert "securitySchemes" not in doc.get("components", {})
    photos = doc["paths"]["/v1/photos"]["post"]
    assert "security" not in photos and not {"401", "403"} & set(photos["responses"])


# --------------------------------------------------------------------------- schemathesis


def _encoded(fmt: str) -> st.SearchStrategy[bytes]:
    """Real product photos: the schema can say "binary", not "a photo of a product"."""

    def encode(args: tuple[int, int]) -> bytes:
        product, index = args
        if fmt == "JPEG":
            return render_photo(product, index)
        with Image.open(io.BytesIO(render_photo(product, index))) as im:
            out = io.BytesIO()
            im.convert("RGB").save(out, format=fmt)
            return out.getvalue()

    return st.tuples(st.integers(0, 2), st.integers(0, 400)).map(encode)


PHOTO_MEDIA = {"image/jpeg": _encoded("JPEG"), "image/png": _encoded("PNG"),
               "image/webp": _encoded("WEBP")}


def _document() -> dict[str, Any]:
    """The document, from an edge built only to say it (it is the same with or without a model)."""
    with tempfile.TemporaryDirectory() as root:
        app, _token, parts = edge_app(Path(root), None)
        try:
            return app.openapi()
        finally:
            parts.gateway.close()
            parts.spool.close()


# Every check as configured by default, except that a body over the documented `maxLength` is
# rightly refused with 413 Content Too Large: schemathesis' default list of refusals plus 413.
CONFIG = """
[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428",
                     "429", "5xx"]
"""
schema = schemathesis.openapi.from_dict(_document(), config=SchemathesisConfig.from_str(CONFIG))


@pytest.fixture
def photo_media() -> Iterator[None]:
    """Photos for the image media types (and the multipart part's), for this test only."""
    from schemathesis.core.media_types import MEDIA_TYPE_STRATEGIES

    # Straight into the table: `schemathesis.openapi.media_type` would also replace the built-in
    # serializers of these media types (for good) with one that cannot send `Binary` values.
    saved = dict(MEDIA_TYPE_STRATEGIES)
    MEDIA_TYPE_STRATEGIES.update(PHOTO_MEDIA)
    yield
    MEDIA_TYPE_STRATEGIES.clear()
    MEDIA_TYPE_STRATEGIES.update(saved)


@pytest.mark.timeout(120)
@schema.parametrize()
@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_edge_conforms_to_its_openapi(case: Any, edge: tuple[str, str], photo_media: None) -> None:
    url, token = edge
    # Two rules a list of query parameters cannot say: a device named must be the token's, and
    # a kiosk capture names its product. Values that break the id rule stay (negative tests).
    query = case.query
    if query is not None and is_valid(IdKind.DEVICE, query.get("device")):
        query["device"] = KIOSK
    if (query is not None and case.path == "/v1/photos"
            and query.get("source", "kiosk") == "kiosk" and "sku" not in query):
        query["sku"] = "SKU-0001"
    # A generated bearer token is replaced with the kiosk's (an unknown one only ever gets 401);
    # a missing or malformed Authorization header stays as generated.
    for name, value in list((case.headers or {}).items()):
        if name.lower() == "authorization" and str(value).startswith("Bearer "):
            case.headers[name] = f"Bearer {token}"
    # Every check schemathesis has: call_and_validate's default set is all of them.
    case.call_and_validate(base_url=url)
