"""Fault injection: real processes under load, a fault, a heal, and three histories compared
(see `histories.py`). Everything here is marked `faults` by folder; the long scenarios
(partitions, a flapping link) are marked `slow` in their files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edge2core.edge.faces import FaceRedactor, load_default_detector
from tests.faults.cluster import Cluster

HERE = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)  # before `-m` selects on markers
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.faults)


@pytest.fixture(scope="session")
def redactor() -> FaceRedactor:
    """The edge's own face redactor: MQTT captures are named by the edge's preparation."""
    return FaceRedactor(load_default_detector())


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One core and one edge for a module's scenarios (their histories are per scenario)."""
    running = Cluster(tmp_path_factory.mktemp("faults")).start()
    try:
        yield running
    finally:
        running.close()
