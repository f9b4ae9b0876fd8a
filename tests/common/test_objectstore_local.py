"""The local object store's own rules: staging and temp files hidden, keys that escape or alias
refused, files moved in, content-addressed image keys. (tests/common/test_objectstore.py runs
the suite every store passes, local and S3.)"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest
from PIL import Image

from edge2core.common.objectstore import LocalObjectStore, image_key
from tests.support.jpegs import jpeg_bytes


@pytest.fixture
def store(tmp_path: Path) -> LocalObjectStore:
    return LocalObjectStore(tmp_path / "objects")


def test_object_store_list_hides_staging_and_temp_files(store: LocalObjectStore) -> None:
    store.put("images/x.jpg", b"x")
    (store.staging_dir() / ".up-123").write_bytes(b"in progress")
    (store.root / "images" / ".tmp-abc").write_bytes(b"half written")
    assert list(store.list()) == ["images/x.jpg"]


@pytest.mark.parametrize(
    "key",
    [
        "",
        "/etc/passwd",
        "../outside.bin",
        "a/../../outside.bin",
        "a/..",
        "..",
        ".",
        "a/./b.bin",
        "a//b.bin",
    ],
)
def test_object_store_refuses_keys_that_escape_or_alias(store: LocalObjectStore, key: str) -> None:
    for call in (
        lambda: store.put(key, b"x"),
        lambda: store.get(key),
        lambda: store.exists(key),
        lambda: store.delete(key),
    ):
        with pytest.raises(ValueError, match="invalid object key"):
            call()
    assert not (store.root.parent / "outside.bin").exists()
    assert [p.name for p in store.root.parent.iterdir()] == [store.root.name]


def test_object_store_put_file_moves_the_file(store: LocalObjectStore, tmp_path: Path) -> None:
    staged = store.staging_dir() / "upload.part"
    staged.write_bytes(b"photo bytes")
    store.put_file("images/ab/photo.jpg", staged)
    assert not staged.exists()
    assert store.get("images/ab/photo.jpg") == b"photo bytes"

    elsewhere = tmp_path / "elsewhere.bin"
    elsewhere.write_bytes(b"more bytes")
    store.put_file("other/thing.bin", elsewhere)
    assert not elsewhere.exists()
    assert store.get("other/thing.bin") == b"more bytes"
    assert sorted(store.list()) == ["images/ab/photo.jpg", "other/thing.bin"]


def test_image_key_is_content_addressed() -> None:
    sha = hashlib.sha256(b"x").hexdigest()
    assert image_key(sha) == f"images/{sha[:2]}/{sha}.jpg"


def test_real_jpeg_round_trips_through_the_store(store: LocalObjectStore) -> None:
    data = jpeg_bytes(size=(120, 80))
    store.put(image_key(hashlib.sha256(data).hexdigest()), data)
    [key] = store.list("images/")
    with Image.open(io.BytesIO(store.get(key))) as image:
        assert image.size == (120, 80)
