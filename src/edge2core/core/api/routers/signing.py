"""The core's model-signing public key: what an edge pins on first contact and checks every
model's signature against (docs/models.md)."""

from __future__ import annotations

from fastapi import APIRouter

from edge2core.common.errors import NotFound
from edge2core.core.api.deps import Services
from edge2core.core.api.openapi import errors

router = APIRouter(prefix="/v1/signing-key", tags=["models"])


@router.get("", responses=errors(404))
def signing_key(services: Services) -> dict[str, str]:
    signer = services.registry.signer
    if signer is None:
        raise NotFound("this core signs nothing (no key)")
    return {"algorithm": "ed25519", "key_id": signer.key_id, "public_key": signer.public_key_b64()}
