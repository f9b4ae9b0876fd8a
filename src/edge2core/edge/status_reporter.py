"""The site's periodic status report to the core (`common.site_status`), read off this
process's Prometheus counters, the spool and the recognizer."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime

from prometheus_client import REGISTRY

from edge2core.common.logging import get_logger
from edge2core.common.site_status import SiteStatus, SpoolState, site_status_subject
from edge2core.edge.catalogue_replica import CatalogueReplica
from edge2core.edge.inference import Recognizer
from edge2core.edge.spool import Spool

log = get_logger(__name__)

Publish = Callable[[str, bytes], Awaitable[None]]
STATUS_EVERY_S = 5.0  # the dashboard's fleet view is at most this stale


Samples = dict[str, list[tuple[dict[str, str], float]]]


def _samples() -> Samples:
    """Every e2c sample of this process by name: (labels, value)."""
    out: Samples = {}
    for family in REGISTRY.collect():
        if family.name.startswith("e2c_"):
            for sample in family.samples:
                out.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
    return out


def _by(samples: Samples, metric: str, label: str) -> dict[str, float]:
    totals: dict[str, float] = {}
    for labels, value in samples.get(metric, []):
        key = labels.get(label, "")
        totals[key] = totals.get(key, 0.0) + value
    return totals


def _total(samples: Samples, metric: str) -> float:
    return sum(value for _labels, value in samples.get(metric, []))


def collect_status(site: str, started_at: datetime, spool: Spool, recognizer: Recognizer,
                   catalogue: CatalogueReplica) -> SiteStatus:
    """This site's status now (pure reads; a few ms)."""
    stats, model, samples = spool.stats(), recognizer.model, _samples()
    return SiteStatus(
        site=site,
        started_at=started_at,
        model_version=model.version if model else None,
        model_classes=len(model.classes) if model else 0,
        catalogue_products=len(catalogue),
        spool=SpoolState(items=stats.items, bytes=stats.bytes, budget_bytes=stats.budget_bytes,
                         oldest_age_s=stats.oldest_age_s, evicted=stats.evicted),
        received=_by(samples, "e2c_photos_received_total", "source"),
        refused=_by(samples, "e2c_photos_rejected_total", "reason"),
        duplicates=_total(samples, "e2c_photos_duplicate_total"),
        faces_redacted=_total(samples, "e2c_faces_redacted_total"),
        forwarded=_total(samples, "e2c_forwarded_total"),
        forwarded_bytes=_total(samples, "e2c_forwarded_bytes_total"),
        recognitions=_by(samples, "e2c_recognitions_total", "outcome"),
        latency_buckets=_by(samples, "e2c_recognition_seconds_bucket", "le"),
    )


async def report_status_every(collect: Callable[[], SiteStatus], publish: Publish, token: str,
                              every_s: float) -> None:
    """Publish a signed report now and every `every_s`; a failed publish (link down) is
    logged and the next one tries again, so a site coming back is seen within `every_s`."""
    while True:
        try:
            status = (await asyncio.to_thread(collect)).signed(token)
            await publish(site_status_subject(status.site), status.model_dump_json().encode())
        except Exception as exc:  # never stop reporting over one bad round
            log.warning("status report not sent", error=repr(exc))
        await asyncio.sleep(every_s)
