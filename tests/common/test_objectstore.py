"""One object-store suite, run against the local directory and against S3 (a real moto server)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from edge2core.common.objectstore import (
    LocalObjectStore,
    ObjectNotFound,
    ObjectStore,
    S3ObjectStore,
    open_object_store,
)
from tests.support.objectstores import STORE_KINDS, make_s3_store, make_store


@pytest.fixture(params=STORE_KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    return make_store(request.param, request, tmp_path)


def test_put_get_exists_size_delete_list(store: ObjectStore) -> None:
    assert isinstance(store, ObjectStore)
    assert not store.exists("a/b.bin")
    store.put("a/b.bin", b"hello")
    store.put("a/c.bin", b"world!")
    store.put("z.bin", b"")
    assert store.exists("a/b.bin")
    assert store.get("a/b.bin") == b"hello"
    assert store.size("a/c.bin") == 6
    assert store.size("z.bin") == 0
    with store.open("a/c.bin") as fh:
        assert fh.read() == b"world!"
    assert sorted(store.list()) == ["a/b.bin", "a/c.bin", "z.bin"]
    assert sorted(store.list("a/")) == ["a/b.bin", "a/c.bin"]

    store.put("a/b.bin", b"replaced")
    assert store.get("a/b.bin") == b"replaced"

    store.delete("a/b.bin")
    assert not store.exists("a/b.bin")
    store.delete("a/b.bin")  # deleting twice is fine
    store.delete("never/there.bin")
    with pytest.raises(ObjectNotFound):
        store.get("a/b.bin")
    with pytest.raises(ObjectNotFound):
        store.size("a/b.bin")
    with pytest.raises(ObjectNotFound):
        store.open("a/b.bin")
    assert sorted(store.list()) == ["a/c.bin", "z.bin"]


def test_list_hides_staging(store: ObjectStore) -> None:
    store.put("images/x.jpg", b"x")
    (store.staging_dir() / ".up-123").write_bytes(b"in progress")
    assert list(store.list()) == ["images/x.jpg"]


@pytest.mark.parametrize("key", ["", "/etc/passwd", "../outside.bin", "a/../b", "a/./b", "a//b"])
def test_refuses_keys_that_escape_or_alias(store: ObjectStore, key: str) -> None:
    for call in (
        lambda: store.put(key, b"x"),
        lambda: store.get(key),
        lambda: store.exists(key),
        lambda: store.delete(key),
    ):
        with pytest.raises(ValueError, match="invalid object key"):
            call()
    assert list(store.list()) == []


def test_put_file_takes_the_file_and_removes_it(store: ObjectStore, tmp_path: Path) -> None:
    staged = store.staging_dir() / "upload.part"
    staged.write_bytes(b"photo bytes")
    store.put_file("images/ab/photo.jpg", staged)
    assert not staged.exists()
    assert store.get("images/ab/photo.jpg") == b"photo bytes"

    elsewhere = tmp_path / "elsewhere.bin"
    elsewhere.write_bytes(b"more bytes")
    store.put_file("other/thing.bin", elsewhere)
    assert not elsewhere.exists()
    assert sorted(store.list()) == ["images/ab/photo.jpg", "other/thing.bin"]


def test_large_object_round_trips_through_put_file(store: ObjectStore) -> None:
    data = os.urandom(6 * 1024 * 1024 + 123)
    staged = store.staging_dir() / "big.part"
    staged.write_bytes(data)
    store.put_file("big/object.bin", staged)
    assert store.size("big/object.bin") == len(data)
    with store.open("big/object.bin") as fh:
        read = b"".join(iter(lambda: fh.read(1 << 20), b""))
    assert hashlib.sha256(read).digest() == hashlib.sha256(data).digest()


def test_s3_uses_multipart_above_the_threshold(s3_endpoint: str, tmp_path: Path) -> None:
    store = make_s3_store(s3_endpoint, tmp_path / "staging",
                          multipart_threshold=5 * 1024 * 1024, multipart_chunk=5 * 1024 * 1024)
    data = os.urandom(11 * 1024 * 1024)
    staged = tmp_path / "staging" / "big.part"
    staged.write_bytes(data)
    store.put_file("big.bin", staged)
    assert store.etag("big.bin").endswith("-3")  # three parts: 5 + 5 + 1 MiB
    assert store.get("big.bin") == data
    store.put("small.bin", b"x" * 1000)
    assert "-" not in store.etag("small.bin")
    store.put("bytes-big.bin", data)  # put() of a large buffer is multipart too
    assert store.etag("bytes-big.bin").endswith("-3")


def test_s3_prefix_isolates_keys(s3_endpoint: str, tmp_path: Path) -> None:
    a = make_s3_store(s3_endpoint, tmp_path / "a")
    b = S3ObjectStore(a.bucket, prefix="other/", staging_dir=tmp_path / "b",
                      endpoint_url=s3_endpoint, access_key_id="testing",
                      secret_access_key="testing")
    a.put("k.bin", b"a")
    b.put("k.bin", b"b")
    assert (a.get("k.bin"), b.get("k.bin")) == (b"a", b"b")
    assert list(a.list()) == ["k.bin"] and list(b.list()) == ["k.bin"]


def test_open_object_store_by_url(s3_endpoint: str, tmp_path: Path) -> None:
    local = open_object_store(str(tmp_path / "objs"))
    assert isinstance(local, LocalObjectStore) and local.root == (tmp_path / "objs").resolve()
    assert isinstance(open_object_store(f"file://{tmp_path}/objs2"), LocalObjectStore)
    s3 = open_object_store("s3://e2c-by-url/some/prefix", staging_dir=tmp_path / "st",
                           endpoint_url=s3_endpoint, access_key_id="testing",
                           secret_access_key="testing", create_bucket=True)
    assert isinstance(s3, S3ObjectStore)
    assert (s3.bucket, s3.prefix) == ("e2c-by-url", "some/prefix/")
    s3.put("x", b"1")
    assert s3.get("x") == b"1"
    with pytest.raises(ValueError, match="names no bucket"):
        open_object_store("s3:///prefix", staging_dir=tmp_path)
    with pytest.raises(ValueError, match="unsupported"):
        open_object_store("gs://bucket/x")
