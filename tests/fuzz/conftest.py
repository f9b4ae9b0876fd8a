"""Bad input by machine: hypothesis properties, the fuzz corpus replayed, findings kept as
regressions, and bounded atheris runs. Everything here is marked `fuzz` by folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

HERE = Path(__file__).resolve().parent

# Deterministic and bounded: CI runs the same examples every time, on a loaded machine.
settings.register_profile("e2c", max_examples=60, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
# `make fuzz` (E2C_HYPOTHESIS=long): many more examples, still reproducible.
settings.register_profile("long", parent=settings.get_profile("e2c"), max_examples=5000)
settings.load_profile(os.environ.get("E2C_HYPOTHESIS", "e2c"))


@pytest.hookimpl(tryfirst=True)  # before `-m` selects on markers
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.fuzz)
