"""Opening the core's stores from its settings: object store backend and migrated database."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from edge2core.common.objectstore import ObjectStore, open_object_store
from edge2core.config import CoreSettings
from edge2core.core.db.engine import make_engine, make_sessionmaker


def object_store(settings: CoreSettings) -> ObjectStore:
    """`object_store_url` (s3://bucket/prefix or a directory), else `data_dir/objects`."""
    url = settings.object_store_url or str(settings.data_dir / "objects")
    return open_object_store(
        url,
        staging_dir=settings.data_dir / "staging",
        endpoint_url=settings.s3_endpoint_url,
        region=settings.s3_region,
        access_key_id=settings.s3_access_key_id,
        secret_access_key=settings.s3_secret_access_key,
    )


def database(settings: CoreSettings, *, migrate: bool = True) -> sessionmaker[Session]:
    """A session factory on the core's database, migrated to the newest schema first."""
    from edge2core.core.db import migrations

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.resolved_database_url)
    if migrate:
        migrations.upgrade(engine)
    return make_sessionmaker(engine)
