"""Object storage behind one small interface: a local directory by default, S3 for scale.

Keys are relative, slash-separated paths ("images/ab/abcdef...jpg"). Writes are atomic: a
reader sees the whole object or none of it. Both backends keep in-progress uploads in a local
`staging_dir()`; `put_file` moves (local) or uploads (S3, multipart above a threshold) a finished
file and removes it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, Protocol, cast, runtime_checkable
from urllib.parse import urlparse

from edge2core.common.fsutil import fsync_dir, move_durable, write_atomic


class ObjectNotFound(KeyError):
    pass


@runtime_checkable
class ObjectStore(Protocol):
    def put(self, key: str, data: bytes) -> None: ...
    def put_file(self, key: str, path: Path) -> None:
        """Take ownership of a finished local file (moved or uploaded, then gone)."""
    def open(self, key: str) -> BinaryIO: ...
    def get(self, key: str) -> bytes: ...
    def exists(self, key: str) -> bool: ...
    def size(self, key: str) -> int: ...
    def delete(self, key: str) -> None: ...
    def list(self, prefix: str = "") -> Iterator[str]: ...
    def staging_dir(self) -> Path:
        """A local folder for in-progress uploads that `put_file` can take from cheaply."""


def validate_key(key: str) -> str:
    # Split by hand: PurePosixPath drops "." and empty parts, hiding aliases like "a//b".
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("..", ".", "") for p in parts):
        raise ValueError(f"invalid object key {key!r}: use a relative path without '..'")
    return key


class LocalObjectStore:
    """A directory tree; fsync'd atomic writes make it safe to acknowledge after `put`."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._staging = self.root / ".staging"
        self._staging.mkdir(exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / validate_key(key)

    def put(self, key: str, data: bytes) -> None:
        write_atomic(self._path(key), [data])

    def put_file(self, key: str, path: Path) -> None:
        with path.open("rb") as fh:
            os.fsync(fh.fileno())
        dest = self._path(key)
        try:
            move_durable(path, dest)
        except OSError:
            # Different file system: copy durably, then drop the source.
            with path.open("rb") as fh:
                write_atomic(dest, iter(lambda: fh.read(1 << 20), b""))
            path.unlink()

    def open(self, key: str) -> BinaryIO:
        try:
            return self._path(key).open("rb")
        except FileNotFoundError as exc:
            raise ObjectNotFound(key) from exc

    def get(self, key: str) -> bytes:
        with self.open(key) as fh:
            return fh.read()

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError as exc:
            raise ObjectNotFound(key) from exc

    def delete(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        if path.parent.exists():
            fsync_dir(path.parent)

    def list(self, prefix: str = "") -> Iterator[str]:
        base = self.root
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if name.startswith(".tmp-"):
                    continue
                key = Path(dirpath, name).relative_to(base).as_posix()
                if key.startswith(prefix):
                    yield key

    def staging_dir(self) -> Path:
        return self._staging


MULTIPART_THRESHOLD = 8 * 1024 * 1024
MULTIPART_CHUNK = 8 * 1024 * 1024


class S3ObjectStore:
    """Objects in an S3 bucket (AWS, MinIO, Ceph, ...) under an optional key prefix.

    S3 itself makes a PUT atomic (readers see the old object or the new one). Objects over
    `multipart_threshold` bytes go up as multipart uploads; in-progress uploads are staged in a
    local folder, since S3 cannot append.
    """

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        staging_dir: Path,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        multipart_threshold: int = MULTIPART_THRESHOLD,
        multipart_chunk: int = MULTIPART_CHUNK,
        create_bucket: bool = False,
        client: Any = None,
    ) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self._staging = staging_dir.resolve()
        self._staging.mkdir(parents=True, exist_ok=True)
        self._client: Any = client or boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region or "us-east-1",
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            config=Config(retries={"max_attempts": 5, "mode": "standard"},
                          max_pool_connections=32),
        )
        self._transfer = TransferConfig(
            multipart_threshold=multipart_threshold,
            multipart_chunksize=max(multipart_chunk, 5 * 1024 * 1024),
            use_threads=True,
            max_concurrency=4,
        )
        if create_bucket:
            self._ensure_bucket()

    def _ensure_bucket(self) -> None:
        from botocore.exceptions import ClientError

        try:
            self._client.head_bucket(Bucket=self.bucket)
        except ClientError:
            self._client.create_bucket(Bucket=self.bucket)

    def _key(self, key: str) -> str:
        return self.prefix + validate_key(key)

    @property
    def client(self) -> Any:
        """The boto3 S3 client, for what this interface leaves out (copies, checksums:
        `core.ingest.direct`)."""
        return self._client

    def s3_key(self, key: str) -> str:
        """The bucket key that holds `key` (under the prefix)."""
        return self._key(key)

    @staticmethod
    def _missing(exc: Exception) -> bool:
        code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
        return code in ("404", "NoSuchKey", "NotFound")

    def put(self, key: str, data: bytes) -> None:
        if len(data) > self._transfer.multipart_threshold:
            import io

            self._client.upload_fileobj(
                io.BytesIO(data), self.bucket, self._key(key), Config=self._transfer
            )
            return
        self._client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def put_file(self, key: str, path: Path) -> None:
        # upload_file switches to a multipart upload above the threshold; the object appears
        # only when the upload completes, so readers never see part of it.
        self._client.upload_file(str(path), self.bucket, self._key(key), Config=self._transfer)
        path.unlink()

    def open(self, key: str) -> BinaryIO:
        from botocore.exceptions import ClientError

        try:
            response = self._client.get_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if self._missing(exc):
                raise ObjectNotFound(key) from exc
            raise
        return cast(BinaryIO, response["Body"])

    def get(self, key: str) -> bytes:
        with self.open(key) as fh:
            return fh.read()

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self._client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if self._missing(exc):
                return False
            raise
        return True

    def size(self, key: str) -> int:
        from botocore.exceptions import ClientError

        try:
            head = self._client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if self._missing(exc):
                raise ObjectNotFound(key) from exc
            raise
        return int(head["ContentLength"])

    def etag(self, key: str) -> str:
        """The S3 ETag; multipart objects end in "-<parts>"."""
        head = self._client.head_object(Bucket=self.bucket, Key=self._key(key))
        return str(head["ETag"]).strip('"')

    def delete(self, key: str) -> None:
        self._client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def list(self, prefix: str = "") -> Iterator[str]:
        paginator = self._client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
            for item in page.get("Contents", []):
                yield item["Key"][len(self.prefix):]

    def staging_dir(self) -> Path:
        return self._staging


