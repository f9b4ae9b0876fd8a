"""core/api/errors.py: the one mapping from the error vocabulary to HTTP, and the one body."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from edge2core.common.errors import (
    Busy,
    Conflict,
    DomainError,
    Invalid,
    NotFound,
    TooLarge,
    Unauthorised,
    Unsupported,
)
from edge2core.core.api.errors import headers_of, install_error_handling, status_of


@pytest.mark.parametrize(("exc", "status"), [
    (NotFound("x"), 404), (Conflict("x"), 409), (Invalid("x"), 422), (TooLarge("x"), 413),
    (Unsupported("x"), 415), (Unauthorised("x"), 401), (Busy("x"), 503),
    (DomainError("x"), 500),
])
def test_each_family_has_its_status(exc: DomainError, status: int) -> None:
    assert status_of(exc) == status


@pytest.mark.parametrize(("exc", "status"), [
    # Statuses edges and stock tus clients key on, kept from before the vocabulary.
    (Invalid("x", code="bad_metadata"), 400), (Invalid("x", code="bad_offset"), 400),
    (Invalid("x", code="client_gone"), 400), (Unsupported("x", code="tus_version"), 412),
    (Conflict("x", code="upload_busy"), 423), (Invalid("x", code="bad_request"), 400),
    (Invalid("x", code="hash_mismatch"), 422), (Conflict("x", code="offset_mismatch"), 409),
    (Busy("x", code="store_unavailable"), 503),
])
def test_codes_that_predate_the_vocabulary_keep_their_status(exc: DomainError,
                                                              status: int) -> None:
    assert status_of(exc) == status


def test_a_subclass_is_answered_by_its_family() -> None:
    class UnknownThing(NotFound):
        code = "unknown_thing"

    assert status_of(UnknownThing("x")) == 404


def test_refusals_carry_where_an_upload_stands_and_when_to_come_back() -> None:
    exc = Busy("later", code="store_unavailable", retry_after_s=4.2)
    exc.offset = 120  # type: ignore[attr-defined]
    assert headers_of(exc) == {"Upload-Offset": "120", "Retry-After": "5"}
    assert headers_of(NotFound("x")) == {}


def app_raising(exc: Exception) -> TestClient:
    app = FastAPI()

    @app.get("/raise")
    def raise_it() -> None:
        raise exc

    @app.get("/typed")
    def typed(n: int) -> dict[str, int]:
        return {"n": n}

    install_error_handling(app)
    return TestClient(app)


def test_every_error_is_one_body() -> None:
    answer = app_raising(Conflict("SKU-1 exists", code="duplicate")).get("/raise")
    assert (answer.status_code, answer.json()) == (409, {"error": "duplicate",
                                                         "detail": "SKU-1 exists"})
    lookup = app_raising(KeyError("no such key")).get("/raise")
    assert (lookup.status_code, lookup.json()) == (404, {"error": "not_found",
                                                         "detail": "no such key"})
    invalid = app_raising(Invalid("x")).get("/typed", params={"n": "one"})
    assert invalid.status_code == 422 and invalid.json()["error"] == "invalid"
    assert invalid.json()["issues"][0]["loc"] == ["query", "n"]
    assert set(invalid.json()["issues"][0]) == {"loc", "msg", "type"}
    assert invalid.json()["detail"].startswith("query.n: ")  # a message, like every detail


def test_an_unexpected_failure_says_nothing_about_the_code() -> None:
    answer = app_raising(RuntimeError("/secret/path.py line 3")).get("/raise")
    assert answer.status_code == 500
    assert answer.json()["error"] == "internal_error" and "secret" not in answer.text
