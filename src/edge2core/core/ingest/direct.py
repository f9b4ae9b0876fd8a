"""Photos straight from the edge to S3: the core grants a presigned PUT, then records and
verifies what arrived, without the bytes ever crossing its HTTP API.

    grant(record)  -> a presigned PUT of `incoming/<sha256>` (or the receipt of a photo stored)
    commit(record) -> the same receipt as the one-shot PUT, once the photo is stored and recorded

The presigned PUT signs `Content-Length` (the record's size) and `x-amz-checksum-sha256` (the
photo's id itself), so S3 takes only exactly the photo's bytes under that URL: integrity is
checked where the bytes land, and the edge cannot name any other key. Uploads land under
`incoming/`, never at a stored photo's key: nothing the edge does can overwrite a stored photo,
and what is uploaded but never committed is found with one listing and purged after
`upload_expiry_s` (`purge_expired`, run now and then by `grant`).

What `commit` checks, and why it reads the object: the size (the GET's headers, before any of
the body is read: a short or oversized object is refused without reading it) and the store's
SHA-256 checksum where it keeps one; then the bytes themselves, because the core's own checks of
a photo (a supported, decodable image with no metadata, its perceptual hash for near-duplicate
groups) need them and an edge cannot be trusted with them. As the bytes are read anyway, they are
hashed too (a fraction of the decode's cost): the proof of storage then holds on stores that do
not enforce checksums (moto, some S3-compatible servers) and against an object replaced between
the PUT and the commit. The photo then goes through the receiver's own end of every upload path
(`ImageReceiver.accept_placed`: privacy, perceptual hash, group commit, dedupe by sha256),
its object placed at the stored key by a server-side copy: the bytes stay inside S3. The
upload is then deleted, with others in one request (`_BatchDeletes`).

Refusals (`common.errors` families): `direct_unavailable` (409: the store is not S3, or direct
uploads are off: send through the core), `not_uploaded` (409: no object), `object_size_mismatch`
and `object_hash_mismatch` (409: the object is not the photo; it is deleted, PUT it again), and
the receiver's own (422 `invalid_id`/`metadata_present`/`corrupt`, 415, 413 `too_large`);
`store_unavailable` (503) when S3 fails.
"""

from __future__ import annotations

import base64
import hashlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from edge2core.common.errors import Busy, Conflict
from edge2core.common.events import PhotoRecord, utcnow
from edge2core.common.logging import get_logger
from edge2core.common.objectstore import ObjectStore, S3ObjectStore
from edge2core.core.ingest.accepting import Receipt
from edge2core.core.ingest.errors import UploadTooLarge
from edge2core.core.ingest.receiver import ImageReceiver

log = get_logger(__name__)

INCOMING = "incoming/"
# Long enough for a large photo over a slow link; short enough that a leaked URL soon dies
# (and it can only ever write that one photo's bytes under `incoming/`).
URL_EXPIRY_S = 900
PURGE_EVERY_S = 600.0
RETRY_AFTER_S = 5.0
DELETE_BATCH_S = 0.2  # committed uploads are deleted together, this long after the first


class DirectUnavailable(Conflict):
    """This core takes photos through its own API only (a local store, or turned off)."""

    code = "direct_unavailable"


class ObjectMismatch(Conflict):
    """The uploaded object is missing (`not_uploaded`) or is not the photo
    (`object_size_mismatch`, `object_hash_mismatch`): PUT it again, then commit."""

    code = "not_uploaded"


@dataclass(frozen=True)
class PresignedPut:
    """Where and how the edge PUTs the photo: `url` with exactly `headers` (and the body's
    Content-Length), before `expires_at`."""

    url: str
    key: str
    headers: dict[str, str]
    expires_at: datetime


def checksum_of(sha256: str) -> str:
    """S3's `x-amz-checksum-sha256` value of a photo: its id, base64 of the raw digest."""
    return base64.b64encode(bytes.fromhex(sha256)).decode("ascii")


