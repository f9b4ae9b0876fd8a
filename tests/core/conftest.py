"""The core's folders: a database on SQLite and on PostgreSQL (`db_url`, `sessions`), a local
object store and a receiver on them. The two-backend `backend` fixture (object store + database
pairs) comes from tests/support/backends.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edge2core.common.objectstore import LocalObjectStore
from edge2core.core.db.engine import make_engine, make_sessionmaker
from edge2core.core.db.schema import create_schema
from edge2core.core.ingest.receiver import ImageReceiver
from tests.support.jpegs import jpeg_bytes
from tests.support.postgres import fresh_postgres
from tests.support.receiving import VAL_PERCENT


@pytest.fixture
def jpeg() -> bytes:
    return jpeg_bytes()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The same tests against the embedded default and the scale-out database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'core.db'}"
        return
    with fresh_postgres() as url:
        yield url


@pytest.fixture
def sessions(db_url: str):
    engine = make_engine(db_url)
    create_schema(engine)
    yield make_sessionmaker(engine)
    engine.dispose()


@pytest.fixture
def store(tmp_path: Path) -> LocalObjectStore:
    return LocalObjectStore(tmp_path / "objects")


@pytest.fixture
def receiver(store: LocalObjectStore, sessions) -> ImageReceiver:
    return ImageReceiver(store, sessions, max_bytes=64 * 1024, val_percent=VAL_PERCENT)
