"""Bounded coverage-guided runs (atheris, libFuzzer) of every target, as CI can afford them:
a few thousand inputs each from the seed corpus. A finding fails the test with the input's
file in `fuzz/crashes/`. `make fuzz` runs the same harness for minutes per target."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from fuzz.targets import TARGETS
from tests.support.paths import REPO

pytestmark = pytest.mark.skipif(importlib.util.find_spec("atheris") is None,
                                reason="atheris is not installed (x86_64 wheels only)")

# The cheapest targets run in every `make test`; all of them with `-m slow`.
QUICK = {"mqtt_envelope", "tus_offset", "tus_metadata", "site_report"}


def fuzz(target: str, runs: int) -> None:
    done = subprocess.run([sys.executable, str(REPO / "fuzz" / "run.py"), target, f"--runs={runs}"],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, f"atheris found a crash in {target}:\n{done.stderr[-3000:]}"
    assert "Done" in done.stderr, done.stderr[-2000:]  # libFuzzer finished its runs


@pytest.mark.parametrize("target", sorted(QUICK))
def test_bounded_fuzz_quick(target: str) -> None:
    fuzz(target, runs=2000)


@pytest.mark.slow
@pytest.mark.parametrize("target", sorted(TARGETS))
def test_bounded_fuzz_all(target: str) -> None:
    fuzz(target, runs=50_000)
