"""What the edge sites say about the models they were sent: the canary's health signal.

Sites publish a `SiteModelReport` when a version goes live, is refused (signature, smoke test,
warm-up) or is rolled back by its live watch. A canary passes when every canary site reports
the version live and none rolls it back during the soak.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from edge2core.common.events import SiteModelReport, site_report_subject
from edge2core.common.logging import get_logger
from edge2core.common.site_tokens import tokens_of
from edge2core.core.deliver.site_status import FleetStatus

log = get_logger(__name__)


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str = ""


def report_trusted(report: SiteModelReport, subject: str, site_tokens: dict[str, str]) -> bool:
    """Pure: on its own site's subject and, where sites have tokens, signed with its token."""
    if subject != site_report_subject(report.site):
        return False
    if not site_tokens:
        return True
    token = site_tokens.get(report.site)
    return token is not None and any(report.verify(t) for t in tokens_of(token))  # OLD,NEW


def judge(reports: dict[str, SiteModelReport], sites: Sequence[str], version: int) -> Verdict | None:
    """Pure: failed, all live (ok), or None while some site has not said yet."""
    for site in sites:
        report = reports.get(site)
        if report is not None and report.version == version and report.state != "live":
            return Verdict(False, f"site {site} {report.state.replace('_', ' ')} model "
                                  f"{version}: {report.reason or 'no reason given'}")
    if all((r := reports.get(s)) is not None and r.version == version and r.state == "live"
           for s in sites):
        return Verdict(True)
    return None


class SiteReports:
    def __init__(self) -> None:
        self._reports: dict[str, SiteModelReport] = {}
        self._changed = threading.Condition()
        self.fleet = FleetStatus()  # the sites' periodic status reports (the dashboard's fleet)

    def record(self, report: SiteModelReport) -> None:
        with self._changed:
            self._reports[report.site] = report
            self._changed.notify_all()
        log.info("site report", site=report.site, version=report.version, state=report.state,
                 reason=report.reason or None)

    def get(self, site: str) -> dict | None:
        report = self._reports.get(site)
        return report.model_dump(mode="json") if report else None

    def all(self) -> dict[str, dict]:
        return {site: r.model_dump(mode="json") for site, r in sorted(self._reports.items())}

    def await_version(self, sites: Sequence[str], version: int, *, soak_s: float,
                      timeout_s: float) -> Verdict:
        """Blocking: every site live on `version`, then `soak_s` with no site falling off."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while (verdict := judge(self._reports, sites, version)) is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    missing = [s for s in sites if (r := self._reports.get(s)) is None
                               or r.version != version]
                    return Verdict(False, f"no report of model {version} from "
                                          f"{', '.join(missing)} within {timeout_s:.0f} s")
                self._changed.wait(left)
            if not verdict.ok:
                return verdict
            soak_end = time.monotonic() + soak_s
            while (left := soak_end - time.monotonic()) > 0:
                self._changed.wait(left)
                verdict = judge(self._reports, sites, version)
                if verdict is None or not verdict.ok:
                    return verdict or Verdict(False, f"a canary site left model {version} during the soak")
        return Verdict(True)
