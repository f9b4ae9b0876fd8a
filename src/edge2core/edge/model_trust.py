"""Which models this site will run: only those signed by the key it trusts.

The key is either configured (`model_public_key`, base64 of the raw Ed25519 key, handed over
out of band) or pinned on first contact with the core and kept in the data dir; a core that
later presents another key is refused until an operator removes the pin.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge2core.common.fsutil import write_atomic
from edge2core.common.logging import get_logger
from edge2core.common.products import Product
from edge2core.common.signed_catalogue import verify_catalogue
from edge2core.common.signing import (
    SignatureError,
    key_id,
    load_public_key,
    verify_artifact,
)
from edge2core.edge.core_client import CoreClient

log = get_logger(__name__)


class UntrustedModel(RuntimeError):
    pass


class ModelTrust:
    """Which key(s) models and the catalogue must be signed with: configured, or pinned on first
    contact (see the module docstring)."""

    def __init__(self, pin_path: Path, configured: str | None = None, *, allow_unsigned: bool = False) -> None:
        """`configured`: base64 key(s); during a key rotation the old and the new one,
        comma-separated: the core may sign with either and what either signed is trusted."""
        self._pin = pin_path
        self._trusted = [load_public_key(k.strip()) for k in (configured or "").split(",") if k.strip()]
        self._key: Ed25519PublicKey | None = self._trusted[0] if self._trusted else None
        self._allow_unsigned = allow_unsigned
        if self._key is None and pin_path.is_file():
            self._key = load_public_key(pin_path.read_text().strip())

    async def key(self, core: CoreClient) -> Ed25519PublicKey | None:
        offered = await core.signing_key()
        if self._trusted and offered is not None:
            if load_public_key(offered) not in self._trusted:
                raise UntrustedModel(f"the core signs with key {key_id(load_public_key(offered))}, "
                                     "none of the configured model_public_key")
            return load_public_key(offered)
        if self._key is None:
            if offered is None:
                return None
            self._key = load_public_key(offered)
            write_atomic(self._pin, [offered.encode()])
            log.warning("pinned the core's model-signing key on first contact",
                        key_id=key_id(self._key), pin=str(self._pin))
        elif offered is not None and load_public_key(offered) != self._key:
            raise UntrustedModel(
                f"the core now signs with key {key_id(load_public_key(offered))}, not the pinned "
                f"{key_id(self._key)}; if the core's key was rotated on purpose, delete {self._pin}"
            )
        return self._key

    async def catalogue(self, core: CoreClient, items: list[Any]) -> list[Product]:
        """The products of catalogue documents (KV values or `GET /v1/catalogue/signed`), each
        verified with the trusted key. Raises TamperedCatalogue if any fails (unsigned ones
        pass only with allow_unsigned), UntrustedModel if the core's key changed."""
        key = self._key
        if key is None:
            with contextlib.suppress(httpx.HTTPError):
                key = await self.key(core)
        return verify_catalogue(items, key, allow_unsigned=self._allow_unsigned, also=self._trusted)

    async def check(self, core: CoreClient, version: int, data: bytes) -> None:
        """Raises UntrustedModel unless `data` is version `version` as the trusted key signed it.

        A key already known (configured or pinned) is not asked for again: one request fewer per
        site per rollout (bench/fleet.py); the core's key is fetched only when the signature
        fails, to say whether the key changed."""
        key = self._key if self._key is not None else await self.key(core)
        signed = await core.model_signature(version)
        if key is None or signed is None:
            if self._allow_unsigned:
                log.warning("loading an unsigned model (allow_unsigned_models is on)", version=version)
                return
            raise UntrustedModel(f"model {version} is not signed; this site runs signed models only")
        try:
            # It hashes the whole model (megabytes): off the event loop.
            key = self._signer_of(signed, key)
            manifest = await asyncio.to_thread(verify_artifact, data, signed, key, kind="full")
        except SignatureError as exc:
            with contextlib.suppress(httpx.HTTPError):
                await self.key(core)  # raises UntrustedModel naming the new key if the core's changed
            raise UntrustedModel(f"model {version} fails signature verification: {exc}") from exc
        if manifest.get("version") != version:
            raise UntrustedModel(f"the signature is for version {manifest.get('version')}, not {version}")

    def _signer_of(self, signed: dict[str, Any], default: Ed25519PublicKey) -> Ed25519PublicKey:
        """The configured key that made `signed` (by its key id), else `default`: models signed
        before a rotation stay loadable (a rollback) while both keys are configured."""
        wanted = signed.get("key_id")
        return next((k for k in self._trusted if key_id(k) == wanted), default)
