"""The site's status report reads this process's counters, spool and model."""

from __future__ import annotations

import asyncio
from pathlib import Path

from edge2core.common.events import utcnow
from edge2core.common.metrics import FORWARDED, PHOTOS_REJECTED, RECOGNITION_SECONDS, RECOGNITIONS
from edge2core.common.site_status import SiteStatus
from edge2core.edge.catalogue_replica import CatalogueReplica
from edge2core.edge.inference import Recognizer
from edge2core.edge.spool import Spool
from edge2core.edge.status_reporter import collect_status, report_status_every
from tests.support.waiting import until


def test_a_report_counts_what_happened_since_the_last(tmp_path: Path) -> None:
    catalogue = CatalogueReplica(tmp_path / "catalogue.json")
    spool = Spool(tmp_path / "spool", 10_000_000)
    try:
        def now() -> SiteStatus:
            return collect_status("s1", utcnow(), spool, Recognizer(catalogue), catalogue)

        before = now()
        FORWARDED.inc(2)
        PHOTOS_REJECTED.labels(door="http", reason="too_dark").inc()
        RECOGNITIONS.labels(door="mqtt", outcome="unsure").inc()
        RECOGNITION_SECONDS.observe(0.004)
        after = now()
    finally:
        spool.close()
    assert after.forwarded - before.forwarded == 2
    assert after.refused["too_dark"] - before.refused.get("too_dark", 0) == 1
    assert after.recognitions["unsure"] - before.recognitions.get("unsure", 0) == 1
    assert after.latency_buckets["0.005"] - before.latency_buckets.get("0.005", 0) == 1
    assert after.model_version is None and after.spool.items == 0


async def test_reports_are_signed_and_keep_coming_after_a_failed_publish() -> None:
    sent: list[bytes] = []
    calls = [0]

    async def publish(subject: str, body: bytes) -> None:
        calls[0] += 1
        if calls[0] == 1:
            raise ConnectionError("link down")
        assert subject == "e2c.sites.s1.status"
        sent.append(body)

    start = utcnow()
    task = asyncio.create_task(report_status_every(
        lambda: SiteStatus(site="s1", started_at=start), publish, "tok", 0.01))
    await until(lambda: len(sent) >= 2, what="two reports after the failed one")
    task.cancel()
    assert SiteStatus.model_validate_json(sent[0]).verify("tok")
