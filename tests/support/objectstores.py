"""Object store backends for tests: the local directory and S3 on a real S3-protocol server.

The S3 server is moto's (`moto[server]`), started once per test session on a free port; every
store gets its own bucket, so tests never see each other's objects.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge2core.common.net import free_port, wait_for_port
from edge2core.common.objectstore import LocalObjectStore, ObjectStore, S3ObjectStore

STORE_KINDS = ["local", "s3"]
_buckets = itertools.count()


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    pytest.importorskip("moto")
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    wait_for_port("127.0.0.1", port, timeout=30)
    yield f"http://127.0.0.1:{port}"
    server.stop()


def make_s3_store(endpoint: str, staging: Path, **kw: object) -> S3ObjectStore:
    return S3ObjectStore(
        f"e2c-test-{next(_buckets)}",
        prefix="core",
        staging_dir=staging,
        endpoint_url=endpoint,
        access_key_id="testing",
        secret_access_key="testing",
        create_bucket=True,
        **kw,  # type: ignore[arg-type]
    )


def make_store(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if kind == "local":
        return LocalObjectStore(tmp_path / "objects")
    endpoint = request.getfixturevalue("s3_endpoint")
    return make_s3_store(endpoint, tmp_path / "staging")
