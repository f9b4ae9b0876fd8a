"""Counts clients the broker refused that nobody else counted: reads the broker's closed
connections from its monitoring endpoint and counts authentication failures once each.

With device identity on, the edge's auth service (`broker_auth`) refuses devices itself and
counts them with their reason; the broker then closes those connections with "Authentication
Failure" too, so they are skipped here (`skip`). What is left: connects the service never
answered (e.g. the edge too busy to answer within the broker's auth timeout) and edge2core's own
users with a wrong password.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
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


def _door(conn: dict[str, Any]) -> str:
    return "mqtt" if conn.get("mqtt_client") is not None else "nats"


async def watch_auth_failures(
    monitor_url: str, every_s: float = 5.0, skip: Callable[[int], bool] = lambda _cid: False
) -> None:
    """`skip(cid)`: true for refusals counted elsewhere (the auth service's)."""
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
                if skip(conn.get("cid", 0)):
                    continue
                DEVICES_REFUSED.labels(door=_door(conn), reason="not_authorized").inc()
                log.warning("broker refused a client: no answer from the auth service in time, "
                            "or a wrong internal password", client_id=conn.get("mqtt_client"),
                            ip=conn.get("ip"), user=conn.get("authorized_user"))
            await asyncio.sleep(every_s)
