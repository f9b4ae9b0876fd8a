"""Every seed and every past finding in `fuzz/corpus/` goes through its target again: a
finding once fixed stays fixed (each is also spelled out in `test_regressions.py`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fuzz.targets import TARGETS
from tests.support.paths import REPO

CORPUS = REPO / "fuzz" / "corpus"
CASES = sorted(p for p in CORPUS.glob("*/*") if p.is_file())


def test_every_target_has_seeds() -> None:
    assert {p.parent.name for p in CASES} == set(TARGETS)


def test_the_corpus_stays_small() -> None:
    assert sum(p.stat().st_size for p in CASES) < 512 * 1024  # kept in the repository


@pytest.mark.parametrize("case", CASES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_corpus_case(case: Path) -> None:
    TARGETS[case.parent.name](case.read_bytes())
