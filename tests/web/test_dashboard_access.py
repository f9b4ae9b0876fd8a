"""The dashboard's sign-in, roles and CSRF checks over HTTP (no browser), on a real core's
services: who may do what, what is refused, what is recorded."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from edge2core.common.products import Product
from edge2core.config import CoreSettings
from edge2core.core.api.app import CoreServices, create_core_app
from edge2core.core.service import build_core_services
from edge2core.web.auth.users import Role, UserStore
from tests.support.recorded_sites import RecordedSites


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> tuple[CoreServices, FastAPI]:
    """One core for the module (each test its own browser-like client and cookies)."""
    data = tmp_path_factory.mktemp("core")
    services = build_core_services(CoreSettings(data_dir=data), RecordedSites())
    users = UserStore(data / "users.json")
    users.add("ada", Role.ADMIN, "admin-pass")
    users.add("lena", Role.LABELLER, "labeller-pass")
    services.catalogue.add(Product(sku="SKU-1", name="Milk", price=1.0))
    return services, create_core_app(services, users)


@pytest.fixture
def core(app: tuple[CoreServices, FastAPI]) -> Iterator[tuple[CoreServices, TestClient]]:
    services, core_app = app
    with TestClient(core_app) as client:
        yield services, client


def csrf_of(client: TestClient, path: str) -> str:
    page = client.get(path)
    assert page.status_code == 200, page.text
    found = re.search(r'name="csrf" value="([^"]+)"', page.text) or re.search(
        r'data-csrf="([^"]+)"', page.text)
    assert found, "no CSRF token in the page"
    return found.group(1)


def sign_in(client: TestClient, name: str, password: str) -> None:
    token = csrf_of(client, "/dashboard/login")
    answer = client.post("/dashboard/login", data={"name": name, "password": password,
                                                    "csrf": token}, follow_redirects=False)
    assert answer.status_code == 303, answer.text


def register_model(services: CoreServices, data: bytes) -> int:
    return services.registry.register(data, dataset_version=1, classes=["A", "B"], metrics={},
                                      params={}).version


def test_pages_need_a_sign_in_and_wrong_passwords_are_refused(core) -> None:  # type: ignore[no-untyped-def]
    _services, client = core
    page = client.get("/dashboard/models", headers={"Accept": "text/html"}, follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"].startswith("/dashboard/login?next=")
    assert client.get("/dashboard/data/pipeline").status_code == 401
    token = csrf_of(client, "/dashboard/login")
    wrong = client.post("/dashboard/login", data={"name": "ada", "password": "nope", "csrf": token})
    assert wrong.status_code == 401 and "Wrong name or password" in wrong.text
    no_token = client.post("/dashboard/login", data={"name": "ada", "password": "admin-pass"})
    assert no_token.status_code == 403  # even signing in needs the form's token


def test_signing_in_replaces_the_session_and_the_page_holds_no_secret(core) -> None:  # type: ignore[no-untyped-def]
    _services, client = core
    csrf_of(client, "/dashboard/login")
    before = client.cookies.get("e2c_session")
    sign_in(client, "ada", "admin-pass")
    after = client.cookies.get("e2c_session")
    assert before and after and before != after  # no session fixation
    page = client.get("/dashboard/catalogue").text
    assert after not in page and "admin-pass" not in page and "bcrypt" not in page


def test_a_labeller_may_label_but_not_promote(core) -> None:  # type: ignore[no-untyped-def]
    services, client = core
    version = register_model(services, b"model one")
    register_model(services, b"model two")
    sign_in(client, "lena", "labeller-pass")
    token = csrf_of(client, "/dashboard/models")
    assert "/promote" not in client.get(f"/dashboard/models/{version}").text
    refused = client.post(f"/dashboard/models/{version}/promote", follow_redirects=False,
                          data={"csrf": token, "stage": "production", "confirm": "yes"})
    assert refused.status_code == 403 and refused.json()["error"] == "forbidden"
    assert client.post("/dashboard/datasets/build", data={"csrf": token}).status_code == 403
    assert services.registry.production().version != version  # type: ignore[union-attr]


def test_a_forged_post_is_refused_whatever_the_cookie(core) -> None:  # type: ignore[no-untyped-def]
    services, client = core
    sign_in(client, "ada", "admin-pass")
    for token in (None, "", "guessed"):
        data = {"kind": "percent_off", "value": "50"} | ({"csrf": token} if token is not None else {})
        answer = client.post("/dashboard/catalogue/SKU-1/promotions", data=data, follow_redirects=False)
        assert answer.status_code == 403 and "CSRF" in answer.json()["detail"]
    assert services.catalogue.require("SKU-1").promotions == []


def test_promotion_needs_confirmation_and_is_audited(core) -> None:  # type: ignore[no-untyped-def]
    services, client = core
    first = register_model(services, b"model one")
    second = register_model(services, b"model two")
    services.registry.gate = None  # no dataset here to score on: the gate is tested elsewhere
    services.registry.promote(first, reason="back to one", force=True)
    sign_in(client, "ada", "admin-pass")
    token = csrf_of(client, f"/dashboard/models/{second}")
    unconfirmed = client.post(f"/dashboard/models/{second}/promote",
                              data={"csrf": token, "stage": "production"}, follow_redirects=False)
    assert "not+confirmed" in unconfirmed.headers["location"]
    assert services.registry.production().version == first  # type: ignore[union-attr]
    done = client.post(f"/dashboard/models/{second}/promote", follow_redirects=False,
                       data={"csrf": token, "stage": "production", "reason": "better", "confirm": "yes"})
    assert done.status_code == 303 and "notice=" in done.headers["location"]
    assert services.registry.production().version == second  # type: ignore[union-attr]
    events = services.audit.query(kind_prefix="dashboard.", subject=f"model:{second}")
    assert events and events[0].detail["by"] == "ada" and events[0].detail["reason"] == "better"
    back = client.post("/dashboard/models/rollback", follow_redirects=False,
                       data={"csrf": token, "reason": "worse at night", "confirm": "yes"})
    assert "notice=" in back.headers["location"]
    assert services.registry.production().version == first  # type: ignore[union-attr]
    assert services.audit.query(kind_prefix="dashboard.model_rolled_back")[0].detail["by"] == "ada"


def test_catalogue_changes_from_the_dashboard_name_who_made_them(core) -> None:  # type: ignore[no-untyped-def]
    services, client = core
    sign_in(client, "ada", "admin-pass")
    token = csrf_of(client, "/dashboard/catalogue")
    client.post("/dashboard/catalogue", data={"csrf": token, "sku": "SKU-2", "name": "Bread",
                                              "price": "2.5"})
    client.post("/dashboard/catalogue/SKU-2", data={"csrf": token, "name": "Rye bread",
                                                    "price": "2.75", "status": "active"})
    bad = client.post("/dashboard/catalogue/SKU-2/promotions", follow_redirects=False,
                      data={"csrf": token, "kind": "percent_off", "value": "150"})
    assert "error=" in bad.headers["location"]  # said on the page, nothing changed
    client.post("/dashboard/catalogue/SKU-2/promotions",
                data={"csrf": token, "kind": "percent_off", "value": "10", "label": "-10%"})
    product = services.catalogue.require("SKU-2")
    assert (product.name, product.price) == ("Rye bread", 2.75)
    assert [p.label for p in product.promotions] == ["-10%"]
    assert all(e.detail.get("by") == "ada" for e in services.audit.query(subject="SKU-2"))
