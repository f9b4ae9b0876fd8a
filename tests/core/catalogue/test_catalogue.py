"""The product catalogue (issue 7): promotions and their windows, the Catalogue on both
backends with its change hook and audit log, import from a grocery-layout folder, the REST
API, the command line, the migration, and an edge answer carrying the active promotion."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy import text
from typer.testing import CliRunner

from edge2core.common.objectstore import ObjectStore
from edge2core.common.products import (
    Product,
    ProductStatus,
    Promotion,
    active_promotion,
    effective_price,
    priced,
)
from edge2core.core.api.app import create_core_app
from edge2core.core.audit import AuditLog
from edge2core.core.catalogue.catalogue import (
    Catalogue,
    DuplicateProduct,
    ImportReport,
    InvalidProduct,
    UnknownProduct,
    store_image,
)
from edge2core.core.catalogue.grocery import grocery_price, read_grocery
from edge2core.core.cli.catalogue import catalogue_app
from edge2core.core.db import migrations
from edge2core.core.db.engine import make_engine, make_sessionmaker
from edge2core.core.service import build_core_services
from edge2core.edge.catalogue_replica import CatalogueReplica
from edge2core.edge.inference import Recognizer
from tests.support.backends import Backend, CoreServer
from tests.support.helpers_model import TrainedModel, sku, trained_model  # noqa: F401 (fixture)
from tests.support.jpegs import jpeg_bytes

T0 = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)


def promo(id: str, kind: str = "percent_off", value: float | None = 20.0, *,
          starts: datetime = T0, ends: datetime | None = T0 + 7 * DAY, label: str = "") -> Promotion:
    return Promotion(id=id, kind=kind, value=value, starts_at=starts, ends_at=ends, label=label)


# --- pure rules -----------------------------------------------------------------------------


def test_active_promotion_follows_its_window() -> None:
    product = Product(sku="SKU-1", name="Milk", price=1.99, promotions=[promo("week")])
    assert active_promotion(product, T0 - timedelta(seconds=1)) is None
    assert active_promotion(product, T0).id == "week"  # the start is inclusive
    assert active_promotion(product, T0 + 7 * DAY - timedelta(seconds=1)).id == "week"
    assert active_promotion(product, T0 + 7 * DAY) is None  # the end is exclusive
    assert effective_price(product, T0 + DAY) == 1.59  # 1.592 rounded to cents
    assert effective_price(product, T0 - DAY) == 1.99
    open_ended = product.model_copy(update={"promotions": [promo("always", ends=None)]})
    assert active_promotion(open_ended, T0 + 1000 * DAY).id == "always"
    # A time in another zone is the same instant.
    cet = timezone(timedelta(hours=1))
    assert active_promotion(product, datetime(2026, 11, 20, 12, 59, tzinfo=cet)) is None
    assert active_promotion(product, datetime(2026, 11, 20, 13, 0, tzinfo=cet)).id == "week"
    with pytest.raises(ValueError, match="timezone"):
        active_promotion(product, datetime(2026, 11, 21))


def test_overlapping_promotions_choose_the_lowest_price() -> None:
    product = Product(sku="SKU-1", name="Juice", price=3.00, promotions=[
        promo("ten", value=10),
        promo("override", "price_override", 2.50, starts=T0 + DAY),
        promo("three-for-two", "multi_buy", None, label="3 for 2"),
        promo("too-high", "price_override", 4.00),
    ])
    assert priced(product, T0) == (product.promotions[0], 2.70)
    assert priced(product, T0 + 2 * DAY) == (product.promotions[1], 2.50)
    only_multi = product.model_copy(update={"promotions": [product.promotions[2]]})
    assert priced(only_multi, T0)[0].id == "three-for-two"
    assert effective_price(only_multi, T0) == 3.00  # a multi-buy does not change the unit price
    never_higher = product.model_copy(update={"promotions": [product.promotions[3]]})
    assert effective_price(never_higher, T0) == 3.00
    retired = product.model_copy(update={"status": ProductStatus.RETIRED})
    assert priced(retired, T0) == (None, 3.00)


@pytest.mark.parametrize("bad", [
    {"kind": "percent_off", "value": 0},
    {"kind": "percent_off", "value": 100},
    {"kind": "percent_off", "value": None},
    {"kind": "price_override", "value": -1},
    {"kind": "multi_buy", "value": None, "label": ""},
    {"kind": "multi_buy", "value": 2, "label": "2 for 1"},
    {"kind": "free_lunch", "value": 1},
    {"ends_at": T0 - DAY},
    {"starts_at": datetime(2026, 11, 20)},  # no timezone
    {"id": "has space"},
])
def test_malformed_promotions_are_refused(bad: dict) -> None:
    fields = {"id": "p", "kind": "percent_off", "value": 10, "starts_at": T0,
              "ends_at": T0 + DAY, **bad}
    with pytest.raises(ValidationError):
        Promotion(**fields)


def test_product_records() -> None:
    with pytest.raises(ValidationError):
        Product(sku="A", name="a", price=-1)
    with pytest.raises(ValidationError):
        Product(sku="A", name="a", price=float("inf"))
    with pytest.raises(ValidationError):
        Product(sku="A", name="a", price=1, currency="eur")
    with pytest.raises(ValidationError, match="unique"):
        Product(sku="A", name="a", price=1, promotions=[promo("x"), promo("x")])
    # Old callers keep working; the bookkeeping timestamp does not make records differ.
    plain = Product(sku="A", name="a", price=1)
    assert plain.promotions == [] and plain.image_key is None
    assert plain == plain.model_copy(update={"updated_at": T0})
    assert plain != plain.model_copy(update={"price": 2})
    # Promotion times are kept in UTC.
    assert promo("x", starts=datetime.fromisoformat("2026-11-20T13:00:00+01:00")).starts_at == T0


def test_edge_replica_keeps_the_new_fields(tmp_path: Path) -> None:
    product = Product(sku="SKU-1", name="Milk", price=1.99, promotions=[promo("week")],
                      image_key="catalogue/images/ab/abc.jpg", updated_at=T0)
    CatalogueReplica(tmp_path / "c.json").replace([product])
    again = CatalogueReplica(tmp_path / "c.json").get("SKU-1")
    assert again == product and again.promotions[0].starts_at == T0
    assert again.updated_at == T0
    # A replica written before promotions existed still loads.
    (tmp_path / "old.json").write_text(json.dumps([{"sku": "SKU-2", "name": "Old", "price": 1}]))
    assert CatalogueReplica(tmp_path / "old.json").get("SKU-2").promotions == []


# --- the catalogue on both backends ---------------------------------------------------------


@pytest.fixture
def catalogue(backend: Backend) -> tuple[Catalogue, list[list[Product]]]:
    seen: list[list[Product]] = []
    return Catalogue(backend.sessions, on_change=seen.append), seen


def test_add_change_retire_with_hook_and_audit(catalogue, backend: Backend) -> None:  # type: ignore[no-untyped-def]
    cat, seen = catalogue
    milk = cat.add(Product(sku="SKU-B", name="Milk", coarse="Dairy", price=1.29), by="ana")
    assert milk.updated_at is not None and cat.get("SKU-B") == milk
    assert seen == [[milk]] and seen[0][0].updated_at == milk.updated_at

    with pytest.raises(DuplicateProduct):
        cat.add(Product(sku="SKU-B", name="Other", price=1))
    with pytest.raises(UnknownProduct):
        cat.change("SKU-X", price=1.0)
    with pytest.raises(InvalidProduct, match="price"):
        cat.change("SKU-B", price=-3)
    with pytest.raises(InvalidProduct, match="sku"):
        cat.change("SKU-B", sku="SKU-C")
    with pytest.raises(InvalidProduct, match="promotions"):
        cat.change("SKU-B", promotions=[{"id": "x", "kind": "percent_off", "value": 200,
                                         "starts_at": T0.isoformat()}])
    assert len(seen) == 1 and cat.get("SKU-B") == milk  # nothing happened

    cheaper = cat.change("SKU-B", price=0.99, description="Fresh", by="bo")
    assert cheaper.price == 0.99 and cheaper.name == "Milk" and cheaper.description == "Fresh"
    assert cheaper.updated_at >= milk.updated_at
    assert seen[-1] == [cheaper]
    assert cat.change("SKU-B", price=0.99) == cheaper and len(seen) == 2  # no-op: no hook

    promoted = cat.promote("SKU-B", promo("week"), by="bo")
    assert [p.id for p in promoted.promotions] == ["week"]
    replaced = cat.promote("SKU-B", promo("week", value=50))
    assert replaced.promotions[0].value == 50 and len(replaced.promotions) == 1
    assert cat.withdraw_promotion("SKU-B", "week").promotions == []
    with pytest.raises(UnknownProduct):
        cat.withdraw_promotion("SKU-B", "week")

    retired = cat.retire("SKU-B", "delisted by the supplier", by="ana")
    assert retired.status is ProductStatus.RETIRED and seen[-1] == [retired]
    assert cat.retire("SKU-B", "again") == retired and seen[-1] == [retired]
    assert cat.list(ProductStatus.ACTIVE) == [] and cat.list() == [retired]

    events = AuditLog(backend.sessions).query(kind_prefix="catalogue.", subject="SKU-B")
    assert [e.kind for e in events] == ["catalogue.retired"] + ["catalogue.changed"] * 4 + [
        "catalogue.added"]
    retire_event, *_, change_event, added = events
    assert retire_event.detail["reason"] == "delisted by the supplier"
    assert retire_event.detail["changes"] == {"status": ["active", "retired"]}
    assert retire_event.detail["by"] == "ana"
    assert change_event.detail["changes"] == {"price": [1.29, 0.99], "description": ["", "Fresh"]}
    assert added.detail["product"]["name"] == "Milk" and added.at.tzinfo is not None


def test_upsert_stays_compatible_and_reports_only_changes(catalogue, backend: Backend) -> None:  # type: ignore[no-untyped-def]
    cat, seen = catalogue
    a, b = Product(sku="SKU-A", name="A", price=1), Product(sku="SKU-B", name="B", price=2)
    assert cat.upsert([a, b]) == 2 and cat.list() == [a, b]
    assert seen == [[a, b]]
    assert cat.upsert([a, b.model_copy(update={"price": 3})]) == 2
    assert [p.sku for p in seen[-1]] == ["SKU-B"] and seen[-1][0].price == 3
    assert cat.upsert([a]) == 1 and len(seen) == 2  # nothing changed: no hook
    kinds = [e.kind for e in AuditLog(backend.sessions).query()]
    assert kinds == ["catalogue.changed", "catalogue.added", "catalogue.added"]


def test_a_failing_hook_does_not_undo_the_change(backend: Backend) -> None:
    def broken(_products: list[Product]) -> None:
        raise RuntimeError("broker down")

    cat = Catalogue(backend.sessions, on_change=broken)
    cat.add(Product(sku="SKU-A", name="A", price=1))
    assert cat.get("SKU-A") is not None


def test_audit_log_api(backend: Backend) -> None:
    audit = AuditLog(backend.sessions)
    first = audit.record("model.promoted", "7", stage="production", at=T0, skus=("a", "b"))
    audit.record("model.rolled_back", "7", reason="drift")
    audit.record("catalogue_x", "SKU-1")  # '_' in a prefix is not a wildcard
    assert first.id and first.detail == {"stage": "production", "at": T0.isoformat(),
                                         "skus": ["a", "b"]}
    assert [e.kind for e in audit.query("model.")] == ["model.rolled_back", "model.promoted"]
    assert [e.kind for e in audit.query("model.promoted")] == ["model.promoted"]
    assert audit.query("catalogue.") == []
    assert len(audit.query(subject="7", limit=1)) == 1
    assert len(audit.query(since=datetime.now(UTC) - timedelta(minutes=5))) == 3
    assert audit.query(since=datetime.now(UTC) + timedelta(minutes=5)) == []
    with pytest.raises(ValueError):
        audit.query(limit=0)


# --- import from a grocery-layout folder ----------------------------------------------------


def mini_grocery(root: Path) -> Path:
    """A folder laid out like the grocery dataset: two products, one without an image."""
    header = ("Class Name (str),Class ID (int),Coarse Class Name (str),Coarse Class ID (int),"
              "Iconic Image Path (str),Product Description Path (str)")
    rows = [header]
    for class_id, (name, coarse, image) in enumerate([("Kombucha", "Tea", True),
                                                      ("Kefir", "Milk", False)]):
        folder = root / "iconic-images-and-descriptions" / "Packages" / coarse / name
        folder.mkdir(parents=True)
        (folder / f"{name}_Description.txt").write_text(f"{name} is a drink.\n")
        if image:
            (folder / f"{name}_Iconic.jpg").write_bytes(jpeg_bytes(color=(10, 200, 30)))
        rel = f"/iconic-images-and-descriptions/Packages/{coarse}/{name}/{name}"
        rows.append(f"{name},{class_id},{coarse},{class_id},{rel}_Iconic.jpg,{rel}_Description.txt")
    (root / "classes.csv").write_text("\n".join(rows) + "\n")
    return root


def import_grocery(cat: Catalogue, root: Path, store: ObjectStore, **options: Any) -> ImportReport:
    """What `edge2core catalogue import` does, in process (test_cli runs it over HTTP): read the
    folder, store the iconic images under their content-addressed keys, merge the records."""
    entries = read_grocery(root, **options)
    products, stored = [], 0
    for entry in entries:
        product = entry.product
        if entry.image_path is not None:
            key, new = store_image(store, entry.image_path.read_bytes())
            stored += new
            product = product.model_copy(update={"image_key": key})
        products.append(product)
    report = cat.import_products(products, source=str(root))
    report.images_stored = stored
    report.missing_images = [e.product.sku for e in entries if e.image_path is None]
    return report


def test_import_any_grocery_layout_folder(catalogue, backend: Backend, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cat, seen = catalogue
    root = mini_grocery(tmp_path / "mini")
    report = import_grocery(cat, root, backend.store, price_of=lambda name: 2.5)
    assert report.added == ["SKU-0000", "SKU-0001"] and report.missing_images == ["SKU-0001"]
    kombucha = cat.get("SKU-0000")
    assert (kombucha.name, kombucha.coarse, kombucha.price) == ("Kombucha", "Tea", 2.5)
    assert kombucha.description == "Kombucha is a drink."
    data = backend.store.get(kombucha.image_key)
    assert kombucha.image_key.endswith(f"{hashlib.sha256(data).hexdigest()}.jpg")
    assert cat.get("SKU-0001").image_key is None
    with pytest.raises(FileNotFoundError, match="classes.csv"):
        import_grocery(cat, tmp_path / "nowhere", backend.store)


def test_import_real_grocery_is_idempotent(catalogue, backend: Backend, grocery_dir: Path) -> None:  # type: ignore[no-untyped-def]
    cat, seen = catalogue
    report = import_grocery(cat, grocery_dir, backend.store, class_ids={0, 1, 40})
    assert report.added == ["SKU-0000", "SKU-0001", "SKU-0040"] and report.images_stored == 3
    assert report.missing_images == [] and len(seen) == 1
    golden = cat.get("SKU-0000")
    assert golden.name == "Golden-Delicious" and golden.coarse == "Apple"
    assert golden.price == grocery_price("Golden-Delicious")  # the demo's rule
    assert "golden delicious" in golden.description.lower()
    assert backend.store.get(golden.image_key)[:3] == b"\xff\xd8\xff"
    assert read_grocery(grocery_dir, class_ids={0})[0].product.sku == "SKU-0000"

    events = len(AuditLog(backend.sessions).query())
    again = import_grocery(cat, grocery_dir, backend.store, class_ids={0, 1, 40})
    assert again.added == [] and again.changed == [] and again.unchanged == 3
    assert again.images_stored == 0 and len(seen) == 1
    assert len(AuditLog(backend.sessions).query()) == events

    # People's prices, status and promotions survive a re-import.
    cat.change("SKU-0000", price=0.10)
    cat.retire("SKU-0001", "out of season")
    import_grocery(cat, grocery_dir, backend.store, class_ids={0, 1})
    assert cat.get("SKU-0000").price == 0.10
    assert cat.get("SKU-0001").status is ProductStatus.RETIRED


# --- the migration --------------------------------------------------------------------------


def test_products_before_this_revision_are_backfilled(db_url: str) -> None:
    engine = make_engine(db_url)
    migrations.upgrade(engine, "0002")
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO products (sku, name, coarse, price, currency, status,"
                          " description) VALUES ('SKU-1', 'Milk', '', 1.5, 'EUR', 'active', '')"))
    migrations.upgrade(engine)
    product = Catalogue(make_sessionmaker(engine)).get("SKU-1")
    assert product.promotions == [] and product.image_key is None
    assert product.updated_at is not None and product.price == 1.5
    migrations.downgrade(engine, "0002")
    migrations.upgrade(engine)
    engine.dispose()


# --- REST API -------------------------------------------------------------------------------


@pytest.fixture
def client(backend: Backend, tmp_path: Path) -> Iterator[tuple[TestClient, list[list[Product]]]]:
    services = build_core_services(backend.core_settings(tmp_path / "core"))
    seen: list[list[Product]] = []
    services.catalogue.on_change = seen.append
    with TestClient(create_core_app(services)) as http:
        yield http, seen


def test_rest_api(client) -> None:  # type: ignore[no-untyped-def]
    http, seen = client
    milk = {"sku": "SKU-B", "name": "Milk", "price": 1.29, "coarse": "Dairy"}
    made = http.post("/v1/products", json=milk, params={"by": "ana"})
    assert made.status_code == 201 and made.json()["updated_at"]
    assert http.post("/v1/products", json=milk).json()["error"] == "duplicate"
    assert http.post("/v1/products", json=milk).status_code == 409
    assert http.post("/v1/products", json={**milk, "sku": "X", "price": -1}).status_code == 422
    assert http.post("/v1/products", json={**milk, "sku": "X", "image_key": "nope"}).status_code == 422
    assert http.get("/v1/products/SKU-NONE").status_code == 404
    assert http.get("/v1/products/SKU-NONE").json()["error"] == "not_found"

    assert http.patch("/v1/products/SKU-NONE", json={"price": 1}).status_code == 404
    assert http.patch("/v1/products/SKU-B", json={"price": -2}).status_code == 422
    assert http.patch("/v1/products/SKU-B", json={"price": "cheap"}).status_code == 422
    assert http.patch("/v1/products/SKU-B", json={"sku": "SKU-C"}).status_code == 422
    assert http.patch("/v1/products/SKU-B", json={"name": None}).status_code == 422
    changed = http.patch("/v1/products/SKU-B", json={"price": 0.99}, params={"by": "bo"}).json()
    assert changed["price"] == 0.99 and changed["name"] == "Milk"

    now = datetime.now(UTC)
    good = {"id": "week", "kind": "percent_off", "value": 10, "label": "-10%",
            "starts_at": (now - DAY).isoformat(), "ends_at": (now + DAY).isoformat()}
    bad = {**good, "ends_at": (now - 2 * DAY).isoformat()}
    assert http.post("/v1/products/SKU-B/promotions", json=bad).status_code == 422
    assert http.post("/v1/products/SKU-B/promotions", json={**good, "starts_at": "2026-11-20T10:00"}).status_code == 422
    assert http.post("/v1/products/SKU-NONE/promotions", json=good).status_code == 404
    promoted = http.post("/v1/products/SKU-B/promotions", json=good).json()
    assert promoted["promotions"][0]["id"] == "week"
    listed = http.get("/v1/products").json()
    assert [p["sku"] for p in listed] == ["SKU-B"] and listed[0]["promotions"][0]["value"] == 10
    assert http.delete("/v1/products/SKU-B/promotions/none").status_code == 404
    assert http.delete("/v1/products/SKU-B/promotions/week").json()["promotions"] == []

    # Catalogue images: content-addressed, checked, served back.
    assert http.get("/v1/products/SKU-B/image").status_code == 404
    photo = jpeg_bytes()
    assert http.put("/v1/products/SKU-B/image", content=b"not an image").status_code == 422
    assert http.put("/v1/products/SKU-NONE/image", content=photo).status_code == 404
    with_image = http.put("/v1/products/SKU-B/image", content=photo).json()
    assert with_image["image_key"].endswith(hashlib.sha256(photo).hexdigest() + ".jpg")
    image = http.get("/v1/products/SKU-B/image")
    assert image.content == photo and image.headers["content-type"] == "image/jpeg"
    uploaded = http.post("/v1/products/images", content=photo)
    assert uploaded.status_code == 200 and uploaded.json()["key"] == with_image["image_key"]
    png = http.post("/v1/products/images", content=_png())
    assert png.status_code == 201 and png.json()["key"].endswith(".png")
    added = http.post("/v1/products", json={**milk, "sku": "SKU-P", "image_key": png.json()["key"]})
    assert added.status_code == 201

    assert http.post("/v1/products/SKU-B/retire", json={}).status_code == 422  # a reason
    assert http.post("/v1/products/SKU-NONE/retire", json={"reason": "x"}).status_code == 404
    retired = http.post("/v1/products/SKU-B/retire", json={"reason": "delisted"}).json()
    assert retired["status"] == "retired"
    assert [p["sku"] for p in http.get("/v1/products", params={"status": "retired"}).json()] == ["SKU-B"]

    # The routes from before /v1/products (the edge's replica pulls the list from there).
    assert http.put("/v1/catalogue/products", json=[{**milk, "sku": "SKU-L"}]).json() == {"upserted": 1}
    assert http.get("/v1/catalogue/products/SKU-L").json()["name"] == "Milk"
    assert len(http.get("/v1/catalogue/products").json()) == 3
    assert http.get("/v1/catalogue/products/SKU-NONE").status_code == 404
    assert http.put("/v1/products", json=[{**milk, "sku": "SKU-M"}]).json() == {"upserted": 1}

    audit = http.get("/v1/audit", params={"subject": "SKU-B"}).json()
    assert audit[0]["kind"] == "catalogue.retired" and audit[0]["detail"]["reason"] == "delisted"
    assert audit[-1]["kind"] == "catalogue.added" and audit[-1]["detail"]["by"] == "ana"
    assert http.get("/v1/audit", params={"kind_prefix": "catalogue.added"}).json()[0]["subject"] == "SKU-M"
    assert http.get("/v1/audit", params={"limit": 0}).status_code == 422
    # Every committed change reached the hook with the full record.
    assert [p.sku for batch in seen for p in batch][:2] == ["SKU-B", "SKU-B"]
    assert seen[-1][0].sku == "SKU-M" and all(p.updated_at for batch in seen for p in batch)


def _png() -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(out, format="PNG")
    return out.getvalue()


# --- command line (over real HTTP) ----------------------------------------------------------


def test_cli(backend: Backend, tmp_path: Path) -> None:
    services = build_core_services(backend.core_settings(tmp_path / "core"))
    runner = CliRunner()
    root = mini_grocery(tmp_path / "mini")
    image = tmp_path / "k.jpg"
    image.write_bytes(jpeg_bytes(color=(1, 100, 200)))
    with CoreServer(create_core_app(services)) as server:
        def cli(*args: str) -> tuple[int, str]:
            result = runner.invoke(catalogue_app, [*args, "--url", server.url])
            return result.exit_code, result.output

        code, out = cli("import", str(root), "--json")
        assert code == 0, out
        assert json.loads(out)["added"] == ["SKU-0000", "SKU-0001"]
        code, out = cli("import", str(root))
        assert code == 0 and "0 added, 0 changed, 2 unchanged" in out, out
        code, out = cli("add", "SKU-9", "--name", "Kefir Plus", "--price", "2.49",
                        "--image", str(image), "--by", "ana", "--json")
        assert code == 0 and json.loads(out)["image_key"], out
        assert cli("add", "SKU-9", "--name", "Again", "--price", "1")[0] == 2
        assert cli("change", "SKU-9", "--price", "-1")[0] == 2
        assert cli("change", "SKU-NONE", "--price", "1")[0] == 2
        assert cli("change", "SKU-9")[0] == 2  # nothing to change
        code, out = cli("change", "SKU-9", "--price", "1.99")
        assert code == 0 and "1.99" in out, out
        code, out = cli("promote", "SKU-9", "--id", "deal", "--kind", "price_override",
                        "--value", "1.49", "--starts", "2026-01-01T00:00:00",
                        "--ends", "2099-01-01T00:00:00Z", "--json")
        assert code == 0, out
        assert json.loads(out)["promotions"][0]["starts_at"].startswith("2026-01-01T00:00:00")
        assert cli("promote", "SKU-9", "--id", "bad", "--value", "150")[0] == 2
        code, out = cli("list")
        assert code == 0 and "(deal)" in out and "1.49" in out, out
        assert cli("promote", "SKU-9", "--id", "deal", "--remove")[0] == 0
        code, out = cli("retire", "SKU-9", "--reason", "trial over")
        assert code == 0 and "retired" in out
        code, out = cli("list", "--status", "retired", "--json")
        assert [p["sku"] for p in json.loads(out)] == ["SKU-9"]
        code, out = cli("audit", "--sku", "SKU-9")
        kinds = [json.loads(line)["kind"] for line in out.splitlines()]
        assert kinds[0] == "catalogue.retired" and kinds[-1] == "catalogue.added"
    code, out = runner.invoke(catalogue_app, ["list", "--url", "http://127.0.0.1:9"]).exit_code, ""
    assert code == 1


# --- an edge answer -------------------------------------------------------------------------


def test_edge_answer_carries_the_active_promotion(tmp_path: Path, trained_model: TrainedModel) -> None:  # noqa: F811
    now = datetime.now(UTC)
    products = {p.sku: p for p in trained_model.products}
    target = products[sku(1)]
    products[sku(1)] = target.model_copy(update={"promotions": [
        promo("past", value=50, starts=now - 10 * DAY, ends=now - 5 * DAY),
        promo("now", value=25, starts=now - DAY, ends=now + DAY, label="-25%"),
    ]})
    products[sku(2)] = products[sku(2)].model_copy(update={"promotions": [
        promo("later", value=50, starts=now + DAY, ends=now + 2 * DAY)]})
    catalogue = CatalogueReplica(tmp_path / "catalogue.json")
    catalogue.replace(list(products.values()))
    recognizer = Recognizer(catalogue, unrecognised_below=0.0)
    recognizer.load(trained_model.path, version=1, sha256=trained_model.sha256)

    answer = recognizer.recognize(trained_model.held_out(1)[0])
    assert answer.sku == sku(1) and answer.price == target.price
    assert answer.promotion is not None and answer.promotion.id == "now"
    assert answer.effective_price == round(target.price * 0.75, 2)
    body = json.loads(answer.model_dump_json())
    assert body["promotion"]["kind"] == "percent_off" and body["promotion"]["label"] == "-25%"

    later = recognizer.recognize(trained_model.held_out(2)[0])
    assert later.sku == sku(2) and later.promotion is None
    assert later.effective_price == later.price
    unsure = Recognizer(catalogue, unrecognised_below=1.01)
    unsure.load(trained_model.path, version=1, sha256=trained_model.sha256)
    nothing = unsure.recognize(trained_model.held_out(1)[0])
    assert nothing.promotion is None and nothing.effective_price is None


def test_rows_written_before_the_current_rules_still_load(tmp_path: Path) -> None:
    from edge2core.config import CoreSettings
    from edge2core.core.db import storage
    from edge2core.core.db.schema import ProductRow

    sessions = storage.database(CoreSettings(data_dir=tmp_path))
    with sessions.begin() as session:  # as an older core could write it
        session.add(ProductRow(sku="old sku/1", name="Old", coarse="", price=1.5, currency="eur",
                               status="active", description="", promotions=[],
                               created_at=datetime.now(UTC), updated_at=datetime.now(UTC)))
    catalogue = Catalogue(sessions)
    [old] = catalogue.list()
    assert (old.sku, old.currency, old.price) == ("old sku/1", "eur", 1.5)
    with pytest.raises(InvalidProduct):  # its next change must meet the rules
        catalogue.change("old sku/1", price=2.0)


def test_a_site_reads_old_records_and_leaves_out_only_unreadable_ones() -> None:
    from edge2core.common.products import read_products

    old = {"sku": "old sku/1", "name": "Old", "price": 1.5, "currency": "eur", "status": "active",
           "promotions": [{"id": "bad"}]}
    good = Product(sku="SKU-2", name="Bread", price=2.0).model_dump(mode="json")
    products = read_products([old, json.dumps(good).encode(), {"sku": "x"}, b"[not json"])
    assert [p.sku for p in products] == ["old sku/1", "SKU-2"]
    assert products[0].price == 1.5 and products[0].promotions == []
