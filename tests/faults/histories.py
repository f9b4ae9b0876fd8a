"""One fault scenario's run and its verdict, from three histories.

- acknowledged: what the devices were told is kept (`load.Devices`);
- spooled: every sha256 seen in the edge's spool index while the scenario ran (sampled);
- stored: the sha256 of every row in the core's database, and the objects in its store.

lost = acknowledged and not stored once everything settled; duplicated = stored more than once
(rows by sha256, or an object without a row) or listed twice in a dataset built afterwards
over the site's photos; recovery = seconds from the heal until both kiosk
doors acknowledge again; settle = seconds from the heal until everything acknowledged is at
the core and the spool is empty.
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Protocol

import httpx

from edge2core.edge.faces import FaceRedactor
from tests.faults.cluster import SITE, Cluster
from tests.faults.load import Load


@dataclass
class Outcome:
    name: str
    sent: int = 0
    acknowledged: int = 0
    spooled: int = 0
    arrived: int = 0
    lost: int = 0
    duplicated: int = 0
    recovery_s: float | None = None
    settle_s: float | None = None
    shopper_answered: str = ""
    refused: dict[str, int] = field(default_factory=dict)
    quarantined: int = 0
    extra: dict[str, float | int | str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.duplicated == 0 and self.settle_s is not None

    def line(self) -> str:
        rec = "-" if self.recovery_s is None else f"{self.recovery_s:.1f}"
        return (f"{self.name:<24} sent {self.sent:>4}  acknowledged {self.acknowledged:>4}  "
                f"arrived {self.arrived:>4}  lost {self.lost}  duplicated {self.duplicated}  "
                f"recovery {rec}s")

    def as_json(self) -> dict:
        return json.loads(json.dumps(asdict(self)))


class SpoolWatch:
    """Samples the edge's spool index every `every_s` seconds into one set."""

    def __init__(self, cluster: Cluster, every_s: float = 0.25) -> None:
        self.cluster, self.every_s = cluster, every_s
        self.seen: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> SpoolWatch:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.seen |= self.cluster.spooled_now()


def wait_for(cond: Callable[[], object], timeout: float, every: float = 0.2) -> float | None:
    """Seconds until `cond()` held, or None if it never did within `timeout`."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if cond():
            return time.monotonic() - start
        time.sleep(every)
    return None


@dataclass
class Fault:
    """`inject` breaks something; `heal` undoes it (or does nothing when the system is meant
    to heal itself) and returns once the operator's part is done."""

    name: str
    inject: Callable[[], None]
    heal: Callable[[], None]
    fault_s: float = 3.0  # how long the fault lasts, under load
    meter: Meter | None = None  # measures something more over the run (a drain rate)


class Meter(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def result(self, healed: float) -> dict[str, float | int | str]: ...


def run(cluster: Cluster, fault: Fault, redactor: FaceRedactor | None, *,
        before_s: float = 3.0, after_s: float = 3.0, settle_timeout: float = 180.0,
        every_s: float = 0.25) -> Outcome:
    """Load, fault, heal, settle, then compare the histories."""
    outcome = Outcome(fault.name)
    load = Load(cluster, every_s=every_s)
    with SpoolWatch(cluster) as watch:
        if fault.meter is not None:
            fault.meter.start()
        load.start()
        devices = load.devices
        wait_for(lambda: all(devices.acked_after(0).values()), 60)  # both doors working
        time.sleep(before_s)  # steady load before the fault (a duration, not a sync)
        fault.inject()
        time.sleep(fault.fault_s)
        fault.heal()
        healed = time.monotonic()
        outcome.recovery_s = wait_for(lambda: all(devices.acked_after(healed).values()), 120)
        time.sleep(after_s)
        load.stop()
        acknowledged = devices.acknowledged(redactor)
        settled = wait_for(lambda: acknowledged <= set(cluster.core_rows())
                           and not cluster.spooled_now(), settle_timeout)
        outcome.settle_s = None if settled is None else round(time.monotonic() - healed, 2)
        if fault.meter is not None:
            fault.meter.stop()
            outcome.extra.update(fault.meter.result(healed))
    rows = Counter(cluster.core_rows())
    objects = cluster.core_objects()
    in_dataset = dataset_entries(cluster)
    outcome.sent = sum(devices.sent.values())
    outcome.acknowledged = len(acknowledged)
    outcome.spooled = len(watch.seen)
    outcome.arrived = len(acknowledged & rows.keys())
    outcome.lost = len(acknowledged - rows.keys())
    outcome.duplicated = (sum(n - 1 for n in rows.values()) + len(objects - rows.keys())
                          + sum(n - 1 for n in in_dataset.values()))
    outcome.extra["dataset_images"] = len(in_dataset)
    outcome.extra["acknowledged_not_in_dataset"] = len(acknowledged - in_dataset.keys())
    outcome.shopper_answered = f"{devices.answered}/{devices.asked}"
    outcome.refused = dict(devices.refused)
    outcome.quarantined = len(cluster.quarantined())
    if outcome.recovery_s is not None:
        outcome.recovery_s = round(outcome.recovery_s, 2)
    return outcome


def dataset_entries(cluster: Cluster) -> Counter[str]:
    """A dataset built now over the site's photos (`POST /v1/datasets`): sha256 -> how many
    times its manifest lists it (a photo counted twice is a duplicate too)."""
    import pyarrow.parquet as pq

    with httpx.Client(base_url=cluster.core_url, timeout=120) as http:
        info = http.post("/v1/datasets", json={"sites": [SITE]})
        info.raise_for_status()
        manifest = http.get(f"/v1/datasets/{info.json()['version']}/manifest")
        manifest.raise_for_status()
    return Counter(pq.read_table(io.BytesIO(manifest.content)).column("sha256").to_pylist())
