"""The PostgreSQL the scale-out tests use.

Without E2C_TEST_PG_URL each pytest run gets a database of its own, made at start and dropped at
the end (`create_private_database` / `drop_private_database`, called from tests/conftest.py):
two runs on one machine (developers, CI, benchmarks) never drop each other's tables.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, text

from edge2core.core.db.engine import Base, make_engine

PG_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432"
PG_URL = os.environ.get("E2C_TEST_PG_URL", f"{PG_SERVER}/test")
_PRIVATE_DB = None if "E2C_TEST_PG_URL" in os.environ else f"e2c_test_{os.getpid()}"


def _admin(sql: str) -> None:
    engine = make_engine(f"{PG_SERVER}/postgres").execution_options(isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text(sql))
    finally:
        engine.dispose()


def create_private_database() -> None:
    """Point PG_URL at a database of this run's own; no server: `fresh_postgres` skips (fails
    in CI) as before."""
    global PG_URL
    if _PRIVATE_DB is None:
        return
    try:
        _admin(f"DROP DATABASE IF EXISTS {_PRIVATE_DB}")
        _admin(f"CREATE DATABASE {_PRIVATE_DB}")
    except Exception:
        return
    PG_URL = f"{PG_SERVER}/{_PRIVATE_DB}"


def drop_private_database() -> None:
    if _PRIVATE_DB is not None and PG_URL.endswith(_PRIVATE_DB):
        with contextlib.suppress(Exception):
            _admin(f"DROP DATABASE IF EXISTS {_PRIVATE_DB} WITH (FORCE)")


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
    drop_all(engine)
    engine.dispose()


def drop_all(engine: Engine) -> None:
    """Every table, Alembic's version table included (else a migration thinks it is done)."""
    Base.metadata.drop_all(engine)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS alembic_version"))
