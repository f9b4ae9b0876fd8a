"""The edge's and the core's clocks hours apart (libfaketime on the core's process: five hours
ahead of the edge, or five behind): photos still arrive once each, and the core's retention,
run every two seconds meanwhile, erases nothing that was just taken (to the core, the edge's
photos were taken five hours ago, or five hours in the future).

The edge keeps the host's clock: libfaketime reaches Python but not the Go nats-server beside
it, and an edge and its broker share one box and one clock in the field; faking only half of
the edge would test the emulation (its device JWTs would be "issued in the future")."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge2core.edge.faces import FaceRedactor
from tests.faults.cluster import Cluster
from tests.faults.histories import run
from tests.faults.scenarios import FAKETIME, clock_env, skewed_run

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not FAKETIME.exists(), reason=f"libfaketime not installed ({FAKETIME}); "
    "scripts/install-system-deps.sh installs it")]


@pytest.mark.parametrize("core_offset", ["+5h", "-5h"])
def test_clocks_hours_apart_lose_nothing(tmp_path: Path, redactor: FaceRedactor,
                                         core_offset: str) -> None:
    cluster = Cluster(tmp_path, core_env={
        **clock_env(core_offset), "E2C_CORE_RETENTION_DAYS": '{"kiosk": 1, "shopper": 1}',
        "E2C_CORE_RETENTION_EVERY_S": "2"})
    cluster.start()
    try:
        outcome = run(cluster, skewed_run("+0", core_offset), redactor)
    finally:
        cluster.close()
    print(outcome.line())
    assert outcome.acknowledged > 10 and outcome.settle_s is not None, outcome
    assert outcome.lost == 0 and outcome.duplicated == 0 and outcome.quarantined == 0, outcome
    assert outcome.recovery_s is not None, outcome  # both kiosk doors acknowledged throughout
