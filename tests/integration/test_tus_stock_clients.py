"""Stock tus 1.0 clients against the real core on uvicorn (embedded and S3 + PostgreSQL):
tuspy with its default settings, and curl.

tuspy's Uploader POSTs to the collection (`/v1/uploads`), reads only the Location of the
answer, and PATCHes from offset 0 (one PATCH of the whole file by default). It resumes only
when it is given the upload's URL (`url=`, or `store_url=True` with a URL storage): then it
HEADs the URL and PATCHes from the offset there. The core answers both ways: a POST to the
collection is always a new upload at 0 (an earlier partial one of the same photo is dropped;
the photo is stored once); HEAD + PATCH resume.
"""

from __future__ import annotations

import base64
import io
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tusclient.client import TusClient
from tusclient.exceptions import TusUploadFailed
from tusclient.storage.filestorage import FileStorage

from edge2core.common.events import PhotoRecord
from edge2core.common.objectstore import image_key
from edge2core.core.api.app import create_core_app
from edge2core.core.service import build_core_services
from tests.integration.test_upload_proof import RefusingCore
from tests.integration.test_uploads import TOKENS, cut_mid_body, record_for, wait_offset
from tests.support.backends import Backend, CoreServer, noisy_jpeg

AUTH = {"Authorization": "Bearer tok-1"}
SIZE = (800, 600)


@pytest.fixture
def core(backend: Backend, tmp_path: Path) -> Iterator[RefusingCore]:
    services = build_core_services(backend.core_settings(tmp_path / "core", site_tokens=TOKENS))
    with CoreServer(create_core_app(services)) as server:
        core = RefusingCore(services, server, "tok-1")
        yield core
        core.http.close()


def photo(seed: int) -> tuple[bytes, PhotoRecord]:
    data = noisy_jpeg(seed, SIZE)
    return data, record_for(data, width=SIZE[0], height=SIZE[1])


def field_metadata(record: PhotoRecord) -> dict[str, str]:
    """What a stock client sends: one Upload-Metadata key per record field (tuspy encodes)."""
    return {"sha256": record.sha256, "site": record.site, "device": record.device,
            "source": record.source.value, "sku": record.sku or "",
            "width": str(record.width), "height": str(record.height), "filename": "photo.jpg",
            "filetype": "image/jpeg"}


def record_metadata(record: PhotoRecord) -> dict[str, str]:
    """The edge's way: the whole photo record as JSON under `record`."""
    return {"record": record.model_dump_json()}


def tus_client(core: RefusingCore) -> TusClient:
    return TusClient(f"{core.url}/v1/uploads", headers=dict(AUTH))


def assert_stored_once(core: RefusingCore, record: PhotoRecord, data: bytes) -> None:
    assert core.services.store.get(image_key(record.sha256)) == data
    assert core.rows() == 1
    assert core.upload_files() == []


@pytest.mark.parametrize("metadata", [field_metadata, record_metadata])
def test_tuspy_defaults_upload_a_photo(
    core: RefusingCore, metadata: Callable[[PhotoRecord], dict[str, str]]
) -> None:
    data, record = photo(1)
    uploader = tus_client(core).uploader(file_stream=io.BytesIO(data), metadata=metadata(record))
    uploader.upload()
    assert uploader.url == f"{core.url}/v1/uploads/{record.sha256}"
    answer = uploader.request.response_headers
    assert answer["upload-offset"] == str(len(data))
    assert answer["x-e2c-key"] == image_key(record.sha256)  # the proof it was stored
    assert answer["x-e2c-created"] == "true"
    assert_stored_once(core, record, data)
    with core.services.sessions() as session:
        from edge2core.core.db.schema import ImageRow

        row = session.get(ImageRow, record.sha256)
    assert (row.site, row.device, row.sku, row.width, row.height) == (
        "store-1", "kiosk-a", "SKU-A", SIZE[0], SIZE[1])


