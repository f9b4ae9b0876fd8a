"""Counts devices the broker refused (MQTT has no hook for it): reads the broker's closed
connections from its monitoring endpoint and counts authentication failures once each."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from edge2core.common.logging import get_logger
from edge2core.common.metrics import DEVICES_REFUSED

log = get_logger(__name__)

AUTH_FAILURE = "Authentication Failure"


def auth_failures_since(connz: dict[str, Any], last_cid: int) -> tuple[list[dict[str, Any]], int]:
    """The authentication failures newer than `last_cid`, and the newest cid seen."""
    connections = connz.get("connections") or []
    fresh = [c for c in connections if c.get("cid", 0) > last_cid]
    newest = max((c.get("cid", 0) for c in connections), default=last_cid)
    return [c for c in fresh if c.get("reason") == AUTH_FAILURE], max(newest, last_cid)


async def watch_auth_failures(monitor_url: str, every_s: float = 5.0) -> None:
    last_cid = 0
    async with httpx.AsyncClient(base_url=monitor_url, timeout=5) as http:
        while True:
            try:
                response = await http.get("/connz", params={"state": "closed", "limit": 4096})
                failures, last_cid = auth_failures_since(response.json(), last_cid)
            except (httpx.HTTPError, ValueError) as exc:
                log.debug("broker monitoring unavailable", error=repr(exc))
                failures = []
            for conn in failures:
                DEVICES_REFUSED.labels(door="mqtt", reason="not_authorized").inc()
                log.warning("MQTT device refused: unknown, revoked or wrong secret",
                            client_id=conn.get("mqtt_client"), ip=conn.get("ip"))
            await asyncio.sleep(every_s)
