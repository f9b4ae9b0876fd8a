"""Ed25519 signatures for model versions: the core signs, the edge (and tests) verify.

What is signed is a small JSON document, the *version manifest*: the model version, its
dataset version, classes, and for every artefact its object key, sha256 and size.  The
signature covers the canonical bytes of that document (``json.dumps(sort_keys=True,
separators=(",", ":"))``), so verifying an artefact is two checks: the signature over the
manifest, then the artefact's sha256 against the manifest's entry.

Key management (see docs/models.md): the core keeps one private key in
``<data_dir>/keys/signing-ed25519.pem`` (PKCS#8 PEM, created on first start with mode 0600 in a
0700 folder, never sent anywhere) and publishes the raw public key (``GET /v1/signing-key``).
Edges are given the public key out of band (or pin the first one they see); the key id is
the first 16 hex digits of the sha256 of the raw public key.

Only ``cryptography`` is needed, so the edge can verify without the core's dependencies.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

__all__ = [
    "KEY_FILE",
    "SignatureError",
    "Signer",
    "canonical_json",
    "key_id",
    "load_public_key",
    "verify",
    "verify_artifact",
]

KEY_FILE = "signing-ed25519.pem"
ALGORITHM = "ed25519"


class SignatureError(ValueError):
    """A signature, or an artefact's hash against a signed manifest, does not check out."""


def canonical_json(document: dict[str, Any]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _raw_public(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public: Ed25519PublicKey) -> str:
    return hashlib.sha256(_raw_public(public)).hexdigest()[:16]


def load_public_key(value: str | bytes) -> Ed25519PublicKey:
    """A public key from base64 of the 32 raw bytes, or from a PEM."""
    data = value.encode() if isinstance(value, str) else bytes(value)
    if data.lstrip().startswith(b"-----BEGIN"):
        key = serialization.load_pem_public_key(data)
        if not isinstance(key, Ed25519PublicKey):
            raise SignatureError("not an Ed25519 public key")
        return key
    return Ed25519PublicKey.from_public_bytes(base64.b64decode(data))


@dataclass
class Signer:
    private_key: Ed25519PrivateKey

    @classmethod
    def generate(cls) -> Signer:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load_or_create(cls, key_dir: Path) -> Signer:
        """The key in ``key_dir/signing-ed25519.pem``; created (0600, folder 0700) if absent."""
        key_dir = Path(key_dir)
        path = key_dir / KEY_FILE
        if path.is_file():
            mode = path.stat().st_mode & 0o777
            if mode & 0o077:
                raise PermissionError(
                    f"{path} is readable by others (mode {mode:o}); chmod 600 it"
                )
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
            if not isinstance(key, Ed25519PrivateKey):
                raise SignatureError(f"{path} is not an Ed25519 private key")
            return cls(key)
        key_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(key_dir, 0o700)
        signer = cls.generate()
        pem = signer.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, pem)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        return signer

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.private_key.public_key()

    @property
    def key_id(self) -> str:
        return key_id(self.public_key)

    def public_key_b64(self) -> str:
        return base64.b64encode(_raw_public(self.public_key)).decode()

    def sign(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """A signed document: ``{"manifest": ..., "signature": b64, "key_id", "algorithm"}``."""
        signature = self.private_key.sign(canonical_json(manifest))
        return {
            "manifest": manifest,
            "signature": base64.b64encode(signature).decode(),
            "key_id": self.key_id,
            "algorithm": ALGORITHM,
        }


def verify(signed: dict[str, Any], public: Ed25519PublicKey) -> dict[str, Any]:
    """Check a signed document's signature; returns its manifest or raises SignatureError."""
    try:
        manifest = signed["manifest"]
        signature = base64.b64decode(signed["signature"], validate=True)
    except (KeyError, TypeError, ValueError) as exc:
        raise SignatureError(f"malformed signed document: {exc}") from exc
    if signed.get("algorithm", ALGORITHM) != ALGORITHM:
        raise SignatureError(f"unsupported algorithm {signed.get('algorithm')!r}")
    if signed.get("key_id") not in (None, key_id(public)):
        raise SignatureError(f"signed by key {signed.get('key_id')}, not {key_id(public)}")
    try:
        public.verify(signature, canonical_json(manifest))
    except InvalidSignature as exc:
        raise SignatureError("the signature does not match the manifest") from exc
    return manifest


def verify_artifact(
    data: bytes, signed: dict[str, Any], public: Ed25519PublicKey, kind: str = "full"
) -> dict[str, Any]:
    """Check the signature, then that ``data`` is the manifest's artefact ``kind``
    (sha256 and size).  Returns the manifest; raises SignatureError on any mismatch."""
    manifest = verify(signed, public)
    # Shapes checked, not assumed: a signed manifest of another shape is refused, not a crash
    # (found by fuzzing).
    artifacts = manifest.get("artifacts") if isinstance(manifest, dict) else None
    entry = artifacts.get(kind) if isinstance(artifacts, dict) else None
    if not isinstance(entry, dict) or not entry:
        raise SignatureError(f"the signed manifest has no {kind!r} artefact")
    digest = hashlib.sha256(data).hexdigest()
    size = entry.get("size")
    if entry.get("sha256") != digest or not isinstance(size, int) or size != len(data):
        raise SignatureError(
            f"{kind} artefact sha256 {digest[:16]}… / {len(data)} bytes does not match the "
            f"signed {str(entry.get('sha256'))[:16]}… / {entry.get('size')} bytes"
        )
    return manifest
