"""The catalogue as sites receive it, signed like the models are (`common/signing`).

Each product travels as one signed document (`Signer.sign`) whose manifest is
`{"kind": "product", "product": {...}}`: in the `e2c-catalogue` KV bucket (one value per SKU)
and in `GET /v1/catalogue/signed` (the HTTP fallback, a list of them). A site verifies every
document with the key it trusts for models (`edge/model_trust`) before the catalogue replica
changes; a catalogue with any document that fails is refused whole and the replica keeps what
it had (a tampered price or a forged product never reaches a shopper's answer).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from prometheus_client import Counter

from edge2core.common.products import Product, read_products
from edge2core.common.signing import SignatureError, Signer, key_id, verify

__all__ = ["CATALOGUE_REFUSED", "TamperedCatalogue", "sign_product", "unwrap_unverified",
           "verify_catalogue"]

CATALOGUE_REFUSED = Counter("e2c_catalogue_refused_total",
                            "Catalogue updates a site refused: a product whose signature fails")
KIND = "product"


class TamperedCatalogue(ValueError):
    """A catalogue document that is unsigned, signed by another key, or altered."""


def sign_product(signer: Signer, product: Product) -> dict[str, Any]:
    """The signed document for one product."""
    return signer.sign({"kind": KIND, "product": json.loads(product.model_dump_json())})


def _product_of(item: Any, key: Ed25519PublicKey | None, allow_unsigned: bool,
                also: Sequence[Ed25519PublicKey] = ()) -> Any:
    document = item if isinstance(item, dict) else json.loads(item)
    if not isinstance(document, dict) or "signature" not in document:
        if allow_unsigned:
            return document
        raise TamperedCatalogue("an unsigned catalogue entry (this site takes signed ones only)")
    key = next((k for k in also if key_id(k) == document.get("key_id")), key)
    if key is None:
        raise TamperedCatalogue("a signed catalogue entry, but no signing key is trusted yet")
    try:
        manifest = verify(document, key)
    except SignatureError as exc:
        raise TamperedCatalogue(f"a catalogue entry fails verification: {exc}") from exc
    if manifest.get("kind") != KIND or not isinstance(manifest.get("product"), dict):
        raise TamperedCatalogue("a signed document that is not a catalogue entry")
    return manifest["product"]


def unwrap_unverified(item: Any) -> Any:
    """The product of a catalogue entry without checking anything: only for a site configured
    with no model trust at all (tests of other parts); signed or plain entries alike."""
    try:
        document = item if isinstance(item, dict) else json.loads(item)
    except (ValueError, TypeError):
        return item  # read_products leaves it out, logged
    if isinstance(document, dict) and isinstance(document.get("manifest"), dict):
        return document["manifest"].get("product", document)
    return document


def verify_catalogue(items: list[Any], key: Ed25519PublicKey | None, *,
                     allow_unsigned: bool = False, also: Sequence[Ed25519PublicKey] = ()) -> list[Product]:
    """Every entry's product, each verified with `key`; raises TamperedCatalogue (and counts
    it) if any entry fails, so the caller keeps its current catalogue. Unsigned entries pass
    only with `allow_unsigned` (development, as `allow_unsigned_models`). `also`: more trusted
    keys (a rotation), each entry checked with the one its key id names."""
    try:
        products = [_product_of(item, key, allow_unsigned, also) for item in items]
    except (TamperedCatalogue, ValueError, TypeError) as exc:
        CATALOGUE_REFUSED.inc()
        raise exc if isinstance(exc, TamperedCatalogue) else TamperedCatalogue(str(exc)) from exc
    return read_products(products)
