"""`GET /v1/catalogue/signed`: the catalogue as sites take it over HTTP, every product signed
with the model-signing key (`common/signed_catalogue`), as in the KV bucket."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from edge2core.common.errors import NotFound
from edge2core.common.signed_catalogue import sign_product
from edge2core.core.api.deps import Services
from edge2core.core.api.openapi import errors

router = APIRouter(prefix="/v1/catalogue", tags=["catalogue"])


@router.get("/signed", responses=errors(404))
def signed_catalogue(services: Services) -> list[dict[str, Any]]:
    """Every product as `{"manifest": {"kind": "product", "product": ...}, "signature",
    "key_id", "algorithm"}`; 404 `not_found` when the core signs nothing."""
    signer = services.registry.signer
    if signer is None:
        raise NotFound("this core has no signing key")
    return [sign_product(signer, product) for product in services.catalogue.list()]