def open_object_store(
    url: str,
    *,
    staging_dir: Path | None = None,
    endpoint_url: str | None = None,
    region: str | None = None,
    access_key_id: str | None = None,
    secret_access_key: str | None = None,
    create_bucket: bool = False,
) -> ObjectStore:
    """`s3://bucket/prefix` for S3 (staging in `staging_dir`), else a local directory
    (`file:///path` or a plain path)."""
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ValueError(f"object store URL {url!r} names no bucket (s3://bucket/prefix)")
        if staging_dir is None:
            raise ValueError("an S3 object store needs a local staging_dir")
        return S3ObjectStore(
            parsed.netloc,
            prefix=parsed.path.lstrip("/"),
            staging_dir=staging_dir,
            endpoint_url=endpoint_url,
            region=region,
            access_key_id=access_key_id,
            secret_access_key=secret_access_key,
            create_bucket=create_bucket,
        )
    if parsed.scheme == "file":
        return LocalObjectStore(Path(parsed.path))
    if parsed.scheme and len(parsed.scheme) > 1:  # "C:" style paths are not schemes
        raise ValueError(f"unsupported object store URL {url!r}: use s3://bucket/prefix or a path")
    return LocalObjectStore(Path(url))


def image_key(sha256: str) -> str:
    return f"images/{sha256[:2]}/{sha256}.jpg"
