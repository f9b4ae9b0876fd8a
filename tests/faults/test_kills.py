"""kill -9 of each process in turn, in the middle of a steady load: nothing acknowledged is
lost, nothing is stored twice, and the system resumes by itself (the brokers) or once its
service manager starts the killed role again (the roles)."""

from __future__ import annotations

import pytest

from edge2core.edge.faces import FaceRedactor
from tests.faults.cluster import Cluster
from tests.faults.histories import run, wait_for
from tests.faults.scenarios import KILLS

# The edge and its broker in every `make test`; the core's two with `-m slow` (the core down
# for a whole burst is also in tests/integration/test_resilience.py).
FAST = {"edge", "edge-broker"}


@pytest.mark.parametrize("target", [
    pytest.param(name, marks=() if name in FAST else pytest.mark.slow) for name in KILLS])
def test_kill_9_mid_load_loses_nothing(cluster: Cluster, redactor: FaceRedactor,
                                       target: str) -> None:
    outcome = run(cluster, KILLS[target](cluster), redactor, before_s=1.0, after_s=1.0)
    print(outcome.line())
    assert outcome.acknowledged > 10, outcome  # the load really ran
    assert outcome.settle_s is not None, f"never settled: {outcome}"
    assert outcome.lost == 0 and outcome.duplicated == 0, outcome
    assert outcome.recovery_s is not None, f"the doors never acknowledged again: {outcome}"
    assert outcome.quarantined == 0, outcome
    assert outcome.extra["acknowledged_not_in_dataset"] == 0, outcome  # and counted once there
    # The brokers are back, as children of the roles that own them.
    for role in (cluster.edge, cluster.core):
        assert wait_for(lambda role=role: role.children("nats-server"), 30) is not None
