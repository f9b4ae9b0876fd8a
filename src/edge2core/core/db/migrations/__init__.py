"""Schema migrations (Alembic), shipped inside the package so an installed core can migrate.

`upgrade(engine)` brings a database to the newest schema; the core calls it at start instead of
`create_all`. A database made by an earlier `create_all` (before migrations existed) is stamped
at the baseline revision first, then upgraded.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect, text

HERE = Path(__file__).resolve().parent
BASELINE = "0001"
MIGRATION_LOCK = 0x6532635F6D6967  # a PostgreSQL advisory lock key: "e2c_mig"


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(HERE))
    return config


def head() -> str:
    rev = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert rev is not None
    return rev


def current(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    config = alembic_config()
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Core processes starting together: one migrates, the others wait and find it done.
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        config.attributes["connection"] = conn
        tables = set(inspect(conn).get_table_names())
        if "alembic_version" not in tables and "images" in tables:
            command.stamp(
                config, BASELINE
            )  # made by create_all before migrations existed
        command.upgrade(config, revision)


def downgrade(engine: Engine, revision: str) -> None:
    config = alembic_config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, revision)
