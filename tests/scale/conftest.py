"""Everything in this folder goes beyond one process of each part (several core processes,
NATS clusters, Ray clusters: issue 15): it is marked `scale` here, by folder, so no test file
sets the marker itself."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)  # before `-m` selects on markers
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.scale)
