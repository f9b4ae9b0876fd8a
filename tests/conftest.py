"""Shared fixtures: real photos, databases, servers. Every server listens on a free port."""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import text

from edge2core.core.db.engine import create_schema, make_engine, make_sessionmaker

REPO = Path(__file__).resolve().parents[1]
GROCERY = Path(os.environ.get("E2C_DATASET") or REPO.parent / "shared" / "datasets" / "grocery")
FACES = REPO.parent / "shared" / "datasets" / "faces"
PG_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432"
PG_URL = os.environ.get("E2C_TEST_PG_URL", f"{PG_SERVER}/test")
# Without E2C_TEST_PG_URL each pytest run gets a database of its own, made at start and dropped
# at the end: two runs on one machine (developers, CI, benchmarks) never drop each other's tables.
_PRIVATE_DB = None if "E2C_TEST_PG_URL" in os.environ else f"e2c_test_{os.getpid()}"

# Fixtures for the object-store backends (local, S3 on moto) and the core backends pairs.
pytest_plugins = ["tests.objectstores", "tests.backends"]


def _admin(sql: str) -> None:
    engine = make_engine(f"{PG_SERVER}/postgres").execution_options(isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text(sql))
    finally:
        engine.dispose()


def pytest_configure(config: pytest.Config) -> None:
    global PG_URL
    if _PRIVATE_DB is None:
        return
    try:
        _admin(f"DROP DATABASE IF EXISTS {_PRIVATE_DB}")
        _admin(f"CREATE DATABASE {_PRIVATE_DB}")
    except Exception:  # noqa: BLE001 - no server: fresh_postgres skips (fails in CI) as before
        return
    PG_URL = f"{PG_SERVER}/{_PRIVATE_DB}"


def pytest_unconfigure(config: pytest.Config) -> None:
    if _PRIVATE_DB is not None and PG_URL.endswith(_PRIVATE_DB):
        with contextlib.suppress(Exception):
            _admin(f"DROP DATABASE IF EXISTS {_PRIVATE_DB} WITH (FORCE)")


@pytest.fixture(scope="session")
def grocery_dir() -> Path:
    if not (GROCERY / "train.txt").is_file():
        pytest.skip(f"grocery dataset not found at {GROCERY} (set E2C_DATASET)")
    return GROCERY


def jpeg_bytes(size: tuple[int, int] = (64, 48), color: tuple[int, int, int] = (200, 30, 30),
               **save: object) -> bytes:
    """A small real JPEG; `save` passes Pillow options such as exif=..."""
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="JPEG", **save)
    return out.getvalue()


@pytest.fixture
def jpeg() -> bytes:
    return jpeg_bytes()


def _postgres_available() -> bool:
    try:
        engine = make_engine(PG_URL)
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
        return True
    except Exception:
        return False


@contextlib.contextmanager
def fresh_postgres() -> Iterator[str]:
    """PG_URL with every table dropped before and after; skips the test where PostgreSQL is not
    reachable (fails it in CI, which must run the scale-out tests)."""
    if not _postgres_available():
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is required in CI but not reachable at {PG_URL}")
        pytest.skip(f"PostgreSQL not reachable at {PG_URL}")
    _drop_all_at(PG_URL)
    yield PG_URL
    _drop_all_at(PG_URL)


def _drop_all_at(url: str) -> None:
    import edge2core.core.db.schema  # noqa: F401  (registers the tables)

    engine = make_engine(url)
    _drop_all(engine)
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The same tests against the embedded default and the scale-out database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'core.db'}"
        return
    with fresh_postgres() as url:
        yield url


def _drop_all(engine) -> None:  # type: ignore[no-untyped-def]
    """Every table, Alembic's version table included (else a migration thinks it is done)."""
    from edge2core.core.db.engine import Base

    Base.metadata.drop_all(engine)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS alembic_version"))


@pytest.fixture
def sessions(db_url: str):
    engine = make_engine(db_url)
    create_schema(engine)
    yield make_sessionmaker(engine)
    engine.dispose()
