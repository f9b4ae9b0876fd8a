"""Alembic environment: runs on the connection `edge2core.core.db.migrations.upgrade` passes in."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine

import edge2core.core.db.schema  # noqa: F401  (registers every table on Base.metadata)
from edge2core.core.db.engine import Base

config = context.config
target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,  # SQLite cannot ALTER most things; batch mode copies the table
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:  # the `alembic` command line with sqlalchemy.url set
    engine = create_engine(config.get_main_option("sqlalchemy.url") or "")
    with engine.begin() as conn:
        _run(conn)