class DirectUploads:
    """Presigned PUTs into `store`'s bucket and their commits, through `receiver`.

    `presigner` is a boto3 S3 client that only signs (no requests): its endpoint is the one the
    sites reach, which may differ from the core's own (`s3_presign_endpoint_url`). Blocking
    methods: call them from worker threads."""

    def __init__(self, receiver: ImageReceiver, store: S3ObjectStore, presigner: Any, *,
                 expiry_s: float, url_expiry_s: int = URL_EXPIRY_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._receiver = receiver
        self._store = store
        self._s3 = store.client
        self._presigner = presigner
        self.expiry_s = expiry_s
        self.url_expiry_s = url_expiry_s
        self._clock = clock
        self._last_purge = float("-inf")
        self._deletions = _BatchDeletes(self._s3, store.bucket)

    def _incoming(self, sha256: str) -> str:
        return self._store.s3_key(INCOMING + sha256)

    # --- grant -------------------------------------------------------------------------------

    def grant(self, record: PhotoRecord) -> Receipt | PresignedPut:
        """The receipt of a photo already stored (or erased), else a presigned PUT for it.
        Raises `InvalidUpload` (ids), `UploadTooLarge`."""
        self._receiver.check_ids(record)
        if record.size > self._receiver.max_bytes:
            raise UploadTooLarge(f"over {self._receiver.max_bytes} bytes")
        if (done := self._receiver.existing(record.sha256)) is not None:
            return done
        self._purge_now_and_then()
        headers = {"x-amz-checksum-sha256": checksum_of(record.sha256)}
        url = self._presigner.generate_presigned_url(
            "put_object", ExpiresIn=self.url_expiry_s, HttpMethod="PUT",
            Params={"Bucket": self._store.bucket, "Key": self._incoming(record.sha256),
                    "ContentLength": record.size, "ChecksumSHA256": headers["x-amz-checksum-sha256"]})
        return PresignedPut(url=url, key=INCOMING + record.sha256, headers=headers,
                            expires_at=utcnow() + timedelta(seconds=self.url_expiry_s))

    # --- commit ------------------------------------------------------------------------------

    def commit(self, record: PhotoRecord) -> Receipt:
        """Verify the uploaded object, run the receiver's checks on it, store and record it
        once; the receipt is the one-shot PUT's. Raises `ObjectMismatch` (PUT it again),
        the receiver's refusals, `Busy` (`store_unavailable`)."""
        self._receiver.check_ids(record)
        if record.size > self._receiver.max_bytes:
            raise UploadTooLarge(f"over {self._receiver.max_bytes} bytes")
        if (done := self._receiver.existing(record.sha256)) is not None:
            self._drop(record.sha256)  # a replay: the upload, if any, is not needed
            return done
        data = self._read_verified(record)
        source = {"Bucket": self._store.bucket, "Key": self._incoming(record.sha256)}

        def place(key: str) -> None:
            self._s3_call(lambda: self._s3.copy_object(
                Bucket=self._store.bucket, Key=self._store.s3_key(key), CopySource=source))

        receipt = self._receiver.accept_placed(record, data, place,
                                               refused=lambda: self._drop(record.sha256))
        # The upload is not needed any more: deleted with others in one request (a request
        # per photo costs the core as much CPU as the copy); one left behind by a stop expires.
        self._deletions.add(self._incoming(record.sha256))
        return receipt

    def settle(self, timeout_s: float = 10.0) -> bool:
        """Wait until committed uploads are deleted from `incoming/` (tests, benchmarks)."""
        return self._deletions.settle(timeout_s)

    def _read_verified(self, record: PhotoRecord) -> bytes:
        """The object's bytes, if it is exactly the photo; else it is deleted and refused."""
        from botocore.exceptions import ClientError

        try:
            got = self._s3.get_object(Bucket=self._store.bucket,
                                      Key=self._incoming(record.sha256), ChecksumMode="ENABLED")
        except ClientError as exc:
            if S3ObjectStore._missing(exc):
                raise ObjectMismatch("no object was uploaded for this photo (or it expired): "
                                     "PUT it to a presigned URL, then commit") from exc
            raise _unavailable(exc) from exc
        except Exception as exc:
            raise _unavailable(exc) from exc
        body = got["Body"]
        try:
            length = int(got.get("ContentLength", -1))
            if length != record.size:
                self._refuse(record, "object_size_mismatch",
                             f"the object has {length} bytes, not {record.size}")
            stored_sum = got.get("ChecksumSHA256")
            if stored_sum and stored_sum != checksum_of(record.sha256):
                self._refuse(record, "object_hash_mismatch", "the store's checksum is another photo's")
            data = body.read(record.size + 1)
        except ObjectMismatch:
            raise
        except Exception as exc:
            raise _unavailable(exc) from exc
        finally:
            body.close()
        if len(data) != record.size:
            self._refuse(record, "object_size_mismatch",
                         f"the object has {len(data)}+ bytes, not {record.size}")
        if (actual := hashlib.sha256(data).hexdigest()) != record.sha256:
            self._refuse(record, "object_hash_mismatch", f"the object hashes to {actual}")
        return data

    def _refuse(self, record: PhotoRecord, code: str, detail: str) -> None:
        self._drop(record.sha256)
        log.warning("direct upload refused", sha256=record.sha256, site=record.site, reason=code)
        raise ObjectMismatch(f"{detail}: it was deleted; PUT the photo again, then commit",
                             code=code)

    def _drop(self, sha256: str) -> None:
        """Delete the upload (absent is fine); a failure is left to `purge_expired`."""
        try:
            self._s3.delete_object(Bucket=self._store.bucket, Key=self._incoming(sha256))
        except Exception as exc:
            log.warning("could not delete an upload; expiry will", sha256=sha256, error=repr(exc))

    def _s3_call(self, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except Exception as exc:
            raise _unavailable(exc) from exc

    # --- expiry ------------------------------------------------------------------------------

    def purge_expired(self, now: datetime | None = None) -> int:
        """Delete uploads under `incoming/` older than `expiry_s` (never committed); how many."""
        cutoff = (now or utcnow()) - timedelta(seconds=self.expiry_s)
        prefix = self._store.prefix + INCOMING
        old: list[dict[str, str]] = []
        for page in self._s3.get_paginator("list_objects_v2").paginate(
                Bucket=self._store.bucket, Prefix=prefix):
            old += [{"Key": item["Key"]} for item in page.get("Contents", [])
                    if item["LastModified"] < cutoff]
        for start in range(0, len(old), 1000):  # DeleteObjects takes up to 1000 keys
            self._s3.delete_objects(Bucket=self._store.bucket,
                                    Delete={"Objects": old[start:start + 1000], "Quiet": True})
        self._last_purge = self._clock()
        if old:
            log.info("expired direct uploads purged", objects=len(old))
        return len(old)

    def _purge_now_and_then(self) -> None:
        if self._clock() - self._last_purge < PURGE_EVERY_S:
            return
        try:
            self.purge_expired()
        except Exception as exc:  # a grant must not fail for the housekeeping
            self._last_purge = self._clock()
            log.warning("purging expired direct uploads failed", error=repr(exc))


class _BatchDeletes:
    """Keys deleted in batches (one DeleteObjects per up to 1000) by a daemon thread; a
    failed batch is logged and left to `DirectUploads.purge_expired`."""

    def __init__(self, s3: Any, bucket: str) -> None:
        self._s3 = s3
        self._bucket = bucket
        self._keys: list[str] = []
        self._busy = 0
        self._cond = threading.Condition()
        threading.Thread(target=self._run, name="e2c-direct-deletes", daemon=True).start()

    def add(self, key: str) -> None:
        with self._cond:
            self._keys.append(key)
            self._cond.notify_all()

    def settle(self, timeout_s: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: not self._keys and not self._busy, timeout_s)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._keys))
            time.sleep(DELETE_BATCH_S)  # let more commits join this batch
            with self._cond:
                keys, self._keys = self._keys[:1000], self._keys[1000:]
                self._busy = len(keys)
            try:
                self._s3.delete_objects(Bucket=self._bucket, Delete={
                    "Objects": [{"Key": k} for k in keys], "Quiet": True})
            except Exception as exc:
                log.warning("could not delete committed uploads; expiry will", objects=len(keys),
                            error=repr(exc))
            with self._cond:
                self._busy = 0
                self._cond.notify_all()


def _unavailable(exc: Exception) -> Busy:
    log.warning("object store failed during a direct upload", error=repr(exc))
    return Busy("the object store is unavailable; try again later", code="store_unavailable",
                retry_after_s=RETRY_AFTER_S)


def open_direct_uploads(receiver: ImageReceiver, store: ObjectStore, *, enabled: bool,
                        expiry_s: float, presign_endpoint_url: str | None = None,
                        region: str | None = None, access_key_id: str | None = None,
                        secret_access_key: str | None = None) -> DirectUploads | None:
    """Direct uploads over an S3 `store`, or None (a local store, or `enabled` off: the sites
    then send through the core). `presign_endpoint_url`: S3 as the sites reach it (default:
    the core's own endpoint)."""
    if not enabled or not isinstance(store, S3ObjectStore):
        return None
    import boto3
    from botocore.config import Config

    endpoint = presign_endpoint_url or store.client.meta.endpoint_url
    presigner = boto3.client(
        "s3", endpoint_url=endpoint, region_name=region or store.client.meta.region_name,
        aws_access_key_id=access_key_id, aws_secret_access_key=secret_access_key,
        config=Config(signature_version="s3v4"))
    return DirectUploads(receiver, store, presigner, expiry_s=expiry_s)
