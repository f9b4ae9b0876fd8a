"""The catalogue is signed like the models and verified at the site (`common/signed_catalogue`)."""

from __future__ import annotations

import copy
import json

import pytest

from edge2core.common.products import Product
from edge2core.common.signed_catalogue import (
    CATALOGUE_REFUSED,
    TamperedCatalogue,
    sign_product,
    verify_catalogue,
)
from edge2core.common.signing import Signer

BREAD = Product(sku="BREAD-1", name="Bread", price=2.5)
MILK = Product(sku="MILK-1", name="Milk", price=1.2)


def test_a_signed_catalogue_verifies_and_any_change_is_refused() -> None:
    signer = Signer.generate()
    docs = [sign_product(signer, p) for p in (BREAD, MILK)]
    as_kv = [json.dumps(d).encode() for d in docs]  # as the KV bucket carries them
    assert [p.sku for p in verify_catalogue(as_kv, signer.public_key)] == ["BREAD-1", "MILK-1"]
    before = CATALOGUE_REFUSED._value.get()
    cheaper = copy.deepcopy(docs)
    cheaper[0]["manifest"]["product"]["price"] = 0.01
    stranger = [sign_product(Signer.generate(), BREAD), docs[1]]
    wrong_kind = [Signer.sign(signer, {"kind": "model", "product": {"sku": "X"}})]
    for tampered in (cheaper, stranger, [json.loads(BREAD.model_dump_json())], wrong_kind, [b"{not json"]):
        with pytest.raises(TamperedCatalogue):
            verify_catalogue(tampered, signer.public_key)
    assert CATALOGUE_REFUSED._value.get() == before + 5
    with pytest.raises(TamperedCatalogue):
        verify_catalogue(as_kv, None)  # no trusted key yet: nothing is taken on faith
    # Unsigned entries pass only where a setting allows unsigned models (development).
    plain = [json.loads(BREAD.model_dump_json())]
    assert verify_catalogue(plain, None, allow_unsigned=True)[0].sku == "BREAD-1"
