"""The embedded backends (local directory + SQLite) and the scale-out ones (S3 on a real moto
server + PostgreSQL), behind one fixture, so the core's suites run unchanged on both.

The database is made by the real Alembic migrations, not `create_all`.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import numpy as np
import pytest
import uvicorn
from PIL import Image
from sqlalchemy.orm import Session, sessionmaker

from edge2core.common.net import free_port
from edge2core.common.objectstore import LocalObjectStore, ObjectStore
from edge2core.config import CoreSettings
from edge2core.core.db import migrations
from edge2core.core.db.engine import make_engine, make_sessionmaker
from tests.support.objectstores import make_s3_store
from tests.support.postgres import fresh_postgres

BACKENDS = ["embedded", "scale-out"]


@dataclass
class Backend:
    name: str
    store: ObjectStore
    sessions: sessionmaker[Session]
    db_url: str
    settings: dict[str, Any] = field(default_factory=dict)

    def core_settings(self, data_dir: Path, **kw: Any) -> CoreSettings:
        return CoreSettings(data_dir=data_dir, database_url=self.db_url, **self.settings, **kw)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    with contextlib.ExitStack() as stack:
        if request.param == "embedded":
            db_url = f"sqlite:///{tmp_path / 'core.db'}"
            store: ObjectStore = LocalObjectStore(tmp_path / "objects")
            settings: dict[str, Any] = {}
        else:
            db_url = stack.enter_context(fresh_postgres())  # tables dropped again on the way out
            endpoint = request.getfixturevalue("s3_endpoint")
            s3 = make_s3_store(endpoint, tmp_path / "staging")
            store = s3
            settings = {
                "object_store_url": f"s3://{s3.bucket}/core",
                "s3_endpoint_url": endpoint,
                "s3_access_key_id": "testing",
                "s3_secret_access_key": "testing",
            }
        engine = make_engine(db_url)
        migrations.upgrade(engine)
        yield Backend(request.param, store, make_sessionmaker(engine), db_url, settings)
        engine.dispose()


class CoreServer:
    """A FastAPI app on uvicorn in a background thread, on a free port."""

    def __init__(self, app: Any, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_config=None,
                                access_log=False, lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start on port {self.port}")
            time.sleep(0.01)
        return self

    def __exit__(self, *_exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=20)


def noisy_jpeg(seed: int, size: tuple[int, int] = (320, 240), quality: int = 92) -> bytes:
    """A photo-like JPEG (textured, so it has a real perceptual hash), tens of KB."""
    import io

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)
    noise = rng.integers(-20, 20, (size[1], size[0], 3))
    pixels = np.clip(np.asarray(image, dtype=np.int32) + noise, 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=quality)
    return out.getvalue()