def test_tuspy_resumes_a_cut_upload_from_its_url(core: RefusingCore) -> None:
    """The connection drops mid-PATCH; a fresh Uploader given the upload's URL (what a
    restarted app keeps) HEADs it and sends only the rest."""
    data, record = photo(2)
    first = tus_client(core).uploader(file_stream=io.BytesIO(data), metadata=field_metadata(record))
    first.set_url(first.create_url())
    path = f"/v1/uploads/{record.sha256}"
    cut_mid_body(core.port, path, 0, data, len(data) // 2)
    held = wait_offset(core, record.sha256, 0)
    assert 0 < held <= len(data) // 2

    fresh = tus_client(core).uploader(file_stream=io.BytesIO(data), url=first.url)
    assert fresh.offset == held  # it asked the core (HEAD), not started over
    fresh.upload()
    assert fresh.request.response_headers["x-e2c-key"] == image_key(record.sha256)
    assert_stored_once(core, record, data)


def test_tuspy_with_url_storage_resumes_after_a_restart(core: RefusingCore, tmp_path: Path) -> None:
    """tuspy's own resumability: `store_url=True` keeps the URL per file fingerprint."""
    data, record = photo(3)
    path = tmp_path / "photo.jpg"  # a path: tuspy's fingerprinting closes a stream
    path.write_bytes(data)

    def uploader(storage: FileStorage):  # type: ignore[no-untyped-def]
        return tus_client(core).uploader(str(path), metadata=field_metadata(record),
                                         chunk_size=len(data) // 4, store_url=True,
                                         url_storage=storage)

    storage = FileStorage(str(tmp_path / "tus-urls.json"))
    first = uploader(storage)
    first.upload(stop_at=len(data) // 2)  # the app stops half-way
    assert core.head(record.sha256).headers["Upload-Offset"] == str(first.offset)
    storage.close()

    storage = FileStorage(str(tmp_path / "tus-urls.json"))  # "restarted"
    fresh = uploader(storage)
    assert fresh.url == first.url and fresh.offset == first.offset > 0
    fresh.upload()
    storage.close()
    assert fresh.request.response_headers["x-e2c-key"] == image_key(record.sha256)
    assert_stored_once(core, record, data)


def test_tuspy_defaults_after_a_restart_start_over_cleanly(core: RefusingCore) -> None:
    """A fresh Uploader that kept nothing POSTs again and PATCHes from 0: the core gives it a
    new upload at 0 (once answered 200 with the old offset, and the PATCH got 409)."""
    data, record = photo(4)
    first = tus_client(core).uploader(file_stream=io.BytesIO(data), metadata=field_metadata(record),
                                      chunk_size=len(data) // 3)
    first.upload(stop_at=len(data) // 3)
    assert int(core.head(record.sha256).headers["Upload-Offset"]) > 0

    fresh = tus_client(core).uploader(file_stream=io.BytesIO(data), metadata=field_metadata(record))
    fresh.upload()
    assert fresh.request.response_headers["x-e2c-key"] == image_key(record.sha256)
    assert_stored_once(core, record, data)


def test_tuspy_uploading_a_stored_photo_again_stores_nothing_twice(core: RefusingCore) -> None:
    data, record = photo(5)
    for created in ("true", "false"):
        uploader = tus_client(core).uploader(file_stream=io.BytesIO(data),
                                             metadata=field_metadata(record))
        uploader.upload()
        answer = uploader.request.response_headers
        assert (answer["x-e2c-key"], answer["x-e2c-created"]) == (image_key(record.sha256), created)
    assert_stored_once(core, record, data)
    # The edge's own client agrees that the photo is there.
    head = core.head(record.sha256)
    assert head.headers["X-E2C-Key"] == image_key(record.sha256)


def test_tuspy_sees_a_failed_finish_and_its_retry_finishes_the_upload(core: RefusingCore) -> None:
    """The store refuses the finishing write: a stock client sees the failure (503, no false
    success). With retries on, tuspy then asks the offset (all there) and PATCHes the rest,
    which is nothing: that empty PATCH at offset == length finishes the upload."""
    data, record = photo(6)
    core.store.refusals_left = 1
    strict = tus_client(core).uploader(file_stream=io.BytesIO(data),
                                       metadata=field_metadata(record))
    with pytest.raises(TusUploadFailed) as failed:
        strict.upload()
    assert failed.value.status_code == 503
    assert core.rows() == 0 and not core.has(record.sha256)
    head = core.head(record.sha256)
    assert head.headers["Upload-Offset"] == str(len(data)) and "X-E2C-Key" not in head.headers

    core.store.refusals_left = 1
    patient = tus_client(core).uploader(file_stream=io.BytesIO(data),
                                        metadata=field_metadata(record), retries=1, retry_delay=0)
    patient.upload()  # a new upload (POST); 503 at the end; HEAD; the empty PATCH stores it
    assert core.store.refused == 2
    assert patient.request.response_headers["x-e2c-key"] == image_key(record.sha256)
    assert_stored_once(core, record, data)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_speaks_tus_to_the_core(core: RefusingCore, tmp_path: Path) -> None:
    data, record = photo(7)
    body = tmp_path / "photo.jpg"
    body.write_bytes(data)
    meta = ",".join(f"{k} {base64.b64encode(v.encode()).decode()}"
                    for k, v in field_metadata(record).items())

    def curl(*args: str) -> tuple[int, dict[str, str]]:
        out = subprocess.run(
            ["curl", "-sS", "-o", "/dev/null", "-D", "-", "-H", "Tus-Resumable: 1.0.0",
             "-H", "Authorization: Bearer tok-1", *args],
            check=True, capture_output=True, text=True, timeout=30).stdout
        lines = [line for line in out.splitlines() if line.strip()]
        status = int(lines[0].split()[1])
        headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
        return status, {k.lower(): v for k, v in headers.items()}

    status, options = curl("-X", "OPTIONS", f"{core.url}/v1/uploads")
    assert status == 204 and options["tus-version"] == "1.0.0"
    assert "creation" in options["tus-extension"].split(",")
    assert int(options["tus-max-size"]) > 0
    status, created = curl("-X", "POST", "-H", f"Upload-Length: {len(data)}",
                           "-H", f"Upload-Metadata: {meta}", f"{core.url}/v1/uploads")
    assert status == 201 and created["upload-offset"] == "0"
    location = core.url + created["location"]
    status, patched = curl("-X", "PATCH", "-H", "Upload-Offset: 0",
                           "-H", "Content-Type: Application/Offset+Octet-Stream",
                           "--data-binary", f"@{body}", location)
    assert status == 204 and patched["x-e2c-key"] == image_key(record.sha256)
    status, head = curl("-I", location)
    assert status == 200 and head["upload-offset"] == str(len(data))
    assert head["x-e2c-key"] == image_key(record.sha256)
    assert_stored_once(core, record, data)
