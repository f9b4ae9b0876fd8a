"""Rotating the model-signing key without stopping the sites: they trust the old and the new
key during the rotation (`model_public_key = "OLD,NEW"`), so models and catalogue signed with
either load, and a model signed before the rotation can still be rolled back to."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from edge2core.common.products import Product
from edge2core.common.signed_catalogue import TamperedCatalogue
from edge2core.common.signing import KEY_FILE, Signer
from edge2core.config import CoreSettings
from edge2core.core.api.app import create_core_app
from edge2core.core.service import build_core_services
from edge2core.edge.core_client import CoreClient
from edge2core.edge.model_trust import ModelTrust, UntrustedModel
from tests.support.backends import CoreServer

pytestmark = pytest.mark.integration


def _register(data_dir: Path, artifact: bytes) -> tuple[int, str]:
    """Register a model on a core started afresh on `data_dir` (as after a restart): (its
    version, the core's public key)."""
    services = build_core_services(CoreSettings(data_dir=data_dir))
    info = services.registry.register(artifact, dataset_version=1, classes=["0", "A"], metrics={},
                                      params={"path": "fast"})
    services.catalogue.upsert([Product(sku="A", name="Apples", price=1.0)])
    assert services.registry.signer is not None
    return info.version, services.registry.signer.public_key_b64()


def _replace_key(data_dir: Path) -> None:
    """What an operator does to rotate: a new key file in place of the old."""
    pem = Signer.generate().private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path = data_dir / "keys" / KEY_FILE
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)


async def _trusted(trust: ModelTrust, url: str, versions: dict[int, bytes]) -> dict[int, str]:
    client = CoreClient(url)
    outcome: dict[int, str] = {}
    try:
        for version, data in versions.items():
            try:
                await trust.check(client, version, data)
                outcome[version] = "ok"
            except UntrustedModel as exc:
                outcome[version] = str(exc)
        catalogue = await trust.catalogue(client, await client.signed_products())
        outcome[0] = ",".join(p.sku for p in catalogue)
    finally:
        await client.aclose()
    return outcome


async def test_sites_trusting_both_keys_load_old_and_new_models_across_the_rotation(tmp_path: Path) -> None:
    data = tmp_path / "core"
    v1, old_key = _register(data, b"model one")
    _replace_key(data)
    v2, new_key = _register(data, b"model two")  # the core restarted with the new key
    assert old_key != new_key
    services = build_core_services(CoreSettings(data_dir=data))
    with CoreServer(create_core_app(services)) as core:
        rotating = ModelTrust(tmp_path / "a.pub", f"{old_key},{new_key}")
        assert await _trusted(rotating, core.url, {v1: b"model one", v2: b"model two"}) == {
            v1: "ok", v2: "ok", 0: "A"}
        # Tampered bytes are still refused under either key.
        assert "fails signature" in (await _trusted(rotating, core.url, {v1: b"model 0ne"}))[v1]
        # A site still configured with the old key alone refuses what the new key signed (its
        # operator must add the new key first): the model, and the catalogue.
        stale = ModelTrust(tmp_path / "b.pub", old_key)
        with pytest.raises(TamperedCatalogue):
            await _trusted(stale, core.url, {})
        client = CoreClient(core.url)
        try:
            with pytest.raises(UntrustedModel):
                await stale.check(client, v2, b"model two")
        finally:
            await client.aclose()
