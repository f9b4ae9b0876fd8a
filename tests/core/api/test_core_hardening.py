"""The core answers every input with a clear 4xx or a 2xx, never a 500 it did not mean; every
error has one body, `{"error": code, "detail": message}`; ids and labels follow the one
identifiers rule; times carry their zone."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from edge2core.common.errors import Invalid
from edge2core.common.events import META_HEADER, Guess, PhotoRecord, Source
from edge2core.common.products import Product
from edge2core.config import CoreSettings
from edge2core.core.api.app import create_core_app
from edge2core.core.curate.datasets import DatasetQuery
from edge2core.core.db.schema import LabelTaskRow
from edge2core.core.service import build_core_services
from tests.support.grocery import store_kiosk
from tests.support.jpegs import jpeg_bytes

ADMIN = "admin-token-for-hardening-0001"
SITE = "site-token-for-hardening-0001"
AS_ADMIN = {"Authorization": f"Bearer {ADMIN}"}
AS_SITE = {"Authorization": f"Bearer {SITE}"}
OFFSET = re.compile(r"(Z|[+-]\d\d:\d\d)$")


@pytest.fixture
def core(tmp_path: Path):  # type: ignore[no-untyped-def]
    services = build_core_services(CoreSettings(
        data_dir=tmp_path, admin_token=ADMIN, site_tokens={"store-1": SITE}))
    services.catalogue.add(Product(sku="SKU-A", name="apple", price=1.0))
    return services, TestClient(create_core_app(services), headers=AS_ADMIN)


def is_error(response, status: int, code: str | None = None) -> bool:  # type: ignore[no-untyped-def]
    body = response.json()
    detail, issues = body.get("detail"), body.get("issues")
    listed = isinstance(issues, list) and all({"loc", "msg", "type"} <= set(i) for i in issues)
    return (response.status_code == status and isinstance(body.get("error"), str)
            and isinstance(detail, str) and bool(detail)
            and (issues is None or (status == 422 and listed))
            and (code is None or body["error"] == code))


def test_bad_image_keys_are_refused_not_a_500(core) -> None:  # type: ignore[no-untyped-def]
    _services, client = core
    for key in ("", "..", "../../etc/passwd", "catalogue/images/../../x.jpg", "/abs.jpg",
                "a//b.jpg", "models/secret.onnx"):
        answer = client.patch("/v1/products/SKU-A", json={"image_key": key})
        assert is_error(answer, 422, "invalid"), (key, answer.text)
        added = client.post("/v1/products", json={"sku": "SKU-X", "name": "x", "price": 1,
                                                   "image_key": key})
        assert is_error(added, 422, "invalid"), (key, added.text)
    assert client.patch("/v1/products/SKU-A", json={"image_key": None}).status_code == 200


def test_numbers_out_of_range_are_refused_not_a_500(core) -> None:  # type: ignore[no-untyped-def]
    _services, client = core
    huge = "99999999999999999999"
    for path in (f"/v1/models/{huge}", f"/v1/models/{huge}/artifact", f"/v1/datasets/{huge}",
                 f"/v1/models/{huge}/compare/1", f"/v1/datasets/1/diff/{huge}",
                 f"/v1/models/{2**31}"):
        assert is_error(client.get(path), 422, "invalid"), path
    # Also with only a site's token (a route a site may read).
    site = client.get(f"/v1/models/{huge}/artifact", headers=AS_SITE)
    assert is_error(site, 422, "invalid")
    assert is_error(client.get(f"/v1/models/{huge}", headers=AS_SITE), 401, "unauthorized")
    assert is_error(client.get("/v1/labelling/tasks", params={"offset": huge}), 422)
    assert is_error(client.post("/v1/training-runs", json={"dataset_version": int(huge)}), 422)
    assert is_error(client.post("/v1/models/rollback", json={"reason": "x", "to": int(huge)}),
                    422)
    assert is_error(client.get("/v1/models/0"), 422)
    assert client.get("/v1/models/1").status_code == 404  # in range: simply not there


def test_json_types_and_times_are_read_as_the_document_states(core) -> None:  # type: ignore[no-untyped-def]
    _services, client = core
    assert is_error(client.post("/v1/training-runs", json={"dataset_version": "1"}), 422)
    assert is_error(client.post("/v1/models/1/promote", json={"force": 0}), 422)
    assert is_error(client.patch("/v1/products/SKU-A", json={"price": "1.5"}), 422)
    for since in ("2026-11-30T09:00:00", "0.5", "0001-01-01T00:00:00+14:00",
                  "9999-12-31T23:59:59-14:00"):
        assert is_error(client.get("/v1/audit", params={"since": since}), 422), since
    assert client.get("/v1/audit", params={"since": "2026-11-30T09:00:00+01:00"}).status_code == 200
    erase = client.post("/v1/governance/erasures", json={"since": "2026-11-30T09:00:00"})
    assert is_error(erase, 422)


def test_every_error_has_one_body(core) -> None:  # type: ignore[no-untyped-def]
    _services, client = core
    invalid = client.post("/v1/products", json={"sku": "SKU-B"})
    assert is_error(invalid, 422, "invalid")
    assert invalid.json()["issues"][0]["loc"] == ["body", "name"]
    assert invalid.json()["detail"].startswith("name: ")
    not_json = client.post("/v1/products", content=b"\xff{", headers={
        "Content-Type": "application/json"})
    assert is_error(not_json, 422, "invalid")
    assert is_error(client.get("/v1/nothing-here"), 404, "not_found")
    assert is_error(client.get("/v1/products/NOPE"), 404, "not_found")
    assert is_error(client.get("/v1/products", headers={"Authorization": "Bearer wrong"}), 401,
                    "unauthorized")
    unknown = client.post("/v1/labelling/tasks/" + "0" * 64 + "/confirm")
    assert is_error(unknown, 404, "not_found")
    assert is_error(client.post("/v1/models/rollback", json={"reason": " "}), 400)
    assert is_error(client.get("/v1/models/1/artifact", headers={"Range": "bytes=5-"}), 404)


@pytest.mark.parametrize(("method", "path", "allowed"), [
    ("DELETE", "/v1/datasets", "GET, HEAD, POST"),
    ("OPTIONS", "/v1/products", "GET, HEAD, POST, PUT"),
    ("GET", "/v1/models/rollback", "POST"),
    ("DELETE", "/v1/products/images", "POST"),
    ("PUT", "/v1/products/SKU-A", "GET, HEAD, PATCH"),
    ("DELETE", "/v1/images/" + "a" * 64, "GET, HEAD, PUT"),
    ("POST", "/v1/models/production", "GET, HEAD"),
])
def test_405_names_every_method_of_the_resource(core, method: str, path: str,  # type: ignore[no-untyped-def]
                                                allowed: str) -> None:
    _services, client = core
    answer = client.request(method, path)
    assert is_error(answer, 405, "method_not_allowed")
    assert answer.headers["Allow"] == allowed


def test_an_unexpected_failure_is_a_500_that_tells_nothing_of_the_code(
    core, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,  # type: ignore[no-untyped-def]
) -> None:
    services, client = core

    def broken() -> list:  # type: ignore[type-arg]
        raise RuntimeError("boom in /srv/secret/registry.py line 42")

    services.registry.list = broken
    answer = client.get("/v1/models")
    assert is_error(answer, 500, "internal_error")
    assert "boom" not in answer.text and "/srv" not in answer.text and "line" not in answer.text
    # Logged with its traceback: on stdout/stderr (structlog's own printer) or, once logging
    # is configured (an earlier test may have done it), through the stdlib handlers.
    printed = capsys.readouterr()
    records = "".join(f"{r.getMessage()} {r.exc_text or ''} {r.exc_info or ''}" for r in caplog.records)
    logged = printed.out + printed.err + records + caplog.text
    assert "RuntimeError" in logged and "boom" in logged


def test_answers_carry_times_with_their_zone(core) -> None:  # type: ignore[no-untyped-def]
    services, client = core
    store_kiosk(services, [jpeg_bytes(color=(i, 9, 9)) for i in range(2)], "SKU-A", "train")
    services.datasets.build(DatasetQuery())
    services.registry.register(b"model", dataset_version=1, classes=["SKU-A", "SKU-B"],
                               metrics={}, params={})
    times = [client.get("/v1/models/1").json()["created_at"],
             client.get("/v1/datasets/1").json()["created_at"],
             client.get("/v1/models").json()[0]["created_at"],
             client.get("/v1/datasets").json()[0]["created_at"],
             client.get("/v1/products/SKU-A").json()["updated_at"],
             client.get("/v1/audit").json()[0]["at"]]
    refused = jpeg_bytes(exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x00")
    record = _record(refused)
    client.put(f"/v1/images/{record.sha256}", content=refused,
               headers={**AS_SITE, META_HEADER: record.model_dump_json()})
    quarantined = client.get("/v1/governance/quarantine").json()
    assert quarantined and quarantined[0]["reason"] == "metadata_present"
    times += [q[k] for q in quarantined for k in ("first_at", "last_at")]
    assert all(OFFSET.search(t) for t in times), times


def _record(data: bytes, **fields: object) -> PhotoRecord:
    return PhotoRecord(**{"site": "store-1", "device": "kiosk-1", "source": Source.KIOSK,
                          "sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
                          "width": 64, "height": 48, **fields})


def test_ids_in_a_photo_record_follow_the_one_rule(core) -> None:  # type: ignore[no-untyped-def]
    services, client = core
    photo = jpeg_bytes(color=(5, 6, 7))
    # Built past validation, as an older edge might have spooled it.
    guessed = _record(photo, source=Source.SHOPPER,
                      top_guesses=[Guess.model_construct(sku="../../e2c-escape", confidence=0.4)])
    answer = client.put(f"/v1/images/{guessed.sha256}", content=photo,
                        headers={**AS_SITE, META_HEADER: guessed.model_dump_json()})
    assert is_error(answer, 400, "bad_metadata")  # the record's own pattern refuses it
    assert client.head(f"/v1/images/{guessed.sha256}", headers=AS_SITE).status_code == 404
    # A SKU that is a path never passes the photo record (its pattern is the rule).
    meta = json.loads(guessed.model_dump_json()) | {"sku": "../../e2c-escape", "top_guesses": []}
    answer = client.put(f"/v1/images/{guessed.sha256}", content=photo,
                        headers={**AS_SITE, META_HEADER: json.dumps(meta)})
    assert is_error(answer, 400, "bad_metadata")
    # The same rule under every upload path: the receiver itself refuses.
    with pytest.raises(Invalid) as refused:
        services.receiver.accept_bytes(guessed, photo)
    assert refused.value.code == "invalid_id"


def test_labels_a_person_gives_follow_the_one_rule(core) -> None:  # type: ignore[no-untyped-def]
    services, client = core
    photo = jpeg_bytes(color=(50, 60, 70))
    record = _record(photo, source=Source.SHOPPER, top_guesses=[Guess(sku="SKU-A", confidence=0.3)])
    services.receiver.accept_bytes(record, photo)
    tasks = f"/v1/labelling/tasks/{record.sha256}"
    assert is_error(client.post(f"{tasks}/correct", json={"sku": "../../e2c-escape"}), 422)
    assert is_error(client.post(f"{tasks}/new-product", json={"sku": "../x", "name": "x"}), 422)
    # A guess kept before ids were checked is never confirmed as a label.
    with services.sessions.begin() as session:
        session.get(LabelTaskRow, record.sha256).top_sku = "../../e2c-escape"
    assert is_error(client.post(f"{tasks}/confirm"), 422, "unknown_sku")
    assert client.post(f"{tasks}/correct", json={"sku": "SKU-A"}).json()["sku"] == "SKU-A"
    # Catalogue and dataset queries take SKUs by the same rule.
    assert is_error(client.post("/v1/products", json={"sku": "../../x", "name": "x", "price": 1}),
                    422)
    assert is_error(client.post("/v1/datasets", json={"skus": ["../../x"]}), 422)
    assert is_error(client.get("/v1/sites/a.b/why"), 422)
