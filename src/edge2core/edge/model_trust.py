"""Which models this site will run: only those signed by the key it trusts.

The key is either configured (`model_public_key`, base64 of the raw Ed25519 key, handed over
out of band) or pinned on first contact with the core and kept in the data dir; a core that
later presents another key is refused until an operator removes the pin.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge2core.common.fsutil import write_atomic
from edge2core.common.logging import get_logger
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
    def __init__(self, pin_path: Path, configured: str | None = None, *, allow_unsigned: bool = False) -> None:
        self._pin = pin_path
        self._key: Ed25519PublicKey | None = load_public_key(configured) if configured else None
        self._allow_unsigned = allow_unsigned
        if self._key is None and pin_path.is_file():
            self._key = load_public_key(pin_path.read_text().strip())

    async def key(self, core: CoreClient) -> Ed25519PublicKey | None:
        offered = await core.signing_key()
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

    async def check(self, core: CoreClient, version: int, data: bytes) -> None:
        """Raises UntrustedModel unless `data` is version `version` as the trusted key signed it."""
        key = await self.key(core)
        signed = await core.model_signature(version)
        if key is None or signed is None:
            if self._allow_unsigned:
                log.warning("loading an unsigned model (allow_unsigned_models is on)", version=version)
                return
            raise UntrustedModel(f"model {version} is not signed; this site runs signed models only")
        try:
            # It hashes the whole model (megabytes): off the event loop.
            manifest = await asyncio.to_thread(verify_artifact, data, signed, key, kind="full")
        except SignatureError as exc:
            raise UntrustedModel(f"model {version} fails signature verification: {exc}") from exc
        if manifest.get("version") != version:
            raise UntrustedModel(f"the signature is for version {manifest.get('version')}, not {version}")
