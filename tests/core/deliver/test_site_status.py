"""The fleet view's arithmetic: latency percentiles from histogram buckets, rates from two
reports, restarts, sites that went quiet, and trust in who sent a report."""

from __future__ import annotations

from datetime import timedelta

import pytest

from edge2core.common.events import utcnow
from edge2core.common.site_status import SiteStatus, SpoolState, site_status_subject
from edge2core.core.deliver.site_status import (
    FleetStatus,
    percentile_from_buckets,
    stage_counts,
    status_trusted,
    summarise,
)

BUCKETS = {"0.005": 0.0, "0.01": 50.0, "0.02": 90.0, "0.05": 100.0, "+Inf": 100.0}


def report(at_s: float, started_s: float = 0.0, **fields: object) -> SiteStatus:
    start = utcnow().replace(microsecond=0) - timedelta(hours=1)
    return SiteStatus(site=str(fields.pop("site", "s1")), started_at=start + timedelta(seconds=started_s),
                      at=start + timedelta(seconds=at_s), **fields)  # type: ignore[arg-type]


def test_percentiles_interpolate_within_a_bucket() -> None:
    assert percentile_from_buckets(BUCKETS, 0.5) == pytest.approx(0.01)
    assert percentile_from_buckets(BUCKETS, 0.7) == pytest.approx(0.015)
    assert percentile_from_buckets(BUCKETS, 0.99) == pytest.approx(0.047)
    assert percentile_from_buckets({"0.01": 0.0, "+Inf": 0.0}, 0.5) is None
    # Beyond the last finite bound: that bound, never infinity.
    assert percentile_from_buckets({"0.01": 1.0, "+Inf": 10.0}, 0.99) == pytest.approx(0.01)


def test_a_row_has_rates_between_two_reports_of_one_run() -> None:
    old = report(100, received={"kiosk": 10}, forwarded=5)
    new = report(110, received={"kiosk": 30}, refused={"too_dark": 2}, forwarded=25,
                 recognitions={"recognised": 3, "unsure": 1}, latency_buckets=BUCKETS,
                 spool=SpoolState(items=4, bytes=4000, oldest_age_s=12.0), model_version=3)
    row = summarise(new, old, new.at + timedelta(seconds=2))
    assert row["online"] and row["model_version"] == 3 and row["spool"]["items"] == 4
    assert row["ingest_per_s"] == 2.2  # (30 + 2 refused) - 10 over 10 s
    assert row["forward_per_s"] == 2.0
    assert row["refused"] == {"too_dark": 2}
    assert row["recognised_share"] == 0.75 and row["unrecognised_share"] == 0.25
    assert row["latency_p50_ms"] == 10.0
    # A restart in between: counters began again, so no rate from those two.
    restarted = report(120, started_s=115, received={"kiosk": 1})
    assert summarise(restarted, new, restarted.at)["ingest_per_s"] is None
    # Quiet for longer than three periods: offline.
    assert not summarise(new, old, new.at + timedelta(seconds=60))["online"]


def test_the_fleet_keeps_a_history_per_site_and_series_per_stage() -> None:
    fleet = FleetStatus()
    fleet.record(report(5, received={"kiosk": 4}, forwarded=1))
    fleet.record(report(10, received={"kiosk": 10}, duplicates=2, forwarded=8))
    fleet.record(report(10, site="s2", received={"shopper": 3}, refused={"blurry": 1}))
    rows = {r["site"]: r for r in fleet.sites(report(12).at)}
    assert set(rows) == {"s1", "s2"} and rows["s1"]["forward_per_s"] == 1.4
    one = fleet.series("s1")
    assert one["prepared"] == [4.0, 6.0] and one["forwarded"] == [1.0, 7.0]
    total = fleet.series()
    assert sum(total["received"]) == 10 + 2 + 3 + 1  # prepared + duplicates + refused, both sites
    assert fleet.refusals() == {"blurry": 1}
    assert stage_counts(report(1, received={"kiosk": 2}, refused={"x": 1}))["received"] == 3


def test_refusals_by_reason_per_interval_per_site_and_for_the_fleet() -> None:
    fleet = FleetStatus()
    fleet.record(report(5, refused={"too_dark": 1}))
    fleet.record(report(10, refused={"too_dark": 3, "not_an_image": 2}))
    fleet.record(report(10, site="s2", refused={"not_an_image": 4}))
    one = fleet.refusal_series("s1")
    assert one["t"] == fleet.series("s1")["t"]
    assert one["too_dark"] == [1.0, 2.0] and one["not_an_image"] == [0.0, 2.0]
    total = fleet.refusal_series()
    assert total["not_an_image"] == [0.0, 6.0] and total["too_dark"] == [1.0, 2.0]
    assert fleet.refusal_series("nowhere") == {"t": []}


def test_only_a_sites_own_signed_reports_are_trusted() -> None:
    status = report(1, site="s1").signed("token-1")
    subject = site_status_subject("s1")
    assert status_trusted(status, subject, {"s1": "token-1"})
    assert not status_trusted(status, site_status_subject("s2"), {})
    assert not status_trusted(status, subject, {"s1": "another"})
    assert not status_trusted(report(1, site="s1"), subject, {"s1": "token-1"})
    assert status_trusted(report(1, site="s1"), subject, {})  # development: no tokens


def test_a_status_with_a_forged_non_ascii_mac_is_refused_not_raised() -> None:
    """The same signing as model reports (one base): compare_digest on str would raise a
    TypeError for a non-ASCII mac inside the core's NATS callback."""
    status = SiteStatus(site="s1", started_at=utcnow()).signed("token-1")
    assert status.verify("token-1") and not status.verify("token-2")
    assert status.model_copy(update={"mac": "é" * 64}).verify("token-1") is False
