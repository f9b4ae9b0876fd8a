"""Shared by every folder: the PostgreSQL database of this run, the grocery photos, and the
fixture plugins in tests/support/. Every server listens on a free port; all state lives under
tmp_path.

Folders add their own conftest.py: core/ (databases, stores, a receiver), integration/ (marks
everything under it `integration`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import postgres
from tests.support.paths import GROCERY

# Fixtures for the object-store backends (local, S3 on moto) and the core backends pairs.
pytest_plugins = ["tests.support.objectstores", "tests.support.backends"]


def pytest_configure(config: pytest.Config) -> None:
    postgres.create_private_database()


def pytest_unconfigure(config: pytest.Config) -> None:
    postgres.drop_private_database()


@pytest.fixture(scope="session")
def grocery_dir() -> Path:
    if not (GROCERY / "train.txt").is_file():
        pytest.skip(f"grocery dataset not found at {GROCERY} (set E2C_DATASET)")
    return GROCERY
