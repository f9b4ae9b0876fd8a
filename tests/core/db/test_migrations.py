"""Alembic migrations: the migrated schema is exactly the models', on SQLite and PostgreSQL;
databases made by the skeleton's `create_all` are adopted and upgraded with their data."""

from __future__ import annotations

from datetime import UTC, datetime

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

import edge2core.core.db.schema  # noqa: F401  (registers every table)
from edge2core.core.db import migrations
from edge2core.core.db.engine import Base, make_engine


def schema_diff(engine) -> list:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return compare_metadata(context, Base.metadata)


def test_migrated_schema_matches_the_models(db_url: str) -> None:
    engine = make_engine(db_url)
    assert migrations.current(engine) is None
    migrations.upgrade(engine)
    assert migrations.current(engine) == migrations.head()
    assert schema_diff(engine) == []
    migrations.upgrade(engine)  # a second start changes nothing
    assert migrations.current(engine) == migrations.head()
    engine.dispose()


def test_downgrade_and_upgrade_again(db_url: str) -> None:
    engine = make_engine(db_url)
    migrations.upgrade(engine)
    migrations.downgrade(engine, migrations.BASELINE)
    assert "label_tasks" not in inspect(engine).get_table_names()
    migrations.upgrade(engine)
    assert schema_diff(engine) == []
    engine.dispose()


def test_a_create_all_database_is_adopted_and_backfilled(db_url: str) -> None:
    engine = make_engine(db_url)
    migrations.upgrade(engine, migrations.BASELINE)  # the skeleton's tables, as create_all made
    now = datetime(2026, 11, 1, tzinfo=UTC)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE alembic_version"))
        for sha, source, sku in (("a" * 64, "kiosk", "SKU-1"), ("b" * 64, "shopper", None)):
            conn.execute(text(
                "INSERT INTO images (sha256, key, size, width, height, site, device, source, sku,"
                " received_at, stored_at, top_guesses, split) VALUES (:sha, :key, 1, 1, 1, 's',"
                " 'd', :source, :sku, :now, :now, '[]', 'train')"),
                {"sha": sha, "key": f"images/{sha[:2]}/{sha}.jpg", "source": source, "sku": sku,
                 "now": now})
    migrations.upgrade(engine)
    assert migrations.current(engine) == migrations.head()
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT sha256, label_origin, dup_group FROM images ORDER BY sha256")).all()
    assert [tuple(r) for r in rows] == [("a" * 64, "scan", "a" * 64), ("b" * 64, None, "b" * 64)]
    assert schema_diff(engine) == []
    engine.dispose()
