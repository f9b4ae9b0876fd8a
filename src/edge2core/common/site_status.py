"""Edge -> core: a site's periodic status report (the dashboard's fleet and pipeline views).

Every `status_every_s` a site publishes one `SiteStatus` on `e2c.sites.<site>.status` over its
leaf link: cumulative counters (the core turns two reports into rates), its spool backlog, the
model it runs and its recognition latency histogram. A site that was offline simply reports
again when its link returns; counters that went backwards mean the site restarted.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from edge2core.common.events import SignedReport, utcnow

SITE_STATUS = "e2c.sites.*.status"


def site_status_subject(site: str) -> str:
    return f"e2c.sites.{site}.status"


class SpoolState(BaseModel):
    items: int = 0
    bytes: int = 0
    budget_bytes: int = 0
    oldest_age_s: float | None = None
    evicted: int = 0


class SiteStatus(SignedReport):
    """One report. Counter values are totals since the site's process started."""

    site: str
    at: datetime = Field(default_factory=utcnow)
    started_at: datetime
    model_version: int | None = None
    model_classes: int = 0
    catalogue_products: int = 0
    spool: SpoolState = Field(default_factory=SpoolState)
    received: dict[str, float] = Field(default_factory=dict, description="accepted photos by source")
    refused: dict[str, float] = Field(default_factory=dict, description="refusals by reason")
    duplicates: float = 0
    faces_redacted: float = 0
    forwarded: float = 0
    forwarded_bytes: float = 0
    recognitions: dict[str, float] = Field(default_factory=dict,
                                           description="answers by outcome: recognised, unsure")
    latency_buckets: dict[str, float] = Field(
        default_factory=dict, description="recognition seconds: cumulative count per bucket "
                                          "upper bound ('+Inf' last), as Prometheus keeps them")
