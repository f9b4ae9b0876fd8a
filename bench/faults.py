"""The fault table: every scenario of `tests/faults/` under a steady load, its histories
compared (acknowledged to devices, spooled at the edge, stored at the core by sha256).

    python bench/faults.py [--quick]

A baseline run with no fault comes first (same load, same processes): recovery and settle
times read against it. `--quick` (about five minutes) runs the kills, the full disks, the
spool faults, the core's clock five hours ahead and a 30 s partition; the full run adds the
core's clock five hours behind, a two-minute partition and a flapping link. The table goes
to stderr; the last line of stdout is one JSON object: `scenarios`, `lost`, `duplicated`,
`max_recovery_s`, `drain_ratio` (the slowest drain after a partition, goodput over the
link's capacity), `per_scenario`. Targets: lost == 0, duplicated == 0, drain_ratio >= 0.8.
Partitions need root and `ip netns`, the full disks a tmpfs mount; a scenario that cannot
run here is listed under `skipped` with the reason.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _common import emit, say  # noqa: E402

from edge2core.edge.faces import FaceRedactor, load_default_detector  # noqa: E402
from tests.faults.cluster import Cluster  # noqa: E402
from tests.faults.histories import Fault, Outcome, run  # noqa: E402
from tests.faults.link import CoreLink, unavailable  # noqa: E402
from tests.faults.scenarios import (  # noqa: E402
    FAKETIME,
    KILLS,
    clock_env,
    disk_full,
    flapping,
    partition,
    skewed_run,
)
from tests.faults.volumes import Tmpfs, can_mount  # noqa: E402


class Table:
    def __init__(self, redactor: FaceRedactor) -> None:
        self.redactor = redactor
        self.outcomes: list[Outcome] = []
        self.skipped: dict[str, str] = {}

    def record(self, outcome: Outcome) -> None:
        say(outcome.line() + (f"  {outcome.extra}" if outcome.extra else ""))
        self.outcomes.append(outcome)

    def run(self, cluster: Cluster, fault: Fault, **kw: float) -> None:
        self.record(run(cluster, fault, self.redactor, **kw))


def with_cluster(root: Path, body: Callable[[Cluster], None], **kw: object) -> None:
    cluster = Cluster(root, **kw)  # type: ignore[arg-type]
    cluster.start()
    try:
        body(cluster)
    finally:
        cluster.close()


def kills(table: Table, root: Path) -> None:
    def body(cluster: Cluster) -> None:
        table.run(cluster, Fault("baseline (no fault)", lambda: None, lambda: None, fault_s=0.0))
        for make in KILLS.values():
            table.run(cluster, make(cluster))
    with_cluster(root / "kills", body)


def disks(table: Table, root: Path) -> None:
    if reason := can_mount():
        table.skipped["full disks"] = reason
        return
    with Tmpfs(root / "store-volume", size_mb=64) as volume:
        with_cluster(root / "core-full", lambda c: table.run(
            c, disk_full("core store full", volume.path)),
            core_env={"E2C_CORE_OBJECT_STORE_URL": str(volume.path)})
    with Tmpfs(root / "edge-volume", size_mb=256) as volume:
        with_cluster(root / "edge-full", lambda c: table.run(
            c, disk_full("edge disk full", volume.path)), edge_data=volume.path / "edge")


def spool_faults(table: Table) -> None:
    """The torn-write and corrupt-index cases are exact in-process checks (a child killed at
    each fsync): run as their test file, reported as pass/fail."""
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "tests/faults/test_spool_faults.py"], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-300:]
    outcome = Outcome("torn write + bad index", lost=0 if done.returncode == 0 else -1,
                      extra={"pytest": summary, "seconds": round(time.monotonic() - start, 1)})
    outcome.settle_s = 0.0 if done.returncode == 0 else None
    table.record(outcome)


def clocks(table: Table, root: Path, quick: bool) -> None:
    if not FAKETIME.exists():
        table.skipped["clock skew"] = f"libfaketime not installed ({FAKETIME})"
        return
    retention = {"E2C_CORE_RETENTION_DAYS": '{"kiosk": 1, "shopper": 1}',
                 "E2C_CORE_RETENTION_EVERY_S": "2"}
    for offset in ["+5h"] if quick else ["+5h", "-5h"]:
        with_cluster(root / f"clock{offset}", lambda c, o=offset: table.run(  # type: ignore[misc]
            c, skewed_run("+0", o)), core_env={**clock_env(offset), **retention})


def links(table: Table, root: Path, quick: bool) -> None:
    if reason := unavailable():
        table.skipped["partition, flapping"] = reason
        return
    with CoreLink(rate_mbit=4) as link:
        def body(cluster: Cluster) -> None:
            table.run(cluster, partition(cluster, link, fault_s=30.0), after_s=5.0)
            if not quick:
                table.run(cluster, partition(cluster, link, fault_s=120.0), after_s=5.0)
                table.run(cluster, flapping(link, total_s=60.0))
        with_cluster(root / "linked", body, core_host=link.core_ip, core_prefix=link.prefix)


def summary(table: Table, started: float) -> dict:
    outcomes = table.outcomes
    recoveries = [o.recovery_s for o in outcomes if o.recovery_s is not None]
    drains = [float(o.extra["drain_ratio"]) for o in outcomes if "drain_ratio" in o.extra]
    baseline = next((o for o in outcomes if o.name.startswith("baseline")), None)
    return {
        "scenarios": len(outcomes),
        "lost": sum(max(o.lost, 0) for o in outcomes),
        "duplicated": sum(o.duplicated for o in outcomes),
        "unsettled": [o.name for o in outcomes if o.settle_s is None],
        "max_recovery_s": max(recoveries) if recoveries else None,
        "drain_ratio": min(drains) if drains else None,
        "baseline_settle_s": baseline.settle_s if baseline else None,
        "target_met": all(o.ok for o in outcomes) and (not drains or min(drains) >= 0.8),
        "skipped": table.skipped,
        "per_scenario": {o.name: o.as_json() for o in outcomes},
        "seconds": round(time.monotonic() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a subset in about five minutes")
    args = parser.parse_args()
    started = time.monotonic()
    say("loading the face detector (MQTT photos are named by the edge's own preparation)")
    table = Table(FaceRedactor(load_default_detector()))
    with tempfile.TemporaryDirectory(prefix="e2c-faults-") as tmp:
        root = Path(tmp)
        kills(table, root)
        disks(table, root)
        spool_faults(table)
        clocks(table, root, args.quick)
        links(table, root, args.quick)
    for outcome in table.outcomes:
        print(outcome.line(), file=sys.stderr)
    emit(summary(table, started))


if __name__ == "__main__":
    main()
