"""The fleet as the core sees it: every site's latest status report, a short history of them,
and what the dashboard derives from two reports (rates, latency percentiles, shares).

Reports arrive over the leaf link (`common.site_status`); a site is `online` while its last
report is younger than three reporting periods. Kept in memory: after a core restart the
fleet view fills again within one period.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from nats.aio.msg import Msg

from edge2core.common.events import utcnow
from edge2core.common.logging import get_logger
from edge2core.common.site_status import SiteStatus, site_status_subject
from edge2core.common.site_tokens import tokens_of

log = get_logger(__name__)

HISTORY = 720  # reports kept per site: an hour at one every 5 s
ONLINE_WITHIN_S = 20.0
FIRST_REPORT_WITHIN_S = 30.0  # a run's first report comes this soon after its start
STAGES = ("received", "prepared", "refused", "faces_redacted", "duplicates", "forwarded")


def percentile_from_buckets(buckets: dict[str, float], q: float) -> float | None:
    """Pure: the q-quantile (0..1) of a cumulative Prometheus histogram, in the buckets' unit,
    interpolated within the bucket (None without observations; the last finite bound when it
    falls in +Inf)."""
    bounds = sorted((math.inf if k == "+Inf" else float(k), v) for k, v in buckets.items())
    if not bounds or bounds[-1][1] <= 0:
        return None
    target = q * bounds[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in bounds:
        if count >= target and count > below:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * (target - below) / (count - below)
        lower, below = (bound if not math.isinf(bound) else lower), count
    return lower


def _delta(new: dict[str, float], old: dict[str, float]) -> dict[str, float]:
    return {k: max(0.0, v - old.get(k, 0.0)) for k, v in new.items()}


def stage_counts(status: SiteStatus) -> dict[str, float]:
    """Pure: the cumulative photos per pipeline stage of one report."""
    received = sum(status.received.values())
    refused = sum(status.refused.values())
    return {"received": received + refused + status.duplicates, "prepared": received,
            "refused": refused, "faces_redacted": status.faces_redacted,
            "duplicates": status.duplicates, "forwarded": status.forwarded}


def summarise(latest: SiteStatus, earlier: SiteStatus | None, now: datetime,
              window_start: SiteStatus | None = None) -> dict[str, Any]:
    """Pure: one fleet row from the latest report and an earlier one of the same run (rates
    per second between them); `window_start` bounds the latency and share window."""
    base = earlier if earlier is not None and earlier.started_at == latest.started_at else None
    span = (latest.at - base.at).total_seconds() if base is not None else 0.0
    window = window_start if window_start is not None and \
        window_start.started_at == latest.started_at else None

    def rate(new: float, old: float) -> float | None:
        return round(max(0.0, new - old) / span, 2) if span > 0 else None

    stages, before = stage_counts(latest), stage_counts(base) if base else {}
    buckets = _delta(latest.latency_buckets, window.latency_buckets) if window \
        else latest.latency_buckets
    answers = _delta(latest.recognitions, window.recognitions) if window else latest.recognitions
    total_answers = sum(answers.values())
    p50, p99 = percentile_from_buckets(buckets, 0.5), percentile_from_buckets(buckets, 0.99)
    age = (now - latest.at).total_seconds()
    return {
        "site": latest.site,
        "online": age <= ONLINE_WITHIN_S,
        "last_seen": latest.at.isoformat(),
        "last_seen_age_s": round(age, 1),
        "model_version": latest.model_version,
        "catalogue_products": latest.catalogue_products,
        "spool": latest.spool.model_dump(),
        "ingest_per_s": rate(stages["received"], before.get("received", 0.0)),
        "forward_per_s": rate(stages["forwarded"], before.get("forwarded", 0.0)),
        "refused": {k: int(v) for k, v in sorted(latest.refused.items()) if v},
        "recognitions": int(total_answers),
        "recognised_share": round(answers.get("recognised", 0.0) / total_answers, 3)
        if total_answers else None,
        "unrecognised_share": round(answers.get("unsure", 0.0) / total_answers, 3)
        if total_answers else None,
        "latency_p50_ms": round(p50 * 1000, 1) if p50 is not None else None,
        "latency_p99_ms": round(p99 * 1000, 1) if p99 is not None else None,
    }


def _zero(status: SiteStatus) -> SiteStatus:
    """A report of the same run with nothing counted yet."""
    return SiteStatus(site=status.site, at=status.at, started_at=status.started_at)


class FleetStatus:
    """Every site's recent reports; safe to call from any thread."""

    def __init__(self, history: int = HISTORY) -> None:
        self._history: dict[str, deque[SiteStatus]] = {}
        self._size = history
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self.updates = 0  # bumped on every report: the live view's change marker

    def record(self, status: SiteStatus) -> None:
        with self._changed:
            reports = self._history.setdefault(status.site, deque(maxlen=self._size))
            if reports and status.started_at != reports[-1].started_at:
                log.info("site restarted", site=status.site)
            reports.append(status)
            self.updates += 1
            self._changed.notify_all()

    def sites(self, now: datetime | None = None) -> list[dict[str, Any]]:
        """A row per site: `summarise` over its last two reports (rates) and its last
        five minutes (latency, shares)."""
        now = now or utcnow()
        with self._lock:
            history = {site: list(reports) for site, reports in sorted(self._history.items())}
        rows = []
        for reports in history.values():
            latest = reports[-1]
            earlier = reports[-2] if len(reports) > 1 else None
            window = next((r for r in reports if (latest.at - r.at).total_seconds() <= 300),
                          None)
            window = window if window is not latest else None
            rows.append(summarise(latest, earlier, now, window))
        return rows

    def series(self, site: str | None = None) -> dict[str, list[float]]:
        """Photos per stage per reporting interval: `t` (unix seconds) and one list per stage,
        for one site or summed over the fleet (each site's intervals aligned to 5 s)."""
        return self._per_interval(site, stage_counts, STAGES)

    def refusal_series(self, site: str | None = None) -> dict[str, list[float]]:
        """Photos refused per reason per reporting interval: `t` (unix seconds) and one list
        per reason seen in the kept reports, for one site or summed over the fleet."""
        return self._per_interval(site, lambda s: {k: float(v) for k, v in s.refused.items()})

    def _per_interval(self, site: str | None, counts: Callable[[SiteStatus], dict[str, float]],
                      keys: tuple[str, ...] = ()) -> dict[str, list[float]]:
        with self._lock:
            history = {s: list(r) for s, r in self._history.items() if site in (None, s)}
        totals: dict[int, dict[str, float]] = {}
        for reports in history.values():
            for old, new in zip([None, *reports], reports, strict=False):
                if old is None or old.started_at != new.started_at:
                    if (new.at - new.started_at).total_seconds() > FIRST_REPORT_WITHIN_S:
                        continue  # the run began before what we kept: no interval to count
                    old = _zero(new)  # the first report of a run: counted from its start
                slot = int(new.at.timestamp()) // 5 * 5
                into = totals.setdefault(slot, {})
                for key, value in _delta(counts(new), counts(old)).items():
                    into[key] = into.get(key, 0.0) + value
        slots = sorted(totals)
        names = keys or tuple(sorted({k for row in totals.values() for k in row}))
        out: dict[str, list[float]] = {"t": [float(s) for s in slots]}
        for name in names:
            out[name] = [totals[s].get(name, 0.0) for s in slots]
        return out

    def refusals(self) -> dict[str, int]:
        """Refusals by reason over the fleet, latest totals."""
        with self._lock:
            latest = [reports[-1] for reports in self._history.values()]
        out: dict[str, int] = {}
        for status in latest:
            for reason, n in status.refused.items():
                out[reason] = out.get(reason, 0) + int(n)
        return dict(sorted(out.items()))


def status_trusted(status: SiteStatus, subject: str, site_tokens: dict[str, str]) -> bool:
    """Pure: on its own site's subject and, where sites have tokens, signed with its token."""
    if subject != site_status_subject(status.site):
        return False
    if not site_tokens:
        return True
    token = site_tokens.get(status.site)
    return token is not None and any(status.verify(t) for t in tokens_of(token))  # OLD,NEW


def on_site_status(fleet: FleetStatus, site_tokens: dict[str, str]) -> Callable[[Msg], Awaitable[None]]:
    """The NATS callback recording trusted reports; others are logged and dropped."""

    async def on_status(msg: Msg) -> None:
        try:
            status = SiteStatus.model_validate_json(msg.data)
        except ValueError:
            log.warning("malformed site status ignored", subject=msg.subject)
            return
        if not status_trusted(status, msg.subject, site_tokens):
            log.warning("site status ignored: not from that site", subject=msg.subject)
            return
        fleet.record(status)

    return on_status
