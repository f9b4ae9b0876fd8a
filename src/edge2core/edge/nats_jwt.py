"""nkeys and JWTs as nats-server's auth callout speaks them (nats-io/jwt v2 layout).

Keys are ed25519, encoded as nkeys (a prefix byte naming the kind of key, the raw key, a CRC16,
base32); requests are signed by the server's key, answers by an issuer (account) key made for
one edge run. Encoded with `cryptography`, already a dependency (the `nkeys` package is an
optional extra of nats-py and would bring PyNaCl). Pure: no I/O.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

#: nats-server's global account: where edge2core's own clients, JetStream and the leaf link are.
GLOBAL_ACCOUNT = "$G"
REQUEST_AUDIENCE = "nats-authorization-request"

# nkey prefix bytes (first byte of the decoded key): what kind of key it is.
PREFIX_ACCOUNT = 0  # "A..."
PREFIX_SERVER = 13 << 3  # "N..."
PREFIX_USER = 20 << 3  # "U..."

_JWT_HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}




def _crc16(data: bytes) -> int:
    """CRC-16/XMODEM, the checksum nkeys append (little-endian)."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def encode_public_key(prefix: int, raw: bytes) -> str:
    body = bytes([prefix]) + raw
    crc = _crc16(body)
    return base64.b32encode(body + bytes([crc & 0xFF, crc >> 8])).decode().rstrip("=")


def decode_public_key(prefix: int, key: str) -> bytes:
    """The 32 raw ed25519 bytes of a public nkey of the given kind; ValueError if it is not."""
    try:
        data = base64.b32decode(key + "=" * (-len(key) % 8))
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not an nkey: {key!r}") from exc
    body, crc = data[:-2], data[-2:]
    if len(body) != 33 or body[0] != prefix or _crc16(body) != crc[0] | crc[1] << 8:
        raise ValueError(f"not a public nkey of kind {prefix}: {key!r}")
    return body[1:]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Issuer:
    """An account nkey made for this run only: it signs the answers; nats-server trusts its
    public half (`public_key`, "A...", in the server config). Never written anywhere."""

    def __init__(self) -> None:
        self._key = Ed25519PrivateKey.generate()
        raw = self._key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.public_key = encode_public_key(PREFIX_ACCOUNT, raw)

    def __repr__(self) -> str:
        return f"Issuer({self.public_key})"

    def encode(self, claims: dict[str, Any]) -> str:
        """A signed JWT (nats-io/jwt v2 layout): `iss` and `iat` added, `jti` a hash."""
        claims = {**claims, "iat": int(time.time()), "iss": self.public_key}
        digest = hashlib.sha256(json.dumps(claims, sort_keys=True).encode()).digest()
        claims["jti"] = base64.b32encode(digest).decode().rstrip("=")
        signing_input = f"{_b64(json.dumps(_JWT_HEADER).encode())}.{_b64(json.dumps(claims).encode())}"
        return f"{signing_input}.{_b64(self._key.sign(signing_input.encode()))}"


def decode_request(token: str | bytes) -> dict[str, Any]:
    """An authorization request's claims, once its signature by the server's key (its `iss`,
    the server id) is checked; ValueError otherwise."""
    if isinstance(token, bytes):
        token = token.decode("ascii", errors="replace")
    try:
        header_b64, claims_b64, signature_b64 = token.split(".")
        header = json.loads(_b64decode(header_b64))
        claims = json.loads(_b64decode(claims_b64))
        signature = _b64decode(signature_b64)
    except ValueError as exc:
        raise ValueError("not a JWT") from exc
    if header.get("alg") != _JWT_HEADER["alg"]:
        raise ValueError(f"unexpected JWT algorithm {header.get('alg')!r}")
    issuer = str(claims.get("iss", ""))
    key = Ed25519PublicKey.from_public_bytes(decode_public_key(PREFIX_SERVER, issuer))
    try:
        key.verify(signature, f"{header_b64}.{claims_b64}".encode())
    except InvalidSignature as exc:
        raise ValueError("authorization request signature does not verify") from exc
    nats_part = claims.get("nats") or {}
    if (claims.get("aud") != REQUEST_AUDIENCE or nats_part.get("type") != "authorization_request"
            or (nats_part.get("server_id") or {}).get("id") != issuer):
        raise ValueError("not an authorization request from the server that signed it")
    decode_public_key(PREFIX_USER, str(nats_part.get("user_nkey", "")))
    return claims


def user_claims(user_nkey: str, device_id: str, publish: tuple[str, ...],
                subscribe: tuple[str, ...], payload: int = -1) -> dict[str, Any]:
    """The user the server should make of an admitted device: named after it, in the global
    account, allowed only its own subjects; `payload` bytes at most per message (-1: the
    server's limit; guests get a smaller one)."""
    return {
        "sub": user_nkey,
        "aud": GLOBAL_ACCOUNT,  # non-operator mode: the account to place the user in
        "name": device_id,
        "nats": {
            "pub": {"allow": list(publish)},
            "sub": {"allow": list(subscribe)},
            "subs": -1,
            "data": -1,
            "payload": payload,
            "type": "user",
            "version": 2,
        },
    }


def response_claims(request: dict[str, Any], *, user_jwt: str | None = None,
                    error: str | None = None) -> dict[str, Any]:
    """The answer to `request`: exactly one of a user JWT or an error."""
    if (user_jwt is None) == (error is None):
        raise ValueError("an answer carries a user JWT or an error")
    nats_part = request["nats"]
    answer: dict[str, Any] = {"type": "authorization_response", "version": 2}
    answer.update({"jwt": user_jwt} if user_jwt is not None else {"error": error})
    return {"sub": nats_part["user_nkey"], "aud": nats_part["server_id"]["id"], "nats": answer}
