"""Full disks under load: the core's object store, and the edge's whole data volume (spool,
index, broker state). Refusals are clear (HTTP 507 `spool_full` at the edge's door, MQTT
left unacknowledged; the core answers 503 and the edge keeps the photo), nothing acknowledged
is lost, and everything flows again once space returns."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge2core.edge.faces import FaceRedactor
from tests.faults.cluster import Cluster
from tests.faults.histories import run
from tests.faults.scenarios import disk_full
from tests.faults.volumes import Tmpfs, can_mount

pytestmark = pytest.mark.skipif(can_mount() is not None, reason=str(can_mount()))


@pytest.mark.slow  # the core's 503 on a full store is in test_upload_proof, in process
def test_core_store_full_then_freed(tmp_path: Path, redactor: FaceRedactor) -> None:
    with Tmpfs(tmp_path / "store", size_mb=64) as volume:
        cluster = Cluster(tmp_path, core_env={"E2C_CORE_OBJECT_STORE_URL": str(volume.path)})
        cluster.start()
        try:
            outcome = run(cluster, disk_full("core store full", volume.path), redactor,
                          before_s=1.0, after_s=1.0)
        finally:
            cluster.close()
    print(outcome.line())
    assert outcome.acknowledged > 10 and outcome.settle_s is not None, outcome
    assert outcome.lost == 0 and outcome.duplicated == 0, outcome
    assert outcome.quarantined == 0, outcome  # a full store is the core's problem, not the photo's


@pytest.mark.slow
def test_edge_disk_full_then_freed(tmp_path: Path, redactor: FaceRedactor) -> None:
    with Tmpfs(tmp_path / "edge", size_mb=256) as volume:
        cluster = Cluster(tmp_path, edge_data=volume.path / "edge")
        cluster.start()
        try:
            outcome = run(cluster, disk_full("edge disk full", volume.path), redactor,
                          before_s=1.0, after_s=2.0)
        finally:
            cluster.close()
    print(outcome.line(), outcome.refused)
    assert outcome.acknowledged > 10 and outcome.settle_s is not None, outcome
    assert outcome.lost == 0 and outcome.duplicated == 0, outcome
    assert outcome.recovery_s is not None, outcome
    assert set(outcome.refused) <= {"http:spool_full"}, outcome.refused  # no 500s
