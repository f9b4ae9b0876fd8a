"""The edge's side of photos straight to S3 (the core's `ingest.direct`): ask the core for a
presigned PUT, PUT the bytes to the object store, ask the core to commit; its answer is the
same receipt as the one-shot PUT's, so the forwarder's proof of storage is unchanged.

Used only where the core offers it: a core that answers the grant with 409
`direct_unavailable` (a local store) or knows no such route (404/405, an older core) is sent
photos through its own API, and is asked again only after `recheck_s`.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

import httpx

from edge2core.common.events import PhotoRecord

PRESIGN = "/v1/photos/uploads/presigned"
RECHECK_S = 300.0
# What S3 answers for bytes that do not match their signed checksum or length: the photo's
# bytes are not its id (a damaged spool), as the core's `hash_mismatch` would say.
BAD_BYTES = ("BadDigest", "InvalidDigest", "XAmzContentChecksumMismatch", "IncompleteBody",
             "XAmzContentSHA256Mismatch")
# The commit's answers that mean "the upload is missing or not the photo": PUT it again.
PUT_AGAIN = ("not_uploaded", "object_size_mismatch", "object_hash_mismatch")


class DirectUnsupported(Exception):
    """The core takes no direct uploads: send through it."""


class DirectUploader:
    """One photo at a time through a presigned PUT. `core`: the client for the core (its
    token); `store`: a client for the object store, which must never carry the site's token.
    Raises what `CoreClient` raises, made by `transient` and `rejected` (and `check`)."""

    def __init__(self, core: httpx.AsyncClient, store: httpx.AsyncClient,
                 check: Callable[[httpx.Response, tuple[int, ...]], None],
                 transient: type[Exception], rejected: Callable[[int, str], Exception], *,
                 recheck_s: float = RECHECK_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._core = core
        self._store = store
        self._check = check
        self._transient = transient
        self._rejected = rejected
        self._recheck_s = recheck_s
        self._clock = clock
        self._unsupported_until = float("-inf")

    @property
    def offered(self) -> bool:
        """False while the core is known to take no direct uploads (re-asked after `recheck_s`)."""
        return self._clock() >= self._unsupported_until

    async def upload(self, record: PhotoRecord, data: bytes) -> dict | None:
        """The core's receipt, or None where the core offers no direct uploads (the caller
        sends through the core)."""
        if not self.offered:
            return None
        body = {"record": record.model_dump(mode="json")}
        try:
            grant = await self._presign(body)
        except DirectUnsupported:
            self._unsupported_until = self._clock() + self._recheck_s
            return None
        if "url" not in grant:
            return grant  # already stored (or erased): the receipt
        for attempt in range(2):
            await self._put(grant, data)
            response = await self._post(f"/v1/photos/{record.sha256}/commit", body)
            code = _code(response) if response.status_code == 409 else ""
            if code == "direct_unavailable":  # turned off since the grant: through the core
                self._unsupported_until = self._clock() + self._recheck_s
                return None
            if code in PUT_AGAIN:
                if attempt == 0:
                    continue  # the object was missing or damaged in the store: once more
                if hashlib.sha256(data).hexdigest() != record.sha256:  # a damaged spool copy
                    raise self._rejected(422, "the photo's bytes do not hash to its id (hash_mismatch)")
                raise self._transient(f"the object store lost or damaged the photo twice ({code})")
            self._check(response, (200, 201))
            return _json(response, self._transient)
        raise AssertionError("unreachable: the second try returns or raises")

    async def _presign(self, body: dict) -> dict:
        response = await self._post(PRESIGN, body)
        if response.status_code in (404, 405) or (
                response.status_code == 409 and _code(response) == "direct_unavailable"):
            raise DirectUnsupported()
        self._check(response, (200, 201))
        grant = _json(response, self._transient)
        if response.status_code == 201 and not isinstance(grant.get("url"), str):
            raise self._transient("the core's grant names no URL")
        return grant

    async def _post(self, path: str, body: dict) -> httpx.Response:
        try:
            return await self._core.post(path, json=body)
        except httpx.TransportError as exc:
            raise self._transient(f"core unreachable: {exc!r}") from exc

    async def _put(self, grant: dict, data: bytes) -> None:
        """PUT to the store; its refusal of the bytes is the core's `hash_mismatch`."""
        headers = {str(k): str(v) for k, v in (grant.get("headers") or {}).items()}
        try:
            response = await self._store.put(grant["url"], content=data, headers=headers)
        except httpx.TransportError as exc:
            raise self._transient(f"object store unreachable: {exc!r}") from exc
        if response.status_code == 200:
            return
        if response.status_code == 400 and any(f"<Code>{c}</Code>" in response.text for c in BAD_BYTES):
            raise self._rejected(422, "the object store refused the bytes: they do not match "
                                      "the photo's id (hash_mismatch)")
        # Expired or refused signature, throttling, a fault: a new grant on the next try.
        raise self._transient(f"the object store answered {response.status_code}")


def _code(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return ""
    return str(body.get("error", "")) if isinstance(body, dict) else ""


def _json(response: httpx.Response, transient: type[Exception]) -> dict:
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise transient(f"the core answered {response.status_code} without a receipt")
    return body
