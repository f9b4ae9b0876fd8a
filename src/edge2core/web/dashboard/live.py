"""Live views: a server-sent-events stream saying what changed, and the charts' data.

The stream sends an event (`fleet`, `labelling`, `models`, `datasets`) whenever that part of the core
changed, checked every second; the page then fetches the new fragment or data (htmx /
fetch). One small loop per open page; nothing is pushed to a page that is not looking.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from edge2core.core.curate.labelling import LabelStatus
from edge2core.web.dashboard.context import Board, Dashboard, Reader
from edge2core.web.dashboard.pages import fleet_of
from edge2core.web.dashboard.views import where_running

router = APIRouter(prefix="/dashboard", include_in_schema=False)
POLL_S = 1.0
# A stream ends after this long and the browser's EventSource opens a new one: no stream
# outlives a server that is shutting down by more than a moment.
STREAM_S = 300.0


def markers(board: Dashboard) -> dict[str, Any]:
    """What each live view keys on: a change in one means that view is stale."""
    services = board.services
    models = services.registry.list()
    running = where_running(fleet_of(board))
    return {
        "fleet": services.reports.fleet.updates,
        "labelling": services.labelling.list(status=LabelStatus.PENDING, limit=1).total,
        # The models view shows stages and where each version runs.
        "models": tuple((m.version, m.stage, tuple(m.canary_sites), tuple(running.get(m.version, [])))
                        for m in models),
        "datasets": tuple(d.version for d in services.datasets.list()),
    }


async def changes(request: Request, board: Board) -> AsyncIterator[bytes]:
    last: dict[str, Any] = {}
    yield b"retry: 2000\n\n"
    ends = asyncio.get_running_loop().time() + STREAM_S
    while not await request.is_disconnected() and asyncio.get_running_loop().time() < ends:
        now = await run_in_threadpool(markers, board)
        for name, value in now.items():
            if last.get(name) != value:
                data = value if isinstance(value, int) else len(value)
                yield f"event: {name}\ndata: {data}\n\n".encode()
        last = now
        await asyncio.sleep(POLL_S)


@router.get("/events")
async def events(request: Request, board: Board, session: Reader) -> StreamingResponse:
    return StreamingResponse(changes(request, board), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


@router.get("/data/pipeline")
def pipeline_data(board: Board, session: Reader, site: str | None = None) -> dict[str, Any]:
    """Photos per stage and photos refused per reason per 5 s interval (uPlot's columns:
    `t` in unix seconds, then a list per stage or reason), for one site or the fleet."""
    fleet = board.services.reports.fleet
    return {"series": fleet.series(site or None), "refused_by_reason": fleet.refusal_series(site or None),
            "refusals": fleet.refusals()}
