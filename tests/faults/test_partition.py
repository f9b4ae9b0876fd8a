"""Edge and core apart: a partition of the veth link for a while, and a flapping link. The
edge keeps answering shoppers and spooling; after the heal everything drains, near the link's
rate. The core runs in a network namespace of ours (`link.CoreLink`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edge2core.edge.faces import FaceRedactor
from tests.faults.cluster import Cluster
from tests.faults.histories import Outcome, run
from tests.faults.link import CoreLink, unavailable
from tests.faults.scenarios import flapping, partition

REASON = unavailable()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(REASON is not None, reason=str(REASON))]


@pytest.fixture
def linked(tmp_path: Path) -> Iterator[tuple[Cluster, CoreLink]]:
    with CoreLink(rate_mbit=4) as link:
        cluster = Cluster(tmp_path, core_host=link.core_ip, core_prefix=link.prefix).start()
        try:
            yield cluster, link
        finally:
            cluster.close()


def check(outcome: Outcome) -> None:
    print(outcome.line(), outcome.extra)
    assert outcome.acknowledged > 20 and outcome.settle_s is not None, outcome
    assert outcome.lost == 0 and outcome.duplicated == 0 and outcome.quarantined == 0, outcome
    assert outcome.extra["acknowledged_not_in_dataset"] == 0, outcome


def test_partition_then_heal_drains_near_the_link_rate(
    linked: tuple[Cluster, CoreLink], redactor: FaceRedactor
) -> None:
    cluster, link = linked
    outcome = run(cluster, partition(cluster, link, fault_s=30.0), redactor, after_s=5.0)
    check(outcome)
    assert not outcome.refused, outcome.refused  # the doors never noticed the partition
    asked, answered = map(int, outcome.shopper_answered.split("/"))
    assert answered >= asked * 0.9, outcome.shopper_answered  # shoppers answered throughout
    assert outcome.extra.get("backlog_bytes", 0) > 0, outcome.extra
    assert float(outcome.extra.get("drain_ratio", 0)) > 0.5, outcome.extra


def test_flapping_link_loses_nothing(
    linked: tuple[Cluster, CoreLink], redactor: FaceRedactor
) -> None:
    cluster, link = linked
    check(run(cluster, flapping(link, total_s=60.0), redactor))
